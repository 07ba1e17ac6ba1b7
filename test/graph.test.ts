/**
 * `cairn graph` (issue 20): the closure graph of derivations and the
 * realizations in use, chosen ones marked, as a text tree, DOT, Mermaid and
 * SVG drawn by Graphviz's real `dot`; `--why` keeps the paths to one ref.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Graph } from '../src/stages/inspect/graph.js';
import { cairn, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-graph-cache');

const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

describe('graph of the ML demo', () => {
  const t = tempDir('cairn-graph-ml');
  const store = path.join(t.dir, 'store');
  let report = '';
  before(() => {
    report = lastLine(ok(cairn(store, ['realize', mlDemo, '-q'])).stdout);
  });
  after(() => t.cleanup());

  it('has the three stages, their dependencies and the chosen realizations', () => {
    const g = JSON.parse(ok(cairn(store, ['graph', mlDemo, '--format', 'json'])).stdout) as Graph;
    const drvs = g.nodes.filter((n) => n.kind === 'drv');
    assert.deepEqual(drvs.map((n) => n.name).sort(), ['dataset', 'report', 'train']);
    const id = (name: string): string => drvs.find((n) => n.name === name)!.id;
    const deps = g.edges.filter((e) => e.kind === 'dep').map((e) => `${e.from} ${e.to}`);
    assert.deepEqual(
      deps.sort(),
      [`${id('report')} ${id('dataset')}`, `${id('report')} ${id('train')}`, `${id('train')} ${id('dataset')}`].sort(),
    );
    const rz = g.nodes.filter((n) => n.kind === 'rz');
    assert.equal(rz.length, 3, 'one chosen realization per stage');
    assert.ok(rz.every((n) => n.chosen === true));
    assert.ok(rz.some((n) => n.id === report));
    assert.deepEqual(g.roots, [id('report')]);
  });
});
