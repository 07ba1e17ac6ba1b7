/**
 * Stepping into a stage's build (`realize --break STAGE`, `realizePaused`),
 * as Pylightnix's repl_realize / repl_build / repl_continue do: the realize
 * runs as usual up to the chosen stage, whose inputs are realized first;
 * there, instead of running the build function, it hands the build's
 * directories to someone (a shell, a TypeScript caller) and waits. When they
 * continue, what they wrote is checked against the stage's promises and
 * stored exactly as a build's output would be (same lock, temporary roots
 * and verified add); when they cancel, nothing of the stage is stored.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import type { Context } from '../store/interface.js';
import { parseRef, type DRef, type RRef } from '../store/refs.js';
import type { Derivation, Graph } from './instantiate.js';
import type { BuildContext } from './stage.js';

/** Where a realize stops, and who builds the stage by hand there. */
export interface BreakPoint {
  /** A stage name (unique in the graph) or a DRef. */
  stage: string;
  /**
   * Called in place of the stage's build function (its first run when the
   * matcher needs several). Resolving continues: the outputs are checked and
   * stored. Rejecting cancels (see `cancelledAtBreak`): nothing is stored.
   */
  enter(paused: PausedBuild): Promise<void>;
}

/** One input of the paused stage: a dependency's chosen realizations. */
export interface BreakInput {
  name: string;
  dref: DRef;
  rrefs: readonly RRef[];
  /** Their `out/` directories, same order. */
  paths: readonly string[];
}

/** A build stopped at a break point: what there is to work with, and where to write. */
export interface PausedBuild {
  name: string;
  dref: DRef;
  /** The first output directory (the shell's working directory): write the stage's outputs here. */
  out: string;
  /** All `n` output directories; each becomes a realization. */
  outs: readonly string[];
  /** The stage's promised outputs, which every output directory must hold. */
  promised: readonly string[];
  /** The config, stage references resolved to their chosen realizations (as `ctx.config`). */
  config: unknown;
  /** The dependencies' chosen realizations. */
  inputs: readonly BreakInput[];
  /** The stage's file inputs, as `ctx.files`. */
  files: Readonly<Record<string, string>>;
  /** Scratch space, deleted afterwards; holds config.json and inputs.json. */
  tmp: string;
  /** The environment a shell gets: CAIRN_OUT, CAIRN_OUTS, CAIRN_CONFIG, CAIRN_INPUTS, CAIRN_INPUT_<NAME>, ... */
  env: Record<string, string>;
  /** What to write where, and how to continue or cancel, for a person. */
  hint: string;
  /** Appends a line to the stage's build log. */
  log(line: string): void;
}

/**
 * The derivation `at` names in `graph`: a DRef, or the name of exactly one
 * stage. E_NO_SUCH_STAGE lists the names there are (or, for a name that
 * several derivations share, their DRefs).
 */
export function findBreak(graph: Graph, at: string): Derivation {
  const stages = graph.order.map((d) => graph.nodes.get(d)!).filter((n) => !n.imports);
  const byRef = stages.find((n) => n.dref === at);
  if (byRef) return byRef;
  const named = stages.filter((n) => n.name === at);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) {
    throw new CairnError(
      'E_NO_SUCH_STAGE',
      `break point ${at}: ${named.length} stages are named ${at}; give one's DRef: ` +
        named.map((n) => n.dref).join(', '),
      { stage: at, drefs: named.map((n) => n.dref) },
    );
  }
  const names = [...new Set(stages.map((n) => n.name))].sort();
  throw new CairnError(
    'E_NO_SUCH_STAGE',
    `break point ${at}: no stage of this name or DRef; stages: ${names.join(', ')}`,
    {
      stage: at,
      stages: names,
    },
  );
}

/** The error a break point's `enter` rejects with to cancel: nothing of the stage is stored. */
export function cancelledAtBreak(node: { name: string; dref: DRef }, why: string): CairnError {
  return new CairnError(
    'E_BREAK_CANCELLED',
    `cancelled at the break point before ${node.name}: ${why}; nothing of it was stored`,
    {
      dref: node.dref,
      stage: node.name,
    },
  );
}

