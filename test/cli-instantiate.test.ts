/** `cairn instantiate`: DRefs, dependencies first, stable, building nothing. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, lastLine, repoRoot, tempDir, isolateModuleCache, ok } from './helpers.js';

const fixture = (name: string): string => path.join(repoRoot, 'test', 'fixtures', name);
const CHAIN = fixture('chain.ts');
const DIAMOND = fixture('diamond.ts');
const DREF = /^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9_][A-Za-z0-9._+-]*$/;

isolateModuleCache(after);

interface InstJson {
  targets: string[];
  derivations: { dref: string; name: string; deps: string[]; drv: Record<string, unknown> }[];
}

describe('cairn instantiate', () => {
  it('prints one DRef per stage, dependencies first, and touches no store', () => {
    const t = tempDir('cairn-inst');
    try {
      const store = path.join(t.dir, 'store');
      const r = ok(cairn(store, ['instantiate', CHAIN]));
      const drefs = r.stdout.trim().split('\n');
      assert.equal(drefs.length, 3);
      for (const d of drefs) assert.match(d, DREF);
      assert.deepEqual(
        drefs.map((d) => d.slice(33)),
        ['a', 'b', 'c'],
      );
      assert.equal(fs.existsSync(store), false, 'instantiate neither opens nor creates the store');
    } finally {
      t.cleanup();
    }
  });

  it('is stable across runs and processes, and matches what realize builds', () => {
    const t = tempDir('cairn-inst');
    try {
      const store = path.join(t.dir, 'store');
      const first = ok(cairn(store, ['instantiate', CHAIN])).stdout;
      const second = ok(cairn(store, ['instantiate', CHAIN], { cwd: t.dir })).stdout;
      assert.equal(second, first);
      const drefs = first.trim().split('\n');
      const rref = lastLine(ok(cairn(store, ['realize', CHAIN, '-q'])).stdout);
      assert.ok(rref.endsWith(`-${drefs[2]}`), `${rref} is a realization of ${drefs[2]}`);
      // A copy of the file elsewhere has the same derivations: DRefs do not depend on paths.
      const copyDir = path.join(t.dir, 'copy');
      fs.mkdirSync(copyDir);
      fs.copyFileSync(CHAIN, path.join(copyDir, 'chain.ts'));
      fs.copyFileSync(fixture('_note.ts'), path.join(copyDir, '_note.ts'));
      assert.equal(ok(cairn(store, ['instantiate', path.join(copyDir, 'chain.ts')])).stdout, first);
    } finally {
      t.cleanup();
    }
  });

  it('a change to a config gives a new DRef for the stage and its dependants only', () => {
    const t = tempDir('cairn-inst');
    try {
      const store = path.join(t.dir, 'store');
      const before = ok(cairn(store, ['instantiate', CHAIN]))
        .stdout.trim()
        .split('\n');
      fs.copyFileSync(fixture('_note.ts'), path.join(t.dir, '_note.ts'));
      const edited = fs.readFileSync(CHAIN, 'utf8').replace("suffix: 'beta'", "suffix: 'BETA'");
      assert.notEqual(edited, fs.readFileSync(CHAIN, 'utf8'));
      fs.writeFileSync(path.join(t.dir, 'chain.ts'), edited);
      const afterEdit = ok(cairn(store, ['instantiate', path.join(t.dir, 'chain.ts')]))
        .stdout.trim()
        .split('\n');
      assert.equal(afterEdit[0], before[0], 'a is unchanged');
      assert.notEqual(afterEdit[1], before[1], 'b changed');
      assert.notEqual(afterEdit[2], before[2], 'c depends on b, so it changed too');
    } finally {
      t.cleanup();
    }
  });

  it('orders a diamond with every dependency before its dependants', () => {
    const t = tempDir('cairn-inst');
    try {
      const drefs = ok(cairn(path.join(t.dir, 'store'), ['instantiate', DIAMOND]))
        .stdout.trim()
        .split('\n');
      assert.equal(drefs.length, 4, 'the shared dependency appears once');
      const names = drefs.map((d) => d.slice(33));
      assert.equal(names[0], 'src');
      assert.equal(names[3], 'join');
      assert.deepEqual([...names].sort(), ['join', 'left', 'right', 'src']);
    } finally {
      t.cleanup();
    }
  });

  it('--json holds targets and derivations with deps and canonical configs', () => {
    const t = tempDir('cairn-inst');
    try {
      const store = path.join(t.dir, 'store');
      const text = ok(cairn(store, ['instantiate', DIAMOND]))
        .stdout.trim()
        .split('\n');
      const j = JSON.parse(ok(cairn(store, ['instantiate', DIAMOND, '--json'])).stdout) as InstJson;
      assert.deepEqual(
        j.derivations.map((d) => d.dref),
        text,
      );
      assert.deepEqual(j.targets, [text[3]]);
      const seen = new Set<string>();
      for (const d of j.derivations) {
        assert.match(d.dref, DREF);
        assert.ok(d.dref.endsWith(`-${d.name}`));
        for (const dep of d.deps) assert.ok(seen.has(dep), `${d.name}: dependency ${dep} must come first`);
        seen.add(d.dref);
        assert.equal(typeof d.drv, 'object');
      }
      const join = j.derivations.find((d) => d.name === 'join')!;
      assert.equal(join.deps.length, 2);
      const config = join.drv.config as Record<string, { $ref: string }>;
      assert.deepEqual(
        [config.l!.$ref, config.r!.$ref].sort(),
        [...join.deps].sort(),
        'stage references become $ref to DRefs',
      );
      const src = j.derivations.find((d) => d.name === 'src')!;
      assert.deepEqual(src.deps, []);
      assert.deepEqual((src.drv.config as { values: number[] }).values, [1, 2, 3, 4]);
    } finally {
      t.cleanup();
    }
  });

  it('--stage selects exports, as for realize', () => {
    const t = tempDir('cairn-inst');
    try {
      const store = path.join(t.dir, 'store');
      const all = ok(cairn(store, ['instantiate', CHAIN]))
        .stdout.trim()
        .split('\n');
      const a = ok(cairn(store, ['instantiate', CHAIN, '--stage', 'a']))
        .stdout.trim()
        .split('\n');
      assert.deepEqual(a, [all[0]]);
      const pair = JSON.parse(ok(cairn(store, ['instantiate', CHAIN, '--stage', 'pair', '--json'])).stdout) as InstJson;
      assert.deepEqual(pair.targets, [all[0], all[1]]);
      const r = cairn(store, ['instantiate', CHAIN, '--stage', 'missing']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /cairn: error E_NO_TARGET:/);
    } finally {
      t.cleanup();
    }
  });
});
