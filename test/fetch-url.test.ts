/**
 * fetchurl against a real HTTP server on 127.0.0.1: the download lands in
 * out/<file>, identity is fixed-output (file + hash, not URLs), dropped and
 * stalled connections resume with Range, redirects are followed, permanent
 * errors drop a mirror, transient ones are retried within the budget, and a
 * wrong hash stores nothing.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fetchurl, realize, LocalStore, type RRef, type Stage } from '../src/index.js';
import { isCode, sha256, drefOf, one, storePerTest } from './helpers.js';
import { TestServer, serveRange, serveFull, sendThenDrop, sendThenStall } from './fixtures/fetch/server.js';
import { storeIndex } from '../src/store/internals.js';

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server.close();
});

let store: LocalStore;
storePerTest('cairn-fetch-url', (t) => ({ store } = t));

const tmpEntries = (): string[] => {
  try {
    return fs.readdirSync(path.join(store.root, 'tmp'));
  } catch {
    return [];
  }
};
/** Nothing of this derivation entered the store, and no temporary file was left behind. */
const nothingStored = (s: Stage): void => {
  const dref = drefOf(s);
  assert.deepEqual(storeIndex(store).realizationsOf(dref), [], 'no realization may be indexed');
  let dirs: string[] = [];
  try {
    dirs = fs.readdirSync(path.join(store.root, 'd', dref, 'r'));
  } catch {
    /* none */
  }
  assert.deepEqual(dirs, [], 'no realization directory may exist');
  assert.deepEqual(tmpEntries(), [], 'STORE/tmp must be empty');
};
const logOf = (rref: RRef): string => fs.readFileSync(path.join(store.rzDir(rref), 'build.log'), 'utf8');
let seq = 0;
/** A fresh path per test, so request counts never mix. */
const fresh = (name: string): string => `/t${++seq}/${name}`;

describe('fetchurl: a plain download', () => {
  it('stores the content as out/<file> (a promised output), named after the URL', async () => {
    const body = Buffer.from('hello from the test server\n');
    const p = fresh('hello.txt');
    const url = server.route(p, (req, res) => serveRange(req, res, body));
    const s = fetchurl({ url, hash: sha256(body) });
    assert.equal(s.name, 'hello.txt');
    assert.deepEqual(s.outputs, ['hello.txt']);
    const r = await realize(s, { store });
    const rref = one(r);
    assert.deepEqual(fs.readdirSync(store.outPath(rref)), ['hello.txt']);
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'hello.txt')), body);
    assert.equal(server.hits(p).length, 1);
    assert.equal(server.hits(p)[0]!.range, undefined, 'a fresh download asks for the whole file');
    assert.deepEqual(tmpEntries(), []);
  });

  it('is cached on a second realize: same RRef, the server is not contacted again', async () => {
    const body = randomBytes(10_000);
    const p = fresh('blob.bin');
    const url = server.route(p, (req, res) => serveRange(req, res, body));
    const r1 = await realize(fetchurl({ url, hash: sha256(body) }), { store });
    assert.equal(r1.builds, 1);
    const before = server.requests.length;
    // A new stage object (a new closure) with the same spec.
    const r2 = await realize(fetchurl({ url, hash: sha256(body) }), { store });
    assert.equal(r2.builds, 0);
    assert.equal(one(r2), one(r1));
    // Even with a different (dead) URL list: the identity is file + hash.
    const r3 = await realize(fetchurl({ urls: [`${server.base}/nowhere/blob.bin`], hash: sha256(body) }), { store });
    assert.equal(r3.builds, 0);
    assert.equal(one(r3), one(r1));
    assert.equal(server.requests.length, before, 'no request after the first realize');
    assert.equal(server.hits(p).length, 1);
  });

  it('uses `file` and `name` when given', async () => {
    const body = Buffer.from('named\n');
    const url = server.route(fresh('download'), (req, res) => serveRange(req, res, body));
    const s = fetchurl({ url, file: 'data.csv', name: 'my-data', hash: sha256(body) });
    assert.equal(s.name, 'my-data');
    const rref = one(await realize(s, { store }));
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'data.csv'), 'utf8'), 'named\n');
  });

  it('refuses a file name that is not a single path component, and a missing URL', () => {
    const h = sha256('x');
    assert.throws(() => fetchurl({ url: `${server.base}/a`, file: 'a/b', hash: h }), isCode('E_BAD_NAME'));
    assert.throws(() => fetchurl({ url: `${server.base}/a`, file: '..', hash: h }), isCode('E_BAD_NAME'));
    assert.throws(() => fetchurl({ hash: h }), isCode('E_BAD_STAGE_SPEC'));
    assert.throws(() => fetchurl({ urls: [], hash: h }), isCode('E_BAD_STAGE_SPEC'));
  });
});

