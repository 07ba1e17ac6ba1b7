/**
 * What every BlobStore does, run against each backend (s3 on Swift, http
 * on nginx, file): the same calls give the same answers. `writer` puts and
 * deletes (for http: the file store nginx serves), `reader` reads; when
 * `proxy` sits in front of the reader, the suite also counts its requests.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { BlobStore } from '../src/store/cache/blob.js';
import { mapBounded } from '../src/store/cache/blob-key.js';
import type { FaultProxy } from './fixtures/fault-proxy.js';
import { isCode } from './helpers.js';

export interface BlobBackend {
  writer: BlobStore;
  reader: BlobStore;
  /** The counting proxy in front of the reader, if any. */
  proxy?: FaultProxy;
  /** False for a backend whose list is E_CACHE_NO_LIST (an http server without JSON listings). */
  canList: boolean;
  close?: () => Promise<void> | void;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export function blobStoreBehaviour(name: string, setup: () => Promise<BlobBackend>): void {
  describe(`BlobStore behaviour: ${name}`, () => {
    let b: BlobBackend;
    before(async () => {
      b = await setup();
    });
    after(async () => {
      await b?.close?.();
    });

    it('put then get and getStream give the same bytes; a missing key is undefined', async () => {
      const bytes = randomBytes(3000);
      await b.writer.put('small/one.bin', bytes);
      assert.deepEqual(await b.reader.get('small/one.bin'), bytes);
      assert.deepEqual(await readAll((await b.reader.getStream('small/one.bin'))!), bytes);
      assert.equal(await b.reader.get('small/missing.bin'), undefined);
      assert.equal(await b.reader.getStream('small/missing.bin'), undefined);
      assert.deepEqual(await b.reader.get('small/one.bin/deeper'), undefined);
    });

    it('an empty object is an object, not a missing one', async () => {
      await b.writer.put('small/empty', Buffer.alloc(0));
      assert.deepEqual(await b.reader.get('small/empty'), Buffer.alloc(0));
      assert.deepEqual(await b.reader.has(['small/empty']), new Set(['small/empty']));
    });

    it('a put replaces the object whole', async () => {
      await b.writer.put('small/replaced', Buffer.from('first version'));
      await b.writer.put('small/replaced', Buffer.from('2nd'));
      assert.equal(String(await b.reader.get('small/replaced')), '2nd');
    });

    it('has answers about 1,000 keys (half present) exactly, in parallel requests', async () => {
      const keys = Array.from({ length: 1000 }, (_, i) => `has/${String(i).padStart(4, '0')}.json`);
      const present = keys.filter((_, i) => i % 2 === 0);
      await mapBounded(present, 16, (k) => b.writer.put(k, Buffer.from(k)));
      b.proxy?.reset();
      const got = await b.reader.has([...keys, keys[0]!]);
      assert.deepEqual([...got].sort(), present);
      if (b.proxy) {
        const heads = b.proxy.seen.filter((r) => r.method === 'HEAD');
        assert.equal(heads.length, 1000, 'one HEAD per distinct key, no more');
        assert.ok(b.proxy.maxInFlight > 1, `requests overlap (at most ${b.proxy.maxInFlight} at once)`);
        assert.ok(b.proxy.maxInFlight <= 32, `concurrency is bounded (${b.proxy.maxInFlight} at once)`);
      }
      assert.deepEqual(await b.reader.has([]), new Set());
    });

    it('list gives every key under a prefix, and only those', async () => {
      await b.writer.put('lst/a/1', Buffer.from('1'));
      await b.writer.put('lst/a/2', Buffer.from('2'));
      await b.writer.put('lst/ab', Buffer.from('3'));
      await b.writer.put('lst/b/1', Buffer.from('4'));
      if (!b.canList) {
        await assert.rejects(async () => {
          for await (const _ of b.reader.list('lst/')) void _;
        }, isCode('E_CACHE_NO_LIST'));
        return;
      }
      const all: string[] = [];
      for await (const k of b.reader.list('lst/')) all.push(k);
      assert.deepEqual(all.sort(), ['lst/a/1', 'lst/a/2', 'lst/ab', 'lst/b/1']);
      const a: string[] = [];
      for await (const k of b.reader.list('lst/a/')) a.push(k);
      assert.deepEqual(a.sort(), ['lst/a/1', 'lst/a/2']);
      const none: string[] = [];
      for await (const k of b.reader.list('nothing-here/')) none.push(k);
      assert.deepEqual(none, []);
    });

    it('delete removes what exists and ignores what does not', async () => {
      await b.writer.put('del/x', Buffer.from('x'));
      await b.writer.put('del/y', Buffer.from('y'));
      await b.writer.delete(['del/x', 'del/never-was']);
      assert.deepEqual(await b.reader.has(['del/x', 'del/y']), new Set(['del/y']));
      assert.equal(await b.reader.get('del/x'), undefined);
      await b.writer.delete([]);
    });

    it('a 64 MiB stream goes up and comes back byte for byte', async () => {
      const chunk = 1 << 20;
      const hash = createHash('sha256');
      // Odd-sized pieces, so part boundaries never line up with them.
      const pieces: Buffer[] = [];
      for (let left = 64 * chunk; left > 0;) {
        const n = Math.min(left, chunk + 12345);
        const p = randomBytes(n);
        hash.update(p);
        pieces.push(p);
        left -= n;
      }
      const want = hash.digest('hex');
      await b.writer.put('big/blob', Readable.from(pieces), { size: 64 * chunk });
      const s = (await b.reader.getStream('big/blob'))!;
      const h = createHash('sha256');
      let size = 0;
      for await (const c of s) {
        h.update(c as Buffer);
        size += (c as Buffer).length;
      }
      assert.equal(size, 64 * chunk);
      assert.equal(h.digest('hex'), want);
      assert.equal(sha((await b.reader.get('big/blob'))!), want);
    });

    it('refuses keys that are not plain relative paths', async () => {
      for (const k of ['', '/abs', 'a/../b', '..', 'a//b', 'a/./b', 'sp ace', 'nul\0', 'a/', 'back\\slash']) {
        await assert.rejects(b.reader.get(k), isCode('E_BAD_ARGUMENT'), JSON.stringify(k));
        await assert.rejects(b.reader.has([k]), isCode('E_BAD_ARGUMENT'), JSON.stringify(k));
      }
    });
  });
}
