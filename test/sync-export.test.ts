/**
 * `cairn export` / `cairn import` (a closure as a tar file, through the
 * same verified receive path as sync), and the pure planning of sync:
 * closures, dependency order, remotes, manifests.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, isolateModuleCache, lastLine, repoRoot, tempDir } from './helpers.js';
import { assertVerifyClean, expectError, ok, rrefsOnDisk, rzDir, tmpEntries } from './fixtures/torture/support.js';
import {
  closureOf,
  dependencyOrder,
  parseManifest,
  parseRemote,
  planTransfer,
  splitCommand,
} from '../src/store/sync-plan.js';
import { isCode, one } from './helpers.js';
import { exportClosure, importClosure, realize, stage, LocalStore } from '../src/index.js';
import type { RRef } from '../src/store/refs.js';

const CLOSURE = path.join(repoRoot, 'test', 'fixtures', 'sync', 'closure.ts');
isolateModuleCache(after, 'cairn-export-cache');
const work = tempDir('cairn-export');
after(() => work.cleanup());

/** Every file under the store's d/ with its size and mode: what "unchanged" means for a store. */
function snapshot(store: string): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    out.push(`${path.relative(store, p)} ${st.mode.toString(8)} ${st.isFile() ? st.size : ''}`);
    if (st.isDirectory()) for (const n of fs.readdirSync(p).sort()) walk(path.join(p, n));
  };
  walk(path.join(store, 'd'));
  return out;
}

/** Replaces the first occurrence of `from` in the file with `to` (same length, so the tar stays well-formed). */
function patchFile(file: string, from: string, to: string): void {
  assert.equal(from.length, to.length);
  const buf = fs.readFileSync(file);
  const at = buf.indexOf(from);
  assert.ok(at >= 0, `${from} is not in ${file}`);
  buf.write(to, at);
  fs.writeFileSync(file, buf);
}

describe('export and import', () => {
  const src = path.join(work.dir, 'src');
  const tarFile = path.join(work.dir, 'closure.tar');
  let top = '';

  it('export writes the closure; import into an empty store takes it all in, verified', () => {
    top = lastLine(ok(cairn(src, ['realize', CLOSURE, '-q'], { env: { SYNC_SALT: 'export' } })).stdout);
    const r = ok(cairn(src, ['export', top, '-o', tarFile]));
    assert.match(r.stdout, /exported 4 realization\(s\) and 4 derivation\(s\)/);
    assert.deepEqual(tmpEntries(src), []);
    const dst = path.join(work.dir, 'dst');
    const imp = JSON.parse(ok(cairn(dst, ['import', tarFile, '--json'])).stdout) as {
      received: string[];
      drvs: string[];
    };
    assert.equal(imp.received.length, 4);
    assert.equal(imp.received[3], top, 'dependencies first');
    assert.equal(imp.drvs.length, 4);
    assert.deepEqual(rrefsOnDisk(dst), rrefsOnDisk(src));
    assertVerifyClean(dst);
    assert.equal(ok(cairn(dst, ['catref', top, 'top.txt'])).stdout, ok(cairn(src, ['catref', top, 'top.txt'])).stdout);
    const base = imp.received[0]!;
    assert.equal(
      fs.statSync(path.join(rzDir(dst, base), 'out', 'bin', 'run.sh')).mode & 0o777,
      0o555,
      'the executable bit survives',
    );
    assert.equal(fs.readlinkSync(path.join(rzDir(dst, base), 'out', 'bin', 'base-link')), '../base.txt');
    assert.deepEqual(tmpEntries(dst), []);
    // Importing again changes nothing.
    const again = JSON.parse(ok(cairn(dst, ['import', tarFile, '--json'])).stdout) as {
      received: string[];
      present: string[];
    };
    assert.deepEqual(again.received, []);
    assert.equal(again.present.length, 4);
  });

  it('a tampered tar is refused whole and leaves the store unchanged', () => {
    const dst = path.join(work.dir, 'dst-tamper');
    // A store that already has something, so "unchanged" is not "empty".
    ok(cairn(dst, ['realize', CLOSURE, '-q', '-s', 'base'], { env: { SYNC_SALT: 'other' } }));
    const before = snapshot(dst);
    const cases: [string, (f: string) => void, string][] = [
      ['file content', (f) => patchFile(f, 'left\n', 'LEFT\n'), 'E_SYNC_HASH_MISMATCH'],
      [
        'the tree hash in meta.json',
        (f) => {
          const meta = JSON.parse(fs.readFileSync(path.join(rzDir(src, top), 'meta.json'), 'utf8')) as { tree: string };
          patchFile(f, meta.tree, meta.tree.slice(0, -1) + (meta.tree.endsWith('0') ? '1' : '0'));
        },
        'E_SYNC_HASH_MISMATCH',
      ],
      ['a drv.json', (f) => patchFile(f, '"export"', '"exporT"'), 'E_SYNC_HASH_MISMATCH'],
      ['the manifest', (f) => patchFile(f, 'cairn-closure-1', 'cairn-closure-9'), 'E_BAD_CLOSURE'],
    ];
    for (const [what, tamper, code] of cases) {
      const bad = path.join(work.dir, `bad-${what.replace(/\W+/g, '-')}.tar`);
      fs.copyFileSync(tarFile, bad);
      tamper(bad);
      const r = cairn(dst, ['import', bad]);
      expectError(r, code, `import with tampered ${what}`);
      assert.deepEqual(snapshot(dst), before, `tampered ${what}: the store is unchanged`);
      assert.equal(fs.existsSync(path.join(dst, 'quarantine')), false);
      assert.deepEqual(tmpEntries(dst), []);
      assertVerifyClean(dst);
    }
    const notTar = path.join(work.dir, 'not.tar');
    fs.writeFileSync(notTar, 'this is not a tar file at all'.repeat(40));
    expectError(cairn(dst, ['import', notTar]), 'E_BAD_ARCHIVE', 'import of a non-tar');
    assert.deepEqual(snapshot(dst), before);
  });

  it('export refuses unknown refs and writes no file', () => {
    const out = path.join(work.dir, 'none.tar');
    expectError(cairn(src, ['export', `${'0'.repeat(32)}-${'1'.repeat(32)}-nope`, '-o', out]), 'E_NO_SUCH_REF');
    assert.equal(fs.existsSync(out), false);
  });
});

