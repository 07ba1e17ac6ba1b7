/**
 * The s3:// BlobStore against a real single-node Swift (its s3api), with a
 * fault-injecting proxy in front for throttling, outages and counting
 * (issue 16, items 4-6). Swift is started by scripts/swift.sh if needed;
 * the test fails, never skips, without it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { CairnError } from '../src/errors.js';
import { S3BlobStore } from '../src/store/cache/s3-blob.js';
import { parseS3Url } from '../src/store/cache/s3-url.js';
import { openBlobStore } from '../src/store/cache/open-blob.js';
import { blobStoreBehaviour } from './blob-store-behaviour.js';
import { startFaultProxy, type FaultProxy } from './fixtures/fault-proxy.js';
import { freePort } from './fixtures/nginx.js';
import { ensureSwift, freshBucket, pendingUploads, swiftCredentials } from './fixtures/swift.js';
import { isCode, repoRoot, tempDir } from './helpers.js';

const credentials = swiftCredentials;
const fast = { retry: { budgetMs: 1500, baseDelayMs: 20, maxDelayMs: 200 } };

function s3url(bucket: string, endpoint: string, prefix = 'team/cache'): string {
  return `s3://${bucket}/${prefix}?endpoint=${endpoint}&region=us-east-1`;
}

blobStoreBehaviour('s3 (Swift s3api)', async () => {
  const endpoint = ensureSwift();
  const bucket = await freshBucket('behaviour');
  const proxy = await startFaultProxy(endpoint);
  const writer = new S3BlobStore(s3url(bucket, endpoint), { credentials });
  const reader = new S3BlobStore(s3url(bucket, proxy.url), { credentials });
  return { writer, reader, proxy, canList: true, close: () => proxy.close() };
});

describe('s3:// URLs', () => {
  it('parses bucket, prefix, endpoint and region; url is canonical and identity names the endpoint', () => {
    const l = parseS3Url('s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9000/&region=eu-west-1');
    assert.equal(l.bucket, 'my-bucket');
    assert.equal(l.prefix, 'a/b/');
    assert.equal(l.endpoint, 'http://127.0.0.1:9000');
    assert.equal(l.region, 'eu-west-1');
    assert.equal(parseS3Url(l.url).url, l.url);
    assert.equal(parseS3Url('s3://my-bucket', {}).prefix, '');
    assert.equal(parseS3Url('s3://my-bucket', {}).region, 'us-east-1');
    assert.equal(parseS3Url('s3://my-bucket', { AWS_REGION: 'ap-south-1' }).region, 'ap-south-1');
  });

  it('a memo key (identity) differs for the same bucket name on another endpoint or under another prefix', () => {
    const ids = new Set(
      [
        's3://b1b/p?endpoint=http://127.0.0.1:1',
        's3://b1b/p?endpoint=http://127.0.0.1:2',
        's3://b1b/q?endpoint=http://127.0.0.1:1',
        's3://b1b/p',
        's3://b1b/p?region=eu-west-1',
      ].map((u) => parseS3Url(u).identity),
    );
    assert.equal(ids.size, 5);
  });

  it('refuses malformed URLs with E_BAD_CACHE_URL', async () => {
    for (const u of [
      's3://',
      's3://AB',
      's3://Upper-Case',
      's3://a..b',
      's3://key:secret@bucket/p',
      's3://bucket:9000/p',
      's3://bucket/a//b',
      's3://bucket/a/../b',
      's3://bucket/./b',
      's3://bucket/sp%20ace',
      's3://bucket/p?endpont=http://127.0.0.1:1',
      's3://bucket/p?endpoint=http://127.0.0.1:1&endpoint=http://127.0.0.1:2',
      's3://bucket/p?endpoint=ftp://127.0.0.1',
      's3://bucket/p?endpoint=http://u:p@127.0.0.1:1',
      's3://bucket/p?endpoint=http://127.0.0.1:1/path',
      's3://bucket/p?endpoint=not a url',
      's3://bucket/p?region=Bad_Region',
      's3://bucket/p#frag',
      'gopher://x',
      'bucket/p',
      'file://host/dir',
      'file:///dir?x=1',
      'http://127.0.0.1:1/c?x=1',
    ]) {
      await assert.rejects(openBlobStore(u), isCode('E_BAD_CACHE_URL'), u);
    }
  });
});

describe('S3 retries and failures', () => {
  let endpoint: string;
  let bucket: string;
  let proxy: FaultProxy;
  before(async () => {
    endpoint = ensureSwift();
    bucket = await freshBucket('retries');
    proxy = await startFaultProxy(endpoint);
  });
  after(() => proxy.close());

  it('download: a large object in byte ranges, each retried on its own; missing is false; empty is empty', async () => {
    const writer = new S3BlobStore(s3url(bucket, endpoint), { credentials });
    const s = new S3BlobStore(s3url(bucket, proxy.url), {
      credentials,
      ...fast,
      retry: { ...fast.retry, budgetMs: 20_000 },
    });
    const big = randomBytes(70 << 20); // three ranges: 32 + 32 + 6 MiB
    await writer.put('ranges/big', Readable.from([big]), { size: big.length });
    await writer.put('ranges/empty', Buffer.alloc(0));
    const t = tempDir('cairn-s3-download');
    try {
      proxy.reset();
      proxy.fail = (n) => n === 1 || n === 3; // a throttled range or two
      assert.equal(await s.download('ranges/big', path.join(t.dir, 'big')), true);
      assert.ok(fs.readFileSync(path.join(t.dir, 'big')).equals(big), 'byte-identical');
      assert.ok(proxy.seen.filter((r) => r.status === 206).length >= 3, 'fetched in ranges');
      assert.ok(
        proxy.seen.some((r) => r.status === 503),
        'a range was retried',
      );
      proxy.reset();
      assert.equal(await s.download('ranges/none', path.join(t.dir, 'none')), false);
      assert.ok(!fs.existsSync(path.join(t.dir, 'none')), 'no file for a missing object');
      assert.equal(await s.download('ranges/empty', path.join(t.dir, 'empty')), true);
      assert.equal(fs.statSync(path.join(t.dir, 'empty')).size, 0);
      // Never through a link: the destination must be new.
      fs.symlinkSync('/etc/passwd', path.join(t.dir, 'link'));
      await assert.rejects(s.download('ranges/empty', path.join(t.dir, 'link')), /EEXIST/);
    } finally {
      t.cleanup();
    }
  });

  it('answers 503 SlowDown for the first requests: put, get and has still succeed', async () => {
    const s = new S3BlobStore(s3url(bucket, proxy.url), {
      credentials,
      ...fast,
      retry: { ...fast.retry, budgetMs: 10_000 },
    });
    proxy.reset();
    proxy.fail = (n) => n < 3;
    await s.put('slow/a', Buffer.from('A'));
    assert.deepEqual(
      proxy.seen.map((r) => r.status),
      [503, 503, 503, 200],
    );
    proxy.reset();
    proxy.fail = (n) => n < 2;
    assert.equal(String(await s.get('slow/a')), 'A');
    proxy.reset();
    proxy.fail = (n) => n % 3 === 0; // every third request is throttled
    const keys = Array.from({ length: 60 }, (_, i) => `slow/${i}`);
    assert.deepEqual(await s.has([...keys, 'slow/a']), new Set(['slow/a']));
    assert.ok(proxy.seen.filter((r) => r.status === 503).length >= 20, 'the throttled HEADs were retried');
  });

  it(
    'a cache that always answers 503 gives E_CACHE_UNAVAILABLE after several attempts, ' + 'within the budget',
    async () => {
      const s = new S3BlobStore(s3url(bucket, proxy.url), { credentials, ...fast });
      proxy.reset();
      proxy.fail = () => true;
      const t0 = Date.now();
      const err = await s.get('down/a').then(
        () => assert.fail('expected E_CACHE_UNAVAILABLE'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof CairnError && err.code === 'E_CACHE_UNAVAILABLE', String(err));
      assert.ok((err.details.attempts as number) > 1, 'it retried');
      assert.match(err.message, /SlowDown/);
      assert.ok(Date.now() - t0 < fast.retry.budgetMs + 10_000, 'it gave up instead of retrying forever');
      await assert.rejects(s.put('down/a', Buffer.from('x')), isCode('E_CACHE_UNAVAILABLE'));
    },
  );

  it('has over 1,000 keys on a failing cache shares one budget and stops asking once one key gives up', async () => {
    const s = new S3BlobStore(s3url(bucket, proxy.url), { credentials, ...fast });
    proxy.reset();
    proxy.fail = () => true;
    const keys = Array.from({ length: 1000 }, (_, i) => `down/${i}`);
    await assert.rejects(s.has(keys), isCode('E_CACHE_UNAVAILABLE'));
    const asked = new Set(proxy.seen.map((r) => r.path)).size;
    assert.ok(asked < 1000, `gave up for all keys after asking about ${asked}, not one budget per key`);
  });

  it('once one key of a has fails for good, the other requests of that call stop', async () => {
    const s = new S3BlobStore(s3url(bucket, proxy.url), { credentials, ...fast });
    proxy.reset();
    // One key is refused outright, every other one is throttled (retried).
    proxy.fail = (_, req) => (req.url!.endsWith('/down/0') ? 403 : true);
    const keys = Array.from({ length: 1000 }, (_, i) => `down/${i}`);
    await assert.rejects(s.has(keys), isCode('E_CACHE_UNAVAILABLE'));
    const atFailure = proxy.seen.length;
    await new Promise((resolve) => setTimeout(resolve, fast.retry.budgetMs));
    const later = proxy.seen.length - atFailure;
    assert.ok(later <= 32, `${later} requests were sent after has had already failed`);
  });

  it(
    'a body cut off halfway: get tries again and succeeds; ' + 'a stream already handed out fails as unavailable',
    async () => {
      const w = new S3BlobStore(s3url(bucket, endpoint), { credentials });
      const bytes = Buffer.alloc(3 << 20, 0x42);
      await w.put('cut/a', bytes);
      const s = new S3BlobStore(s3url(bucket, proxy.url), { credentials, ...fast });
      proxy.reset();
      proxy.cut = (n) => n === 0;
      assert.ok((await s.get('cut/a'))!.equals(bytes));
      assert.equal(proxy.seen.length, 2);
      proxy.reset();
      proxy.cut = (n) => n === 0;
      const stream = (await s.getStream('cut/a'))!;
      await assert.rejects(async () => {
        for await (const _ of stream) void _;
      }, isCode('E_CACHE_UNAVAILABLE'));
    },
  );

  it('a closed port gives E_CACHE_UNAVAILABLE', async () => {
    const port = await freePort();
    const s = new S3BlobStore(s3url(bucket, `http://127.0.0.1:${port}`), { credentials, ...fast });
    await assert.rejects(s.get('x'), isCode('E_CACHE_UNAVAILABLE'));
    await assert.rejects(s.has(['x', 'y']), isCode('E_CACHE_UNAVAILABLE'));
    await assert.rejects(s.put('x', Buffer.from('x')), isCode('E_CACHE_UNAVAILABLE'));
  });

  it('a wrong secret is refused at once, not retried', async () => {
    const s = new S3BlobStore(s3url(bucket, proxy.url), {
      credentials: { ...credentials, secretAccessKey: 'wrong' },
      ...fast,
    });
    proxy.reset();
    const err = await s.get('x').then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof CairnError && err.code === 'E_CACHE_UNAVAILABLE', String(err));
    assert.equal(proxy.seen.length, 1);
    assert.equal(err.details.transient, false);
  });

  it('a bucket that does not exist is trouble, not a miss', async () => {
    const s = new S3BlobStore(s3url('no-such-bucket-cairn', endpoint), { credentials, ...fast });
    await assert.rejects(s.get('x'), isCode('E_CACHE_UNAVAILABLE'));
  });

  it('a big stream goes up as a multipart upload; a failing part is retried alone', async () => {
    const s = new S3BlobStore(s3url(bucket, proxy.url), {
      credentials,
      ...fast,
      retry: { ...fast.retry, budgetMs: 10_000 },
    });
    proxy.reset();
    let partFailures = 0;
    proxy.fail = (_, req) => /partNumber=2&/.test(req.url!) && partFailures++ < 2;
    const body = Buffer.alloc(40 << 20, 0x5a);
    await s.put('mp/blob', Readable.from([body]));
    const parts = proxy.seen.filter((r) => r.method === 'PUT' && /partNumber=/.test(r.path));
    assert.equal(parts.filter((r) => r.status === 200).length, 3, '40 MiB = three parts of at most 16 MiB');
    assert.equal(parts.filter((r) => r.status === 503).length, 2, 'part 2 was sent again, alone');
    assert.ok(
      proxy.seen.some((r) => r.method === 'POST' && /uploads/.test(r.path)),
      'CreateMultipartUpload',
    );
    assert.ok(
      proxy.seen.some((r) => r.method === 'POST' && /uploadId=/.test(r.path)),
      'CompleteMultipartUpload',
    );
    assert.ok((await s.get('mp/blob'))!.equals(body));
  });

  it('a multipart upload whose source stream fails leaves no object and no upload behind', async () => {
    const s = new S3BlobStore(s3url(bucket, endpoint), { credentials, ...fast });
    const src = new Readable({ read() {} });
    src.push(Buffer.alloc(20 << 20, 1));
    src.push(Buffer.alloc(20 << 20, 2));
    setImmediate(() => src.destroy(new Error('source broke')));
    await assert.rejects(s.put('mp/broken', src), /source broke/);
    assert.equal(await s.get('mp/broken'), undefined);
    assert.ok(!(await pendingUploads(bucket)).includes('team/cache/mp/broken'), 'the upload was aborted');
  });

  it('reads credentials from AWS_* variables, else from a profile in the shared credentials file', async () => {
    const t = tempDir('cairn-s3-creds');
    const saved = { ...process.env };
    try {
      const file = path.join(t.dir, 'credentials');
      fs.writeFileSync(
        file,
        '[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n\n[team]\n' +
          'aws_access_key_id = test:tester\naws_secret_access_key = testing\n',
      );
      delete process.env.AWS_ACCESS_KEY_ID;
      delete process.env.AWS_SECRET_ACCESS_KEY;
      delete process.env.AWS_SESSION_TOKEN;
      process.env.AWS_SHARED_CREDENTIALS_FILE = file;
      process.env.AWS_PROFILE = 'team';
      const viaProfile = await openBlobStore(s3url(bucket, endpoint), fast);
      await viaProfile.put('creds/profile', Buffer.from('p'));
      process.env.AWS_PROFILE = 'default';
      await assert.rejects(
        (await openBlobStore(s3url(bucket, endpoint), fast)).get('creds/profile'),
        isCode('E_CACHE_UNAVAILABLE'),
      );
      process.env.AWS_ACCESS_KEY_ID = 'test:tester';
      process.env.AWS_SECRET_ACCESS_KEY = 'testing';
      assert.equal(String(await (await openBlobStore(s3url(bucket, endpoint), fast)).get('creds/profile')), 'p');
      process.env.AWS_SHARED_CREDENTIALS_FILE = path.join(t.dir, 'none');
      delete process.env.AWS_ACCESS_KEY_ID;
      await assert.rejects(
        (await openBlobStore(s3url(bucket, endpoint), fast)).get('x'),
        isCode('E_CACHE_UNAVAILABLE'),
      );
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
      t.cleanup();
    }
  });
});

describe('the S3 client is loaded lazily', () => {
  it('opening the cache module and a file:// or http:// cache loads no AWS SDK; an s3:// request does', () => {
    const probe = (useS3: boolean): number => {
      const code = `
        import { createRequire } from 'node:module';
        const { openBlobStore } = await import('./src/store/cache/open-blob.ts');
        await openBlobStore('file:///tmp/cairn-lazy-probe');
        await openBlobStore('http://127.0.0.1:1/c');
        if (${useS3}) {
          const s = await openBlobStore('s3://lazy-probe?endpoint=http://127.0.0.1:1', { retry: { budgetMs: 1 } });
          await s.get('x').catch(() => {});
        }
        const cache = createRequire(import.meta.url).cache;
        console.log(Object.keys(cache).filter((k) => k.includes('@aws-sdk')).length);
      `;
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
        cwd: repoRoot,
        encoding: 'utf8',
        env: { ...process.env, AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' },
      });
      assert.equal(r.status, 0, r.stderr);
      return Number(r.stdout.trim());
    };
    assert.equal(probe(false), 0);
    assert.ok(probe(true) > 0, 'the probe does see the SDK once it is used');
  });
});
