/**
 * The shared ssh connection of ssh builders (ssh-sharing.ts) where it used
 * to fail: Ctrl-C of a realize whose builds run on an ssh host exits 130,
 * and nothing it started for the connection outlives it (before the fix the
 * master stayed for ControlPersist's 60 s and its socket directory for
 * good); and a long TMPDIR (macOS,
 * Slurm jobs) no longer makes the socket path too long for ssh, which
 * failed every builder. Real hosts (fixtures/hosts.ts, own prefix and
 * 10.200.34.0/24); run under `flock /tmp/cairn-netns.lock`.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { writeFanout } from './fixtures/builders/fanout.js';
import { isolateModuleCache } from './helpers.js';

isolateModuleCache(after, 'cairn-builders-interrupt-cache');

let h: Hosts;
let a: Host;
let b: Host;
before(async () => {
  h = await startHosts('trlint', 2, '10.200.34');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

/** The command lines of the processes in a host's namespace. */
function processes(host: Host): string[] {
  const pids = h.exec(host, 'ip', ['netns', 'pids', host.ns]).stdout.split('\n').filter(Boolean);
  const out: string[] = [];
  for (const pid of pids) {
    try {
      out.push(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' '));
    } catch {
      /* gone */
    }
  }
  return out;
}

describe('Ctrl-C of a realize with ssh builders', () => {
  it('exits 130 and leaves no ssh master or socket directory behind', async () => {
    const file = writeFanout(h.dir, { salt: 'sigint', parts: 1, sleepMs: 20_000 });
    // The coordinator's temporary directory, short enough for sockets: the socket directories are made there.
    const tmp = fs.mkdtempSync('/tmp/trl-');
    after(() => fs.rmSync(tmp, { recursive: true, force: true }));
    const run = h.spawnCairn(
      a,
      [
        'realize',
        file,
        '--builders',
        `ssh://root@${b.addr}${b.store}`,
        '--builders-ssh',
        h.ssh,
        '--remote-cairn',
        h.remoteCairn,
      ],
      { env: { TMPDIR: tmp } },
    );
    let exited: string | undefined;
    void run.done.then((r) => (exited = `cairn exited ${r.code}: ${r.stderr}`));
    const deadline = Date.now() + 60_000;
    while (exited === undefined && !processes(b).some((c) => c.includes('builder-worker: building'))) {
      if (Date.now() > deadline) {
        process.kill(run.child.pid!, 'SIGKILL');
        assert.fail(`the build did not start on b: ${(await run.done).stderr}`);
      }
      await sleep(100);
    }
    assert.equal(exited, undefined);
    assert.equal(fs.readdirSync(tmp).filter((n) => n.startsWith('cairn-ssh-')).length, 1, 'one shared connection');
    process.kill(run.child.pid!, 'SIGINT');
    const res = await run.done;
    assert.equal(res.code, 130, res.stderr);
    assert.deepEqual(fs.readdirSync(tmp), [], 'no socket directory left');
    const masters = processes(a).filter((c) => c.includes(tmp));
    assert.deepEqual(masters, [], 'no ssh master left');
    // The worker on b ends its build when its ssh session goes (builders-worker.test.ts has the details).
    for (let i = 0; processes(b).some((c) => c.includes('builder-worker')); i++) {
      assert.ok(i < 100, `a worker is left on b: ${processes(b).join('\n')}`);
      await sleep(100);
    }
  });

  it('a TMPDIR too long for a socket path: builds still run on the host', async () => {
    const file = writeFanout(h.dir, { salt: 'long-tmp', parts: 1, sleepMs: 0 });
    const tmp = path.join(h.dir, 'x'.repeat(60));
    fs.mkdirSync(tmp);
    const r = await h.cairn(
      a,
      [
        'realize',
        file,
        '--json',
        '--builders',
        `ssh://root@${b.addr}${b.store}`,
        '--builders-ssh',
        h.ssh,
        '--remote-cairn',
        h.remoteCairn,
      ],
      { env: { TMPDIR: tmp } },
    );
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { plan: { name: string; where?: { builder: string; failures: unknown[] } }[] };
    for (const p of res.plan) {
      assert.equal(p.where?.builder, `ssh://root@${b.addr}${b.store}`, `${p.name}: ${JSON.stringify(p.where)}`);
      assert.deepEqual(p.where?.failures, []);
    }
    assert.deepEqual(fs.readdirSync(tmp), []);
  });
});
