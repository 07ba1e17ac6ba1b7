/**
 * A VM snapshot built on host A is pulled to host B and resumed there: a
 * tiny machine with one step is realized on A's store (real QEMU), B pulls
 * the state's closure over ssh (fixtures/hosts.ts), and resuming it on B's
 * store finds it cached and restores the shell, memory and disk the step
 * left. machine.json and the qcow2 backing chain hold store-relative
 * references, so the state works from B's store directory.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalStore } from '../src/store/store.js';
import { machine, step } from '../src/stages/machine.js';
import { tiny } from '../src/stages/bases/tiny.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { isolateModuleCache } from './helpers.js';
import { ok, type VerifyReport } from './fixtures/torture/support.js';
import type { RRef } from '../src/store/refs.js';

requireQemu();
isolateModuleCache(after, 'cairn-sync-machine-cache');

let h: Hosts;
let a: Host;
let b: Host;
before(async () => {
  h = await startHosts('syncvm');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

const shell = step<{ cmd: string }>({
  name: 'shell-exec',
  async run(vm, { cmd }) {
    await vm.exec(cmd, { check: true, shell: true });
  },
});

describe('a machine state moves between hosts', () => {
  it('built on A, pulled to B, resumed on B with its memory and disk', async () => {
    const m = machine(tiny()).apply(shell, {
      cmd: 'export X=from-host-a; echo in-memory > /tmp/m; echo on-disk > /mnt/d',
    });
    const storeA = LocalStore.open(a.store);
    let rref: RRef;
    try {
      rref = (await m.realize({ store: storeA })).rref;
    } finally {
      storeA.close();
    }

    const r = JSON.parse(
      ok(await h.cairn(b, ['sync', 'pull', ...h.syncOpts(), '--json', a.remote, rref]), 'pull').stdout,
    ) as { plan: { rrefs: RRef[] } };
    assert.equal(r.plan.rrefs[r.plan.rrefs.length - 1], rref);
    assert.ok(r.plan.rrefs.length >= 3, 'the state, the base state and the base files');
    const v = await h.cairn(b, ['store', 'verify', '--json']);
    assert.deepEqual((JSON.parse(v.stdout) as VerifyReport).problems, []);

    const storeB = LocalStore.open(b.store);
    try {
      let builds = 0;
      const seen = await m.use((vm) => vm.exec('echo $X; cat /tmp/m /mnt/d'), {
        store: storeB,
        events: {
          built: () => {
            builds++;
          },
        },
      });
      assert.equal(builds, 0, 'B resumes the pulled state; nothing is rebuilt');
      assert.deepEqual(seen, { stdout: 'from-host-a\nin-memory\non-disk\n', stderr: '', exitCode: 0 });
      assert.ok(storeB.has(rref));
      assert.ok(path.isAbsolute(storeB.outPath(rref)));
    } finally {
      storeB.close();
    }
  });
});
