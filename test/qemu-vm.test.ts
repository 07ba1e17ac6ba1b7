/**
 * Whole-machine save and restore of the tiny guest with a qcow2 disk: a
 * shell variable, a file in /tmp (memory) and a file on the disk survive;
 * two restores of one state each write to their own overlay; the saved
 * state is read-only. Prints boot, save and restore times.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readState, Vm } from '../src/backends/qemu/vm.js';
import { tinyFixture, type TinyFixture } from './fixtures/qemu/tiny.js';
import { tempDir } from './helpers.js';

let fx: TinyFixture;
const { dir, cleanup } = tempDir('cairn-vm');
before(async () => {
  fx = await tinyFixture();
});
after(() => cleanup());

describe('Vm save and restore', () => {
  it('restores memory and disk; each restore writes to its own copy', async () => {
    const vm = await Vm.boot({ kernel: fx.kernel, initramfs: fx.initramfs, disk: fx.disk }, path.join(dir, 'boot'));
    let r1: Vm | null = null;
    let r2: Vm | null = null;
    try {
      assert.equal(await vm.console.check0('mount | grep -c " /mnt "'), '1\n', 'disk mounted');
      await vm.console.check0('X=forty-two; echo in-memory > /tmp/m; echo on-disk > /mnt/d');
      const state = await vm.save(path.join(dir, 'state'));
      assert.ok(vm.exited);
      assert.equal(state.disk, 'disk.qcow2');
      assert.ok(state.bytes > 1 << 20);
      assert.deepEqual(readState(state.dir).machine, 'pc-q35-7.2');
      assert.equal(fs.statSync(path.join(state.dir, 'memory.bin')).mode & 0o222, 0, 'memory is read-only');
      assert.equal(fs.statSync(path.join(state.dir, 'disk.qcow2')).mode & 0o222, 0, 'disk is read-only');

      r1 = await Vm.restore(state.dir, path.join(dir, 'r1'));
      assert.equal(await r1.console.check0('echo $X; cat /tmp/m /mnt/d'), 'forty-two\nin-memory\non-disk\n');
      await r1.console.check0('X=changed; echo r1 > /mnt/d; sync');

      r2 = await Vm.restore(state.dir, path.join(dir, 'r2'));
      assert.equal(await r2.console.check0('echo $X; cat /mnt/d'), 'forty-two\non-disk\n', 'r1 did not leak into r2');
      assert.equal(await r1.console.check0('echo $X; cat /mnt/d'), 'changed\nr1\n');
      console.log(
        `# boot ${Math.round(vm.timings.readyMs)} ms; save ${Math.round(state.saveMs)}` +
          ` ms (${(state.bytes / 1e6).toFixed(1)} MB); ` +
          `restore ${Math.round(r1.timings.readyMs)} ms, ${Math.round(r2.timings.readyMs)} ms; accel ${vm.accel.kind}`,
      );
      assert.ok(r1.timings.readyMs < vm.timings.readyMs, 'restore is faster than boot');
    } finally {
      await vm.kill();
      await r1?.kill();
      await r2?.kill();
    }
  });

  it('restores a diskless guest and can save a restored guest again', async () => {
    const vm = await Vm.boot({ kernel: fx.kernel, initramfs: fx.initramfs, memoryMb: 128 }, path.join(dir, 'b2'));
    await vm.console.check0('echo one > /tmp/f');
    const s1 = await vm.save(path.join(dir, 's1'));
    assert.equal(s1.disk, null);
    const r = await Vm.restore(s1.dir, path.join(dir, 'b2r'));
    await r.console.check0('echo two >> /tmp/f');
    const s2 = await r.save(path.join(dir, 's2'));
    const r2 = await Vm.restore(s2.dir, path.join(dir, 'b2r2'));
    try {
      assert.equal(await r2.console.check0('cat /tmp/f'), 'one\ntwo\n');
      const kb = Number(/MemTotal:\s+(\d+)/.exec(await r2.console.check0('cat /proc/meminfo'))?.[1]);
      assert.ok(kb > 64_000 && kb <= 128 * 1024, `the -m 128 of the first boot: ${kb} kB`);
    } finally {
      await r2.kill();
    }
  });

  it('fails clearly when QEMU cannot start', async () => {
    await assert.rejects(
      Vm.boot(
        {
          kernel: path.join(dir, 'missing-kernel'),
          initramfs: fx.initramfs,
          accel: { kind: 'tcg', args: ['-accel', 'tcg'], reason: '' },
        },
        path.join(dir, 'bad'),
      ),
      /exited|cannot/,
    );
  });
});
