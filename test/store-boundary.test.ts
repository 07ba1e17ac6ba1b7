/**
 * The Store boundary (docs/design.md, "The Store interface"): outside
 * src/store, no code reaches the SQLite index, the derivation files or the
 * store's internal layout. Tests may (they check the store from inside);
 * everything else (src, cli, bench, examples, scripts) may not.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import { repoRoot } from './helpers.js';

/** Modules of src/store that hold its internals: the index, derivation files, the SQLite binding. */
const INTERNAL = /from\s+'[^']*store\/(internals|index-db|drv-files|sqlite)\.js'/;
/** Paths inside a store root that only src/store may compute. */
const LAYOUT = [
  /['"`]index\.sqlite['"`]/,
  /path\.join\(\s*[\w.]*\.root\s*,\s*['"`](d|tmp|quarantine|failed|failed-logs|roots|incoming)['"`]/,
  /\.(rzDir|drvDir)\(/,
  /\b(storeIndex|drvFiles)\(/,
];

function outsideStore(): string[] {
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '*.ts'], {
    cwd: repoRoot,
    encoding: 'utf8',
  })
    .split('\n')
    .filter((f) => f !== '' && fs.existsSync(`${repoRoot}/${f}`));
  return files.filter((f) => !f.startsWith('src/store/') && !f.startsWith('test/') && !f.startsWith('node_modules/'));
}

describe('the Store boundary', () => {
  it('finds the code it checks', () => {
    const files = outsideStore();
    assert.ok(files.includes('src/stages/realize.ts') && files.includes('cli/commands/store.ts'), files.join(' '));
  });

  it('outside src/store, nothing imports the index, the derivation files or the internals accessor', () => {
    const bad = outsideStore().filter((f) => INTERNAL.test(fs.readFileSync(`${repoRoot}/${f}`, 'utf8')));
    assert.deepEqual(bad, []);
  });

  it('outside src/store, nothing computes a path inside the store root', () => {
    const bad: string[] = [];
    for (const f of outsideStore()) {
      const lines = fs.readFileSync(`${repoRoot}/${f}`, 'utf8').split('\n');
      lines.forEach((line, i) => {
        if (/^\s*(\/\/|\*)/.test(line)) return;
        if (LAYOUT.some((re) => re.test(line))) bad.push(`${f}:${i + 1}: ${line.trim()}`);
      });
    }
    assert.deepEqual(bad, []);
  });

  it('the patterns catch what they are meant to', () => {
    assert.ok(INTERNAL.test("import { storeIndex } from '../store/internals.js';"));
    assert.ok(INTERNAL.test("import type { StoreIndex } from '../../src/store/index-db.js';"));
    assert.ok(LAYOUT.some((re) => re.test("const tmp = path.join(store.root, 'tmp');")));
    assert.ok(LAYOUT.some((re) => re.test('const dir = store.rzDir(rref);')));
    assert.ok(!LAYOUT.some((re) => re.test('out(JSON.stringify({ store: store.location }));')));
  });
});
