/** `cairn realize` and `cairn instantiate`: the commands that read a stage file. */
import { inputHashStats, instantiate } from '../../src/stages/instantiate.js';
import { loadStageFile } from '../../src/stages/load.js';
import { realize } from '../../src/stages/realize.js';
import { storeStageCode } from '../../src/stages/self-contained.js';
import { breakShell } from '../../src/stages/break-shell.js';
import { collect, out, parseCount, resultsOnStdout, type CliContext } from '../context.js';
import { progressReporter } from '../progress.js';
import { pushAfterRealize } from '../../src/stages/substitute.js';
import {
  cachePushTarget,
  cacheSubstituter,
  cacheDataPlane,
  trustingBuilderKey,
  substituterUrls,
  type RealizeCacheFlags,
} from '../realize-caches.js';
import { makeBuilderPool } from '../../src/stages/builders/make-pool.js';
import { explainLines } from '../../src/stages/builders/explain.js';
import { readStoreConfig } from '../../src/store/config.js';

interface RealizeOpts extends RealizeCacheFlags {
  stage?: string[];
  jobs?: number;
  force?: true | string[];
  dryRun?: boolean;
  keepFailed?: boolean;
  verbose?: boolean;
  quiet?: boolean;
  json?: boolean;
  outLink?: string;
  builders?: string[];
  buildersSsh?: string;
  remoteCairn?: string;
  explain?: boolean;
  selfContained?: boolean;
  break?: string;
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
    .option(
      '--break <stage>',
      'stop before building STAGE (name or DRef; built even if realized) and open a shell ($SHELL) in its output ' +
        'directory: exit 0 stores what you wrote and goes on, exit 1 cancels',
    )
    .option('--json', 'print the result as JSON')
    .option(
      '--self-contained',
      "store the stage file's code (bundled) with its derivations, so `cairn build-drv` can build them elsewhere",
    )
    .option(
      '--substituter <url>',
      "ask this binary cache before building (repeatable; default: the store configuration's substituters)",
      collect,
      [],
    )
    .option('--no-substituters', 'ask no binary cache, not even the configured ones')
    .option('--trusted-key <key>', 'also trust cache entries signed by this public key (repeatable)', collect, [])
    .option('--push-to <url>', 'then upload the targets and their closures to this binary cache')
    .option('--key <file>', 'the secret key that signs what --push-to uploads (and what Slurm jobs push)')
    .option(
      '--builders <spec>',
      'build on: local, ssh://[user@]host[:port][/STORE][?maxJobs=N], slurm[:PARTITION] ' +
        "(repeatable; default: the store configuration's builders)",
      collect,
      [],
    )
    .option('--builders-ssh <cmd>', 'the ssh command for ssh builders (default: ssh -o BatchMode=yes)')
    .option('--remote-cairn <cmd>', 'the cairn command on ssh builders and Slurm nodes (default: cairn)')
    .option('--explain', 'say on stderr where each stage was built and why')
    .action(
      resultsOnStdout(async (file: string, o: RealizeOpts) => {
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
        // Opened before anything is built: a malformed URL fails now, an unreachable cache later as a warning.
        const access = { storeRoot, trustedKeys: o.trustedKey ?? [], key: o.key };
        const config = readStoreConfig(storeRoot);
        const builderSpecs = o.builders !== undefined && o.builders.length > 0 ? o.builders : config.builders;
        const remoteCairn = o.remoteCairn ?? config.remoteCairn;
        // With a cache and a key, ssh hosts exchange through the cache too; else over ssh (sync).
        const viaCache = substituterUrls(o, storeRoot).length > 0 && o.key !== undefined;
        const subAccess =
          viaCache && builderSpecs.some((s) => s !== 'local') ? await trustingBuilderKey(access) : access;
        const substituters = await Promise.all(
          substituterUrls(o, storeRoot).map((url) => cacheSubstituter(url, subAccess)),
        );
        const pushTarget = o.pushTo !== undefined && !o.dryRun ? await cachePushTarget(o.pushTo, access) : undefined;
        const builders = o.dryRun
          ? undefined
          : await makeBuilderPool(store, builderSpecs, {
              jobs: o.jobs ?? (await import('node:os')).availableParallelism(),
              ssh: { ssh: o.buildersSsh ?? config.buildersSsh, remoteCairn },
              slurm: { cairn: remoteCairn },
              cacheData: () => cacheDataPlane(substituterUrls(o, storeRoot), access),
              viaCache,
            });
        const tty = process.stderr.isTTY === true;
        const quiet = !!o.quiet || (!!o.json && !tty);
        const progress = progressReporter(graph.order.length, { tty, verbose: !!o.verbose, quiet });
        const t0 = performance.now();
        let code;
        let result;
        try {
          // Builders build from store objects alone: the code object goes with every derivation sent.
          code =
            (o.selfContained || builders) && !o.dryRun
              ? await storeStageCode(store, file, graph, { realizeFollows: true })
              : undefined;
          result = await realize(graph, {
            store,
            jobs: o.jobs,
            force: o.force,
            dryRun: o.dryRun,
            keepFailed: o.keepFailed,
            outLink: o.outLink,
            substituters,
            builders,
            events: progress,
            breakAt:
              o.break === undefined
                ? undefined
                : {
                    stage: o.break,
                    enter: breakShell({ say: progress.say, hold: progress.hold, stdoutToStderr: !!o.json }),
                  },
          });
        } finally {
          progress.finish();
          // A cache store may hold connections, a builder an ssh master; the run is over for them.
          for (const s of substituters) s.store.close();
          await builders?.close();
        }
        const ms = performance.now() - t0;
        if (o.explain) for (const line of explainLines(result)) process.stderr.write(line + '\n');
        // A failed push fails the command (the cache is not warm), after the targets are printed.
        const push = async (): Promise<string[] | undefined> =>
          pushTarget ? await pushAfterRealize(store, result, pushTarget) : undefined;
        if (o.json) {
          const pushed = await push();
          out(
            JSON.stringify(
              {
                store: storeRoot,
                dryRun: !!o.dryRun,
                builds: result.builds,
                ms: Math.round(ms),
                targets: result.targets,
                plan: result.plan,
                ...(result.warnings.length > 0 ? { warnings: result.warnings } : {}),
                ...(code ? { code: code.code } : {}),
                ...(pushed ? { pushed: { to: pushTarget!.name, roots: pushed } } : {}),
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
          const n = result.plan.filter((p) => p.action === 'build' || p.action === 'force').length;
          const subst = result.plan.filter((p) => p.action === 'substituted').length;
          const imports = result.inputs.filter((p) => p.action !== 'cached').length;
          const importing = imports > 0 ? `, ${imports} file input(s) to import` : '';
          const substituting = subst > 0 ? `, ${subst} to substitute` : '';
          out(`${n} to build${substituting}, ${result.plan.length - n - subst} cached${importing}`);
          return;
        }
        if (!o.quiet) {
          const cached = result.plan.filter((p) => p.action === 'cached').length;
          const subst = result.plan.filter((p) => p.action === 'substituted').length;
          const imported = result.inputs.filter((p) => p.action !== 'cached').length;
          const imports = imported > 0 ? `, ${imported} file input(s) imported` : '';
          const substituted = subst > 0 ? `, ${subst} substituted` : '';
          process.stderr.write(
            `realized ${result.plan.length} stage(s) in ${(ms / 1000).toFixed(2)}s: ` +
              `${result.plan.length - cached - subst} built (${result.builds} build run(s))${substituted}, ` +
              `${cached} cached${imports}\n`,
          );
        }
        out(result.targets.flatMap((t) => t.rrefs).join(' '));
        const pushed = await push();
        if (pushed && !o.quiet) {
          process.stderr.write(
            `pushed ${pushed.length} target realization(s) and their closures to ${pushTarget!.name}\n`,
          );
        }
      }),
    );

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
