/**
 * No import cycles among Cairn's modules (issue 15, item 5): the graph of
 * every .ts under src/ and cli/ (edges as test/import-graph.ts defines
 * them, type-only and dynamic imports included) has no cycle. A failure
 * prints each cycle. Run alone with `npm run check:cycles`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  cyclicComponents,
  describeCycles,
  importGraph,
  relativeSpecifiers,
  sourceFiles,
  type ImportGraph,
} from './import-graph.js';
import { repoRoot, tempDir } from './helpers.js';

describe('import graph', () => {
  it('counts static, type-only, re-exported, dynamic and typeof-import specifiers, and no packages', () => {
    const text = [
      "import * as fs from 'node:fs';",
      "import ts from 'typescript';",
      "import { a } from './a.js';",
      "import type { B } from '../b.js';",
      "import { type C } from './c.js';",
      "export { d } from './d.js';",
      "export * from './e.js';",
      "export type { F } from './f.js';",
      "type G = typeof import('./g.js');",
      "const h = () => import('./h.js');",
      'const i = (x: string) => import(x);',
      "import './side-effect.js';",
    ].join('\n');
    assert.deepEqual(relativeSpecifiers('x.ts', text), [
      './a.js',
      '../b.js',
      './c.js',
      './d.js',
      './e.js',
      './f.js',
      './g.js',
      './h.js',
      './side-effect.js',
    ]);
  });

  it('finds each cycle, a type-only one and one through a dynamic import included, and prints it', () => {
    const { dir, cleanup } = tempDir('cairn-cycles');
    try {
      const files: Record<string, string> = {
        'src/a.ts': "import { b } from './b.js';",
        'src/b.ts': "import type { A } from './a.js';",
        'src/c.ts': "export const load = () => import('./sub/d.js');",
        'src/sub/d.ts': "export * from '../e.js';",
        'src/e.ts': "import { load } from './c.js';",
        'src/leaf.ts': "import { b } from './b.js'; import x from 'node:fs';",
      };
      for (const [f, text] of Object.entries(files)) {
        fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
        fs.writeFileSync(path.join(dir, f), text);
      }
      const { graph, unresolved } = importGraph(dir, sourceFiles(dir, ['src']));
      assert.deepEqual(unresolved, []);
      assert.deepEqual(cyclicComponents(graph), [
        ['src/a.ts', 'src/b.ts'],
        ['src/c.ts', 'src/e.ts', 'src/sub/d.ts'],
      ]);
      assert.deepEqual(describeCycles(graph), [
        'src/a.ts -> src/b.ts -> src/a.ts',
        'src/c.ts -> src/sub/d.ts -> src/e.ts -> src/c.ts',
      ]);
    } finally {
      cleanup();
    }
  });

  it('reports a relative import of a file that does not exist', () => {
    const { dir, cleanup } = tempDir('cairn-cycles');
    try {
      fs.mkdirSync(path.join(dir, 'src'));
      fs.writeFileSync(path.join(dir, 'src', 'a.ts'), "import { x } from './missing.js';");
      assert.deepEqual(importGraph(dir, sourceFiles(dir, ['src'])).unresolved, ['src/a.ts: ./missing.js']);
    } finally {
      cleanup();
    }
  });
});

describe('Cairn has no import cycles', () => {
  const { graph, unresolved } = importGraph(repoRoot, sourceFiles(repoRoot, ['src', 'cli']));

  it('reads the real tree: every relative import resolves to a module under src/ or cli/', () => {
    assert.ok(graph.size > 50, `only ${graph.size} modules found under src/ and cli/`);
    assert.ok(graph.get('src/index.ts')!.includes('src/stages/stage.ts'));
    assert.deepEqual(unresolved, []);
  });

  it('src/ and cli/ import each other without a cycle', () => {
    const cycles = describeCycles(graph);
    const groups = cyclicComponents(graph).length;
    assert.deepEqual(cycles, [], `${groups} group(s) of modules import each other:\n  ${cycles.join('\n  ')}`);
  });

  it('drivers (src/backends) never import stages, services or the CLI', () => {
    const wrong = layerViolations(graph, 'src/backends/', ['src/stages/', 'src/services/', 'cli/']);
    assert.deepEqual(wrong, [], `drivers importing an upper layer:\n  ${wrong.join('\n  ')}`);
  });
});

/** Imports from modules under `from` into modules under any of `forbidden`. */
function layerViolations(graph: ImportGraph, from: string, forbidden: readonly string[]): string[] {
  const out: string[] = [];
  for (const [m, deps] of graph) {
    if (!m.startsWith(from)) continue;
    for (const d of deps) if (forbidden.some((f) => d.startsWith(f))) out.push(`${m} -> ${d}`);
  }
  return out;
}
