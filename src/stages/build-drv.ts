/**
 * Builds one derivation from store objects alone (`cairn build-drv`): the
 * derivation, its code object and its inputs' realizations. No checkout and
 * no stage file: the code object is loaded again, instantiated, and the
 * stage whose DRef is the one asked for is built with exactly the given
 * input realizations. This is what a remote builder (ssh, a Slurm job) runs.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, isCairnError } from '../errors.js';
import { parseCodeObject, type CodeObject } from '../store/code-object.js';
import { candidateOf, type Candidate, type Context } from '../store/interface.js';
import { parseRef, type DRef, type RRef } from '../store/refs.js';
import { contextHash, type LocalStore } from '../store/store.js';
import { buildAndAdd } from './build.js';
import { inputPaths, makeDep, resolveConfig } from './build-context.js';
import { guardRealize } from './build-processes.js';
import { loadCodeObject, notPortable } from './code-load.js';
import { instantiate, preloadFileInputs, type Derivation, type Graph } from './instantiate.js';
import { runMatcher } from './matchers.js';
import { RecordedInputHasher, recordedInputs } from './inputs/recorded-inputs.js';
import { fileInputsDeclared, type Stage } from './stage.js';

export interface BuildDerivationOptions {
  /**
   * The input realizations to build from: each must be a realization (in
   * the store) of one of the derivation's dependencies. A dependency not
   * named here is taken from the store if it has exactly one realization.
   */
  inputs?: readonly RRef[];
  /** Receives the build's log lines. */
  onLog?: (line: string) => void;
  /**
   * Build even when realizations from these inputs satisfy the matcher
   * (what `realize --force` asks of a remote builder): as often as the
   * matcher's minimum needs, at least once; the matcher then chooses among
   * old and new ones, as in a forced realize.
   */
  force?: boolean;
}

export interface BuildDerivationResult {
  drv: DRef;
  /** What the stage's matcher chose among the realizations built from these inputs. */
  realizations: RRef[];
  /** False when realizations from exactly these inputs satisfied the matcher already: nothing was built. */
  built: boolean;
  host: string;
  buildMs: number;
  /** The code object it was built from. */
  code: string;
}

/**
 * `cairn build-drv DREF --from ...`: takes in a derivation export (`take`)
 * and builds `dref` from it. The derivation and the derivations of the
 * given inputs are temp roots from before the import until the build ends:
 * a derivation just taken in has no realization and no root, so a gc
 * between the import and buildDerivation's own roots would collect it.
 */
export async function importAndBuild(
  store: LocalStore,
  dref: DRef,
  take: () => Promise<unknown>,
  opts: BuildDerivationOptions = {},
): Promise<BuildDerivationResult> {
  const drefs = new Set<DRef>([dref]);
  for (const r of opts.inputs ?? []) {
    try {
      const p = parseRef(r);
      if (p.kind === 'rz') drefs.add(p.dref);
    } catch {
      // Not a ref: chooseInputs refuses it with its own error.
    }
  }
  const held = await store.addTempRoots([...drefs], 'build-drv-import');
  try {
    await take();
    await pauseAfterImport();
    return await buildDerivation(store, dref, opts);
  } finally {
    await held.release();
  }
}

/** The environment variable that pauses `build-drv --from` after its import (a test runs gc there). */
export const PAUSE_AFTER_IMPORT_ENV = 'CAIRN_TEST_PAUSE_AFTER_DRV_IMPORT';

/** Fault injection for tests: with $CAIRN_TEST_PAUSE_AFTER_DRV_IMPORT=F, writes F.started and waits for F.open. */
async function pauseAfterImport(): Promise<void> {
  const file = process.env[PAUSE_AFTER_IMPORT_ENV];
  if (!file) return;
  fs.writeFileSync(`${file}.started`, '');
  while (!fs.existsSync(`${file}.open`)) await sleep(50);
}

