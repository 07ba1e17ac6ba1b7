/**
 * Accelerator detection: the answer really boots the tiny guest, is cached
 * per process, and CAIRN_QEMU_ACCEL overrides it.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { clearAccelCache, detectAccel } from '../src/backends/qemu/kvm.js';
import { Vm } from '../src/backends/qemu/vm.js';
import { tinyFixture } from './fixtures/qemu/tiny.js';
import { tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('cairn-kvm');
after(() => cleanup());

describe('detectAccel', () => {
  it('picks an accelerator the tiny guest boots with, and caches it', async () => {
    const fx = await tinyFixture();
    const a = detectAccel({ kernel: fx.kernel, initramfs: fx.initramfs });
    assert.equal(detectAccel({ kernel: fx.kernel, initramfs: fx.initramfs }), a, 'one probe per process');
    const accel = await a;
    assert.ok(accel.kind === 'kvm' || accel.kind === 'tcg');
    assert.ok(accel.reason.length > 0);
    assert.deepEqual(accel.args.slice(0, 2), ['-accel', accel.kind]);
    console.log(`# accel: ${accel.kind} (${accel.reason})`);
    const vm = await Vm.boot({ kernel: fx.kernel, initramfs: fx.initramfs, accel }, `${dir}/vm`);
    try {
      assert.equal((await vm.run('echo up')).output, 'up\n');
    } finally {
      await vm.kill();
    }
  });

  it('probes without a kernel too (vCPU progress) and honours CAIRN_QEMU_ACCEL', async () => {
    const bare = await detectAccel();
    assert.ok(bare.kind === 'kvm' || bare.kind === 'tcg');
    process.env.CAIRN_QEMU_ACCEL = 'tcg';
    try {
      const forced = await detectAccel();
      assert.equal(forced.kind, 'tcg');
      assert.deepEqual(forced.args, ['-accel', 'tcg', '-cpu', 'max']);
    } finally {
      delete process.env.CAIRN_QEMU_ACCEL;
      clearAccelCache();
    }
  });
});
