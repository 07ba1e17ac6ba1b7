/** `cairn build-drv`: builds one derivation from store objects alone (what a remote builder runs). */
import { buildDerivation } from '../../src/stages/build-drv.js';
import { CairnError } from '../../src/errors.js';
import { parseRef, type DRef, type RRef } from '../../src/store/refs.js';
import { collect, out, type CliContext } from '../context.js';
import { exportDerivationsTo, importDerivations, importDerivationsFrom } from '../../src/store/drv-export.js';
import type { LocalStore } from '../../src/store/store.js';

/** Takes in a derivation export from a file, or from stdin for `-`. */
const importFrom = (store: LocalStore, file: string): ReturnType<typeof importDerivations> =>
  file === '-' ? importDerivationsFrom(store, process.stdin) : importDerivations(store, file);

interface BuildDrvFlags {
  input: string[];
  from?: string;
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
    .option('--force', 'build again even when realizations from these inputs satisfy the matcher')
    .option('-v, --verbose', 'show the build log live on stderr')
    .option('--json', 'print { drv, realizations, built, host, buildMs, code } as JSON')
    .action(async (dref: string, o: BuildDrvFlags) => {
      let p;
      try {
        p = parseRef(dref);
      } catch (e) {
        throw new CairnError('E_USAGE', `build-drv needs a DRef, not ${JSON.stringify(dref)}`, {}, { cause: e });
      }
      if (p.kind !== 'drv') throw new CairnError('E_USAGE', `build-drv needs a DRef, not the RRef ${dref}`);
      const store = ctx.openStore();
      if (o.from !== undefined) await importFrom(store, o.from);
      const result = await buildDerivation(store, dref as DRef, {
        inputs: o.input as RRef[],
        force: o.force === true,
        onLog: o.verbose ? (line) => process.stderr.write(`${p.name}> ${line}\n`) : undefined,
      });
      if (o.json) out(JSON.stringify(result));
      else out(result.realizations.join(' '));
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
