/** Where the store is (--store, CAIRN_STORE, XDG_DATA_HOME), its layout version, and the demo. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import {
  cairn,
  cairnBin,
  lastLine,
  repoRoot,
  tempDir,
  type CliResult,
  isolateModuleCache,
  ok,
  expectError,
} from './helpers.js';

const CHAIN = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');

isolateModuleCache(after);

/** Runs the CLI WITHOUT --store, with CAIRN_STORE removed from the environment unless given. */
function cairnNoStoreFlag(args: string[], env: NodeJS.ProcessEnv): CliResult {
  const base = { ...process.env };
  delete base.CAIRN_STORE;
  delete base.XDG_DATA_HOME;
  const r = spawnSync(process.execPath, [cairnBin, ...args], {
    cwd: repoRoot,
    env: { ...base, ...env },
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The realization's directory exists in the store at `root`. */
function hasRealization(root: string, rref: string): boolean {
  return fs.existsSync(path.join(root, 'd', rref.slice(33), 'r', rref.slice(0, 32), 'out'));
}

describe('store root', () => {
  it('--store DIR creates and uses the store there', () => {
    const t = tempDir('cairn-root');
    try {
      const store = path.join(t.dir, 'nested', 'store');
      const rref = lastLine(ok(cairn(store, ['realize', CHAIN, '-q'])).stdout);
      assert.ok(hasRealization(store, rref));
      const marker = JSON.parse(fs.readFileSync(path.join(store, 'store.json'), 'utf8')) as { layout: number };
      assert.equal(marker.layout, 1);
      assert.equal(fs.statSync(path.join(store, 'store.json')).mode & 0o777, 0o444, 'store.json is read-only');
      assert.deepEqual(fs.readdirSync(path.join(store, 'tmp')), []);
    } finally {
      t.cleanup();
    }
  });

  it('CAIRN_STORE is used when there is no --store', () => {
    const t = tempDir('cairn-root');
    try {
      const store = path.join(t.dir, 'env-store');
      const xdg = path.join(t.dir, 'xdg');
      const r = ok(cairnNoStoreFlag(['realize', CHAIN, '-q'], { CAIRN_STORE: store, XDG_DATA_HOME: xdg }));
      const rref = lastLine(r.stdout);
      assert.ok(hasRealization(store, rref));
      assert.equal(fs.existsSync(path.join(xdg, 'cairn')), false, 'CAIRN_STORE wins over XDG_DATA_HOME');
      assert.equal(
        ok(cairnNoStoreFlag(['catref', rref, 'c.txt'], { CAIRN_STORE: store })).stdout,
        'alpha+beta+gamma\n',
      );
      // A relative CAIRN_STORE is taken relative to the working directory.
      const rel = spawnSync(process.execPath, [cairnBin, 'catref', rref, 'c.txt'], {
        cwd: t.dir,
        env: { ...process.env, CAIRN_STORE: 'env-store' },
        encoding: 'utf8',
      });
      assert.equal(rel.status, 0, rel.stderr);
      assert.equal(rel.stdout, 'alpha+beta+gamma\n');
    } finally {
      t.cleanup();
    }
  });

  it('--store wins over CAIRN_STORE', () => {
    const t = tempDir('cairn-root');
    try {
      const flag = path.join(t.dir, 'flag-store');
      const env = path.join(t.dir, 'env-store');
      const rref = lastLine(ok(cairn(flag, ['realize', CHAIN, '-q'], { env: { CAIRN_STORE: env } })).stdout);
      assert.ok(hasRealization(flag, rref));
      assert.equal(fs.existsSync(path.join(env, 'd')), false, 'the CAIRN_STORE store was not used');
    } finally {
      t.cleanup();
    }
  });

  it('defaults to $XDG_DATA_HOME/cairn', () => {
    const t = tempDir('cairn-root');
    try {
      const xdg = path.join(t.dir, 'data');
      const r = ok(cairnNoStoreFlag(['realize', CHAIN, '-q'], { XDG_DATA_HOME: xdg, HOME: t.dir }));
      const rref = lastLine(r.stdout);
      const store = path.join(xdg, 'cairn');
      assert.ok(hasRealization(store, rref));
      assert.ok(fs.existsSync(path.join(store, 'store.json')));
      const lines = ok(cairnNoStoreFlag(['du', '--bytes'], { XDG_DATA_HOME: xdg, HOME: t.dir }))
        .stdout.trim()
        .split('\n');
      assert.match(lines[lines.length - 1]!, /^41\t3\ttotal$/);
    } finally {
      t.cleanup();
    }
  });

  it('without XDG_DATA_HOME, defaults to ~/.local/share/cairn', () => {
    const t = tempDir('cairn-root');
    try {
      const r = ok(cairnNoStoreFlag(['realize', CHAIN, '-q', '--stage', 'a'], { HOME: t.dir }));
      assert.ok(hasRealization(path.join(t.dir, '.local', 'share', 'cairn'), lastLine(r.stdout)));
    } finally {
      t.cleanup();
    }
  });
});

describe('store layout version', () => {
  for (const [what, text] of [
    ['a newer layout number', '{"cairn-store":true,"layout":2}\n'],
    ['layout 0', '{"cairn-store":true,"layout":0}\n'],
    ['a layout given as a string', '{"cairn-store":true,"layout":"1"}\n'],
    ['unparseable JSON', 'not json at all\n'],
  ] as const) {
    it(`a store.json with ${what} gives E_STORE_VERSION and is left alone`, () => {
      const t = tempDir('cairn-layout');
      try {
        const store = path.join(t.dir, 'store');
        const rref = lastLine(ok(cairn(store, ['realize', CHAIN, '-q'])).stdout);
        const marker = path.join(store, 'store.json');
        fs.chmodSync(marker, 0o644);
        fs.writeFileSync(marker, text);
        fs.chmodSync(marker, 0o444);
        for (const args of [
          ['realize', CHAIN],
          ['du'],
          ['lsref', rref],
          ['catref', rref, 'c.txt'],
          ['log', rref],
          ['rmref', rref],
        ]) {
          const r = cairn(store, args);
          expectError(r, 'E_STORE_VERSION');
          assert.equal(r.stdout, '', `${args[0]} prints nothing on stdout`);
        }
        assert.equal(fs.readFileSync(marker, 'utf8'), text, 'the marker is not rewritten');
        assert.ok(hasRealization(store, rref), 'nothing was removed');
        assert.deepEqual(fs.readdirSync(path.join(store, 'tmp')), []);
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('cairn demo', () => {
  it('builds the ML pipeline on run 1 (3 build runs) and is fully cached on run 2', () => {
    const t = tempDir('cairn-demo');
    try {
      const store = path.join(t.dir, 'store');
      const r = spawnSync(process.execPath, [cairnBin, '--store', store, 'demo'], { cwd: repoRoot, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const out = r.stdout;
      assert.match(out, /^run 1: [\d.]+ ms, 3 build run\(s\)$/m);
      assert.match(out, /^run 2: [\d.]+ ms, 0 build run\(s\)$/m);
      const run2 = out
        .slice(out.indexOf('run 2:'))
        .split('\n')
        .slice(1)
        .filter((l) => /^\s{2}\S/.test(l) && !/^\s*Try:/.test(l));
      const actions = run2.filter((l) => /->/.test(l));
      assert.equal(actions.length, 3, `run 2 lists the 3 stages:\n${out}`);
      for (const l of actions) assert.match(l, /^\s+cached\s/, `run 2 is fully cached: ${l}`);
      const run1 = out
        .slice(out.indexOf('run 1:'), out.indexOf('run 2:'))
        .split('\n')
        .filter((l) => /->/.test(l));
      assert.equal(run1.length, 3);
      for (const l of run1) assert.match(l, /^\s+build\s/);
      // Both runs chose the same realizations.
      const chosen = (lines: string[]): string[] => lines.map((l) => l.split('->')[1]!.trim());
      assert.deepEqual(chosen(actions), chosen(run1));
      assert.match(out, /Linear fit/, 'the report is printed');
      assert.deepEqual(fs.readdirSync(path.join(store, 'tmp')), []);
      // The demo's realizations are ordinary store entries.
      const report = chosen(run1)[2]!;
      assert.match(ok(cairn(store, ['catref', report, 'report.md'])).stdout, /^# Linear fit/);
    } finally {
      t.cleanup();
    }
  });
});
