/** `cairn build-drv`: builds one derivation from store objects alone (what a remote builder runs). */
import { buildDerivation } from '../../src/stages/build-drv.js';
import { CairnError } from '../../src/errors.js';
import { parseRef, type DRef, type RRef } from '../../src/store/refs.js';
import { out, type CliContext } from '../context.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

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
    .option('-v, --verbose', 'show the build log live on stderr')
    .option('--json', 'print { drv, realizations, built, host, buildMs, code } as JSON')
    .action(async (dref: string, o: { input: string[]; verbose?: boolean; json?: boolean }) => {
      let p;
      try {
        p = parseRef(dref);
      } catch (e) {
        throw new CairnError('E_USAGE', `build-drv needs a DRef, not ${JSON.stringify(dref)}`, {}, { cause: e });
      }
      if (p.kind !== 'drv') throw new CairnError('E_USAGE', `build-drv needs a DRef, not the RRef ${dref}`);
      const store = ctx.openStore();
      const result = await buildDerivation(store, dref as DRef, {
        inputs: o.input as RRef[],
        onLog: o.verbose ? (line) => process.stderr.write(`${p.name}> ${line}\n`) : undefined,
      });
      if (o.json) out(JSON.stringify(result));
      else out(result.realizations.join(' '));
    });
}
