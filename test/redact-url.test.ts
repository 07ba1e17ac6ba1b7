/**
 * Secrets in URLs (user info, query values, fragments) never reach a build
 * log, an error message, its details, the CLI's progress lines or
 * `catalog list`: checked against the real test HTTP server, in-process and
 * through the CLI. Identity keeps the real URL's effect (none: fetchurl's
 * DRef is file + hash).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fetchurl, realize, stage, LocalStore, CairnError } from '../src/index.js';
import { redactUrl, redactUrlsIn } from '../src/redact-url.js';
import { cairnAsync, expectError, isolateModuleCache, ok, one, sha256, storePerTest, tempDir } from './helpers.js';
import { TestServer, serveFull } from './fixtures/fetch/server.js';

isolateModuleCache(after, 'cairn-redact-cache');

const SECRETS = ['s3cretPass', 'SECRET', 'alice', 'frag-secret'];
const assertClean = (text: string, where: string): void => {
  for (const s of SECRETS) assert.ok(!text.includes(s), `${where} contains ${s}:\n${text}`);
};

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server.close();
});

/** `http://alice:s3cretPass@127.0.0.1:PORT/p?token=SECRET&x=1#frag-secret` */
const secretUrl = (p: string): string =>
  `${server.base.replace('//', '//alice:s3cretPass@')}${p}?token=SECRET&x=1#frag-secret`;

describe('redactUrl', () => {
  it('masks user info, every query value and the fragment; keeps scheme, host, path and keys', () => {
    assert.equal(
      redactUrl('https://u:p@example.org:8443/a/b.img?token=abc&flag&sig=x%3D#f'),
      'https://***@example.org:8443/a/b.img?token=***&flag&sig=***#***',
    );
    assert.equal(redactUrl('https://example.org/plain.tar.gz'), 'https://example.org/plain.tar.gz');
    assert.equal(redactUrl('https://user@example.org/x'), 'https://***@example.org/x');
    assert.equal(redactUrl('apt:hello=2.10-3'), 'apt:hello=2.10-3');
    assert.equal(redactUrl('not a url?key=v'), 'not a url?key=***');
    assert.equal(redactUrl('weird://u:p@[bad/x?k=v'), 'weird://***@[bad/x?k=***');
  });

  it('redactUrlsIn masks URLs quoted inside free text', () => {
    assert.equal(
      redactUrlsIn('TypeError: http://u:p@h/x?t=1 is an url with embedded credentials.'),
      'TypeError: http://***@h/x?t=*** is an url with embedded credentials.',
    );
  });
});

describe('fetchurl with a secret in the URL', () => {
  let store: LocalStore;
  storePerTest('cairn-redact', (t) => ({ store } = t));

  it('sends user info as Basic auth; build.log holds no secret', async () => {
    const body = Buffer.from('secret-protected\n');
    let auth: string | undefined;
    server.route('/ok/file.bin', (req, res) => {
      auth = req.headers.authorization;
      serveFull(res, body);
    });
    const s = fetchurl({ url: secretUrl('/ok/file.bin'), hash: sha256(body) });
    const rref = one(await realize(s, { store }));
    assert.equal(auth, `Basic ${Buffer.from('alice:s3cretPass').toString('base64')}`);
    const log = fs.readFileSync(path.join(store.rzDir(rref), 'build.log'), 'utf8');
    assert.match(log, /token=\*\*\*/, 'the log still shows which URL was used');
    assertClean(log, 'build.log');
  });

  it(
    "user info in a URL without '//' (http:alice:pass@host, which " + 'fetch still sends) is masked (red team)',
    async () => {
      assert.equal(redactUrl('https:u:p@example.org/x?t=1'), 'https://***@example.org/x?t=***');
      assert.equal(redactUrl('https:\\\\u:p@example.org\\x'), 'https://***@example.org/x');
      assert.equal(redactUrlsIn('wget http:u:p@h/x failed'), 'wget http://***@h/x failed');
      const body = Buffer.from('no slashes\n');
      let auth: string | undefined;
      server.route('/ok/noslash.bin', (req, res) => {
        auth = req.headers.authorization;
        serveFull(res, body);
      });
      const url = secretUrl('/ok/noslash.bin').replace('http://', 'http:');
      const rref = one(await realize(fetchurl({ url, hash: sha256(body) }), { store }));
      assert.equal(auth, `Basic ${Buffer.from('alice:s3cretPass').toString('base64')}`, 'the credentials were used');
      assertClean(fs.readFileSync(path.join(store.rzDir(rref), 'build.log'), 'utf8'), 'build.log');
    },
  );

  it('a 404 fails with E_FETCH_FAILED whose message and details hold no secret', async () => {
    const s = fetchurl({ url: secretUrl('/missing/file.bin'), hash: sha256('x') });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      assert.ok(e instanceof CairnError && e.code === 'E_FETCH_FAILED', String(e));
      assert.match(e.message, /404/);
      assertClean(e.message, 'the message');
      assertClean(JSON.stringify(e.details), 'the details');
      return true;
    });
  });
});

