/**
 * `cairn realize --builders ssh://...` against real hosts: three network
 * namespaces with their own sshd (10.200.19.0/24); host a coordinates, b
 * and c build with `cairn build-drv` (this checkout's cairn). The fan-out
 * pipeline (8 parts, then a report) is spread over both builders and equals
 * a local realize; a builder killed mid-build, and one whose result is
 * tampered with, have their derivation rebuilt elsewhere; with every
 * builder unreachable, the build falls back to local with one warning.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { isolateModuleCache } from './helpers.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, rzDir, tmpEntries, type VerifyReport } from './fixtures/torture/support.js';
import { writeFanout } from './fixtures/builders/fanout.js';

isolateModuleCache(after, 'cairn-builders-cache');

let h: Hosts;
let a: Host;
let b: Host;
let c: Host;

before(async () => {
  h = await startHosts('bld', 3, '10.200.19');
  [a, b, c] = h.hosts as [Host, Host, Host];
});
after(async () => {
  await h?.stop();
});

interface Where {
  builder: string;
  why: string;
  failures: { builder: string; code: string }[];
}
interface Result {
  builds: number;
  targets: { rrefs: string[] }[];
  plan: { name: string; action: string; rrefs: string[]; where?: Where }[];
  warnings?: string[];
}

const builder = (host: Host, extra = ''): string => `ssh://root@${host.addr}${host.store}${extra}`;

/**
 * The cairn command on b and c. With a tamper marker beside the host's store, the stream of its builder
 * worker passes through a filter that alters the parts' outputs on the way back (a man in the middle).
 */
function remoteCairn(): string {
  const wrapper = path.join(h.dir, 'remote-cairn.sh');
  const filter = path.join(import.meta.dirname, 'fixtures', 'builders', 'tamper-stream.js');
  fs.writeFileSync(
    wrapper,
    `#!/bin/sh
# --store STORE builder-worker
store=$2
if [ "$3" = builder-worker ] && [ -e "$store.tamper" ]; then
  ${h.remoteCairn} "$@" | ${process.execPath} ${filter} 'tamper\\n' 'TAMPER\\n'
  exit
fi
exec ${h.remoteCairn} "$@"
`,
    { mode: 0o755 },
  );
  return `sh ${wrapper}`;
}

async function realizeOn(file: string, builders: string[], extra: string[] = []): Promise<Result & { stderr: string }> {
  const r = await h.cairn(a, [
    'realize',
    file,
    '--json',
    '--explain',
    ...builders.flatMap((s) => ['--builders', s]),
    '--builders-ssh',
    h.ssh,
    '--remote-cairn',
    remoteCairn(),
    ...extra,
  ]);
  ok(r, 'realize with builders');
  return { ...(JSON.parse(r.stdout) as Result), stderr: r.stderr };
}

async function assertVerifyClean(host: Host): Promise<void> {
  const r = await h.cairn(host, ['store', 'verify', '--json']);
  assert.deepEqual((JSON.parse(r.stdout) as VerifyReport).problems, [], `store verify on ${host.name}`);
}

const readOut = (host: Host, rref: string, rel: string): string =>
  fs.readFileSync(path.join(rzDir(host.store, rref), 'out', rel), 'utf8');

/** The same pipeline realized locally in a fresh store on host a: the reference RRefs. */
async function localReference(file: string, label: string): Promise<Map<string, string[]>> {
  const store = path.join(h.dir, `reference-${label}`);
  const r = ok(await h.cairn(a, ['--store', store, 'realize', file, '--json', '-q']), 'local realize');
  const res = JSON.parse(r.stdout) as Result;
  return new Map(res.plan.map((p) => [p.name, p.rrefs]));
}

