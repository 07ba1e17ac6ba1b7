/**
 * Issue 16 end to end, through the CLI, on the real private Swift (s3api)
 * and nginx: two teammates sharing a signed cache, best() across the cache
 * and local realizations, tampering refused with one warning and a local
 * build, the cache going down mid-run, and --push-to. Swift and nginx are
 * started by the project scripts; the tests fail, never skip, without them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openBlobStore } from '../src/store/cache/open-blob.js';
import type { BlobStore } from '../src/store/cache/blob.js';
import { ensureSwift, freshBucket, swiftCredentials } from './fixtures/swift.js';
import { startNginx } from './fixtures/nginx.js';
import {
  cairn,
  cairnAsync,
  expectError,
  isolateModuleCache,
  ok,
  repoRoot,
  tempDir,
  type CliResult,
} from './helpers.js';

const fixtures = path.join(repoRoot, 'test', 'fixtures', 'cache-e2e');
const teamMl = path.join(fixtures, 'team-ml.ts');
const gated = path.join(fixtures, 'gated.ts');
const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

// The CLI processes and this one's BlobStore read the S3 credentials from the environment.
Object.assign(process.env, {
  AWS_ACCESS_KEY_ID: swiftCredentials.accessKeyId,
  AWS_SECRET_ACCESS_KEY: swiftCredentials.secretAccessKey,
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
});

let t: { dir: string; cleanup: () => void };
let endpoint: string;
let bucket: string;
let keyA: { secret: string; public: string };
let n = 0;

isolateModuleCache(after, 'cairn-cache-e2e-modules');

before(async () => {
  t = tempDir('cairn-cache-e2e');
  endpoint = ensureSwift();
  bucket = await freshBucket('cairn-e2e');
  ok(cairn(store('keys'), ['key', 'generate', path.join(t.dir, 'team-a')]));
  keyA = { secret: path.join(t.dir, 'team-a.secret'), public: path.join(t.dir, 'team-a.public') };
});
after(() => t.cleanup());

/** A new store directory under the test's temporary directory. */
function store(name: string): string {
  return path.join(t.dir, `${name}-${++n}`);
}

/** A fresh prefix of the test bucket, as an s3:// URL. */
const s3Url = (prefix: string): string => `s3://${bucket}/${prefix}?endpoint=${endpoint}&region=us-east-1`;

function trust(root: string, keys: string[] = [fs.readFileSync(keyA.public, 'utf8').trim()]): void {
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(root, 'config.json'), JSON.stringify({ 'trusted-public-keys': keys }));
}

interface Realized {
  builds: number;
  targets: { rrefs: string[] }[];
  plan: { name: string; action: string; rrefs?: string[] }[];
  warnings?: string[];
}

function realizeJson(root: string, args: string[], env: NodeJS.ProcessEnv = {}): Realized {
  const r = ok(cairn(root, ['realize', '--json', ...args], { env }));
  return JSON.parse(r.stdout) as Realized;
}

const target = (r: Realized): string => r.targets[0]!.rrefs[0]!;
const actions = (r: Realized): string[] => r.plan.map((p) => `${p.name}:${p.action}`);

/** `cairn store verify` finds every realization intact. */
function verifyClean(root: string): void {
  const r = ok(cairn(root, ['store', 'verify']));
  assert.match(r.stdout, /all intact/);
}

/** A store A that realized `file` and pushed the closure of its target to `url`. */
function teammateA(file: string, url: string, env: NodeJS.ProcessEnv = {}): { root: string; top: string } {
  const root = store('a');
  const top = target(realizeJson(root, [file], env));
  ok(cairn(root, ['cache', 'push', url, top, '--key', keyA.secret]));
  return { root, top };
}

function readTree(root: string, rref: string, rel: string): string {
  const r = ok(cairn(root, ['catref', rref, rel]));
  return r.stdout;
}

