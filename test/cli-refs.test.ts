/** Commands on references: lsref, catref, shellref, rmref, du, log. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cairn, repoRoot, tempDir, isolateModuleCache, ok, expectError, tmpEntries } from './helpers.js';

const CHAIN = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');
const H = (c: string): string => c.repeat(32);

isolateModuleCache(after);

interface Realized {
  store: string;
  cleanup: () => void;
  dref: Record<string, string>;
  rref: Record<string, string>;
}

/** A store holding the realized chain a -> b -> c, with each stage's DRef and RRef. */
function realizeChain(): Realized {
  const t = tempDir('cairn-refs');
  const store = path.join(t.dir, 'store');
  const r = ok(cairn(store, ['realize', CHAIN, '--json']));
  const j = JSON.parse(r.stdout) as { plan: { name: string; dref: string; rrefs: string[] }[] };
  const dref: Record<string, string> = {};
  const rref: Record<string, string> = {};
  for (const p of j.plan) {
    dref[p.name] = p.dref;
    rref[p.name] = p.rrefs[0]!;
  }
  return { store, cleanup: t.cleanup, dref, rref };
}

/** Where a realization's outputs live, by the documented store layout. */
function outDir(store: string, rref: string): string {
  const rhash = rref.slice(0, 32);
  return path.join(store, 'd', rref.slice(33), 'r', rhash, 'out');
}