describe('ssh builders', () => {
  it('spreads the fan-out over both hosts; the results equal a local realize', async () => {
    const file = writeFanout(h.dir, { salt: 'spread', sleepMs: 1500 });
    const res = await realizeOn(file, [builder(b), builder(c)]);
    const where = new Map(res.plan.map((p) => [p.name, p.where]));
    const on = (host: Host): string[] => res.plan.filter((p) => p.where?.builder === builder(host)).map((p) => p.name);
    assert.ok(
      on(b).some((n) => n.startsWith('part-')),
      `b built a part: ${JSON.stringify([...where])}`,
    );
    assert.ok(
      on(c).some((n) => n.startsWith('part-')),
      `c built a part: ${JSON.stringify([...where])}`,
    );
    assert.equal(res.builds, 9);
    for (const p of res.plan) {
      assert.equal(p.action, 'build');
      assert.equal(p.where?.why, 'slot free', p.name);
    }
    // Equal to a local realize: same RRefs for every stage.
    const ref = await localReference(file, 'spread');
    for (const p of res.plan) assert.deepEqual(p.rrefs, ref.get(p.name), p.name);
    // The report was built from the received inputs and is in a's store, verified.
    const report = res.targets[0]!.rrefs[0]!;
    const expected = Array.from({ length: 8 }, (_, i) => `part ${i} spread\n`).join('');
    assert.equal(readOut(a, report, 'report.txt'), expected);
    for (const p of res.plan) assert.ok(fs.existsSync(rzDir(a.store, p.rrefs[0]!)), `${p.name} is in a's store`);
    assert.match(res.stderr, /part-\d: built on ssh:\/\/root@10\.200\.19\.[23]\S*: a slot was free/);
    await assertVerifyClean(a);
    assert.deepEqual(tmpEntries(a.store), []);
    // A second run builds nothing and asks no builder.
    const again = await realizeOn(file, [builder(b), builder(c)]);
    assert.equal(again.builds, 0);
    assert.ok(again.plan.every((p) => p.action === 'cached' && p.where === undefined));
  });

  it('a builder killed mid-build: its derivation is rebuilt elsewhere, nothing partial is left', async () => {
    const file = writeFanout(h.dir, { salt: 'kill', parts: 2, sleepMs: 200, slow: { index: 0, ms: 8000 } });
    // b alone takes part-0 first (the most free slots, b listed first), c waits with maxJobs=1.
    const run = h.spawnCairn(a, [
      'realize',
      file,
      '--json',
      '--explain',
      '--builders',
      builder(b),
      '--builders',
      builder(c),
      '--builders-ssh',
      h.ssh,
      '--remote-cairn',
      remoteCairn(),
    ]);
    // Kill the builder worker building the slow part wherever it runs first (its title names what it builds).
    let killed: Host | undefined;
    const deadline = Date.now() + 60_000;
    while (!killed && Date.now() < deadline) {
      for (const host of [b, c]) {
        const pids = h.exec(host, 'ip', ['netns', 'pids', host.ns]).stdout.split('\n').filter(Boolean);
        for (const pid of pids) {
          let cmd = '';
          try {
            cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          } catch {
            continue;
          }
          if (cmd.includes('builder-worker: building') && cmd.includes('-part-0')) {
            process.kill(Number(pid), 'SIGKILL');
            killed = host;
          }
        }
      }
      if (!killed) await sleep(100);
    }
    assert.ok(killed, 'the slow build started on a builder');
    const r = await run.done;
    ok(r, 'realize after a builder was killed');
    const res = JSON.parse(r.stdout) as Result;
    const slow = res.plan.find((p) => p.name === 'part-0')!;
    const other = killed === b ? c : b;
    assert.equal(slow.where?.builder, builder(other), JSON.stringify(slow.where));
    assert.equal(slow.where?.why, 'retry');
    assert.deepEqual(
      slow.where?.failures.map((f) => f.builder),
      [builder(killed)],
    );
    assert.match(r.stderr, new RegExp(`part-0: built on ${builder(other).replace(/\./g, '\\.')}: retried after`));
    const ref = await localReference(file, 'kill');
    assert.deepEqual(slow.rrefs, ref.get('part-0'));
    await assertVerifyClean(a);
    assert.deepEqual(tmpEntries(a.store), []);
    assert.deepEqual(
      fs.readdirSync(a.store).includes('incoming') ? fs.readdirSync(path.join(a.store, 'incoming')) : [],
      [],
    );
  });

  it('a builder returning a tampered result is refused (E_SYNC_HASH_MISMATCH), rebuilt elsewhere', async () => {
    const file = writeFanout(h.dir, { salt: 'tamper', parts: 2, sleepMs: 200 });
    fs.writeFileSync(`${b.store}.tamper`, '');
    await sleep(20);
    let res: Result & { stderr: string };
    try {
      res = await realizeOn(file, [builder(b), builder(c)]);
    } finally {
      fs.rmSync(`${b.store}.tamper`);
    }
    const fromB = res.plan.filter((p) => p.where?.failures.some((f) => f.builder === builder(b)));
    assert.ok(fromB.length >= 1, `b's result was refused at least once: ${JSON.stringify(res.plan)}`);
    for (const p of fromB) {
      assert.equal(p.where!.failures.find((f) => f.builder === builder(b))!.code, 'E_SYNC_HASH_MISMATCH');
      assert.notEqual(p.where!.builder, builder(b));
    }
    assert.ok(
      res.plan.every((p) => p.where?.builder !== builder(b)),
      'nothing b built was accepted',
    );
    const ref = await localReference(file, 'tamper');
    for (const p of res.plan) assert.deepEqual(p.rrefs, ref.get(p.name), p.name);
    for (const p of res.plan.filter((x) => x.name.startsWith('part-')))
      assert.doesNotMatch(readOut(a, p.rrefs[0]!, 'part.txt'), /TAMPER/);
    await assertVerifyClean(a);
  });

  it('a build that fails on a builder fails the realize with its own code; no other builder retries it', async () => {
    const file = path.join(h.dir, 'failing.ts');
    fs.writeFileSync(
      file,
      `import { stage } from 'cairn';
export default stage({ name: 'boom', config: { v: 1 }, build: () => { throw new Error('boom on purpose'); } });
`,
    );
    const r = await h.cairn(a, [
      'realize',
      file,
      '--builders',
      builder(b),
      '--builders',
      builder(c),
      '--builders-ssh',
      h.ssh,
      '--remote-cairn',
      remoteCairn(),
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /cairn: error E_BUILD_FAILED: .*boom on purpose/s);
    assert.doesNotMatch(r.stderr, /every remote builder failed/);
    assert.deepEqual(tmpEntries(a.store), []);
  });

  it('with a cache and a key, inputs and results travel through the cache', async () => {
    const cache = `file://${path.join(h.dir, 'cache')}`;
    const keyBase = path.join(h.dir, 'bkey');
    ok(await h.cairn(a, ['key', 'generate', keyBase]));
    const file = writeFanout(h.dir, { salt: 'cache', parts: 3, sleepMs: 200 });
    const res = await realizeOn(file, [builder(b), builder(c)], ['--substituter', cache, '--key', `${keyBase}.secret`]);
    assert.ok(
      res.plan.every((p) => p.where?.builder.startsWith('ssh://')),
      JSON.stringify(res.plan),
    );
    const ref = await localReference(file, 'cache');
    for (const p of res.plan) assert.deepEqual(p.rrefs, ref.get(p.name), p.name);
    // Every stage's realization is in the cache: the builders pushed them, signed.
    const listed = ok(await h.cairn(a, ['cache', 'ls', cache, '--json'])).stdout;
    for (const p of res.plan) assert.ok(listed.includes(p.rrefs[0]!), `${p.name} is in the cache`);
    await assertVerifyClean(a);
  });

  it('every builder unreachable: built locally, with one warning line', async () => {
    const file = writeFanout(h.dir, { salt: 'fallback', parts: 3, sleepMs: 50 });
    const dead = ['ssh://root@10.200.19.9/srv/x', 'ssh://root@10.200.19.10/srv/y'];
    const res = await realizeOn(file, dead);
    assert.equal(res.warnings?.length, 1, JSON.stringify(res.warnings));
    // Both builders are named, in the order they failed (which the race between the parts decides).
    const dead9 = String.raw`ssh://root@10\.200\.19\.(?:9|10)\S*`;
    const warning = new RegExp(
      String.raw`every remote builder failed \(${dead9}: E_\w+ .*; ${dead9}: E_\w+ .*\); building`,
    );
    assert.match(res.warnings[0]!, warning);
    assert.match(res.warnings[0]!, /10\.200\.19\.9\/.*10\.200\.19\.10\/|10\.200\.19\.10\/.*10\.200\.19\.9\//);
    for (const p of res.plan) {
      assert.equal(p.where?.builder, 'local');
      assert.equal(p.where?.why, 'fallback');
    }
    const report = new RegExp(
      String.raw`report: built locally: fallback after the failure of ${dead9} \(E_\w+\), ${dead9}`,
    );
    assert.match(res.stderr, report);
    const ref = await localReference(file, 'fallback');
    for (const p of res.plan) assert.deepEqual(p.rrefs, ref.get(p.name), p.name);
  });
});
