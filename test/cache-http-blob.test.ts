/**
 * The read-only http(s):// BlobStore against a real nginx serving a file://
 * cache directory, with a fault-injecting proxy in front (issue 16, items
 * 5-6); and the same behaviour suite on the file:// store itself. nginx is
 * started by scripts/nginx.sh; the test fails, never skips, without it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../src/errors.js';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { HttpBlobStore } from '../src/store/cache/http-blob.js';
import { openBlobStore } from '../src/store/cache/open-blob.js';
import { blobStoreBehaviour } from './blob-store-behaviour.js';
import { startFaultProxy, type FaultProxy } from './fixtures/fault-proxy.js';
import { freePort, startNginx } from './fixtures/nginx.js';
import { isCode, tempDir } from './helpers.js';

const fast = { retry: { budgetMs: 1500, baseDelayMs: 20, maxDelayMs: 200 } };

blobStoreBehaviour('http (nginx over a file:// cache)', async () => {
  const t = tempDir('cairn-http-blob');
  const nginx = await startNginx(t.dir);
  const proxy = await startFaultProxy(nginx.url);
  const writer = await openBlobStore(`file://${t.dir}`);
  const reader = await openBlobStore(`${proxy.url}/`);
  return {
    writer,
    reader,
    proxy,
    canList: true,
    close: async () => {
      await proxy.close();
      nginx.stop();
      t.cleanup();
    },
  };
});

blobStoreBehaviour('file', async () => {
  const t = tempDir('cairn-file-blob');
  const store = await openBlobStore(`file://${t.dir}/cache`);
  return { writer: store, reader: store, canList: true, close: () => t.cleanup() };
});

describe('file:// caches are outside input', () => {
  it('follows no symlink when reading or writing', async () => {
    const t = tempDir('cairn-file-links');
    try {
      const outside = path.join(t.dir, 'outside');
      fs.mkdirSync(outside);
      fs.writeFileSync(path.join(outside, 'f'), 'outside');
      fs.mkdirSync(path.join(t.dir, 'cache'));
      fs.symlinkSync(outside, path.join(t.dir, 'cache', 'nar'));
      fs.symlinkSync(path.join(outside, 'f'), path.join(t.dir, 'cache', 'file-link'));
      const s = new FileBlobStore(path.join(t.dir, 'cache'));
      assert.equal(await s.get('nar/f'), undefined);
      assert.equal(await s.get('file-link'), undefined);
      assert.deepEqual(await s.has(['nar/f', 'file-link']), new Set());
      await assert.rejects(s.put('nar/new', Buffer.from('x')), isCode('E_CACHE_UNAVAILABLE'));
      assert.deepEqual(fs.readdirSync(outside), ['f']);
      const listed: string[] = [];
      for await (const k of s.list('')) listed.push(k);
      assert.deepEqual(listed, []);
    } finally {
      t.cleanup();
    }
  });
});

describe('http(s):// caches', () => {
  let t: { dir: string; cleanup: () => void };
  let nginx: { url: string; stop: () => void };
  let proxy: FaultProxy;
  before(async () => {
    t = tempDir('cairn-http-faults');
    fs.mkdirSync(path.join(t.dir, 'sub', 'nar'), { recursive: true });
    fs.writeFileSync(path.join(t.dir, 'sub', 'nar', 'a'), 'A');
    nginx = await startNginx(t.dir);
    proxy = await startFaultProxy(nginx.url);
  });
  after(async () => {
    await proxy.close();
    nginx.stop();
    t.cleanup();
  });

  it('serves from a path under the host; url and identity carry no credentials', async () => {
    const s = new HttpBlobStore(`http://user:pa%20ss@127.0.0.1:${new URL(proxy.url).port}/sub`);
    assert.equal(String(await s.get('nar/a')), 'A');
    assert.ok(!/user|pa/.test(s.url + s.identity), s.url);
    assert.equal(s.writable, false);
  });

  it('is read-only: put and delete give E_CACHE_READ_ONLY and nothing is sent', async () => {
    const s = await openBlobStore(`${proxy.url}/sub/`, fast);
    proxy.reset();
    await assert.rejects(s.put('nar/b', Buffer.from('B')), isCode('E_CACHE_READ_ONLY'));
    await assert.rejects(s.delete(['nar/a']), isCode('E_CACHE_READ_ONLY'));
    assert.equal(proxy.seen.length, 0);
    assert.equal(fs.readFileSync(path.join(t.dir, 'sub', 'nar', 'a'), 'utf8'), 'A');
  });

  it('answers 503 for the first requests: get, getStream and has still succeed', async () => {
    const s = new HttpBlobStore(`${proxy.url}/sub/`, { ...fast, retry: { ...fast.retry, budgetMs: 10_000 } });
    proxy.reset();
    proxy.fail = (n) => n < 3;
    assert.equal(String(await s.get('nar/a')), 'A');
    assert.deepEqual(
      proxy.seen.map((r) => r.status),
      [503, 503, 503, 200],
    );
    proxy.reset();
    proxy.fail = (n) => n < 2;
    assert.ok(await s.getStream('nar/a'));
    proxy.reset();
    proxy.fail = (n) => n % 2 === 0;
    assert.deepEqual(await s.has(['nar/a', 'nar/b', 'nar/c']), new Set(['nar/a']));
  });

  it('a server that always answers 503 gives E_CACHE_UNAVAILABLE after several attempts', async () => {
    const s = new HttpBlobStore(`${proxy.url}/sub/`, fast);
    proxy.reset();
    proxy.fail = () => true;
    const t0 = Date.now();
    const err = await s.get('nar/a').then(
      () => assert.fail('expected E_CACHE_UNAVAILABLE'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof CairnError && err.code === 'E_CACHE_UNAVAILABLE', String(err));
    assert.ok((err.details.attempts as number) > 1);
    assert.ok(Date.now() - t0 < fast.retry.budgetMs + 10_000, 'it gave up instead of retrying forever');
    await assert.rejects(s.has(['nar/a']), isCode('E_CACHE_UNAVAILABLE'));
  });

  it(
    'a body cut off halfway: get tries again and succeeds; ' + 'a stream already handed out fails as unavailable',
    async () => {
      fs.writeFileSync(path.join(t.dir, 'sub', 'nar', 'big'), Buffer.alloc(3 << 20, 0x42));
      const s = new HttpBlobStore(`${proxy.url}/sub/`, fast);
      proxy.reset();
      proxy.cut = (n) => n === 0;
      assert.equal((await s.get('nar/big'))!.length, 3 << 20);
      assert.equal(proxy.seen.length, 2);
      proxy.reset();
      proxy.cut = (n) => n === 0;
      const stream = (await s.getStream('nar/big'))!;
      await assert.rejects(async () => {
        for await (const _ of stream) void _;
      }, isCode('E_CACHE_UNAVAILABLE'));
    },
  );

  it('a closed port gives E_CACHE_UNAVAILABLE', async () => {
    const s = await openBlobStore(`http://127.0.0.1:${await freePort()}/c/`, fast);
    await assert.rejects(s.get('x'), isCode('E_CACHE_UNAVAILABLE'));
    await assert.rejects(s.getStream('x'), isCode('E_CACHE_UNAVAILABLE'));
    await assert.rejects(s.has(['x']), isCode('E_CACHE_UNAVAILABLE'));
  });

  it('a server that never answers is given up on after the timeout, as unavailable', async () => {
    const net = await import('node:net');
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const port = (silent.address() as { port: number }).port;
      const s = new HttpBlobStore(`http://127.0.0.1:${port}/`, { ...fast, timeoutMs: 200 });
      await assert.rejects(s.get('x'), isCode('E_CACHE_UNAVAILABLE'));
    } finally {
      silent.close();
      (silent as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
    }
  });

  it('never serves what a symlink in the served directory points at', async () => {
    fs.writeFileSync(path.join(t.dir, 'secret'), 'outside');
    fs.symlinkSync('../../secret', path.join(t.dir, 'sub', 'nar', 'link'));
    const s = new HttpBlobStore(`${nginx.url}/sub/`, fast);
    const got = await s.get('nar/link').catch((e: unknown) => e);
    assert.ok(got === undefined || (got instanceof CairnError && got.code === 'E_CACHE_UNAVAILABLE'), String(got));
  });

  it('a server without JSON directory listings: list is E_CACHE_NO_LIST (a 403, or HTML)', async () => {
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      if (req.url === '/forbidden/r/') res.writeHead(403).end();
      else res.writeHead(200, { 'content-type': 'text/html' }).end('<html><a href="x">x</a></html>');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as { port: number }).port;
      for (const base of ['forbidden', 'html']) {
        const s = new HttpBlobStore(`http://127.0.0.1:${port}/${base}/`, fast);
        await assert.rejects(async () => {
          for await (const _ of s.list('r/')) void _;
        }, isCode('E_CACHE_NO_LIST'));
      }
    } finally {
      server.close();
      server.closeAllConnections();
    }
  });

  it('refuses malformed URLs with E_BAD_CACHE_URL', async () => {
    for (const u of ['http://h/c?x=1', 'http://h/c#f', 'http://h/a/../c', 'http:', 'ftp://h/c']) {
      await assert.rejects(openBlobStore(u), isCode('E_BAD_CACHE_URL'), u);
    }
    assert.throws(() => new HttpBlobStore('ftp://h/c'), isCode('E_BAD_CACHE_URL'));
  });
});
