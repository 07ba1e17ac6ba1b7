/** `cairn build-drv`: builds one derivation from store objects alone (what a remote builder runs). */
import { buildDerivation, importAndBuild } from '../../src/stages/build-drv.js';
import { CairnError } from '../../src/errors.js';
import { parseRef, type DRef, type RRef } from '../../src/store/refs.js';
import { collect, out, resultsOnStdout, type CliContext } from '../context.js';
import { exportDerivationsTo, importDerivations, importDerivationsFrom } from '../../src/store/drv-export.js';
import type { LocalStore } from '../../src/store/store.js';
import { serveBuilderWorker, takeStdout } from '../../src/stages/builders/worker-serve.js';
import { substituterUrls } from '../realize-caches.js';

/** Takes in a derivation export from a file, or from stdin for `-`. */
const importFrom = (store: LocalStore, file: string): ReturnType<typeof importDerivations> =>
  file === '-' ? importDerivationsFrom(store, process.stdin) : importDerivations(store, file);

interface BuildDrvFlags {
  input: string[];
  from?: string;
  substituter: string[];
  substituters?: boolean;
  trustedKey: string[];
  force?: boolean;
  verbose?: boolean;
  json?: boolean;
}

export function registerBuildDrv(ctx: CliContext): void {
  ctx.program
    .command('build-drv')
    .description(
      'build the derivation DREF from its code object and input realizations in the store (no stage file needed); ' +
        'print the chosen RRefs as the last line of stdout',
    )
    .argument('<dref>', 'the derivation to build')
    .option(
      '--input <rref>',
      'build from this realization of a dependency (repeatable; default: the only realization of each dependency)',
      collect,
      [],
    )
    .option('--from <file>', 'first take in the derivations exported to FILE by export-drv (- for stdin)')
    .option(
      '--substituter <url>',
      'fetch the derivation, its code object and missing inputs from this binary cache when the store lacks them ' +
        "(repeatable; default: the store configuration's substituters)",
      collect,
      [],
    )
    .option('--no-substituters', 'fetch from no binary cache, not even the configured ones')
    .option('--trusted-key <key>', 'also trust cache objects signed by this public key (repeatable)', collect, [])
    .option('--force', 'build again even when realizations from these inputs satisfy the matcher')
    .option('-v, --verbose', 'show the build log live on stderr')
    .option('--json', 'print { drv, realizations, built, host, buildMs, code } as JSON')
    .action(
      resultsOnStdout(async (dref: string, o: BuildDrvFlags) => {
        let p;
        try {
          p = parseRef(dref);
        } catch (e) {
          throw new CairnError('E_USAGE', `build-drv needs a DRef, not ${JSON.stringify(dref)}`, {}, { cause: e });
        }
        if (p.kind !== 'drv') throw new CairnError('E_USAGE', `build-drv needs a DRef, not the RRef ${dref}`);
        const store = ctx.openStore();
        const opts = {
          inputs: o.input as RRef[],
          force: o.force === true,
          onLog: o.verbose ? (line: string) => process.stderr.write(`${p.name}> ${line}\n`) : undefined,
        };
        const from = o.from;
        const urls = substituterUrls(o, store.root);
        // What is taken in (an export, a cache's copies) stays a temp root until the build ends.
        const take = async (): Promise<void> => {
          if (from !== undefined) await importFrom(store, from);
          if (urls.length === 0) return;
          const { fetchForBuild, trustedKeysOf } = await import('../../src/stages/build-drv-fetch.js');
          await fetchForBuild(store, urls, dref as DRef, o.input as RRef[], trustedKeysOf(store, o.trustedKey));
        };
        const result =
          from === undefined && urls.length === 0
            ? await buildDerivation(store, dref as DRef, opts)
            : await importAndBuild(store, dref as DRef, take, opts);
        if (o.json) out(JSON.stringify(result));
        else out(result.realizations.join(' '));
      }),
    );

  // Started by ssh builders over ssh (docs/builders.md), not by hand: hidden from --help.
  ctx.program
    .command('builder-worker', { hidden: true })
    .description('serve builds to a coordinating cairn on stdin/stdout (the framed builder worker protocol)')
    .action(async () => {
      const output = takeStdout();
      // Exit even if loaded stage code left timers behind: the coordinator is gone.
      process.exit(await serveBuilderWorker(ctx.openStore(), process.stdin, output));
    });

  ctx.program
    .command('export-drv')
    .description('write derivations and their code objects as a tar (to stdout, or FILE) for build-drv elsewhere')
    .argument('<dref...>')
    .option('-o, --output <file>', 'write to FILE instead of stdout')
    .action(async (drefs: string[], o: { output?: string }) => {
      const store = ctx.openStore();
      if (o.output === undefined) {
        await exportDerivationsTo(store, drefs as DRef[], process.stdout);
        return;
      }
      const { createWriteStream } = await import('node:fs');
      const file = createWriteStream(o.output, { flags: 'wx', mode: 0o644 });
      await exportDerivationsTo(store, drefs as DRef[], file);
      await new Promise<void>((resolve, reject) => file.end((e?: Error | null) => (e ? reject(e) : resolve())));
    });

  ctx.program
    .command('import-drv')
    .description('take in derivations and code objects written by export-drv (FILE, or - for stdin), all or nothing')
    .argument('<file>')
    .option('--json', 'print { derivations, code } as JSON')
    .action(async (file: string, o: { json?: boolean }) => {
      const report = await importFrom(ctx.openStore(), file);
      if (o.json) out(JSON.stringify(report));
      else out(report.derivations.join('\n'));
    });
}
