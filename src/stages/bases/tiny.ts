/**
 * The `tiny` machine base as stages: its files (the Debian generic kernel, a
 * busybox initramfs, an empty ext4 disk; built by src/backends/qemu/tiny.ts)
 * and their booted state.
 */
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { stage, type Stage } from '../stage.js';
import { buildTinyBase, TINY_INIT, TINY_KERNEL_PACKAGE, TINY_MODULES } from '../../backends/qemu/tiny.js';
import { makeExt4Qcow2 } from '../../backends/qemu/ext4-disk.js';
import { bootedState, type BaseOptions, type BootConfig } from './booted-state.js';

/** Kernel, busybox initramfs and an empty ext4 disk, from Debian packages (apt-get download). */
export function tinyFiles(
  opts: { diskMb?: number } = {},
): Stage<{ kernel: string; busybox: string; init: string; modules: string; diskMb: number }> {
  return stage({
    name: 'tiny-files',
    config: {
      kernel: TINY_KERNEL_PACKAGE,
      busybox: 'busybox-static',
      // The init script is built into the initramfs: editing it is a new base.
      init: createHash('sha256').update(TINY_INIT).digest('hex'),
      // The module list too: adding one (9p for file transfers) is a new initramfs.
      modules: createHash('sha256').update(TINY_MODULES.join('\n')).digest('hex'),
      diskMb: opts.diskMb ?? 64,
    },
    outputs: ['vmlinuz', 'initramfs.cpio', 'disk.qcow2'],
    version: 'cairn-tiny-files-1',
    async build(ctx) {
      await buildTinyBase(ctx.out, ctx.tmp, { kernel: ctx.config.kernel, busybox: ctx.config.busybox });
      await makeExt4Qcow2(path.join(ctx.out, 'disk.qcow2'), ctx.config.diskMb, ctx.tmp);
    },
  });
}

/** The `tiny` base: the Debian generic kernel and a busybox initramfs; /dev/vda (ext4) is mounted on /mnt. */
export function tiny(opts: BaseOptions = {}): Stage<BootConfig> {
  return bootedState('tiny', tinyFiles({ diskMb: opts.diskMb }), opts);
}