/** Hands the paused build to the break point, noting in the build log that its outputs were written by hand. */
export async function enterBreak(point: BreakPoint, paused: PausedBuild): Promise<void> {
  paused.log('stopped at a break point: the outputs are written by hand');
  await point.enter(paused);
  paused.log('continued from the break point: storing what was written by hand');
}

/** `CAIRN_INPUT_<NAME>` for a stage name: upper case, anything but letters and digits as `_`. */
export function inputVariable(name: string): string {
  return `CAIRN_INPUT_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/**
 * Describes the build `ctx` stands for to whoever builds it by hand, writing
 * config.json and inputs.json (and files.json with file inputs) into its
 * scratch directory, never into the output or staging directories, which
 * hold only what becomes the realization.
 */
export function pausedBuild(
  node: Derivation,
  ctx: BuildContext<unknown>,
  context: Context,
  outPath: (rref: RRef) => string,
): PausedBuild {
  const inputs: BreakInput[] = Object.entries(context).map(([dref, rrefs]) => ({
    name: parseRef(dref).name,
    dref: dref as DRef,
    rrefs,
    paths: rrefs.map(outPath),
  }));
  const tmp = ctx.tmp;
  const configFile = path.join(tmp, 'config.json');
  const inputsFile = path.join(tmp, 'inputs.json');
  fs.writeFileSync(configFile, JSON.stringify(ctx.config, null, 2) + '\n');
  fs.writeFileSync(inputsFile, JSON.stringify(inputs, null, 2) + '\n');
  const env: Record<string, string> = {
    CAIRN_BREAK: '1',
    CAIRN_STAGE: node.name,
    CAIRN_DREF: node.dref,
    CAIRN_OUT: ctx.out,
    CAIRN_CONFIG: configFile,
    CAIRN_INPUTS: inputsFile,
    CAIRN_TMP: tmp,
  };
  if (ctx.outs.length > 1) {
    env.CAIRN_OUTS = ctx.outs.join('\n');
    ctx.outs.forEach((o, i) => (env[`CAIRN_OUT_${i}`] = o));
  }
  // One variable per input whose name is unique among the inputs (the first chosen realization's out/).
  const count = new Map<string, number>();
  for (const i of inputs) count.set(inputVariable(i.name), (count.get(inputVariable(i.name)) ?? 0) + 1);
  for (const i of inputs) if (count.get(inputVariable(i.name)) === 1) env[inputVariable(i.name)] = i.paths[0]!;
  if (Object.keys(ctx.files).length > 0) {
    env.CAIRN_FILES = path.join(tmp, 'files.json');
    fs.writeFileSync(env.CAIRN_FILES, JSON.stringify(ctx.files, null, 2) + '\n');
  }
  const promised = node.stage.outputs;
  return {
    name: node.name,
    dref: node.dref,
    out: ctx.out,
    outs: ctx.outs,
    promised,
    config: ctx.config,
    inputs,
    files: ctx.files,
    tmp,
    env,
    hint: breakHint(node, env, inputs, promised, ctx.outs.length),
    log: (line) => ctx.log(line),
  };
}

function breakHint(
  node: Derivation,
  env: Record<string, string>,
  inputs: readonly BreakInput[],
  promised: readonly string[],
  n: number,
): string {
  const lines = [`cairn: stopped before building ${node.name} (${node.dref})`];
  lines.push(
    n > 1
      ? `  write each of its ${n} outputs into one of $CAIRN_OUT_0 .. $CAIRN_OUT_${n - 1} ($CAIRN_OUTS, one a line)`
      : `  write its output into $CAIRN_OUT (the working directory): ${env.CAIRN_OUT}`,
  );
  if (promised.length > 0) lines.push(`  promised, in every output: ${promised.join(', ')}`);
  lines.push(`  config (inputs resolved to paths): $CAIRN_CONFIG = ${env.CAIRN_CONFIG}`);
  for (const i of inputs) {
    const v = inputVariable(i.name);
    lines.push(`  input ${i.name}: ${env[v] === undefined ? i.paths.join(' ') : `$${v} = ${i.paths.join(' ')}`}`);
  }
  if (env.CAIRN_FILES) lines.push(`  file inputs: $CAIRN_FILES = ${env.CAIRN_FILES}`);
  lines.push('  exit 0 (or end the input) to store what you wrote and go on; exit 1 to cancel and store nothing');
  return lines.join('\n');
}