describe('reading realizations', () => {
  let s: Realized;
  before(() => {
    s = realizeChain();
  });
  after(() => s.cleanup());

  it('lsref DREF lists its realizations', () => {
    const lines = ok(cairn(s.store, ['lsref', s.dref.b!]))
      .stdout.trim()
      .split('\n');
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.split(/\s+/)[0], s.rref.b);
    assert.match(lines[0]!, /\d{4}-\d\d-\d\dT/, 'with its creation time');
  });

  it('lsref RREF lists its files with modes and sizes', () => {
    const lines = ok(cairn(s.store, ['lsref', s.rref.b!]))
      .stdout.trim()
      .split('\n');
    const byPath = new Map(
      lines.map((l) => {
        const parts = l.trim().split(/\s+/);
        return [parts[parts.length - 1]!, parts] as const;
      }),
    );
    assert.deepEqual([...byPath.keys()].sort(), ['b.txt', 'sub/', 'sub/nested.txt']);
    assert.deepEqual(byPath.get('b.txt')!.slice(0, 2), ['-r--r--r--', '11'], 'sealed read-only, 11 bytes');
    assert.match(byPath.get('sub/')![0]!, /^dr.x.-x.-x$/);
    assert.match(byPath.get('sub/')![0]!, /^d[^w]+$/, 'directories are read-only too');
    assert.deepEqual(byPath.get('sub/nested.txt')!.slice(0, 2), ['-r--r--r--', '7']);
  });

  it('catref prints a file of an RRef, or of the newest realization of a DRef', () => {
    assert.equal(ok(cairn(s.store, ['catref', s.rref.b!, 'b.txt'])).stdout, 'alpha+beta\n');
    assert.equal(ok(cairn(s.store, ['catref', s.rref.b!, 'sub/nested.txt'])).stdout, 'nested\n');
    assert.equal(ok(cairn(s.store, ['catref', s.dref.c!, 'c.txt'])).stdout, 'alpha+beta+gamma\n');
    assert.equal(ok(cairn(s.store, ['catref', s.rref.b!, './sub/../b.txt'])).stdout, 'alpha+beta\n');
  });

  it('catref of a missing path or a directory gives E_NO_SUCH_PATH', () => {
    expectError(cairn(s.store, ['catref', s.rref.b!, 'nope.txt']), 'E_NO_SUCH_PATH');
    expectError(cairn(s.store, ['catref', s.rref.b!, 'sub']), 'E_NO_SUCH_PATH');
    expectError(cairn(s.store, ['catref', s.rref.b!, 'sub/missing']), 'E_NO_SUCH_PATH');
  });

  it('catref refuses paths that escape the output directory', () => {
    for (const rel of [
      '../meta.json',
      '../build.log',
      'sub/../../meta.json',
      '../../../../../../../../etc/hostname',
      '/etc/hostname',
      path.join(s.store, 'store.json'),
    ]) {
      const r = cairn(s.store, ['catref', s.rref.b!, rel]);
      assert.notEqual(r.code, 0, `${rel} must be refused`);
      assert.match(r.stderr, /cairn: error E_[A-Z_]+:/);
      assert.equal(r.stdout, '', `${rel}: nothing is printed`);
    }
  });

  it('shellref -c runs in the output directory with CAIRN_OUT and CAIRN_RREF set', () => {
    const env = { SHELL: '/bin/sh' };
    assert.equal(ok(cairn(s.store, ['shellref', s.rref.b!, '-c', 'cat b.txt'], { env })).stdout, 'alpha+beta\n');
    const out = fs.realpathSync(outDir(s.store, s.rref.b!));
    const pwd = ok(cairn(s.store, ['shellref', s.rref.b!, '-c', 'pwd -P'], { env })).stdout.trim();
    assert.equal(pwd, out);
    const vars = ok(cairn(s.store, ['shellref', s.rref.b!, '-c', 'echo "$CAIRN_OUT"; echo "$CAIRN_RREF"'], { env }))
      .stdout.trim()
      .split('\n');
    assert.equal(fs.realpathSync(vars[0]!), out);
    assert.equal(vars[1], s.rref.b);
    // A DRef stands for its newest realization.
    assert.equal(ok(cairn(s.store, ['shellref', s.dref.a!, '-c', 'cat a.txt'], { env })).stdout, 'alpha\n');
  });

  it("shellref passes on the command's exit status", () => {
    const r = cairn(s.store, ['shellref', s.rref.b!, '-c', 'exit 3'], { env: { SHELL: '/bin/sh' } });
    assert.equal(r.code, 3);
  });

  it('log prints the build log, with what the build logged', () => {
    const b = ok(cairn(s.store, ['log', s.rref.b!])).stdout;
    assert.match(b, /hello from b: wrote b\.txt/);
    assert.doesNotMatch(b, /hello from a/, "each realization has its own stage's log");
    assert.match(ok(cairn(s.store, ['log', s.dref.c!])).stdout, /hello from c/);
  });

  it('du prints per-derivation sizes and a total', () => {
    const lines = ok(cairn(s.store, ['du', '--bytes']))
      .stdout.trim()
      .split('\n');
    assert.equal(lines.length, 4, '3 derivations and a total');
    const rows = lines.map((l) => l.split('\t'));
    const total = rows.pop()!;
    assert.equal(total[2], 'total');
    assert.equal(total[1], '3', '3 realizations in all');
    assert.equal(
      Number(total[0]),
      rows.reduce((a, r) => a + Number(r[0]), 0),
      'the total is the sum of the rows',
    );
    // a.txt (6) + b.txt (11) + sub/nested.txt (7) + c.txt (17)
    assert.equal(Number(total[0]), 41);
    assert.deepEqual(rows.map((r) => r[2]).sort(), Object.values(s.dref).sort());
    const human = ok(cairn(s.store, ['du']))
      .stdout.trim()
      .split('\n');
    assert.match(human[human.length - 1]!, /^41 B\t3\ttotal$/);
  });

  it('du REF prints its own size and its closure', () => {
    const lines = ok(cairn(s.store, ['du', '--bytes', s.rref.c!]))
      .stdout.trim()
      .split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /^17\t.*\(1 realization\(s\)\)$/);
    assert.match(lines[1]!, /^41\tclosure \(3 realization\(s\)\)$/);
    const a = ok(cairn(s.store, ['du', '--bytes', s.dref.a!]))
      .stdout.trim()
      .split('\n');
    assert.match(a[1]!, /^6\tclosure \(1 realization\(s\)\)$/);
  });

  it('malformed refs give E_BAD_REF', () => {
    const bad = [
      'nonsense',
      '../../etc/passwd',
      `${H('e')}-a`,
      `${H('0').slice(1)}-a`,
      `${H('0')}-`,
      `${H('0')}-../x`,
      `${H('0')}-${H('1')}-.hidden`,
    ];
    for (const ref of bad) {
      expectError(cairn(s.store, ['lsref', ref]), 'E_BAD_REF');
    }
    expectError(cairn(s.store, ['catref', 'nonsense', 'b.txt']), 'E_BAD_REF');
    expectError(cairn(s.store, ['log', 'nonsense']), 'E_BAD_REF');
    expectError(cairn(s.store, ['shellref', 'nonsense', '-c', 'true']), 'E_BAD_REF');
    expectError(cairn(s.store, ['rmref', 'nonsense']), 'E_BAD_REF');
    expectError(cairn(s.store, ['du', 'nonsense']), 'E_BAD_REF');
  });

  it('well-formed refs that are not in the store give E_NO_SUCH_REF', () => {
    const dref = `${H('0')}-ghost`;
    const rref = `${H('1')}-${dref}`;
    const otherRref = `${H('2')}-${s.dref.b}`;
    for (const args of [
      ['lsref', dref],
      ['lsref', rref],
      ['lsref', otherRref],
      ['catref', rref, 'x'],
      ['catref', dref, 'x'],
      ['log', rref],
      ['log', otherRref],
      ['shellref', rref, '-c', 'true'],
      ['du', dref],
      ['rmref', rref],
    ]) {
      expectError(cairn(s.store, args), 'E_NO_SUCH_REF');
    }
  });

  it('reading leaves no temporary files behind', () => {
    assert.deepEqual(tmpEntries(s.store), []);
  });
});