/** The derivation's context: its dependencies' realizations, from `inputs` or the store. */
export async function chooseInputs(
  store: LocalStore,
  dref: DRef,
  deps: readonly DRef[],
  inputs: readonly RRef[],
): Promise<Context> {
  const given = new Map<DRef, RRef[]>();
  const depSet = new Set(deps);
  for (const r of inputs) {
    const p = parseRef(r);
    if (p.kind !== 'rz')
      throw new CairnError('E_BUILD_INPUT', `input ${r} is not a realization (an RRef)`, { dref, input: r });
    if (!depSet.has(p.dref)) {
      throw new CairnError(
        'E_BUILD_INPUT',
        `input ${r} is a realization of ${p.dref}, which ${dref} does not depend on ` +
          `(its dependencies: ${deps.join(', ') || 'none'})`,
        { dref, input: r, deps },
      );
    }
    if (!(await store.info(r)))
      throw new CairnError('E_BUILD_INPUT', `input ${r} is not in the store ${store.root}`, { dref, input: r });
    const list = given.get(p.dref) ?? [];
    if (!list.includes(r)) list.push(r);
    given.set(p.dref, list);
  }
  const context: Context = {};
  for (const dep of deps) {
    let chosen = given.get(dep);
    if (!chosen) {
      const have = await store.realizationsOf(dep);
      if (have.length === 0) {
        throw new CairnError(
          'E_BUILD_INPUT',
          `${dref} depends on ${dep}, which has no realization in the store ${store.root}: ` +
            'send one and name it as an input',
          { dref, missing: dep },
        );
      }
      if (have.length > 1) {
        throw new CairnError(
          'E_BUILD_INPUT',
          `${dref} depends on ${dep}, which has ${have.length} realizations in the store: name the one to build from ` +
            `(${have.map((h) => h.rref).join(', ')})`,
          { dref, ambiguous: dep, candidates: have.map((h) => h.rref) },
        );
      }
      chosen = [have[0]!.rref];
    }
    context[dep] = [...chosen].sort();
  }
  return context;
}

/**
 * The derivation with DRef `dref` among the stages a code object defines,
 * instantiated here. File inputs are never read here: their digests are the
 * ones the derivations in the store record (recorded-inputs.ts).
 */
function findDerivation(
  stages: readonly Stage[],
  dref: DRef,
  code: string,
  entry: string,
  inputs: RecordedInputHasher,
): [Derivation, Graph] {
  const graph = instantiate(stages, { inputs });
  const node = graph.nodes.get(dref);
  if (!node) {
    const sameName = graph.order.filter((d) => graph.nodes.get(d)!.name === parseRef(dref).name);
    // Another stage of the file with an unrecorded input is expected (it is not being built): only the inputs
    // of the same-named stage's closure can explain its other DRef.
    const unrecorded = unrecordedIn(graph, sameName, inputs.unrecorded);
    throw new CairnError(
      'E_CODE_MISMATCH',
      `code object ${code} (stage file ${entry}) does not define ${dref}` +
        (sameName.length > 0 ? `: its stage of that name instantiates here to ${sameName.join(', ')}` : '') +
        (unrecorded.length > 0
          ? ` (file inputs ${unrecorded.join(', ')} are recorded by no derivation of its closure in this store: ` +
            'send the realizations of its dependencies first)'
          : ' (does top-level code read the environment, the clock or files that differ on this host?)'),
      { dref, code, found: sameName, unrecorded },
    );
  }
  return [node, graph];
}

/** The unrecorded file inputs declared in the closure of `roots` in `graph`, sorted. */
function unrecordedIn(graph: Graph, roots: readonly DRef[], unrecorded: ReadonlySet<string>): string[] {
  const found = new Set<string>();
  const seen = new Set<DRef>();
  const todo = [...roots];
  for (let d = todo.pop(); d !== undefined; d = todo.pop()) {
    if (seen.has(d)) continue;
    seen.add(d);
    const n = graph.nodes.get(d);
    if (!n) continue;
    for (const f of n.files) if (unrecorded.has(f.key)) found.add(f.key);
    if (n.imports && unrecorded.has(n.imports.key)) found.add(n.imports.key);
    todo.push(...n.deps);
  }
  return [...found].sort();
}

/**
 * Builds `dref` in `store` from its code object, with exactly the given
 * input realizations (see chooseInputs), and returns what its matcher
 * chose. Realizations already built from the same inputs are reused when
 * they satisfy the matcher, as realize would.
 */
