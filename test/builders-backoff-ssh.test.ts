/**
 * A flaky ssh builder comes back (issue 19: backoff of failed builders),
 * against real hosts: two network namespaces with their own sshd
 * (10.200.33.0/24, a prefix of this file's own). Host a coordinates, b
 * builds. Mid-realize b "crashes" (every process in its namespace is
 * SIGKILLed: sshd, the ssh sessions, the remote cairn) and its sshd is
 * started again seconds later: the build in flight is rebuilt here, the
 * builds that become ready while b is down run here with one warning line,
 * and once b is back it builds again. Run it under
 * `flock /tmp/cairn-netns.lock` like every netns test.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { isolateModuleCache } from './helpers.js';
import { spawnSshd, startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, rzDir, tmpEntries, type VerifyReport } from './fixtures/torture/support.js';
import { writeFanout } from './fixtures/builders/fanout.js';

isolateModuleCache(after, 'cairn-builders-backoff-cache');

let h: Hosts;
let a: Host;
let b: Host;
let restarted: ChildProcess | undefined;

before(async () => {
  h = await startHosts('hback', 2, '10.200.33');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  if (restarted && restarted.exitCode === null && restarted.signalCode === null) {
    const exited = new Promise((r) => restarted!.once('exit', r));
    restarted.kill('SIGKILL');
    await exited;
  }
  await h?.stop();
});

interface Where {
  builder: string;
  why: string;
  failures: { builder: string; code: string }[];
  down?: { builder: string; state: string; failures: number; code: string }[];
}
interface Result {
  builds: number;
  targets: { rrefs: string[] }[];
  plan: { name: string; action: string; rrefs: string[]; where?: Where }[];
  warnings?: string[];
}

/** The parts whose realization is in `host`'s store. */
function partsBuiltOn(host: Host): Set<string> {
  const d = path.join(host.store, 'd');
  const names = new Set<string>();
  for (const dref of fs.existsSync(d) ? fs.readdirSync(d) : []) {
    const m = /^[0-9a-z]{32}-(part-\d+)$/.exec(dref);
    const r = path.join(d, dref, 'r');
    if (m && fs.existsSync(r) && fs.readdirSync(r).length > 0) names.add(m[1]!);
  }
  return names;
}

/** Every process in the host's namespace, SIGKILLed: the host is gone (its sshd and everything ssh started). */
function crash(host: Host): number {
  const pids = h.exec(host, 'ip', ['netns', 'pids', host.ns]).stdout.split('\n').filter(Boolean);
  for (const pid of pids)
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* gone */
    }
  return pids.length;
}

describe('a flaky ssh builder', () => {
  it('stopped mid-realize and started again: local fallback while it is down, then it builds again', async () => {
    const file = writeFanout(h.dir, { salt: 'flaky', parts: 8, sleepMs: 2000 });
    const spec = `ssh://root@${b.addr}${b.store}`;
    const run = h.spawnCairn(a, [
      'realize',
      file,
      '--json',
      '--explain',
      '-j',
      '1',
      '--builders',
      spec,
      '--builders-ssh',
      h.ssh,
      '--remote-cairn',
      h.remoteCairn,
    ]);
    // b builds a part (its realization is in b's store), then crashes with the next one in flight.
    let before = new Set<string>();
    for (let i = 0; before.size === 0; i++) {
      assert.ok(i < 1200, 'b never built a part');
      await sleep(50);
      before = partsBuiltOn(b);
    }
    assert.ok(crash(b) > 0, 'processes in b');
    await sleep(2500);
    // b is back: a new sshd on the same address, key and store.
    const sshd = spawnSshd(b.ns, b.addr, path.join(h.dir, 'host_key_b'), path.join(h.dir, 'authorized_keys'));
    sshd.stderr.resume();
    restarted = sshd;
    const r = ok(await run.done, 'realize with a flaky builder');
    const res = JSON.parse(r.stdout) as Result;
    const on = (builder: string): string[] => res.plan.filter((p) => p.where?.builder === builder).map((p) => p.name);

    // One warning line for the whole run, naming b.
    assert.equal(res.warnings?.length, 1, JSON.stringify(res.warnings));
    assert.match(res.warnings[0]!, new RegExp(`^every remote builder failed \\(${spec.replace(/\./g, '\\.')}: E_`));
    // Some parts were built here while b was down, and say so.
    const fallbacks = res.plan.filter((p) => p.where?.why === 'fallback');
    assert.ok(fallbacks.length >= 1, JSON.stringify(res.plan.map((p) => [p.name, p.where])));
    for (const p of fallbacks) assert.equal(p.where!.builder, 'local');
    assert.ok(
      fallbacks.some((p) => p.where!.down?.some((d) => d.builder === spec && d.state === 'backoff')),
      JSON.stringify(fallbacks.map((p) => p.where)),
    );
    assert.match(r.stderr, /built locally: fallback after the failure of .*; down then: ssh:\/\/\S+ \(backing off/);
    // b built parts again after it came back: parts it had not built before the crash.
    const after = on(spec).filter((n) => n.startsWith('part-') && !before.has(n));
    assert.ok(after.length >= 1, `b built again: ${JSON.stringify(res.plan.map((p) => [p.name, p.where]))}`);
    for (const n of after) assert.ok(partsBuiltOn(b).has(n), `${n} was built in b's store`);

    // The results equal a local realize, and a's store is clean.
    const refStore = path.join(h.dir, 'reference');
    const ref = JSON.parse(
      ok(await h.cairn(a, ['--store', refStore, 'realize', file, '--json', '-q'])).stdout,
    ) as Result;
    const want = new Map(ref.plan.map((p) => [p.name, p.rrefs]));
    for (const p of res.plan) assert.deepEqual(p.rrefs, want.get(p.name), p.name);
    for (const p of res.plan) assert.ok(fs.existsSync(rzDir(a.store, p.rrefs[0]!)), `${p.name} is in a's store`);
    const verify = JSON.parse((await h.cairn(a, ['store', 'verify', '--json'])).stdout) as VerifyReport;
    assert.deepEqual(verify.problems, []);
    assert.deepEqual(tmpEntries(a.store), []);
  });
});
