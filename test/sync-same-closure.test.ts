/**
 * Syncs of one closure at once, from one process: a realize with builders
 * pushes the same inputs to a host for every part of a fan-out that depends
 * on one upstream stage. They share a staging directory (named to resume an
 * interrupted sync), and before the fix the first receive removed it under
 * the others: "there is no staging directory for sync", and a healthy
 * builder dropped. Pulls raced too (ENOTEMPTY while one receive emptied
 * the directory under another's rsync; not every run). Real hosts (fixtures/hosts.ts, own prefix and 10.200.34.0/24);
 * run under `flock /tmp/cairn-netns.lock`.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalStore } from '../src/store/store.js';
import { pull, push, type SyncOptions } from '../src/store/sync.js';
import { stage } from '../src/stages/stage.js';
import { realize } from '../src/stages/realize.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, type VerifyReport } from './fixtures/torture/support.js';
import type { RRef } from '../src/store/refs.js';

let h: Hosts;
let a: Host;
let b: Host;
let opts: SyncOptions;
before(async () => {
  h = await startHosts('trlsync', 2, '10.200.34');
  [a, b] = h.hosts as [Host, Host];
  // This process runs ssh from host a's namespace.
  opts = { ssh: `ip netns exec ${a.ns} ${h.ssh}`, remoteCairn: h.remoteCairn };
});
after(async () => {
  await h?.stop();
});

/** A dependency and a stage built from it, realized in `root`: the closure's top RRef. */
async function closureIn(root: string, tag: string): Promise<RRef> {
  const base = stage({
    name: 'base',
    config: { tag },
    build: ({ out }) => fs.writeFileSync(path.join(out, 'base.txt'), `base ${tag}\n`.repeat(1000)),
  });
  const top = stage({
    name: 'top',
    config: { base },
    build: ({ config, out }) => fs.copyFileSync(config.base.file('base.txt'), path.join(out, 'top.txt')),
  });
  const store = LocalStore.open(root);
  try {
    return (await realize([top], { store })).targets[0]!.rrefs[0]!;
  } finally {
    store.close();
  }
}

async function assertClean(host: Host): Promise<void> {
  const v = ok(await h.cairn(host, ['store', 'verify', '--json']), 'verify');
  assert.deepEqual((JSON.parse(v.stdout) as VerifyReport).problems, [], `store verify on ${host.name}`);
  assert.deepEqual(fs.readdirSync(path.join(host.store, 'incoming')), [], `nothing staged on ${host.name}`);
}

describe('syncs of the same closure at once', () => {
  it('four pushes of one closure to one host all succeed; the closure arrives once', async () => {
    const rref = await closureIn(a.store, 'push');
    const storeA = LocalStore.open(a.store);
    try {
      const reports = await Promise.allSettled([1, 2, 3, 4].map(() => push(storeA, b.remote, [rref], opts)));
      const failed = reports.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
      assert.deepEqual(failed, [], 'every push succeeds');
      const sent = reports.map((r) => (r.status === 'fulfilled' ? (r.value.received?.received.length ?? 0) : -1));
      assert.equal(
        sent.reduce((x, y) => x + y, 0),
        2,
        `the two realizations are received once in all (${sent.join(', ')})`,
      );
    } finally {
      storeA.close();
    }
    const storeB = LocalStore.open(b.store);
    try {
      assert.ok(storeB.has(rref));
    } finally {
      storeB.close();
    }
    await assertClean(b);
  });

  it('four pulls of one closure from one host all succeed', async () => {
    const rref = await closureIn(b.store, 'pull');
    const storeA = LocalStore.open(a.store);
    try {
      const reports = await Promise.allSettled([1, 2, 3, 4].map(() => pull(storeA, b.remote, [rref], opts)));
      const failed = reports.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
      assert.deepEqual(failed, [], 'every pull succeeds');
      assert.ok(storeA.has(rref));
    } finally {
      storeA.close();
    }
    await assertClean(a);
  });
});