describe('fetchurl: fixed-output identity', () => {
  const h = sha256('identity');
  it('the same file and hash with different URL lists, or reordered mirrors, give the same DRef', () => {
    const a = drefOf(
      fetchurl({ file: 'x.tar.gz', urls: ['http://a.example/x.tar.gz', 'http://b.example/x.tar.gz'], hash: h }),
    );
    const b = drefOf(
      fetchurl({ file: 'x.tar.gz', urls: ['http://b.example/x.tar.gz', 'http://a.example/x.tar.gz'], hash: h }),
    );
    const c = drefOf(fetchurl({ file: 'x.tar.gz', url: 'http://c.example/other/path/x.tar.gz', hash: h }));
    const d = drefOf(
      fetchurl({
        file: 'x.tar.gz',
        urls: ['http://a.example/x.tar.gz'],
        url: 'http://d.example/x.tar.gz',
        hash: h,
        attempts: 2,
        backoffMs: 1,
        idleTimeoutMs: 50,
      }),
    );
    assert.equal(a, b);
    assert.equal(a, c);
    assert.equal(a, d, 'download options are not part of the identity either');
  });

  it('a different hash, or a different file name, gives a different DRef', () => {
    const base = drefOf(fetchurl({ file: 'x.tar.gz', url: 'http://a.example/x.tar.gz', hash: h }));
    assert.notEqual(
      drefOf(fetchurl({ file: 'x.tar.gz', url: 'http://a.example/x.tar.gz', hash: sha256('other') })),
      base,
    );
    assert.notEqual(drefOf(fetchurl({ file: 'y.tar.gz', url: 'http://a.example/x.tar.gz', hash: h })), base);
  });

  it('the same hash written as hex, uppercase hex, sha256:<hex> or SRI gives the same DRef', () => {
    const url = 'http://a.example/x.bin';
    const sri = `sha256-${Buffer.from(h, 'hex').toString('base64')}`;
    const drefs = [h, h.toUpperCase(), `sha256:${h}`, sri, `  ${h}  `].map((hash) => drefOf(fetchurl({ url, hash })));
    assert.equal(new Set(drefs).size, 1);
    assert.equal(fetchurl({ url, hash: sri }).config.hash, `sha256:${h}`);
  });
});