describe('export and import in process: bytes, determinism, the partial file (issue 13)', () => {
  const raw = Buffer.from([0x6e, 0x61, 0x6d, 0xe9, 0xff]); // not UTF-8
  /** A realization holding a non-UTF-8 file name, a symlink to it, an executable and a nested directory. */
  const bytesStage = (salt: string) =>
    stage({
      name: 'bytes-names',
      config: { salt },
      version: '1',
      build: async ({ out }) => {
        fs.mkdirSync(path.join(out, 'sub', 'deeper'), { recursive: true });
        fs.writeFileSync(Buffer.concat([Buffer.from(`${out}/sub/`), raw]), 'latin1 bytes\n');
        fs.symlinkSync(raw, Buffer.concat([Buffer.from(`${out}/sub/`), Buffer.from('to-'), raw]));
        fs.writeFileSync(path.join(out, 'sub', 'deeper', 'run.sh'), '#!/bin/sh\n', { mode: 0o755 });
      },
    });

  it('non-UTF-8 names survive export and import: the same RRef, the same bytes', async () => {
    const a = LocalStore.open(path.join(work.dir, 'bytes-src'));
    const b = LocalStore.open(path.join(work.dir, 'bytes-dst'));
    try {
      const rref = one(await realize(bytesStage('b'), { store: a }));
      const file = path.join(work.dir, 'bytes.tar');
      await exportClosure(a, [rref], file);
      const r = await importClosure(b, file);
      assert.deepEqual(r.received, [rref]);
      const out = b.outPath(rref);
      assert.deepEqual(
        fs.readdirSync(path.join(out, 'sub'), { encoding: 'buffer' }).sort(Buffer.compare),
        [raw, Buffer.from('deeper'), Buffer.concat([Buffer.from('to-'), raw])].sort(Buffer.compare),
      );
      assert.equal(fs.readFileSync(Buffer.concat([Buffer.from(`${out}/sub/`), raw]), 'utf8'), 'latin1 bytes\n');
    } finally {
      a.close();
      b.close();
    }
  });

  it('the export is a function of the closure, and its partial file is never a name planted in advance', async () => {
    const a = LocalStore.open(path.join(work.dir, 'det-src'));
    try {
      const rref = one(
        await realize(
          stage({
            name: 'det',
            config: {},
            version: '1',
            build: async ({ out }) => {
              fs.writeFileSync(path.join(out, 'a.txt'), 'a\n');
              fs.mkdirSync(path.join(out, 'z'));
            },
          }),
          { store: a },
        ),
      );
      const one1 = path.join(work.dir, 'det-1.tar');
      const two = path.join(work.dir, 'det-2.tar');
      // The old fixed name ${dest}.partial-${pid}, planted as a link to a victim: the export must not write through it.
      const victim = path.join(work.dir, 'victim.txt');
      fs.writeFileSync(victim, 'victim\n');
      fs.symlinkSync(victim, `${two}.partial-${process.pid}`);
      await exportClosure(a, [rref], one1);
      await exportClosure(a, [rref], two);
      assert.equal(fs.readFileSync(victim, 'utf8'), 'victim\n', 'the victim is untouched');
      assert.ok(fs.lstatSync(two).isFile(), 'the export is a regular file, not the planted link');
      assert.deepEqual(fs.readFileSync(one1), fs.readFileSync(two), 'two exports of one closure are identical');
      const left = fs
        .readdirSync(work.dir)
        .filter((n) => n.includes('det-') && (n.includes('.partial-') || n.endsWith('.tmp')));
      assert.deepEqual(left, ['det-2.tar.partial-' + process.pid], 'no partial file of ours is left');
      // System tar reads it.
      const list = spawnSync('tar', ['-tf', two], { encoding: 'utf8' });
      assert.equal(list.status, 0, list.stderr);
      assert.match(list.stdout, /^manifest\.json\n/);
    } finally {
      a.close();
    }
  });
});

