/**
 * `cairn sync push|pull` between two real hosts: network namespaces with
 * their own sshd and store (fixtures/hosts.ts). Push, pull, incremental
 * re-sync, --dry-run, a tampered realization, a realize and a gc running
 * on the target during a pull, and bad remotes.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isolateModuleCache, lastLine, repoRoot, type CliResult } from './helpers.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { expectError, ok, rzDir, tmpEntries, type VerifyReport } from './fixtures/torture/support.js';

const CLOSURE = path.join(repoRoot, 'test', 'fixtures', 'sync', 'closure.ts');
isolateModuleCache(after, 'cairn-sync-cache');

let h: Hosts;
let a: Host;
let b: Host;

before(async () => {
  h = await startHosts('sync');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

interface Report {
  closure: number;
  present: number;
  dryRun: boolean;
  plan: { rrefs: string[]; drvs: string[]; drefs: string[] };
  transfer: { files: number; literalBytes: number } | null;
  received: { received: string[]; present: string[] } | null;
}

const realize = async (host: Host, salt: string, stage = 'top', env: NodeJS.ProcessEnv = {}): Promise<string> =>
  lastLine(
    ok(
      await h.cairn(host, ['realize', CLOSURE, '-q', '-s', stage], { env: { SYNC_SALT: salt, ...env } }),
      `realize ${stage} on ${host.name}`,
    ).stdout,
  );

const sync = (on: Host, dir: 'push' | 'pull', other: Host, refs: string[], extra: string[] = []): Promise<CliResult> =>
  h.cairn(on, ['sync', dir, ...h.syncOpts(), ...extra, other.remote, ...refs]);

async function syncJson(
  on: Host,
  dir: 'push' | 'pull',
  other: Host,
  refs: string[],
  extra: string[] = [],
): Promise<Report> {
  return JSON.parse(ok(await sync(on, dir, other, refs, ['--json', ...extra]), `sync ${dir}`).stdout) as Report;
}

async function assertVerifyClean(host: Host): Promise<VerifyReport> {
  const r = await h.cairn(host, ['store', 'verify', '--json']);
  const report = JSON.parse(r.stdout) as VerifyReport;
  assert.deepEqual(report.problems, [], `store verify on ${host.name} found problems`);
  assert.equal(r.code, 0);
  return report;
}

async function closureOf(host: Host, ref: string): Promise<string[]> {
  return ok(await h.cairn(host, ['store', 'closure', ref]))
    .stdout.trim()
    .split('\n')
    .sort();
}

const incoming = (host: Host): string[] => {
  try {
    return fs.readdirSync(path.join(host.store, 'incoming'));
  } catch {
    return [];
  }
};
const hasRz = (host: Host, rref: string): boolean => fs.existsSync(path.join(rzDir(host.store, rref), 'out'));
const readOut = (host: Host, rref: string, rel: string): string =>
  fs.readFileSync(path.join(rzDir(host.store, rref), 'out', rel), 'utf8');

describe('sync push and pull between two hosts', () => {
  let top = '';

  it('push --dry-run lists the closure and writes nothing on either side', async () => {
    top = await realize(a, 'one');
    const r = ok(await sync(a, 'push', b, [top], ['--dry-run']));
    assert.match(r.stdout, /would send 4 realization\(s\) and 4 derivation\(s\) of a closure of 4/);
    assert.equal(r.stdout.split('\n').filter((l) => l.startsWith('would send ') && l.includes(top)).length, 1);
    assert.equal(fs.existsSync(b.store), false, "a dry run must not create the target's store");
  });

  it('push sends the whole closure; the target verifies clean and holds the same bytes, modes and links', async () => {
    const r = await syncJson(a, 'push', b, [top]);
    assert.equal(r.closure, 4);
    assert.equal(r.present, 0);
    assert.equal(r.plan.rrefs.length, 4);
    assert.equal(r.plan.rrefs[3], top, 'dependencies are sent before their dependants');
    assert.equal(r.plan.drvs.length, 4);
    assert.ok(r.transfer && r.transfer.files > 0);
    assert.deepEqual(r.received!.received, r.plan.rrefs);
    assert.deepEqual(await closureOf(b, top), await closureOf(a, top));
    assert.equal(readOut(b, top, 'top.txt'), readOut(a, top, 'top.txt'));
    const baseRz = r.plan.rrefs[0]!;
    assert.match(baseRz, /-base$/);
    assert.equal(fs.statSync(path.join(rzDir(b.store, baseRz), 'out', 'bin', 'run.sh')).mode & 0o777, 0o555);
    assert.equal(fs.readlinkSync(path.join(rzDir(b.store, baseRz), 'out', 'bin', 'base-link')), '../base.txt');
    assert.equal(fs.statSync(rzDir(b.store, top)).mode & 0o777, 0o555);
    await assertVerifyClean(b);
    await assertVerifyClean(a);
    assert.deepEqual(incoming(b), [], 'the staging directory is removed');
    assert.deepEqual(tmpEntries(b.store), []);
    // The received realizations serve builds on b: a realize there is fully cached.
    const again = ok(await h.cairn(b, ['realize', CLOSURE, '--json', '-q'], { env: { SYNC_SALT: 'one' } }));
    assert.equal((JSON.parse(again.stdout) as { builds: number }).builds, 0);
  });

  it('a second push transfers nothing', async () => {
    const r = await syncJson(a, 'push', b, [top]);
    assert.equal(r.present, 4);
    assert.deepEqual(r.plan.rrefs, []);
    assert.deepEqual(r.plan.drvs, []);
    assert.equal(r.transfer, null, 'rsync is not even started');
  });

  it("pull with no REF fetches the closure of the remote's roots, and only what is missing", async () => {
    const big = await realize(a, 'one', 'big');
    ok(await h.cairn(a, ['root', 'add', 'keep-big', big]));
    const dry = await syncJson(b, 'pull', a, [], ['--dry-run']);
    assert.deepEqual(dry.plan.rrefs, [big], 'base is already on b');
    assert.equal(hasRz(b, big), false, 'the dry run fetched nothing');
    const r = await syncJson(b, 'pull', a, []);
    assert.equal(r.closure, 2);
    assert.equal(r.present, 1);
    assert.deepEqual(r.plan.rrefs, [big]);
    assert.ok(r.transfer!.literalBytes >= 1 << 20, 'the 1 MiB file was sent');
    assert.equal(
      fs
        .readFileSync(path.join(rzDir(b.store, big), 'out', 'big.bin'))
        .equals(fs.readFileSync(path.join(rzDir(a.store, big), 'out', 'big.bin'))),
      true,
    );
    await assertVerifyClean(b);
    const again = await syncJson(b, 'pull', a, []);
    assert.deepEqual(again.plan.rrefs, []);
    assert.equal(again.transfer, null);
    assert.deepEqual(incoming(b), []);
  });

  it('pull --dry-run into a store that does not exist creates nothing', async () => {
    const fresh: Host = { ...b, store: path.join(h.dir, 'fresh-store') };
    const r = ok(await sync(fresh, 'pull', a, [top], ['--dry-run']));
    assert.match(r.stdout, /would fetch 4 realization\(s\)/);
    assert.equal(fs.existsSync(fresh.store), false);
  });

  it(
    'a tampered realization is refused with its dependants; the ' + 'rest arrives and the target verifies clean',
    async () => {
      const t = await realize(a, 'tamper');
      const rrefs = await closureOf(a, t);
      const left = rrefs.find((r) => r.endsWith('-left'))!;
      const file = path.join(rzDir(a.store, left), 'out', 'left.txt');
      fs.chmodSync(file, 0o644);
      fs.appendFileSync(file, 'evil\n');
      fs.chmodSync(file, 0o444);
      const r = await sync(a, 'push', b, [t]);
      expectError(r, 'E_SYNC_HASH_MISMATCH', 'push of a tampered closure');
      assert.match(r.stderr, new RegExp(left));
      assert.equal(hasRz(b, left), false, 'the tampered realization never entered the store');
      assert.equal(hasRz(b, t), false, 'nor did its dependant');
      assert.equal(
        hasRz(
          b,
          rrefs.find((x) => x.endsWith('-base'))!,
        ),
        true,
        'sound realizations were taken in',
      );
      assert.ok(
        fs.readdirSync(path.join(b.store, 'quarantine')).some((q) => q.startsWith(left)),
        'the bad copy is quarantined',
      );
      await assertVerifyClean(b);
      assert.deepEqual(incoming(b), []);
      // Pulling it is refused in the same way.
      const p = await sync(b, 'pull', a, [t]);
      expectError(p, 'E_SYNC_HASH_MISMATCH', 'pull of a tampered closure');
      assert.equal(hasRz(b, t), false);
      await assertVerifyClean(b);
    },
  );

  it('a realize and a gc on the target while it pulls: all succeed and the store verifies clean', async () => {
    const salt = 'race';
    const t = await realize(a, salt);
    const env = { SYNC_SALT: salt, CAIRN_TEST_SLEEP_MS: '150' };
    const [p, rz, gc] = await Promise.all([
      sync(b, 'pull', a, [t]),
      h.cairn(b, ['realize', CLOSURE, '-q'], { env }),
      h.cairn(b, ['store', 'gc']),
    ]);
    ok(p, 'pull during realize');
    ok(rz, 'realize during pull');
    ok(gc, 'gc during pull');
    // Identical outputs have identical RRefs: the build and the pull merged.
    assert.equal(lastLine(rz.stdout), t);
    await assertVerifyClean(b);
    // gc may have collected the unrooted pulled realizations afterwards; a re-pull restores them.
    ok(await sync(b, 'pull', a, [t]));
    assert.deepEqual(await closureOf(b, t), await closureOf(a, t));
    await assertVerifyClean(b);
    assert.deepEqual(tmpEntries(b.store), []);
  });

  it('bad remotes are refused with stable codes, before anything is written', async () => {
    top ||= await realize(a, 'one');
    const fresh: Host = { ...a, store: path.join(h.dir, 'never-created') };
    for (const spec of ['nohost', 'host:', ':store', '-oProxyCommand=touch_x:store', 'us er@host:s', 'a@b@c:s']) {
      const r = await h.cairn(fresh, ['sync', 'push', ...h.syncOpts(), '--', spec, top]);
      expectError(r, 'E_BAD_REMOTE', `push to ${spec}`);
    }
    assert.equal(fs.existsSync(fresh.store), false);
    // An address nobody answers on, and a remote without that cairn.
    const unreachable = await h.cairn(a, ['sync', 'push', ...h.syncOpts(), `root@10.200.77.99:${b.store}`, top]);
    expectError(unreachable, 'E_SYNC_FAILED', 'push to an unreachable host');
    const noCairn = await h.cairn(a, [
      'sync',
      'push',
      '-e',
      h.ssh,
      '--remote-cairn',
      '/nonexistent/cairn',
      b.remote,
      top,
    ]);
    expectError(noCairn, 'E_SYNC_FAILED', 'push with a missing remote cairn');
    assert.match(noCairn.stderr, /--remote-cairn/);
    const badRef = await h.cairn(a, ['sync', 'push', ...h.syncOpts(), b.remote, 'not-a-ref']);
    expectError(badRef, 'E_BAD_REF', 'push of a malformed ref');
  });
});