export async function buildDerivation(
  store: LocalStore,
  dref: DRef,
  opts: BuildDerivationOptions = {},
): Promise<BuildDerivationResult> {
  const t0 = Date.now();
  const p = parseRef(dref);
  if (p.kind !== 'drv') throw new CairnError('E_BAD_REF', `${dref} is not a DRef`, { ref: dref });
  const drvJson = await store.derivation(dref);
  if (drvJson === undefined)
    throw new CairnError('E_NO_SUCH_REF', `derivation ${dref} is not in the store ${store.root}`, { ref: dref });
  const code = await store.derivationCode(dref);
  if (code === undefined) {
    throw new CairnError(
      'E_NO_CODE',
      `derivation ${dref} has no code object in the store ${store.root}: ` +
        'realize its stage file with self-contained code, then send the derivation with its code',
      { dref },
    );
  }
  const text = await store.readCode(code);
  if (text === undefined)
    throw new CairnError('E_NO_CODE', `the code object ${code} of ${dref} is missing from the store`, { dref, code });
  const obj = parseCodeObject(text, code);
  const stages = [...(await loadCodeObject(obj, code)).values()];
  await preloadFileInputs();
  // Only code that declares file inputs needs the closure's records (a walk of its derivations).
  const recorded = new RecordedInputHasher(
    fileInputsDeclared() ? await recordedInputs(dref, (d) => store.derivation(d)) : [],
  );
  let node: Derivation;
  let graph: Graph;
  try {
    [node, graph] = findDerivation(stages, dref, code, obj.entry, recorded);
  } catch (e) {
    throw (isCairnError(e) ? undefined : notPortable(obj, e)) ?? e;
  }
  if (node.drvJson !== drvJson) {
    throw new CairnError('E_CODE_MISMATCH', `derivation ${dref} in the store differs from the one its code defines`, {
      dref,
      code,
    });
  }
  if (node.imports) {
    throw new CairnError(
      'E_CODE_NOT_PORTABLE',
      `${dref} imports the file ${node.imports.key} of the checkout: it travels as its realization, never as code`,
      { dref, path: node.imports.key },
    );
  }
  // Kept from gc while building: the derivation (which may have no realization yet) and its inputs.
  const roots = await store.addTempRoots([dref, ...node.deps], 'build-drv');
  try {
    return await buildWith(store, node, graph, code, obj, opts, t0);
  } finally {
    await roots.release();
  }
}

async function buildWith(
  store: LocalStore,
  node: Derivation,
  graph: Graph,
  code: string,
  obj: CodeObject,
  opts: BuildDerivationOptions,
  t0: number,
): Promise<BuildDerivationResult> {
  const { dref } = node;
  const context = await chooseInputs(store, dref, node.deps, opts.inputs ?? []);
  const ctx = contextHash(context);
  const m = node.stage.matcher;
  const unguard = guardRealize(store.tempArea());
  const dirs = store.buildDirs();
  try {
    return await store.withLock(`build:${dref}:${ctx}`, `building ${node.name}`, async (held) => {
      const have = await store.candidates(dref, ctx);
      const cached = opts.force ? undefined : await runMatcher(m, have);
      if (cached) return result(cached, false);
      const runs = Math.max(1, Math.ceil((m.min - (opts.force ? 0 : have.length)) / node.stage.n));
      const fresh: Candidate[] = [];
      const durable: Promise<unknown>[] = [];
      try {
        for (let i = 0; i < runs; i++) {
          const config = resolveConfig(node.stage.config, (st) => {
            const dep = graph.drefOf.get(st as Stage)!;
            return makeDep(store, dep, context[dep]!);
          });
          const files = inputPaths(node.files, (d) => store.outPath(context[d]![0]!));
          const run = await buildAndAdd({
            store,
            node,
            context,
            config,
            files,
            dirs,
            // No checkout here: this process's directory is nobody's (a login's, a job's).
            programsInTmp: true,
            release: i === runs - 1 ? held : undefined,
            onLog: opts.onLog && ((line) => opts.onLog!(line)),
          }).catch((e: unknown) => {
            throw notPortable(obj, (e as { cause?: unknown }).cause) ?? e;
          });
          durable.push(run.durable);
          for (const a of run.added)
            if (!fresh.some((f) => f.rref === a.meta.rref)) fresh.push(candidateOf(store, a.meta));
        }
      } finally {
        await Promise.allSettled(durable);
      }
      for (const d of durable) await d;
      const known = new Set(have.map((c) => c.rref));
      const all = [...have, ...fresh.filter((f) => !known.has(f.rref))].sort(
        (a, b) => a.created - b.created || (a.rref < b.rref ? -1 : 1),
      );
      const sel = await runMatcher(m, all);
      if (!sel) {
        throw new CairnError(
          'E_MATCH_UNSATISFIED',
          `matcher ${m.name} of stage ${node.name} (${dref}) chose nothing after ${runs} build(s)`,
          { dref, matcher: m.name, realizations: all.length },
        );
      }
      return result(sel, true);
    });
  } finally {
    dirs.close();
    unguard();
  }

  function result(realizations: RRef[], built: boolean): BuildDerivationResult {
    return { drv: dref, realizations, built, host: os.hostname(), buildMs: Date.now() - t0, code };
  }
}
