/**
 * Archives small enough ride in their signed entries (format 2): a pull of
 * them makes no archive request, and everything that is refused for an
 * archive object is refused for an inline one too, whoever signed it.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, test } from 'node:test';
import type { BlobStore } from '../src/store/cache/blob.js';
import { CacheStore } from '../src/store/cache/cache-store.js';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { entryKey, fingerprint, type CacheEntry } from '../src/store/cache/format.js';
import { cacheGc } from '../src/store/cache/gc.js';
import { pullClosure } from '../src/store/cache/pull.js';
import { INLINE_ENV, pushClosure } from '../src/store/cache/push.js';
import { sign } from '../src/store/cache/sign.js';
import { verifyCache } from '../src/store/cache/verify.js';
import { TarWriter } from '../src/store/export.js';
import { candidateOf } from '../src/store/interface.js';
import { parseRRef, type RRef } from '../src/store/refs.js';
import { LocalStore } from '../src/store/store.js';
import { diamond, keyPair, snapshot } from './cache-helpers.js';
import { isCode, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let alice: LocalStore;
let bob: LocalStore;
let cache: FileBlobStore;
let g: Record<'base' | 'left' | 'right' | 'top', RRef>;
const keys = keyPair('team-1');

beforeEach(async () => {
  t = tempDir('cairn-cache-inline');
  alice = LocalStore.open(path.join(t.dir, 'alice'));
  bob = LocalStore.open(path.join(t.dir, 'bob'));
  cache = new FileBlobStore(path.join(t.dir, 'cache'));
  g = await diamond(alice);
});
afterEach(() => {
  alice.close();
  bob.close();
  t.cleanup();
  delete process.env[INLINE_ENV];
});

/** The BlobStore calls a pull makes, by method and key prefix. */
function counting(blob: BlobStore): { blob: BlobStore; calls: string[] } {
  const calls: string[] = [];
  const wrapped: BlobStore = {
    url: blob.url,
    identity: blob.identity,
    writable: blob.writable,
    get: (k) => (calls.push(`get ${k.slice(0, 2)}`), blob.get(k)),
    getStream: (k) => (calls.push(`get ${k.slice(0, 2)}`), blob.getStream(k)),
    has: (ks) => (calls.push(...ks.map((k) => `has ${k.slice(0, 2)}`)), blob.has(ks)),
    put: (k, b, o) => blob.put(k, b, o),
    list: (p) => (calls.push(`list ${p}`), blob.list(p)),
    delete: (ks) => blob.delete(ks),
  };
  return { blob: wrapped, calls };
}

const entryFile = (r: RRef): string => path.join(t.dir, 'cache', entryKey(r));
const readEntryFile = (r: RRef): CacheEntry => JSON.parse(fs.readFileSync(entryFile(r), 'utf8')) as CacheEntry;

/** Replaces an entry's inline archive and signs the result with the trusted key: only the content can betray it. */
function forge(r: RRef, archive: Buffer): void {
  const { signatures: _, ...rest } = { ...readEntryFile(r), inlineArchive: archive.toString('base64') };
  fs.writeFileSync(entryFile(r), JSON.stringify({ ...rest, signatures: [sign(keys.secret, fingerprint(rest))] }));
}

function tarOf(dir: string): Buffer {
  const file = path.join(t.dir, `forged-${Date.now()}.tar`);
  const fd = fs.openSync(file, 'wx');
  const w = new TarWriter(fd);
  w.tree(Buffer.from(dir), Buffer.from('out'));
  w.end();
  fs.closeSync(fd);
  return fs.readFileSync(file);
}

const nothingEntered = (): void => {
  for (const r of Object.values(g)) assert.ok(!bob.has(r), `${r} entered`);
};