describe('fetchurl: resuming', () => {
  it('resumes with Range after a dropped connection; the second request asks for bytes=N-', async () => {
    const body = randomBytes(256 * 1024);
    const half = body.length / 2;
    const p = fresh('big.bin');
    const url = server.route(p, (req, res, n) => {
      if (n === 1) sendThenDrop(res, body, half);
      else serveRange(req, res, body);
    });
    const rref = one(await realize(fetchurl({ url, hash: sha256(body), attempts: 4, backoffMs: 10 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'big.bin')), body);
    const hits = server.hits(p);
    assert.equal(hits.length, 2);
    assert.equal(hits[0]!.range, undefined);
    assert.equal(hits[1]!.range, `bytes=${half}-`);
    assert.match(logOf(rref), /resum/i, 'the build log says it resumed');
  });

  it('resumes a chunked response (no Content-Length) that was cut off', async () => {
    const body = randomBytes(128 * 1024);
    const cut = 50_000;
    const p = fresh('chunked.bin');
    const url = server.route(p, (req, res, n) => {
      if (n === 1) sendThenDrop(res, body, cut, { chunked: true });
      else serveRange(req, res, body);
    });
    const rref = one(await realize(fetchurl({ url, hash: sha256(body), attempts: 4, backoffMs: 10 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'chunked.bin')), body);
    const hits = server.hits(p);
    assert.equal(hits.length, 2);
    assert.equal(hits[1]!.range, `bytes=${cut}-`);
  });

  it('a server that ignores Range (200 with the full body on retry) still gives a correct file', async () => {
    const body = randomBytes(200 * 1024);
    const p = fresh('norange.bin');
    const url = server.route(p, (_req, res, n) => {
      if (n === 1) sendThenDrop(res, body, 70_000);
      else serveFull(res, body);
    });
    const rref = one(await realize(fetchurl({ url, hash: sha256(body), attempts: 4, backoffMs: 10 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'norange.bin')), body);
    const hits = server.hits(p);
    assert.equal(hits.length, 2);
    assert.equal(hits[1]!.range, 'bytes=70000-', 'it did ask to resume');
  });

  it(
    'a stalled server (some bytes, then silence) is aborted ' + 'after idleTimeoutMs and the download resumes',
    async () => {
      const body = randomBytes(64 * 1024);
      const part = 20_000;
      const p = fresh('stall.bin');
      const url = server.route(p, (req, res, n) => {
        if (n === 1) sendThenStall(res, body, part);
        else serveRange(req, res, body);
      });
      const t0 = Date.now();
      const rref = one(
        await realize(fetchurl({ url, hash: sha256(body), attempts: 4, backoffMs: 10, idleTimeoutMs: 300 }), { store }),
      );
      const ms = Date.now() - t0;
      assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'stall.bin')), body);
      const hits = server.hits(p);
      assert.equal(hits.length, 2);
      assert.equal(hits[1]!.range, `bytes=${part}-`);
      assert.ok(ms >= 250, `the stall was waited out (${ms} ms)`);
      assert.ok(ms < 5000, `and aborted promptly (${ms} ms)`);
    },
  );

  it(
    'a server that never answers the request is aborted after ' + 'idleTimeoutMs, then the next mirror is used',
    async () => {
      const body = Buffer.from('eventually\n');
      const pSilent = fresh('silent.txt');
      const pGood = fresh('silent.txt');
      const silent = server.route(pSilent, () => {
        /* never answers */
      });
      const good = server.route(pGood, (req, res) => serveRange(req, res, body));
      const t0 = Date.now();
      const rref = one(
        await realize(
          fetchurl({ urls: [silent, good], hash: sha256(body), attempts: 3, backoffMs: 10, idleTimeoutMs: 300 }),
          { store },
        ),
      );
      assert.ok(Date.now() - t0 < 5000);
      assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'silent.txt'), 'utf8'), 'eventually\n');
      assert.equal(server.hits(pSilent).length, 1);
      assert.equal(server.hits(pGood).length, 1);
    },
  );
});

describe('fetchurl: redirects', () => {
  it('follows a 301/302/307 chain with absolute and relative Locations', async () => {
    const body = randomBytes(5000);
    const dirp = `/t${++seq}`;
    server.route(`${dirp}/start`, (_req, res) => {
      res.writeHead(301, { location: `${server.base}${dirp}/hop/one` });
      res.end();
    });
    server.route(`${dirp}/hop/one`, (_req, res) => {
      res.writeHead(302, { location: 'two' });
      res.end();
    }); // relative: dir/hop/two
    server.route(`${dirp}/hop/two`, (_req, res) => {
      res.writeHead(307, { location: '../final/data.bin' });
      res.end();
    }); // dir/final/data.bin
    server.route(`${dirp}/final/data.bin`, (req, res) => serveRange(req, res, body));
    const rref = one(
      await realize(fetchurl({ url: `${server.base}${dirp}/start`, file: 'data.bin', hash: sha256(body) }), { store }),
    );
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'data.bin')), body);
    assert.deepEqual(
      server.requests.filter((r) => r.path.startsWith(dirp)).map((r) => r.path),
      [`${dirp}/start`, `${dirp}/hop/one`, `${dirp}/hop/two`, `${dirp}/final/data.bin`],
    );
  });

  it('a redirect loop fails with E_FETCH_FAILED within the attempts budget', async () => {
    const p = fresh('loop');
    const url = server.route(p, (_req, res) => {
      res.writeHead(302, { location: p });
      res.end();
    });
    const s = fetchurl({ url, file: 'loop.bin', hash: sha256('x'), attempts: 2, backoffMs: 1 });
    await assert.rejects(realize(s, { store }), isCode('E_FETCH_FAILED'));
    nothingStored(s);
  });
});

