/**
 * The cache CLI against file:// caches, with real processes: keys, push,
 * pull with trust from --trusted-key or config.json, ls, verify; two pushes
 * at once; a push killed with SIGKILL between its archives and its
 * metadata; gc that keeps closures whole.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { cacheGc } from '../src/store/cache/gc.js';
import { addCacheTempRoot } from '../src/store/cache/entries.js';
import { archiveKey, entryKey } from '../src/store/cache/format.js';
import { pullClosure } from '../src/store/cache/pull.js';
import { PAUSE_ENV, pushClosure } from '../src/store/cache/push.js';
import { parsePublicKey } from '../src/store/cache/sign.js';
import { verifyCache } from '../src/store/cache/verify.js';
import { parseRRef, type RRef } from '../src/store/refs.js';
import { LocalStore } from '../src/store/store.js';
import { addOne, diamond, keyPair } from './cache-helpers.js';
import { cairn, cairnAsync, cairnBin, expectError, isCode, ok, repoRoot, tempDir } from './helpers.js';

// These tests tamper with, delete and count archive objects, so every archive is an object here
// (CAIRN_CACHE_INLINE_MAX=0; the CLI processes inherit it). Archives inline in their entries: cache-inline.test.ts.
process.env.CAIRN_CACHE_INLINE_MAX = '0';

let t: { dir: string; cleanup: () => void };
let aliceRoot: string;
let bobRoot: string;
let url: string;
let cacheDir: string;

beforeEach(() => {
  t = tempDir('cairn-cache-cli');
  aliceRoot = path.join(t.dir, 'alice');
  bobRoot = path.join(t.dir, 'bob');
  cacheDir = path.join(t.dir, 'cache');
  url = `file://${cacheDir}`;
});
afterEach(() => t.cleanup());

async function withStore<T>(root: string, f: (s: LocalStore) => Promise<T>): Promise<T> {
  const s = LocalStore.open(root);
  try {
    return await f(s);
  } finally {
    s.close();
  }
}

function generate(name: string): { secret: string; public: string } {
  ok(cairn(aliceRoot, ['key', 'generate', path.join(t.dir, name)]));
  return { secret: path.join(t.dir, `${name}.secret`), public: path.join(t.dir, `${name}.public`) };
}

const entries = (): string[] =>
  fs.existsSync(path.join(cacheDir, 'r'))
    ? fs
        .readdirSync(path.join(cacheDir, 'r'), { recursive: true })
        .map(String)
        .filter((n) => n.endsWith('.json'))
    : [];

describe('cairn cache (CLI)', () => {
  test('key generate, push, pull with --trusted-key or config.json, ls, verify', async () => {
    const key = generate('team-1');
    assert.equal(fs.statSync(key.secret).mode & 0o777, 0o600);
    assert.match(fs.readFileSync(key.public, 'utf8'), /^team-1:[A-Za-z0-9+/]{43}=\n$/);
    expectError(cairn(aliceRoot, ['key', 'generate', path.join(t.dir, 'team-1')]), 'E_BAD_KEY');

    const g = await withStore(aliceRoot, (s) => diamond(s));
    const push = ok(cairn(aliceRoot, ['cache', 'push', url, g.top, '--key', key.secret]));
    assert.match(push.stdout, /pushed 4 realization\(s\) of a closure of 4 \(0 already there\)/);

    // Bob trusts nobody yet: refused, nothing enters.
    expectError(cairn(bobRoot, ['cache', 'pull', url, g.top]), 'E_CACHE_UNTRUSTED');
    await withStore(bobRoot, async (s) => assert.ok(!s.has(g.top)));
    // A public key file on the command line.
    const pulled = ok(cairn(bobRoot, ['cache', 'pull', url, g.top, '--trusted-key', key.public]));
    assert.match(pulled.stdout, /pulled 4 realization\(s\)/);
    await withStore(bobRoot, async (s) => {
      for (const r of Object.values(g)) assert.ok(s.has(r));
    });

    // A third store trusts the key through its config.json.
    const carol = path.join(t.dir, 'carol');
    fs.mkdirSync(carol);
    fs.writeFileSync(
      path.join(carol, 'config.json'),
      JSON.stringify({ 'trusted-public-keys': [fs.readFileSync(key.public, 'utf8').trim()] }),
    );
    ok(cairn(carol, ['cache', 'pull', url, parseRRef(g.left).dref]));
    await withStore(carol, async (s) => assert.ok(s.has(g.left) && s.has(g.base) && !s.has(g.top)));
    // A typo in config.json is an error, not silent distrust.
    fs.writeFileSync(path.join(carol, 'config.json'), JSON.stringify({ 'trusted-keys': [] }));
    expectError(cairn(carol, ['cache', 'pull', url, g.top]), 'E_STORE_CONFIG');

    const ls = ok(cairn(aliceRoot, ['cache', 'ls', url]));
    assert.equal(ls.stdout.trim().split('\n').length, 4);
    assert.match(ls.stdout, /signed by team-1/);
    const one = ok(cairn(aliceRoot, ['cache', 'ls', url, parseRRef(g.top).dref]));
    assert.equal(one.stdout.trim().split('\n').length, 1);

    assert.match(
      ok(cairn(aliceRoot, ['cache', 'verify', url, '--trusted-key', key.public])).stdout,
      /4 of 4 entries are usable/,
    );
    // verify and ls need no store, and create none.
    const none = path.join(t.dir, 'no-store');
    ok(cairn(none, ['cache', 'verify', url, '--trusted-key', key.public]));
    ok(cairn(none, ['cache', 'ls', url]));
    assert.ok(!fs.existsSync(none));
    // A flipped archive byte: verify names the realizations that use it, and exits 1.
    const meta = await withStore(aliceRoot, (s) => s.meta(g.right));
    const file = path.join(cacheDir, archiveKey(meta.tree));
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 12]! ^= 0x40;
    fs.writeFileSync(file, bytes);
    const v = cairn(aliceRoot, ['cache', 'verify', url, '--trusted-key', key.public]);
    assert.equal(v.code, 1);
    assert.match(v.stdout, new RegExp(`${g.right}: E_BAD_ARCHIVE`));
    assert.match(v.stdout, /3 of 4 entries are usable/);
  });

  test('two processes pushing overlapping closures at once lose nothing', async () => {
    const key = generate('team-1');
    const [a, b] = await withStore(aliceRoot, async (s) => {
      const g = await diamond(s);
      // A second graph sharing base, and a few more realizations of the same DRefs.
      const extra: RRef[] = [];
      for (let i = 0; i < 6; i++) extra.push((await addOne(s, 'left', { 'l.txt': `left ${i}\n` }, [g.base])).rref);
      return [
        [g.top, ...extra.slice(0, 4)],
        [g.right, g.left, ...extra.slice(2)],
      ] as const;
    });
    const [ra, rb] = await Promise.all([
      cairnAsync(aliceRoot, ['cache', 'push', url, ...a, '--key', key.secret, '-j', '4']),
      cairnAsync(aliceRoot, ['cache', 'push', url, ...b, '--key', key.secret, '-j', '4']),
    ]);
    ok(ra);
    ok(rb);
    const all = [...new Set([...a, ...b])];
    assert.equal(entries().length, 4 + 6);
    const trustedKeys = [parsePublicKey(fs.readFileSync(key.public, 'utf8'))];
    await withStore(bobRoot, async (s) => {
      await pullClosure(new FileBlobStore(cacheDir), s, all, { trustedKeys });
      for (const r of all) assert.ok(s.has(r));
    });
    const report = await verifyCache(new FileBlobStore(cacheDir), { trustedKeys });
    assert.deepEqual(report.problems, []);
    assert.equal(report.ok, 10);
  });

  test('a push killed with SIGKILL between its archives and its metadata leaves nothing that looks valid', async () => {
    const key = generate('team-1');
    const g = await withStore(aliceRoot, (s) => diamond(s));
    const marker = path.join(t.dir, 'paused');
    const child = spawn(
      process.execPath,
      [cairnBin, '--store', aliceRoot, 'cache', 'push', url, g.top, '--key', key.secret],
      {
        cwd: repoRoot,
        env: { ...process.env, [PAUSE_ENV]: marker },
        stdio: 'ignore',
      },
    );
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));
    while (!fs.existsSync(marker)) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');

    // Archives and derivations are there, but no entry: nothing to pull, ls and verify see nothing.
    assert.ok(fs.readdirSync(path.join(cacheDir, 'a')).length > 0);
    assert.deepEqual(entries(), []);
    const blob = new FileBlobStore(cacheDir);
    const trustedKeys = [parsePublicKey(fs.readFileSync(key.public, 'utf8'))];
    await withStore(bobRoot, async (s) => {
      await assert.rejects(pullClosure(blob, s, [g.top], { trustedKeys }), isCode('E_CACHE_MISSING'));
      assert.ok(!s.has(g.base));
    });
    assert.equal(ok(cairn(aliceRoot, ['cache', 'ls', url])).stdout, '');
    assert.deepEqual((await verifyCache(blob, { trustedKeys })).problems, []);

    // The dead push's temporary root does not count: gc removes its archives; a new push completes.
    const gc = await cacheGc(blob, { keepLast: 0 });
    assert.ok(gc.objects > 0);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'a')), []);
    ok(cairn(aliceRoot, ['cache', 'push', url, g.top, '--key', key.secret]));
    await withStore(bobRoot, async (s) => {
      await pullClosure(blob, s, [g.top], { trustedKeys });
      assert.ok(s.has(g.top));
    });
  });
});

describe('cache gc keeps closures whole', () => {
  const keys = keyPair('team-1');

  test('--keep-last keeps what a kept realization was built from; --older-than spares the young', async () => {
    const blob = new FileBlobStore(cacheDir);
    const r = await withStore(aliceRoot, async (s) => {
      const x0 = await addOne(s, 'x', { v: '0' });
      const y0 = await addOne(s, 'y', { v: 'y0' }, [x0.rref]);
      const x1 = await addOne(s, 'x', { v: '1' });
      const y1 = await addOne(s, 'y', { v: 'y1' }, [x0.rref]);
      const x2 = await addOne(s, 'x', { v: '2' });
      await pushClosure(s, blob, [x0.rref, y0.rref, x1.rref, y1.rref, x2.rref], { key: keys.secret });
      return { x0, y0, x1, y1, x2 };
    });
    // Nothing is older than a day.
    assert.deepEqual((await cacheGc(blob, { keepLast: 1, olderThanMs: 86_400_000 })).deleted, []);
    const gc = await cacheGc(blob, { keepLast: 1 });
    // Newest of x is x2, newest of y is y1; y1 was built from x0, which stays.
    assert.deepEqual(new Set(gc.deleted), new Set([r.y0.rref, r.x1.rref]));
    assert.deepEqual((await verifyCache(blob, { trustedKeys: [keys.public] })).problems, []);
    assert.ok(!fs.existsSync(path.join(cacheDir, archiveKey(r.x1.tree))));
    assert.ok(fs.existsSync(path.join(cacheDir, archiveKey(r.x0.tree))));
    await withStore(bobRoot, async (s) => {
      await pullClosure(blob, s, [r.y1.rref, r.x2.rref], { trustedKeys: [keys.public] });
      assert.ok(s.has(r.x0.rref));
    });
  });

  test('entries that do not count are removed, dependants first; temporary roots keep their DRefs', async () => {
    const blob = new FileBlobStore(cacheDir);
    const g = await withStore(aliceRoot, async (s) => {
      const g = await diamond(s);
      await pushClosure(s, blob, [g.top], { key: keys.secret });
      return g;
    });
    const root = await addCacheTempRoot(blob, [parseRRef(g.top).dref, parseRRef(g.left).dref], []);
    // keepLast 0 would delete everything; the root keeps top and left, and their closure.
    const kept = await cacheGc(blob, { keepLast: 0 });
    assert.deepEqual(kept.deleted, []);
    await root.release();
    // A missing archive makes base unusable, and with it everything built from it.
    const base = await withStore(aliceRoot, (s) => s.meta(g.base));
    await blob.delete([archiveKey(base.tree)]);
    const gc = await cacheGc(blob, { keepLast: 5 });
    assert.deepEqual(new Set(gc.broken), new Set(Object.values(g)));
    for (const r of Object.values(g)) assert.ok(!fs.existsSync(path.join(cacheDir, entryKey(r))));
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'a')), []);
  });

  test('the CLI needs a policy and a whole number', () => {
    expectError(cairn(aliceRoot, ['cache', 'gc', url]), 'E_USAGE');
    expectError(cairn(aliceRoot, ['cache', 'gc', url, '--keep-last', '-1']), 'E_USAGE');
  });
});