describe('archives inline in their entries', () => {
  test('small trees make no archive objects, and their pull reads entries only', async () => {
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    assert.ok(!fs.existsSync(path.join(t.dir, 'cache', 'a')), 'no archive objects');
    for (const r of Object.values(g)) assert.notEqual(readEntryFile(r).inlineArchive, null);
    const { blob, calls } = counting(cache);
    await pullClosure(blob, bob, [g.top], { trustedKeys: [keys.public] });
    // cache-info and the four entries; no archive, log or derivation request.
    assert.deepEqual(calls.sort(), ['get ca', 'get r/', 'get r/', 'get r/', 'get r/']);
    for (const r of Object.values(g)) assert.deepEqual(snapshot(bob.outPath(r)), snapshot(alice.outPath(r)));
    assert.equal((await verifyCache(cache, { trustedKeys: [keys.public] })).problems.length, 0);
    // gc needs no object for them either: nothing is removed, and the closure still pulls.
    const report = await cacheGc(cache, { keepLast: 1 });
    assert.deepEqual(report.broken, []);
    const carol = LocalStore.open(path.join(t.dir, 'carol'));
    try {
      await pullClosure(cache, carol, [g.top], { trustedKeys: [keys.public] });
      assert.ok(carol.has(g.top));
    } finally {
      carol.close();
    }
  });

  test('a matcher reads files of inline candidates without a request or a fetch; a wrong tree is refused', async () => {
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    const { blob, calls } = counting(cache);
    const cs = await CacheStore.open({ blob, trustedKeys: [keys.public], localDir: path.join(t.dir, 'copies') });
    try {
      const top = parseRRef(g.top).dref;
      const [info] = await cs.realizationsOf(top);
      const asked = calls.length;
      const c = candidateOf(cs, info!);
      assert.equal((await c.read('top.txt')).toString(), 'top\n');
      assert.equal(calls.length, asked, 'no request for the read');
      assert.ok(!cs.local.has(g.top), 'nothing fetched');
      await assert.rejects(c.read('../escape'), isCode('E_NO_SUCH_PATH'));
      // Signed by the trusted key, yet not the entry's tree: refused, not read.
      forge(g.top, gzipSync(tarOf(alice.outPath(g.right))));
      await cs.realizationsOf(top);
      await assert.rejects(cs.readFile(g.top, 'r.txt'), isCode('E_SYNC_HASH_MISMATCH'));
    } finally {
      cs.close();
    }
  });

  test(`${INLINE_ENV}=0 stores every archive as an object; a bad value is E_BAD_ENV`, async () => {
    process.env[INLINE_ENV] = '0';
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    assert.equal(readEntryFile(g.base).inlineArchive, null);
    assert.equal(fs.readdirSync(path.join(t.dir, 'cache', 'a')).length, 4);
    for (const bad of ['-1', '4097', 'lots']) {
      process.env[INLINE_ENV] = bad;
      await assert.rejects(pushClosure(alice, cache, [g.top], { key: keys.secret }), isCode('E_BAD_ENV'));
    }
  });

  test('an inline archive changed after signing breaks the signature', async () => {
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    const e = readEntryFile(g.base);
    const bytes = Buffer.from(e.inlineArchive!, 'base64');
    bytes[bytes.length >> 1]! ^= 1;
    fs.writeFileSync(entryFile(g.base), JSON.stringify({ ...e, inlineArchive: bytes.toString('base64') }));
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_CACHE_BAD_SIGNATURE'),
    );
    nothingEntered();
  });

  test('signed by a trusted key, a hostile or wrong inline archive is still refused, and nothing enters', async () => {
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    // A link out of the output.
    const hostile = path.join(t.dir, 'hostile', 'out');
    fs.mkdirSync(hostile, { recursive: true });
    fs.symlinkSync('/etc', path.join(hostile, 'evil'));
    forge(g.base, gzipSync(tarOf(hostile)));
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), (e: { code?: string }) =>
      ['E_UNSAFE_ARCHIVE', 'E_SYNC_HASH_MISMATCH'].includes(e.code ?? ''),
    );
    nothingEntered();
    // A sound archive of another tree: the tree no longer hashes to the entry's.
    forge(g.base, gzipSync(tarOf(alice.outPath(g.right))));
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_SYNC_HASH_MISMATCH'),
    );
    nothingEntered();
    // Not gzip at all.
    forge(g.base, Buffer.from('not an archive'));
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), isCode('E_BAD_ARCHIVE'));
    nothingEntered();
    const verify = await verifyCache(cache, { trustedKeys: [keys.public] });
    assert.deepEqual(
      verify.problems.map((p) => p.rref),
      [g.base],
    );
  });
});