describe('fetchurl: mirrors, permanent and transient errors', () => {
  it('404 on the first mirror, then success on the next; the dead mirror is asked once', async () => {
    const body = Buffer.from('mirror two\n');
    const pA = fresh('pkg.txt');
    const pB = fresh('pkg.txt');
    const a = server.route(pA, (_req, res) => {
      res.writeHead(404);
      res.end('no');
    });
    const b = server.route(pB, (req, res) => serveRange(req, res, body));
    const rref = one(
      await realize(fetchurl({ urls: [a, b], hash: sha256(body), attempts: 3, backoffMs: 10 }), { store }),
    );
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'pkg.txt'), 'utf8'), 'mirror two\n');
    assert.equal(server.hits(pA).length, 1);
    assert.equal(server.hits(pB).length, 1);
  });

  it('404 (or 410) on every mirror fails quickly with E_FETCH_FAILED: no retry loop, no backoff', async () => {
    const pA = fresh('gone.txt');
    const pB = fresh('gone.txt');
    const a = server.route(pA, (_req, res) => {
      res.writeHead(404);
      res.end();
    });
    const b = server.route(pB, (_req, res) => {
      res.writeHead(410);
      res.end();
    });
    const s = fetchurl({ urls: [a, b], hash: sha256('x'), attempts: 6, backoffMs: 2000 });
    const t0 = Date.now();
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_FETCH_FAILED')(e);
      assert.match((e as Error).message, /404/);
      return true;
    });
    assert.ok(Date.now() - t0 < 1500, `failed in ${Date.now() - t0} ms; a backoff of 2 s means it retried`);
    assert.equal(server.hits(pA).length, 1);
    assert.equal(server.hits(pB).length, 1);
    nothingStored(s);
  });

  it('500 then success: the transient error is retried', async () => {
    const body = randomBytes(3000);
    const p = fresh('flaky.bin');
    const url = server.route(p, (req, res, n) => {
      if (n === 1) {
        res.writeHead(500);
        res.end('oops');
      } else serveRange(req, res, body);
    });
    const rref = one(await realize(fetchurl({ url, hash: sha256(body), attempts: 3, backoffMs: 10 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'flaky.bin')), body);
    assert.equal(server.hits(p).length, 2);
  });

  it('500 forever fails with E_FETCH_FAILED after exactly `attempts` requests', async () => {
    const p = fresh('broken.bin');
    const url = server.route(p, (_req, res) => {
      res.writeHead(500);
      res.end();
    });
    const s = fetchurl({ url, hash: sha256('x'), attempts: 3, backoffMs: 5 });
    const t0 = Date.now();
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_FETCH_FAILED')(e);
      assert.match((e as Error).message, /500/);
      return true;
    });
    assert.ok(Date.now() - t0 < 3000);
    assert.equal(server.hits(p).length, 3);
    nothingStored(s);
  });

  it('the attempts budget is shared by the mirrors, which are tried in turn', async () => {
    const pA = fresh('both.bin');
    const pB = fresh('both.bin');
    const a = server.route(pA, (_req, res) => {
      res.writeHead(503);
      res.end();
    });
    const b = server.route(pB, (_req, res) => {
      res.writeHead(502);
      res.end();
    });
    const s = fetchurl({ urls: [a, b], hash: sha256('x'), attempts: 4, backoffMs: 5 });
    await assert.rejects(realize(s, { store }), isCode('E_FETCH_FAILED'));
    assert.equal(server.hits(pA).length, 2);
    assert.equal(server.hits(pB).length, 2);
    assert.deepEqual(
      server.requests.filter((r) => r.path === pA || r.path === pB).map((r) => r.path),
      [pA, pB, pA, pB],
    );
  });

  it('a mirror that refuses connections is skipped for the next one', async () => {
    const port = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address() as net.AddressInfo;
        srv.close(() => resolve(p));
      });
    });
    const body = Buffer.from('after a refusal\n');
    const pGood = fresh('r.txt');
    const good = server.route(pGood, (req, res) => serveRange(req, res, body));
    const rref = one(
      await realize(
        fetchurl({ urls: [`http://127.0.0.1:${port}/r.txt`, good], hash: sha256(body), attempts: 3, backoffMs: 5 }),
        { store },
      ),
    );
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'r.txt'), 'utf8'), 'after a refusal\n');
    assert.equal(server.hits(pGood).length, 1);
  });
});

