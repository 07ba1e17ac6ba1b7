/**
 * `cairn exp show|diff` and `cairn graph`: looking at results. Wiring only;
 * what they compute is in src/stages/inspect/.
 */
import * as fs from 'node:fs';
import { CairnError } from '../../src/errors.js';
import { instantiate } from '../../src/stages/instantiate.js';
import { loadStageFile } from '../../src/stages/load.js';
import { expDiff, formatExpDiff } from '../../src/stages/inspect/diff.js';
import { formatExpCsv, formatExpTable } from '../../src/stages/inspect/exp-format.js';
import { experimentTable } from '../../src/stages/inspect/experiments.js';
import { closureGraph, whyGraph } from '../../src/stages/inspect/graph.js';
import { toDot, toMermaid, toTree } from '../../src/stages/inspect/graph-format.js';
import { renderSvg } from '../../src/stages/inspect/graphviz.js';
import type { InspectTargets } from '../../src/stages/inspect/inspection.js';
import { isRef } from '../../src/store/refs.js';
import { out, parseCount, type CliContext } from '../context.js';

/** A stage file (instantiated, nothing built) or DRefs/RRefs: a word that names an existing file is a file. */
async function targetsOf(words: readonly string[], stages: readonly string[]): Promise<InspectTargets> {
  const files = words.filter((w) => !isRef(w) || fs.existsSync(w));
  if (files.length === 0) {
    if (stages.length > 0) throw new CairnError('E_USAGE', '--stage selects stages of a stage file, not of refs');
    return words;
  }
  if (words.length > 1) {
    throw new CairnError('E_USAGE', `give one stage file, or DRefs and RRefs (not both): ${words.join(' ')}`);
  }
  return instantiate((await loadStageFile(files[0]!, stages)).targets);
}

/** The terminal's width when stdout is one (COLUMNS wins, as for ls); none when piped. */
function terminalWidth(flag: number | undefined): number | undefined {
  if (flag !== undefined) return flag;
  if (!process.stdout.isTTY) return undefined;
  const env = Number(process.env.COLUMNS);
  return Number.isInteger(env) && env > 0 ? env : process.stdout.columns || 80;
}

interface ShowOpts {
  stage?: string[];
  json?: boolean;
  csv?: boolean;
  all?: boolean;
  targets?: boolean;
  sort?: string;
  desc?: boolean;
  width?: number;
}

interface GraphOpts {
  stage?: string[];
  format?: string;
  why?: string;
  all?: boolean;
  output?: string;
}

const FORMATS = ['tree', 'dot', 'svg', 'mermaid', 'json'];

export function registerInspect(ctx: CliContext): void {
  const exp = ctx.program.command('exp').description('experiments: compare the realizations of stages');

  exp
    .command('show')
    .description(
      'one row per realization of each stage of the targets and their closure: differing params, metrics, ' +
        'the chosen ones (*), age and build time',
    )
    .argument('<target...>', 'a stage file (instantiated, nothing built), or DRefs and RRefs')
    .option('-s, --stage <name...>', 'export or stage name of the stage file (default: the default export)')
    .option('--all', 'also realizations built from inputs other than those chosen now')
    .option('--targets', "only the targets' stages, not their closure")
    .option('--sort <key>', "order each stage's rows by this metric or param (default: oldest first)")
    .option('--desc', 'with --sort: largest first')
    .option('--json', 'print the table as JSON')
    .option('--csv', 'print the table as CSV')
    .option('--width <n>', 'fit the table to N columns (default: the terminal width; no limit when piped)', (v) =>
      parseCount(v, '--width'),
    )
    .action(async (words: string[], o: ShowOpts) => {
      if (o.json && o.csv) throw new CairnError('E_USAGE', 'choose one of --json and --csv');
      const targets = await targetsOf(words, o.stage ?? []);
      if (o.desc && o.sort === undefined) throw new CairnError('E_USAGE', '--desc needs --sort KEY');
      const table = await experimentTable(ctx.openStore(), targets, {
        all: o.all,
        targetsOnly: o.targets,
        sortBy: o.sort,
        descending: o.desc,
      });
      if (o.json) out(JSON.stringify(table, null, 2));
      else if (o.csv) process.stdout.write(formatExpCsv(table));
      else process.stdout.write(formatExpTable(table, { now: Date.now(), width: terminalWidth(o.width) }));
    });

  exp
    .command('diff')
    .description('the config and metrics differences between two realizations or derivations (a DRef: its newest)')
    .argument('<a>', 'RRef or DRef')
    .argument('<b>', 'RRef or DRef')
    .option('--json', 'print the difference as JSON')
    .action(async (a: string, b: string, o: { json?: boolean }) => {
      const d = await expDiff(ctx.openStore(), a, b);
      if (o.json) out(JSON.stringify(d, null, 2));
      else process.stdout.write(formatExpDiff(d));
    });

  ctx.program
    .command('graph')
    .description('the closure graph of a stage file or refs: derivations and the realizations in use (* chosen)')
    .argument('<target...>', 'a stage file (instantiated, nothing built), or DRefs and RRefs')
    .option('-s, --stage <name...>', 'export or stage name of the stage file (default: the default export)')
    .option('--format <f>', `output format: ${FORMATS.join(', ')} (default: a text tree)`)
    .option('--why <ref>', 'only the paths from the targets to this DRef or RRef')
    .option('--all', 'also the realizations not chosen (built from the chosen inputs)')
    .option('-o, --output <file>', 'write to FILE instead of stdout')
    .action(async (words: string[], o: GraphOpts) => {
      const format = o.format ?? 'tree';
      if (!FORMATS.includes(format)) {
        throw new CairnError('E_USAGE', `--format must be one of ${FORMATS.join(', ')}, not ${JSON.stringify(format)}`);
      }
      const targets = await targetsOf(words, o.stage ?? []);
      let g = await closureGraph(ctx.openStore(), targets, { all: o.all });
      if (o.why !== undefined) g = whyGraph(g, o.why);
      const text =
        format === 'dot'
          ? toDot(g)
          : format === 'mermaid'
            ? toMermaid(g)
            : format === 'svg'
              ? await renderSvg(toDot(g))
              : format === 'json'
                ? JSON.stringify(g, null, 2) + '\n'
                : toTree(g);
      if (o.output !== undefined) fs.writeFileSync(o.output, text);
      else process.stdout.write(text);
    });
}
