/**
 * The binary cache over file://: push and pull of closures between two
 * local stores ("two teammates"), deduplication, and tampering refused.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { randomBytes } from 'node:crypto';
import { INLINE_DRV_MAX, INLINE_LOG_MAX, archiveKey, entryKey } from '../src/store/cache/format.js';
import { pullClosure } from '../src/store/cache/pull.js';
import { pushClosure } from '../src/store/cache/push.js';
import { parseRRef, type RRef } from '../src/store/refs.js';
import { LocalStore } from '../src/store/store.js';
import { addOne, diamond, keyPair, snapshot } from './cache-helpers.js';
import { isCode, tempDir } from './helpers.js';
import { derivation } from './store-conformance.js';

// These tests tamper with, delete and count archive objects, so every archive is an object here
// (CAIRN_CACHE_INLINE_MAX=0; the CLI processes inherit it). Archives inline in their entries: cache-inline.test.ts.
process.env.CAIRN_CACHE_INLINE_MAX = '0';

let t: { dir: string; cleanup: () => void };
let alice: LocalStore;
let bob: LocalStore;
let cache: FileBlobStore;
const keys = keyPair('team-1');

beforeEach(() => {
  t = tempDir('cairn-cache');
  alice = LocalStore.open(path.join(t.dir, 'alice'));
  bob = LocalStore.open(path.join(t.dir, 'bob'));
  cache = new FileBlobStore(path.join(t.dir, 'cache'));
});
afterEach(() => {
  alice.close();
  bob.close();
  t.cleanup();
});

const objects = (prefix: string): string[] => {
  const dir = path.join(t.dir, 'cache', prefix);
  return fs.existsSync(dir)
    ? fs
        .readdirSync(dir, { recursive: true })
        .map(String)
        .filter((n) => n.includes('.'))
    : [];
};

describe('cache push and pull (file://)', () => {
  test('round trip between two stores: same RRefs, same bytes, logs, derivations', async () => {
    const g = await diamond(alice);
    const pushed = await pushClosure(alice, cache, [g.top], { key: keys.secret });
    assert.equal(pushed.closure, 4);
    assert.equal(pushed.pushed.length, 4);
    const pulled = await pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] });
    assert.deepEqual(new Set(pulled.received), new Set(Object.values(g)));
    for (const r of Object.values(g)) {
      assert.ok(bob.has(r));
      assert.deepEqual(snapshot(bob.outPath(r)), snapshot(alice.outPath(r)));
      assert.deepEqual(await bob.meta(r), await alice.meta(r));
      assert.deepEqual(await bob.readLog(r), await alice.readLog(r));
    }
    const top = parseRRef(g.top).dref;
    assert.equal(await bob.derivation(top), await alice.derivation(top));
    // Pulled realizations are sealed and whole, as if built here.
    for (const r of Object.values(g)) assert.equal(await bob.inspect(r), null);
    // Pushing again uploads nothing; pulling again receives nothing.
    const again = await pushClosure(alice, cache, [g.top], { key: keys.secret });
    assert.deepEqual(again.pushed, []);
    assert.equal(again.present.length, 4);
    assert.deepEqual((await pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] })).received, []);
  });

  test('a tree beyond the in-memory limit streams through a file, whole', async () => {
    const big = 'x'.repeat(9 << 20) + 'end';
    const a = await addOne(alice, 'big', { 'big.bin': big, 'small.txt': 's' });
    await pushClosure(alice, cache, [a.rref], { key: keys.secret });
    await pullClosure(cache, bob, [a.rref], { trustedKeys: [keys.public] });
    assert.equal((await bob.readFile(a.rref, 'big.bin')).toString(), big);
    assert.deepEqual(snapshot(bob.outPath(a.rref)), snapshot(alice.outPath(a.rref)));
  });

  test('small logs ride in the entry, big ones are objects; an incompressible tree is a plain tar', async () => {
    const small = await addOne(alice, 'small-log', { 'a.txt': 'a\n' }, [], { log: 'one line\n' });
    const bigLog = 'a line of the log\n'.repeat(INLINE_LOG_MAX);
    const big = await addOne(alice, 'big-log', { 'b.txt': 'b\n' }, [], { log: bigLog });
    const dir = alice.makeTempDir('cache-test-stage');
    fs.mkdirSync(path.join(dir, 'out'));
    fs.writeFileSync(path.join(dir, 'out', 'n.bin'), randomBytes(256 << 10));
    const [added] = await alice.add({
      ...derivation('noise', 'cache-test'),
      context: {},
      buildMs: 1,
      outputs: [{ dir, created: Date.now() }],
    });
    const noise = added!.meta;
    await pushClosure(alice, cache, [small.rref, big.rref, noise.rref], { key: keys.secret });
    const entry = (r: RRef): Record<string, unknown> =>
      JSON.parse(fs.readFileSync(path.join(t.dir, 'cache', entryKey(r)), 'utf8')) as Record<string, unknown>;
    assert.equal(entry(small.rref).log, null);
    assert.equal(Buffer.from(entry(small.rref).inlineLog as string, 'base64').toString(), 'one line\n');
    assert.equal(entry(big.rref).inlineLog, null);
    assert.match(entry(big.rref).log as string, /^l\//);
    assert.equal(objects('l').length, 1);
    assert.equal(entry(noise.rref).archive, archiveKey(noise.tree, 'tar'));
    assert.equal(entry(small.rref).archive, archiveKey(small.tree, 'tar.gz'));
    await pullClosure(cache, bob, [small.rref, big.rref, noise.rref], { trustedKeys: [keys.public] });
    assert.equal((await bob.readLog(small.rref)).toString(), 'one line\n');
    assert.equal((await bob.readLog(big.rref)).toString(), bigLog);
    assert.deepEqual(snapshot(bob.outPath(noise.rref)), snapshot(alice.outPath(noise.rref)));
  });

  test('identical trees are stored once', async () => {
    const a = await addOne(alice, 'one', { 'same.txt': 'same bytes\n' });
    const b = await addOne(alice, 'two', { 'same.txt': 'same bytes\n' });
    assert.notEqual(a.rref, b.rref);
    assert.equal(a.tree, b.tree);
    const r = await pushClosure(alice, cache, [a.rref, b.rref], { key: keys.secret });
    assert.equal(r.archives, 1);
    assert.deepEqual(objects('a'), [`${a.tree}.tar.gz`]);
    assert.equal(objects('r').length, 2);
    await pullClosure(cache, bob, [a.rref, b.rref], { trustedKeys: [keys.public] });
    assert.ok(bob.has(a.rref) && bob.has(b.rref));
  });

  test('a DRef pulls every realization the cache has of it', async () => {
    const a = await addOne(alice, 'multi', { 'v.txt': '1\n' });
    const b = await addOne(alice, 'multi', { 'v.txt': '2\n' });
    await pushClosure(alice, cache, [a.dref], { key: keys.secret });
    const r = await pullClosure(cache, bob, [a.dref], { trustedKeys: [keys.public] });
    assert.deepEqual(new Set(r.received), new Set([a.rref, b.rref]));
  });

  test('a DRef skips the realizations whose entries do not count, and says so; an RRef is strict', async () => {
    const good = await addOne(alice, 'mixed', { 'v.txt': 'good\n' });
    const other = await addOne(alice, 'mixed', { 'v.txt': 'other\n' });
    await pushClosure(alice, cache, [good.rref], { key: keys.secret });
    await pushClosure(alice, cache, [other.rref], { key: keyPair('stranger').secret });
    const r = await pullClosure(cache, bob, [good.dref], { trustedKeys: [keys.public] });
    assert.deepEqual(r.received, [good.rref]);
    assert.deepEqual(r.skipped, [{ rref: other.rref, code: 'E_CACHE_UNTRUSTED' }]);
    assert.ok(!bob.has(other.rref));
    await assert.rejects(
      pullClosure(cache, bob, [other.rref], { trustedKeys: [keys.public] }),
      isCode('E_CACHE_UNTRUSTED'),
    );
    await assert.rejects(pullClosure(cache, bob, [good.dref], { trustedKeys: [] }), isCode('E_CACHE_UNTRUSTED'));
  });

  test('pushing with another key adds its signature; a malformed or tampered entry is replaced', async () => {
    const g = await diamond(alice);
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
    const rotated = keyPair('team-2');
    const r = await pushClosure(alice, cache, [g.top], { key: rotated.secret });
    assert.deepEqual(r.pushed, []);
    assert.deepEqual(new Set(r.signed), new Set(Object.values(g)));
    const entry = JSON.parse((await cache.get(entryKey(g.top)))!.toString()) as { signatures: string[] };
    assert.deepEqual(
      entry.signatures.map((x) => x.split(':')[0]),
      ['team-1', 'team-2'],
    );
    // Either key alone is enough to pull.
    await pullClosure(cache, bob, [g.top], { trustedKeys: [rotated.public] });
    assert.ok(bob.has(g.top));
    // Signed already: nothing to do.
    assert.deepEqual((await pushClosure(alice, cache, [g.top], { key: rotated.secret })).signed, []);

    // A malformed entry, and one whose creation time was edited (its signature by this key fails): replaced.
    await cache.put(entryKey(g.left), Buffer.from('{"format": "junk"}'));
    const e = JSON.parse((await cache.get(entryKey(g.right)))!.toString()) as { created: number };
    e.created += 1000;
    await cache.put(entryKey(g.right), Buffer.from(JSON.stringify(e)));
    const again = await pushClosure(alice, cache, [g.top], { key: keys.secret });
    assert.deepEqual(new Set(again.pushed), new Set([g.left, g.right]));
    const carol = LocalStore.open(path.join(t.dir, 'carol'));
    try {
      await pullClosure(cache, carol, [g.top], { trustedKeys: [keys.public] });
      assert.equal((await carol.meta(g.right)).created, (await alice.meta(g.right)).created);
    } finally {
      carol.close();
    }
  });

  test('an entry whose archive was deleted is pushed again whole, and until then pull refuses it', async () => {
    const a = await addOne(alice, 'gone', { 'f.txt': 'f\n' });
    await pushClosure(alice, cache, [a.rref], { key: keys.secret });
    await cache.delete([archiveKey(a.tree)]);
    await assert.rejects(pullClosure(cache, bob, [a.rref], { trustedKeys: [keys.public] }), isCode('E_CACHE_MISSING'));
    assert.ok(!bob.has(a.rref));
    const r = await pushClosure(alice, cache, [a.rref], { key: keys.secret });
    assert.deepEqual(r.pushed, [a.rref]);
    await pullClosure(cache, bob, [a.rref], { trustedKeys: [keys.public] });
    assert.ok(bob.has(a.rref));
    // Likewise a deleted derivation file.
    await cache.delete([`d/${a.dref}.json`]);
    assert.deepEqual((await pushClosure(alice, cache, [a.rref], { key: keys.secret })).pushed, [a.rref]);
    assert.ok(await cache.get(`d/${a.dref}.json`));
  });
});

describe('cache tampering is refused and nothing enters', () => {
  let g: Record<'base' | 'left' | 'right' | 'top', RRef>;
  beforeEach(async () => {
    g = await diamond(alice);
    await pushClosure(alice, cache, [g.top], { key: keys.secret });
  });
  const nothingEntered = (): void => {
    for (const r of Object.values(g)) assert.ok(!bob.has(r), `${r} entered`);
  };
  const entryFile = (r: RRef): string => path.join(t.dir, 'cache', entryKey(r));
  const editEntry = (r: RRef, f: (e: Record<string, unknown>) => void): void => {
    const e = JSON.parse(fs.readFileSync(entryFile(r), 'utf8')) as Record<string, unknown>;
    f(e);
    fs.writeFileSync(entryFile(r), JSON.stringify(e));
  };

  test('a flipped archive byte', async () => {
    const meta = await alice.meta(g.base);
    const file = path.join(t.dir, 'cache', archiveKey(meta.tree));
    const bytes = fs.readFileSync(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    fs.writeFileSync(file, bytes);
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), (e: { code?: string }) =>
      ['E_BAD_ARCHIVE', 'E_SYNC_HASH_MISMATCH'].includes(e.code ?? ''),
    );
    nothingEntered();
  });

  test('an archive replaced by a valid archive of another tree', async () => {
    const meta = await alice.meta(g.base);
    const other = await alice.meta(g.right);
    fs.copyFileSync(
      path.join(t.dir, 'cache', archiveKey(other.tree)),
      path.join(t.dir, 'cache', archiveKey(meta.tree)),
    );
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_SYNC_HASH_MISMATCH'),
    );
    nothingEntered();
  });

  test('edited metadata: a changed creation time breaks the signature', async () => {
    editEntry(g.left, (e) => {
      e.created = (e.created as number) + 1;
    });
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_CACHE_BAD_SIGNATURE'),
    );
    nothingEntered();
  });

  test('edited metadata: a changed tree no longer hashes to the RRef', async () => {
    editEntry(g.left, (e) => {
      e.tree = (e.tree as string).replace(/^./, (c) => (c === 'a' ? 'b' : 'a'));
    });
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), isCode('E_CACHE_BAD_ENTRY'));
    nothingEntered();
  });

  test('a wrong signature: signed by another key under the trusted name', async () => {
    const forger = keyPair('team-1');
    const forged = await pushClosure(alice, new FileBlobStore(path.join(t.dir, 'forged')), [g.top], {
      key: forger.secret,
    });
    assert.equal(forged.pushed.length, 4);
    fs.copyFileSync(path.join(t.dir, 'forged', entryKey(g.base)), entryFile(g.base));
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_CACHE_BAD_SIGNATURE'),
    );
    nothingEntered();
  });

  test('a key that is not trusted', async () => {
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keyPair('other').public] }),
      isCode('E_CACHE_UNTRUSTED'),
    );
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [] }), isCode('E_CACHE_UNTRUSTED'));
    nothingEntered();
  });

  test('unsigned', async () => {
    editEntry(g.right, (e) => {
      e.signatures = [];
    });
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), isCode('E_CACHE_UNSIGNED'));
    nothingEntered();
  });

  test('a replaced derivation file: the signed copy in the entry is used; a big one is refused', async () => {
    const dref = parseRRef(g.base).dref;
    fs.writeFileSync(path.join(t.dir, 'cache', 'd', `${dref}.json`), '{"format":"evil"}');
    await pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] });
    assert.equal(await bob.derivation(dref), await alice.derivation(dref));
    // A derivation beyond INLINE_DRV_MAX is its d/ object only, checked against the signed hash.
    const big = await addOne(alice, 'big', { 'x.txt': 'x\n' }, [], { salt: 'x'.repeat(INLINE_DRV_MAX) });
    await pushClosure(alice, cache, [big.rref], { key: keys.secret });
    assert.equal((JSON.parse(fs.readFileSync(entryFile(big.rref), 'utf8')) as { inlineDrv: unknown }).inlineDrv, null);
    fs.writeFileSync(path.join(t.dir, 'cache', 'd', `${big.dref}.json`), '{"format":"evil"}');
    await assert.rejects(
      pullClosure(cache, bob, [big.rref], { trustedKeys: [keys.public] }),
      isCode('E_SYNC_HASH_MISMATCH'),
    );
    assert.ok(!bob.has(big.rref));
  });

  test('an edited inline derivation or log breaks the signature', async () => {
    editEntry(g.base, (e) => {
      e.inlineLog = Buffer.from('forged log\n').toString('base64');
    });
    await assert.rejects(
      pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }),
      isCode('E_CACHE_BAD_SIGNATURE'),
    );
    nothingEntered();
  });

  test('a hostile archive (a link leaving the output) is refused before anything is written', async () => {
    // A tar whose out/evil links to /etc, under the key of base's tree.
    const { TarWriter } = await import('../src/store/export.js');
    const src = path.join(t.dir, 'hostile');
    fs.mkdirSync(path.join(src, 'out'), { recursive: true });
    fs.symlinkSync('/etc', path.join(src, 'out', 'evil'));
    const tar = path.join(t.dir, 'h.tar');
    const fd = fs.openSync(tar, 'wx');
    const w = new TarWriter(fd);
    w.tree(Buffer.from(path.join(src, 'out')), Buffer.from('out'));
    w.end();
    fs.closeSync(fd);
    const { gzipSync } = await import('node:zlib');
    const meta = await alice.meta(g.base);
    fs.writeFileSync(path.join(t.dir, 'cache', archiveKey(meta.tree)), gzipSync(fs.readFileSync(tar)));
    await assert.rejects(pullClosure(cache, bob, [g.top], { trustedKeys: [keys.public] }), (e: { code?: string }) =>
      ['E_UNSAFE_ARCHIVE', 'E_SYNC_HASH_MISMATCH'].includes(e.code ?? ''),
    );
    nothingEntered();
  });
});