describe('fetchurl: hash checking', () => {
  it('a wrong hash is E_HASH_MISMATCH showing both hashes, and nothing is stored', async () => {
    const body = Buffer.from('not what you declared\n');
    const declared = sha256('something else');
    const actual = sha256(body);
    const url = server.route(fresh('wrong.txt'), (req, res) => serveRange(req, res, body));
    const s = fetchurl({ url, hash: declared });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_HASH_MISMATCH')(e);
      const msg = (e as Error).message;
      assert.ok(msg.includes(declared), `message shows the declared hash: ${msg}`);
      assert.ok(msg.includes(actual), `message shows the actual hash: ${msg}`);
      return true;
    });
    nothingStored(s);
    // The correct hash afterwards works (nothing half-stored was in the way).
    const rref = one(await realize(fetchurl({ url, hash: actual }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'wrong.txt')), body);
  });

  it('a wrong sha512 is E_HASH_MISMATCH showing both sha512 hashes', async () => {
    const body = Buffer.from('sha512 content\n');
    const declared = createHash('sha512').update('nope').digest('hex');
    const actual = createHash('sha512').update(body).digest('hex');
    const url = server.route(fresh('w512.txt'), (req, res) => serveRange(req, res, body));
    const s = fetchurl({ url, hash: declared });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_HASH_MISMATCH')(e);
      assert.ok((e as Error).message.includes(declared) && (e as Error).message.includes(actual), (e as Error).message);
      return true;
    });
    nothingStored(s);
  });

  it('SRI sha256-<base64> and sha512 (hex and SRI) are accepted and checked', async () => {
    const body = randomBytes(4096);
    const url = server.route(fresh('sri.bin'), (req, res) => serveRange(req, res, body));
    const sri256 = `sha256-${createHash('sha256').update(body).digest('base64')}`;
    const hex512 = createHash('sha512').update(body).digest('hex');
    const sri512 = `sha512-${createHash('sha512').update(body).digest('base64')}`;
    const a = one(await realize(fetchurl({ url, hash: sri256 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(a), 'sri.bin')), body);
    const b = one(await realize(fetchurl({ url, hash: hex512 }), { store }));
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(b), 'sri.bin')), body);
    assert.equal(drefOf(fetchurl({ url, hash: sri512 })), drefOf(fetchurl({ url, hash: hex512 })));
    assert.equal(
      drefOf(fetchurl({ url, hash: `sha512:${hex512}` })),
      drefOf(fetchurl({ url, hash: hex512, hashType: 'sha512' })),
    );
    assert.notEqual(drefOf(fetchurl({ url, hash: sri256 })), drefOf(fetchurl({ url, hash: hex512 })));
  });
});

describe('fetchurl: malformed hashes are E_BAD_HASH when the stage is created', () => {
  const url = 'http://a.example/f.bin';
  const h = sha256('f');
  const h512 = createHash('sha512').update('f').digest('hex');
  const cases: [string, Parameters<typeof fetchurl>[0]][] = [
    ['empty', { url, hash: '' }],
    ['63 hex digits', { url, hash: h.slice(1) }],
    ['65 hex digits', { url, hash: `${h}0` }],
    ['non-hex', { url, hash: 'g'.repeat(64) }],
    ['an unknown prefix', { url, hash: `md5:${h.slice(0, 32)}` }],
    ['an unknown hashType', { url, hash: h, hashType: 'md5' as never }],
    ['an unknown SRI algorithm', { url, hash: `sha1-${Buffer.alloc(20, 7).toString('base64')}` }],
    ['an SRI of the wrong length', { url, hash: `sha256-${Buffer.alloc(20, 7).toString('base64')}` }],
    [
      'an SRI whose algorithm contradicts hashType',
      { url, hash: `sha256-${Buffer.from(h, 'hex').toString('base64')}`, hashType: 'sha512' },
    ],
    ['sha512 hex declared as sha256', { url, hash: h512, hashType: 'sha256' }],
    ['sha256 hex declared as sha512', { url, hash: h, hashType: 'sha512' }],
    ['a sha256:<hex> that is too short', { url, hash: `sha256:${h.slice(2)}` }],
    ['a tree hash for a file download', { url, hash: `tree-sha256:${h}` }],
  ];
  for (const [what, spec] of cases) {
    it(`refuses ${what}`, () => {
      assert.throws(() => fetchurl(spec), isCode('E_BAD_HASH'));
    });
  }

  it('refuses a prefix that contradicts hashType (as it does for SRI)', () => {
    // The prefix says tree-sha256, hashType says sha256: one of them is wrong.
    assert.throws(() => fetchurl({ url, hash: `tree-sha256:${h}`, hashType: 'sha256' }), isCode('E_BAD_HASH'));
  });
});
