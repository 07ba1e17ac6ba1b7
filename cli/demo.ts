import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { instantiate } from '../src/stages/instantiate.js';
import { loadStageFile } from '../src/stages/load.js';
import { realize } from '../src/stages/realize.js';
import { readRealizationFile } from '../src/store/realization-files.js';
import { realizationRecords } from '../src/store/ref-queries.js';
import { LocalStore } from '../src/store/store.js';

/**
 * The main job: realize the ML example, then realize it again to show that
 * the second run is fully cached. Each run is timed; the report is printed.
 */
export async function runDemo(storeRoot: string, runs: number): Promise<void> {
  const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const file = path.join(pkg, 'examples', 'ml', 'pipeline.ts');
  const say = (s: string): void => {
    process.stdout.write(s + '\n');
  };
  say(`Cairn demo: ${path.relative(process.cwd(), file) || file}`);
  say(`store: ${storeRoot}`);
  const { targets } = await loadStageFile(file);
  const graph = instantiate(targets);
  const store = LocalStore.open(storeRoot);
  try {
    for (let i = 1; i <= runs; i++) {
      const t0 = performance.now();
      const r = await realize(graph, { store });
      const ms = performance.now() - t0;
      say('');
      say(`run ${i}: ${ms.toFixed(1)} ms, ${r.builds} build run(s)`);
      for (const p of r.plan) say(`  ${p.action.padEnd(6)} ${p.name.padEnd(8)} -> ${p.rrefs.join(', ')}`);
      if (i === 1) {
        const trainDref = r.plan.find((p) => p.name === 'train')!.dref;
        const all = realizationRecords(store, trainDref);
        say(
          `  train has ${all.length} realization(s) in the store; best() chose ` +
            `${r.plan.find((p) => p.name === 'train')!.rrefs[0]}`,
        );
        say('');
        const report = await readRealizationFile(store, r.targets[0]!.rrefs[0]!, 'report.md');
        if (report === null) throw new Error('the demo pipeline wrote no report.md');
        say(report.toString('utf8').trimEnd());
      }
    }
  } finally {
    store.close();
  }
  say('');
  say('Try: cairn lsref <rref> | cairn catref <rref> report.md | cairn log <rref> | cairn du');
}