describe('two teammates share a cache', () => {
  it("s3://: B realizes A's ML demo with 0 builds, the same RRefs, verified", () => {
    const url = s3Url('teammates');
    const a = teammateA(mlDemo, url);
    const b = store('b');
    trust(b);
    const r = realizeJson(b, ['--substituter', url, mlDemo]);
    assert.equal(r.builds, 0);
    assert.deepEqual(actions(r), ['dataset:substituted', 'train:substituted', 'report:substituted']);
    assert.equal(target(r), a.top);
    assert.deepEqual(r.warnings ?? [], []);
    assert.equal(readTree(b, a.top, 'report.md'), readTree(a.root, a.top, 'report.md'));
    verifyClean(b);
    // A second realize is local: nothing substituted, nothing built.
    const again = realizeJson(b, ['--substituter', url, mlDemo]);
    assert.equal(again.builds, 0);
    assert.ok(again.plan.every((p) => p.action !== 'substituted'));
  });

  it('http://: the same through nginx serving a file:// cache read-only', async () => {
    const dir = path.join(t.dir, 'http-cache');
    const a = teammateA(mlDemo, `file://${dir}`);
    const nginx = await startNginx(dir);
    try {
      const b = store('b');
      trust(b);
      const r = realizeJson(b, ['--substituter', nginx.url, mlDemo]);
      assert.deepEqual(r.warnings ?? [], []);
      assert.equal(r.builds, 0);
      assert.equal(target(r), a.top);
      verifyClean(b);
    } finally {
      nginx.stop();
    }
  });
});

describe("best() across the team's cache and local realizations", () => {
  it("B's two worse local models do not satisfy best(3): the cache's better ones are chosen with B's best", () => {
    const url = s3Url('best');
    // A trains two models (scores 10 and 30) and pushes all of train's realizations.
    const a = store('a');
    const score = (scores: string, state: string): NodeJS.ProcessEnv => ({
      CAIRN_TEST_SCORES: scores,
      CAIRN_TEST_SCORE_STATE: path.join(t.dir, state),
      CAIRN_TEST_MATCHER: 'latest',
    });
    const ra = realizeJson(a, [teamMl], score('10,30', 'score-a'));
    const trainDref = ra.plan
      .find((p) => p.name === 'train')!
      .rrefs![0]!.split('-')
      .slice(1)
      .join('-');
    ok(cairn(a, ['cache', 'push', url, trainDref, '--key', keyA.secret]));
    // B trained two of its own (20 and 5): not enough for best(3) on their own.
    const b = store('b');
    trust(b);
    realizeJson(b, ['--no-substituters', teamMl], score('20,5', 'score-b'));
    const r = realizeJson(b, ['--substituter', url, teamMl], { CAIRN_TEST_SCORE_STATE: path.join(t.dir, 'score-x') });
    assert.deepEqual(r.warnings ?? [], []);
    assert.deepEqual(actions(r), ['dataset:cached', 'train:substituted', 'report:build']);
    assert.equal(r.builds, 1, 'only the report, whose input (the chosen models) is new');
    assert.equal(readTree(b, target(r), 'report.md'), 'scores 30 20 10\n');
    verifyClean(b);
  });
});

/** Changes one object of the cache at `url`. */
async function edit(url: string, key: string, f: (body: Buffer) => Buffer): Promise<void> {
  const blob: BlobStore = await openBlobStore(url);
  const body = await blob.get(key);
  assert.ok(body, `${key} is in the cache`);
  await blob.put(key, f(body));
}

/** The keys of the cache at `url` under `prefix`. */
async function keys(url: string, prefix: string): Promise<string[]> {
  const blob = await openBlobStore(url);
  const out: string[] = [];
  for await (const k of blob.list(prefix)) out.push(k);
  return out;
}

