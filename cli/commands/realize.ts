/** `cairn realize` and `cairn instantiate`: the commands that read a stage file. */
import { inputHashStats, instantiate } from '../../src/stages/instantiate.js';
import { loadStageFile } from '../../src/stages/load.js';
import { realize } from '../../src/stages/realize.js';
import { out, parseCount, type CliContext } from '../context.js';
import { progressReporter } from '../progress.js';

interface RealizeOpts {
  stage?: string[];
  jobs?: number;
  force?: true | string[];
  dryRun?: boolean;
  keepFailed?: boolean;
  verbose?: boolean;
  quiet?: boolean;
  json?: boolean;
  outLink?: string;
}

export function registerRealize(ctx: CliContext): void {
  ctx.program
    .command('realize')
    .description('realize the stages of FILE and print the target RRefs as the last line of stdout')
    .argument('<file>', 'stage file (.ts or .js), or a pipeline (cairn.yaml, dvc.yaml)')
    .option('-s, --stage <name...>', 'export or stage name to realize (default: the default export)')
    .option('-j, --jobs <n>', 'builds at once (default: cores)', (v) => parseCount(v, '-j'))
    .option('-f, --force [name...]', 'rebuild these stages (all stages when no name is given)')
    .option('-n, --dry-run', 'print what would be built, build nothing')
    .option('--keep-failed', 'keep the build directory of a failed build under STORE/failed/')
    .option(
      '-v, --verbose',
      'show build logs live on stderr, with what programs run through exec print, each line prefixed by its stage',
    )
    .option('-q, --quiet', 'no progress output')
    .option(
      '-o, --out-link <path>',
      'make PATH a symlink to the target output and a gc root (more targets: PATH-2, PATH-3, ...)',
    )
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o: RealizeOpts) => {
      // A server worker runs many commands: count this one's hashing only.
      const hashing = inputHashStats();
      const loaded = await loadStageFile(file, o.stage ?? []);
      const graph = instantiate(loaded.targets);
      const now = inputHashStats();
      const hashed = {
        files: now.files - hashing.files,
        hashedFiles: now.hashedFiles - hashing.hashedFiles,
        hashedBytes: now.hashedBytes - hashing.hashedBytes,
        cacheHits: now.cacheHits - hashing.cacheHits,
      };
      const store = ctx.openStore();
      // Taken now, as the store was opened: a build may change the working directory.
      const storeRoot = ctx.storeRoot();
      const tty = process.stderr.isTTY === true;
      const quiet = !!o.quiet || (!!o.json && !tty);
      const progress = progressReporter(graph.order.length, { tty, verbose: !!o.verbose, quiet });
      const t0 = performance.now();
      let result;
      try {
        result = await realize(graph, {
          store,
          jobs: o.jobs,
          force: o.force,
          dryRun: o.dryRun,
          keepFailed: o.keepFailed,
          outLink: o.outLink,
          events: progress,
        });
      } finally {
        progress.finish();
      }
      const ms = performance.now() - t0;
      if (o.json) {
        out(
          JSON.stringify(
            {
              store: storeRoot,
              dryRun: !!o.dryRun,
              builds: result.builds,
              ms: Math.round(ms),
              targets: result.targets,
              plan: result.plan,
              ...(result.inputs.length > 0 ? { inputs: result.inputs, hashed } : {}),
            },
            null,
            2,
          ),
        );
        return;
      }
      if (o.dryRun) {
        for (const p of result.inputs) out(`${p.action === 'cached' ? 'cached' : 'import'} ${p.dref}`);
        for (const p of result.plan) out(`${p.action.padEnd(6)} ${p.dref}`);
        const n = result.plan.filter((p) => p.action !== 'cached').length;
        const imports = result.inputs.filter((p) => p.action !== 'cached').length;
        const importing = imports > 0 ? `, ${imports} file input(s) to import` : '';
        out(`${n} to build, ${result.plan.length - n} cached${importing}`);
        return;
      }
      if (!o.quiet) {
        const cached = result.plan.filter((p) => p.action === 'cached').length;
        const imported = result.inputs.filter((p) => p.action !== 'cached').length;
        const imports = imported > 0 ? `, ${imported} file input(s) imported` : '';
        process.stderr.write(
          `realized ${result.plan.length} stage(s) in ${(ms / 1000).toFixed(2)}s: ` +
            `${result.plan.length - cached} built (${result.builds} build run(s)), ${cached} cached${imports}\n`,
        );
      }
      out(result.targets.flatMap((t) => t.rrefs).join(' '));
    });

  ctx.program
    .command('instantiate')
    .description('print the DRefs of the stages of FILE (dependencies first), building nothing')
    .argument('<file>')
    .option('-s, --stage <name...>', 'export or stage name')
    .option('--json', 'print derivations as JSON, with their canonical configs')
    .action(async (file: string, o: { stage?: string[]; json?: boolean }) => {
      const graph = instantiate((await loadStageFile(file, o.stage ?? [])).targets);
      if (o.json) {
        out(
          JSON.stringify(
            {
              targets: graph.targets,
              derivations: graph.order.map((d) => {
                const n = graph.nodes.get(d)!;
                return { dref: d, name: n.name, deps: n.deps, drv: JSON.parse(n.drvJson) as unknown };
              }),
            },
            null,
            2,
          ),
        );
      } else {
        for (const d of graph.order) out(d);
      }
    });
}