describe('a build that throws an error quoting a URL (node-fetch: "request to URL failed") (red team)', () => {
  let store: LocalStore;
  storePerTest('cairn-redact-throw', (t) => ({ store } = t));

  it("E_BUILD_FAILED's message and the failed build's log mask its secrets", async () => {
    const url = secretUrl('/x.bin');
    const s = stage({
      name: 'thrower',
      config: {},
      build: () => {
        throw new Error(`request to ${url} failed, reason: connect ECONNREFUSED`);
      },
    });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      assert.ok(e instanceof CairnError && e.code === 'E_BUILD_FAILED', String(e));
      assert.match(e.message, /token=\*\*\*/);
      assertClean(e.message, 'the message');
      const failedLog = e.details.failedLog;
      assert.equal(typeof failedLog, 'string', 'the failed log was kept');
      assertClean(fs.readFileSync(failedLog as string, 'utf8'), 'the failed build log');
      return true;
    });
  });
});

describe('ctx.exec with a URL argument (e.g. a debootstrap mirror)', () => {
  let store: LocalStore;
  storePerTest('cairn-redact-exec', (t) => ({ store } = t));

  it('the logged command line and the E_BUILD_FAILED message mask its secrets', async () => {
    const mirror = 'http://alice:s3cretPass@127.0.0.1:9/debian?token=SECRET';
    let logText = '';
    const s = stage({
      name: 'exec-secret',
      config: {},
      build: async (ctx) => {
        // A failed build's log is discarded with its staging: read it here.
        try {
          await ctx.exec('sh', ['-c', 'echo "cannot reach $0" >&2; exit 3', mirror]);
        } finally {
          logText = fs.readFileSync(ctx.log.file, 'utf8');
        }
      },
    });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      assert.ok(e instanceof CairnError && e.code === 'E_BUILD_FAILED', String(e));
      assert.match(e.message, /cannot reach http:\/\/\*\*\*@127\.0\.0\.1:9\/debian\?token=\*\*\*/);
      assertClean(e.message, 'the message');
      return true;
    });
    const dollarLine = logText.split('\n').find((l) => l.startsWith('$ '));
    assert.ok(dollarLine, 'the command line is logged');
    assertClean(dollarLine, 'the logged command line');
  });
});

describe('the CLI with a secret in a catalog URL', () => {
  let work: { dir: string; cleanup: () => void };
  before(() => {
    work = tempDir('cairn-redact-cli');
  });
  after(() => work.cleanup());

  const catalog = (name: string, url: string, hash: string): string => {
    const file = path.join(work.dir, `${name}.yml`);
    fs.writeFileSync(file, `name: ${name}\nhistory:\n  - version: "1"\n    url: "${url}"\n    hash: ${hash}\n`);
    return file;
  };

  it('catalog fetch (progress on stderr) and catalog list --json show no secret', async () => {
    const body = Buffer.from('cli secret-protected\n');
    server.route('/cli/image.img', (_req, res) => serveFull(res, body));
    const file = catalog('good', secretUrl('/cli/image.img'), sha256(body));
    const store = path.join(work.dir, 'store-good');
    const r = ok(await cairnAsync(store, ['catalog', 'fetch', file]));
    assert.match(r.stderr, /image\.img\?token=\*\*\*/, `progress shows the redacted URL:\n${r.stderr}`);
    assertClean(r.stderr + r.stdout, 'catalog fetch output');
    const list = ok(await cairnAsync(store, ['catalog', 'list', '--json', file]));
    assert.match(list.stdout, /token=\*\*\*/);
    assertClean(list.stdout, 'catalog list --json');
  });

  it('a failing catalog fetch (404) reports E_FETCH_FAILED on stderr without the secret', async () => {
    const file = catalog('gone', secretUrl('/cli/gone.img'), sha256('x'));
    const store = path.join(work.dir, 'store-gone');
    const r = await cairnAsync(store, ['catalog', 'fetch', file]);
    expectError(r, 'E_FETCH_FAILED');
    assertClean(r.stderr + r.stdout, 'stderr');
  });
});