describe('tampering on the S3 cache: refused, one warning, built locally, nothing bad enters', () => {
  const chain = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');

  /** A pushes the chain a -> b -> c; `tamper` changes the cache; B (trusting `trusted`) realizes through it. */
  async function tampered(
    label: string,
    tamper: (url: string) => Promise<void>,
    code: RegExp,
    trusted?: string[],
  ): Promise<void> {
    const url = s3Url(`tamper-${label}`);
    const a = teammateA(chain, url);
    await tamper(url);
    const b = store('b');
    trust(b, trusted);
    const r = realizeJson(b, ['--substituter', url, chain]);
    assert.equal(r.warnings?.length, 1, `one warning line: ${JSON.stringify(r.warnings)}`);
    assert.match(r.warnings[0]!, code);
    assert.match(r.warnings[0]!, /realizing without it/);
    assert.ok(r.builds >= 1);
    // The chain is deterministic: B's own builds have A's RRefs, with A's bytes.
    assert.equal(target(r), a.top);
    assert.equal(readTree(b, a.top, 'c.txt'), readTree(a.root, a.top, 'c.txt'));
    verifyClean(b);
  }

  it('a flipped archive byte', async (ctx) => {
    // Archives as objects (small ones ride in their signed entries, where a flipped byte is a bad signature).
    process.env.CAIRN_CACHE_INLINE_MAX = '0';
    ctx.after(() => delete process.env.CAIRN_CACHE_INLINE_MAX);
    await tampered(
      'archive',
      async (url) => {
        for (const k of await keys(url, 'a/')) {
          await edit(url, k, (body) => {
            body[body.length >> 1]! ^= 0x01;
            return body;
          });
        }
      },
      /E_BAD_ARCHIVE|E_SYNC_HASH_MISMATCH|E_CACHE_/,
    );
  });

  it('edited metadata (the creation time of an entry)', async () => {
    await tampered(
      'meta',
      async (url) => {
        const [k] = await keys(url, 'r/');
        await edit(url, k!, (body) => {
          const e = JSON.parse(body.toString('utf8')) as { created: number };
          e.created += 1;
          return Buffer.from(JSON.stringify(e));
        });
      },
      /E_CACHE_BAD_SIGNATURE/,
    );
  });

  it('a wrong signature', async () => {
    await tampered(
      'signature',
      async (url) => {
        const [k] = await keys(url, 'r/');
        await edit(url, k!, (body) => {
          const e = JSON.parse(body.toString('utf8')) as { signatures: string[] };
          const [name, sig] = e.signatures[0]!.split(':') as [string, string];
          const raw = Buffer.from(sig, 'base64');
          raw[0]! ^= 0x80;
          e.signatures = [`${name}:${raw.toString('base64')}`];
          return Buffer.from(JSON.stringify(e));
        });
      },
      /E_CACHE_BAD_SIGNATURE/,
    );
  });

  it('a key that is not trusted', async () => {
    ok(cairn(store('keys'), ['key', 'generate', path.join(t.dir, 'other')]));
    const other = fs.readFileSync(path.join(t.dir, 'other.public'), 'utf8').trim();
    await tampered('untrusted', async () => {}, /E_CACHE_UNTRUSTED/, [other]);
  });
});

/** A base port with the four after it free too (a private Swift takes five). */
async function freePorts(): Promise<number> {
  const free = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
  for (let base = 19100 + (process.pid % 50) * 10; base < 20000; base += 10) {
    const all = await Promise.all([0, 1, 2, 3, 4].map((i) => free(base + i)));
    if (all.every(Boolean)) return base;
  }
  throw new Error('no five free ports for a private Swift');
}