describe('sync planning', () => {
  const R = (h: string, name: string): RRef => `${h.repeat(32)}-${'d'.repeat(31)}${h}-${name}` as RRef;
  const a = R('a', 'a');
  const b = R('b', 'b');
  const c = R('c', 'c');
  const d = R('1', 'd');
  const deps: Record<string, RRef[]> = { [c]: [b, a], [b]: [a], [a]: [], [d]: [c] };

  it('closureOf visits each node once; dependencyOrder puts dependencies first', () => {
    const nodes = closureOf([d], (r) => deps[r]!);
    assert.deepEqual(nodes.map((n) => n.rref).sort(), [a, b, c, d].sort());
    assert.deepEqual(dependencyOrder(nodes), [a, b, c, d]);
  });

  it('dependencyOrder handles a 20,000-long chain without recursion, and refuses a cycle', () => {
    const chain = Array.from({ length: 20_000 }, (_, i) => ({
      rref: `r${i}` as RRef,
      deps: i > 0 ? [`r${i - 1}` as RRef] : [],
    }));
    const order = dependencyOrder([...chain].reverse());
    assert.equal(order[0], 'r0');
    assert.equal(order[19_999], 'r19999');
    assert.throws(
      () =>
        dependencyOrder([
          { rref: 'x' as RRef, deps: ['y' as RRef] },
          { rref: 'y' as RRef, deps: ['x' as RRef] },
        ]),
      isCode('E_BAD_CLOSURE'),
    );
  });

  it('planTransfer sends only what is missing, in order, and every derivation of the closure is declared', () => {
    const nodes = closureOf([d], (r) => deps[r]!);
    const have = new Set<string>([a, a.slice(33)]);
    const m = planTransfer([d], nodes, (r) => have.has(r));
    assert.deepEqual(m.rrefs, [b, c, d]);
    assert.equal(m.drefs.length, 4);
    assert.deepEqual(m.drvs.sort(), [b, c, d].map((r) => r.slice(33)).sort());
    assert.deepEqual(parseManifest(JSON.parse(JSON.stringify(m))), m);
    assert.throws(() => parseManifest({ ...m, rrefs: ['../../etc'] }), isCode('E_BAD_CLOSURE'));
  });

  it('parseRemote accepts [user@]host:STORE and refuses anything ssh could misread', () => {
    assert.deepEqual(parseRemote('root@10.200.77.2:/srv/store'), {
      sshTarget: 'root@10.200.77.2',
      rsyncTarget: 'root@10.200.77.2',
      store: '/srv/store',
    });
    assert.deepEqual(parseRemote('host:rel/store'), { sshTarget: 'host', rsyncTarget: 'host', store: 'rel/store' });
    assert.deepEqual(parseRemote('u@[fd00::1]:/s'), {
      sshTarget: 'u@fd00::1',
      rsyncTarget: 'u@[fd00::1]',
      store: '/s',
    });
    for (const bad of ['host', 'host:', ':s', '-oProxyCommand=x:s', 'a b:s', 'u@:s', '@h:s', 'h:a\nb']) {
      assert.throws(() => parseRemote(bad), isCode('E_BAD_REMOTE'), bad);
    }
  });

  it('splitCommand splits an -e command the way a shell would', () => {
    assert.deepEqual(splitCommand(`ssh -i 'my key' -o "A=b c" -p\\ 22`), [
      'ssh',
      '-i',
      'my key',
      '-o',
      'A=b c',
      '-p 22',
    ]);
    assert.throws(() => splitCommand(`ssh 'x`), isCode('E_BAD_COMMAND'));
  });
});