describe('cairn rmref', () => {
  it('removes a realization nothing depends on', () => {
    const s = realizeChain();
    try {
      const r = ok(cairn(s.store, ['rmref', s.rref.c!]));
      assert.match(r.stdout, /removed/);
      expectError(cairn(s.store, ['lsref', s.rref.c!]), 'E_NO_SUCH_REF');
      expectError(cairn(s.store, ['catref', s.rref.c!, 'c.txt']), 'E_NO_SUCH_REF');
      assert.equal(fs.existsSync(outDir(s.store, s.rref.c!)), false);
      assert.deepEqual(tmpEntries(s.store), []);
      // The rest is untouched, and realize rebuilds only c.
      assert.equal(ok(cairn(s.store, ['catref', s.rref.b!, 'b.txt'])).stdout, 'alpha+beta\n');
      const j = JSON.parse(ok(cairn(s.store, ['realize', CHAIN, '--json'])).stdout) as {
        builds: number;
        targets: { rrefs: string[] }[];
      };
      assert.equal(j.builds, 1);
      assert.deepEqual(j.targets[0]!.rrefs, [s.rref.c]);
    } finally {
      s.cleanup();
    }
  });

  it('refuses to remove a realization another one was built from, unless --force', () => {
    const s = realizeChain();
    try {
      const refused = cairn(s.store, ['rmref', s.rref.b!]);
      expectError(refused, 'E_REF_IN_USE');
      assert.equal(refused.code, 1, 'not a usage error: the command line is right');
      assert.match(refused.stderr, new RegExp(s.rref.c!));
      assert.match(refused.stderr, /\(pass --force to remove it anyway\)/, 'the CLI adds the flag hint');
      assert.equal(ok(cairn(s.store, ['catref', s.rref.b!, 'b.txt'])).stdout, 'alpha+beta\n', 'still there');
      assert.deepEqual(tmpEntries(s.store), []);

      ok(cairn(s.store, ['rmref', '--force', s.rref.b!]));
      expectError(cairn(s.store, ['lsref', s.rref.b!]), 'E_NO_SUCH_REF');
      assert.equal(fs.existsSync(outDir(s.store, s.rref.b!)), false);
      assert.deepEqual(tmpEntries(s.store), []);
    } finally {
      s.cleanup();
    }
  });

  it('rmref DREF removes every realization and the derivation', () => {
    const s = realizeChain();
    try {
      const r = ok(cairn(s.store, ['rmref', s.dref.c!]));
      assert.match(r.stdout, /1 realization/);
      expectError(cairn(s.store, ['lsref', s.dref.c!]), 'E_NO_SUCH_REF');
      const du = ok(cairn(s.store, ['du', '--bytes']))
        .stdout.trim()
        .split('\n');
      assert.equal(du.length, 3);
      assert.match(du[2]!, /^24\t2\ttotal$/);
      assert.deepEqual(tmpEntries(s.store), []);
    } finally {
      s.cleanup();
    }
  });
});