describe('the cache goes down mid-run', () => {
  it('Swift stopped between the batch query and the fetches: the realize finishes locally, one warning', async (c) => {
    // Archives as objects, so the fetches need the cache (an archive inline in its entry came with the query).
    process.env.CAIRN_CACHE_INLINE_MAX = '0';
    c.after(() => delete process.env.CAIRN_CACHE_INLINE_MAX);
    // A Swift of this test's own (its own port and directory), so stopping it disturbs no other test.
    const swiftEnv = {
      ...process.env,
      CAIRN_SWIFT_PORT: String(await freePorts()),
      CAIRN_SWIFT_DIR: `/var/lib/cairn-swift-e2e-${process.pid}`,
    };
    const swift = (cmd: string): string =>
      execFileSync('bash', [path.join(repoRoot, 'scripts', 'swift.sh'), cmd], {
        env: swiftEnv,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 120_000,
      });
    const ep = swift('start').trim().split('\n').pop()!;
    try {
      const createBucket = await import('@aws-sdk/client-s3');
      const c = new createBucket.S3Client({
        endpoint: ep,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: swiftCredentials,
      });
      await c.send(new createBucket.CreateBucketCommand({ Bucket: 'outage' }));
      c.destroy();
      const url = `s3://outage/team?endpoint=${ep}&region=us-east-1`;
      // A realizes everything and pushes a and b (not gate).
      const a = store('a');
      const ra = realizeJson(a, [gated]);
      const rrefOf = (r: Realized, name: string): string => r.plan.find((p) => p.name === name)!.rrefs![0]!;
      ok(cairn(a, ['cache', 'push', url, rrefOf(ra, 'a'), rrefOf(ra, 'b'), '--key', keyA.secret]));

      const b = store('b');
      trust(b);
      const gate = path.join(t.dir, 'gate');
      const running: Promise<CliResult> = cairnAsync(b, ['realize', '--json', '-j', '1', '--substituter', url, gated], {
        env: { CAIRN_TEST_PAUSE_BEFORE_FETCH: gate },
      });
      // The batch query is done and told of a and b; their fetches wait, and the cache goes away.
      for (let i = 0; !fs.existsSync(`${gate}.started`); i++) {
        assert.ok(i < 1200, 'a fetch started');
        await new Promise((r) => setTimeout(r, 50));
      }
      swift('stop');
      fs.writeFileSync(`${gate}.open`, '');
      const res = await running;
      assert.equal(res.code, 0, res.stderr);
      const r = JSON.parse(res.stdout) as Realized;
      assert.equal(r.warnings?.length, 1, JSON.stringify(r.warnings));
      assert.match(r.warnings[0]!, /E_CACHE_UNAVAILABLE/);
      // a and b were listed by the cache but could not be fetched: built here, as gate and top were.
      assert.deepEqual(actions(r).sort(), ['a:build', 'b:build', 'gate:build', 'top:build']);
      assert.equal(target(r), target(ra));
      verifyClean(b);
    } finally {
      swift('stop');
      fs.rmSync(swiftEnv.CAIRN_SWIFT_DIR, { recursive: true, force: true });
    }
  });
});

describe('--push-to', () => {
  it('uploads what a realize built, and a second store substitutes it with 0 builds', () => {
    const url = s3Url('push-to');
    const a = store('a');
    const ra = realizeJson(a, ['--push-to', url, '--key', keyA.secret, mlDemo]);
    assert.equal(ra.builds, 3);
    const c = store('c');
    trust(c);
    const rc = realizeJson(c, ['--substituter', url, mlDemo]);
    assert.equal(rc.builds, 0);
    assert.equal(target(rc), target(ra));
    verifyClean(c);
  });

  it('needs --key, and refuses before building', () => {
    const a = store('a');
    const r = cairn(a, ['realize', '--push-to', s3Url('no-key'), mlDemo]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /E_USAGE.*--key/);
    assert.doesNotMatch(r.stderr, /building/);
  });
});

describe('cache URLs on realize', () => {
  it('a malformed s3:// URL (a misspelt parameter) fails before anything is built', () => {
    const bad = `s3://${bucket}/p?endpont=${endpoint}&region=us-east-1`;
    const r = cairn(store('a'), ['realize', '--substituter', bad, mlDemo]);
    expectError(r, 'E_BAD_CACHE_URL');
    assert.doesNotMatch(r.stderr, /built|building/);
  });
});
