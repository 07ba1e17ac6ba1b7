/**
 * The `debian` machine base, from Debian packages only: a `debootstrap
 * --variant=minbase bookworm` root filesystem in an ext4 disk image, booted
 * with the same cloud kernel and busybox initramfs as `tiny`. The initramfs
 * is only the boot loader here: `cairn.root=/dev/vda` makes it load the
 * virtio modules, mount the disk and switch_root to `/sbin/cairn-init`
 * (written into the image below), which gives a login-free root bash on
 * the serial console.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { CairnError } from '../../errors.js';
import { debootstrap, ROOTFS_TAR } from '../builtins/debootstrap.js';
import { stage, type Stage } from '../stage.js';
import { makeExt4Qcow2 } from '../../backends/qemu/ext4-disk.js';
import { DEFAULT_APPEND } from '../../backends/qemu/vm.js';
import { bootedState, type BaseOptions } from './booted-state.js';
import { tinyFiles } from './tiny.js';

/** Printed by cairn-init right before the first shell. */
export const DEBIAN_READY = /CAIRN-DEBIAN-READY[\s\S]*?cairn# /;

/**
 * PID 1 of the debian guest. A plain script rather than systemd: the guest
 * is a build machine driven over its console, no services start, and the
 * saved memory stays small. /tmp is a tmpfs, as in tiny, so scratch files
 * live in the memory snapshot and leave the disk alone.
 */
export const DEBIAN_INIT = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
hostname -F /etc/hostname
# The initramfs configured the network card, if the machine has one (see tiny.ts); the name server is slirp's.
if [ -e /sys/class/net/eth0 ]; then echo 'nameserver 10.0.2.3' > /etc/resolv.conf; fi
export HOME=/root TERM=linux LANG=C.UTF-8
cd /root
echo CAIRN-DEBIAN-READY
# setsid -c: the serial port becomes the shell's controlling terminal (job control, Ctrl-C).
while true; do setsid -c /bin/bash --rcfile /etc/cairn/bashrc -i </dev/ttyS0 >/dev/ttyS0 2>&1; done
`;

/**
 * The console code (console.ts) sends whole command lines and parses
 * markers, so: a fixed prompt, no history file or history expansion, and
 * no bracketed paste (its escape sequences would wrap every prompt).
 */
export const DEBIAN_BASHRC = `PS1='cairn# '
unset HISTFILE
set +H
bind 'set enable-bracketed-paste off' 2>/dev/null
`;

interface DebianFilesConfig {
  rootfs: Stage;
  boot: Stage;
  init: string;
  diskMb: number;
}

/** Writes cairn-init, its bashrc and the hostname into an unpacked root filesystem. */
export function addCairnInit(root: string): void {
  fs.mkdirSync(path.join(root, 'etc', 'cairn'), { recursive: true });
  fs.writeFileSync(path.join(root, 'sbin', 'cairn-init'), DEBIAN_INIT, { mode: 0o755 });
  fs.chmodSync(path.join(root, 'sbin', 'cairn-init'), 0o755);
  fs.writeFileSync(path.join(root, 'etc', 'cairn', 'bashrc'), DEBIAN_BASHRC);
  fs.writeFileSync(path.join(root, 'etc', 'hostname'), 'cairn\n');
}

/**
 * Kernel and initramfs (copied from `tinyFiles()`: same packages, same
 * boot loader) and `disk.qcow2`: the debootstrap root plus cairn-init in an
 * ext4 filesystem of `diskMb` (default 2048 MiB; sparse, so mostly free).
 */
export function debianFiles(opts: { diskMb?: number; suite?: string } = {}): Stage<DebianFilesConfig> {
  return stage<DebianFilesConfig>({
    name: 'debian-files',
    config: {
      rootfs: debootstrap({ suite: opts.suite ?? 'bookworm', variant: 'minbase' }),
      boot: tinyFiles(),
      init: createHash('sha256').update(DEBIAN_INIT).update(DEBIAN_BASHRC).digest('hex'),
      diskMb: opts.diskMb ?? 2048,
    },
    outputs: ['vmlinuz', 'initramfs.cpio', 'disk.qcow2'],
    version: 'cairn-debian-files-1',
    async build(ctx) {
      // Unpacking device nodes and other users' files needs root, as debootstrap did.
      if (process.getuid?.() !== 0)
        throw new CairnError(
          'E_BUILD_FAILED',
          'building the debian disk needs root (device nodes and file ownership in the root filesystem)',
        );
      const rootfs = ctx.config.rootfs;
      const boot = ctx.config.boot;
      for (const f of ['vmlinuz', 'initramfs.cpio']) fs.copyFileSync(boot.file(f), path.join(ctx.out, f));
      const root = path.join(ctx.tmp, 'root');
      fs.mkdirSync(root);
      await ctx.exec('tar', [
        '--extract',
        '--file',
        rootfs.file(ROOTFS_TAR),
        '--numeric-owner',
        '--same-permissions',
        '--xattrs',
        '--xattrs-include=*',
        '-C',
        root,
      ]);
      addCairnInit(root);
      await makeExt4Qcow2(path.join(ctx.out, 'disk.qcow2'), ctx.config.diskMb, ctx.tmp, root);
      ctx.log(
        `disk.qcow2: ${(fs.statSync(path.join(ctx.out, 'disk.qcow2')).size / 2 ** 20).toFixed(1)}` +
          ` MiB (${ctx.config.diskMb} MiB ext4)`,
      );
    },
  });
}

/** The `debian` base: debootstrap minbase bookworm on /dev/vda as the root filesystem, a root bash on the console. */
export function debian(opts: BaseOptions = {}): Stage {
  return bootedState('debian', debianFiles({ diskMb: opts.diskMb }), {
    ...opts,
    append: `${DEFAULT_APPEND} cairn.root=/dev/vda`,
    ready: DEBIAN_READY,
  });
}
