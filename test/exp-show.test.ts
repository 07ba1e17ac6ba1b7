/**
 * `cairn exp show` and `cairn exp diff` (issue 20): the experiment table of
 * a pipeline's realizations, with params, metrics, the matcher's choice,
 * age and build time; as text (fitted to a terminal), JSON and CSV.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ExpTable } from '../src/stages/inspect/experiments.js';
import { cairn, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-exp-cache');

const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

const stageOf = (t: ExpTable, name: string): ExpTable['stages'][number] => {
  const s = t.stages.find((x) => x.name === name);
  assert.ok(s, `no stage ${name} in ${t.stages.map((x) => x.name).join(', ')}`);
  return s;
};

describe('exp show on the ML demo', () => {
  const t = tempDir('cairn-exp-ml');
  const store = path.join(t.dir, 'store');
  let report = '';
  before(() => {
    report = lastLine(ok(cairn(store, ['realize', mlDemo, '-q'])).stdout);
  });
  after(() => t.cleanup());

  it('shows the three training realizations with their scores, the best one chosen', () => {
    const table = JSON.parse(ok(cairn(store, ['exp', 'show', mlDemo, '--json'])).stdout) as ExpTable;
    assert.deepEqual(
      table.stages.map((s) => s.name),
      ['dataset', 'train', 'report'],
    );
    const train = stageOf(table, 'train');
    assert.equal(train.rows.length, 3);
    assert.equal(train.scoreKey, 'score');
    assert.equal(train.metricKeys[0], 'score');
    assert.equal(train.chosenBy, 'best(1, score.txt)');
    for (const r of train.rows) {
      assert.equal(typeof r.metrics.score, 'number');
      assert.ok(r.buildMs >= 0 && r.createdAt > Date.now() - 3600_000 && r.createdAt <= Date.now());
    }
    const chosen = train.rows.filter((r) => r.chosen);
    assert.equal(chosen.length, 1);
    const best = Math.max(...train.rows.map((r) => r.metrics.score!));
    assert.equal(chosen[0]!.metrics.score, best);
    // The chosen one is what the report was built from.
    const meta = ok(cairn(store, ['catref', report, 'report.md'])).stdout;
    assert.match(meta, new RegExp(`Model realization: ${chosen[0]!.rref}`));
    assert.deepEqual(train.paramKeys, [], 'one config: no param tells the rows apart');
    assert.equal(stageOf(table, 'report').target, true);
  });
});
