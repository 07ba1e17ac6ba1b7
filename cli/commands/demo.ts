/** `cairn demo`: the ML-style example pipeline, built and then cached. */
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import type { CliContext } from '../context.js';

// require(), not import: see cli/program.ts.
const { Option } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

export function registerDemo(ctx: CliContext): void {
  ctx.program
    .command('demo')
    .description('run the ML-style demo pipeline twice on the store: built, then fully cached')
    .addOption(new Option('--runs <n>', 'how many times to realize').default('2'))
    .action(async (o: { runs: string }) => {
      const { runDemo } = await import('../demo.js');
      await runDemo(ctx.storeArg(), Number(o.runs));
    });
}
