/**
 * Machine bases as stages. A base is two stages: its *files* (kernel,
 * initramfs, a read-only base disk), built from Debian packages, and its
 * first *state*: the files booted to a shell and saved. Every pipeline
 * starts by resuming that state, so nothing boots twice.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { CairnError } from '../../errors.js';
import type { Dep, Stage } from '../../stages/stage.js';
import { stage } from '../../stages/stage.js';
import { DESCRIPTION, finalOutDir, freshState, saveSession } from '../../stages/machine.js';
import { bootSession, cloneModeFromEnv } from './qemu-machine.js';
import { chooseCloneMode, cloneDisk } from './disk.js';
import { buildTinyBase, TINY_INIT } from './tiny.js';
// A cycle (debian.ts builds on tinyFiles/bootedState); only hoisted functions cross it.
import { debian } from './debian.js';
import { DEFAULT_APPEND } from './vm.js';

const execFileP = promisify(execFile);

export interface BaseOptions {
  /** Guest memory in MiB (default 256). Part of the identity: a snapshot restores only with the same size. */
  memoryMb?: number;
  smp?: number;
  /** Size of the guest's disk (default 64 MiB for tiny). */
  diskMb?: number;
}

/** An empty ext4 filesystem of `mb` MiB as a standalone qcow2 image. */
export async function makeExt4Qcow2(out: string, mb: number, tmp: string, fromDir?: string): Promise<void> {
  const raw = path.join(tmp, 'disk.raw');
  await execFileP('qemu-img', ['create', '-q', '-f', 'raw', raw, `${mb}M`]);
  await execFileP('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', ...(fromDir ? ['-d', fromDir] : []), raw]);
  await execFileP('qemu-img', ['convert', '-O', 'qcow2', raw, out]);
  fs.rmSync(raw, { force: true });
}

/** Kernel, busybox initramfs and an empty ext4 disk, from Debian packages (apt-get download). */
export function tinyFiles(opts: { diskMb?: number } = {}): Stage<{ kernel: string; busybox: string; init: string; diskMb: number }> {
  return stage({
    name: 'tiny-files',
    config: {
      kernel: 'linux-image-cloud-amd64',
      busybox: 'busybox-static',
      // The init script is built into the initramfs: editing it is a new base.
      init: createHash('sha256').update(TINY_INIT).digest('hex'),
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

interface BootConfig {
  files: Stage;
  memoryMb: number;
  smp: number;
  append: string;
}

/**
 * The first state of a base: boots `files` (vmlinuz, initramfs.cpio,
 * disk.qcow2) to the shell prompt and saves it.
 */
export function bootedState(name: string, files: Stage, opts: BaseOptions & { append?: string; readyTimeoutMs?: number; ready?: RegExp } = {}): Stage<BootConfig> {
  return stage<BootConfig>({
    name,
    config: { files, memoryMb: opts.memoryMb ?? 256, smp: opts.smp ?? 1, append: opts.append ?? DEFAULT_APPEND },
    outputs: [DESCRIPTION, 'memory.bin'],
    matcher: freshState(),
    version: 'cairn-booted-state-1',
    async build(ctx) {
      const files = ctx.config.files as unknown as Dep;
      const disk = { file: path.join(ctx.tmp, 'disk.qcow2'), clone: chooseCloneMode(cloneModeFromEnv(), ctx.tmp) };
      await cloneDisk(files.file('disk.qcow2'), disk.file, disk.clone);
      const session = await bootSession({
        kernel: files.file('vmlinuz'), initramfs: files.file('initramfs.cpio'),
        append: ctx.config.append, memoryMb: ctx.config.memoryMb, smp: ctx.config.smp,
        // Not in the config: the marker only says when the boot is done.
        ...(opts.ready ? { ready: opts.ready } : {}),
      }, path.join(ctx.tmp, 'vm'), disk, { timeoutMs: opts.readyTimeoutMs ?? 120_000 });
      ctx.log(`booted ${name}`);
      await saveSession(ctx, session, finalOutDir(files.path, ctx.dref), { expiresAt: null }, null, async (vm) => {
        await vm.exec('true', { check: true });
      });
    },
  });
}

/** The `tiny` base: the Debian cloud kernel and a busybox initramfs; /dev/vda (ext4) is mounted on /mnt. */
export function tiny(opts: BaseOptions = {}): Stage<BootConfig> {
  return bootedState('tiny', tinyFiles({ diskMb: opts.diskMb }), opts);
}

/** The bases `cairn machine NAME` knows. */
export const MACHINE_BASES = new Map<string, (opts: BaseOptions) => Stage>([['tiny', tiny], ['debian', debian]]);

export function machineBase(name: string, opts: BaseOptions = {}): Stage {
  const make = MACHINE_BASES.get(name);
  if (!make) throw new CairnError('E_USAGE', `no machine base ${JSON.stringify(name)} (known: ${[...MACHINE_BASES.keys()].join(', ')})`, { base: name });
  return make(opts);
}
