/**
 * Machine bases as stages. A base is two stages: its *files* (kernel,
 * initramfs, a read-only base disk), built from Debian packages, and its
 * first *state*: the files booted to a shell and saved. Every pipeline
 * starts by resuming that state, so nothing boots twice. This module is the
 * second half, shared by every QEMU base (tiny.ts, debian.ts).
 */
import * as path from 'node:path';
import type { Stage } from '../stage.js';
import { stage } from '../stage.js';
import { DESCRIPTION, finalOutDir, freshState, logForwards, saveSession, withRunOptions } from '../machine.js';
import { bootSession, cloneModeFromEnv } from '../../backends/qemu/qemu-machine.js';
import { chooseCloneMode, cloneDisk } from '../../backends/qemu/disk.js';
import { DEFAULT_APPEND } from '../../backends/qemu/vm.js';
import { parseNetOption, type NetMode, type NetOption } from '../../backends/qemu/net.js';

export interface BaseOptions {
  /** Guest memory in MiB (default 256). Part of the identity: a snapshot restores only with the same size. */
  memoryMb?: number;
  smp?: number;
  /** Size of the guest's disk (default 64 MiB for tiny). */
  diskMb?: number;
  /**
   * A user-mode network (see docs/machines.md, "Networking"): true or
   * 'user', 'restrict' (no way out, only forwards in), or `{ mode, forward }`.
   * The mode is part of the identity; the forwards are per run.
   */
  net?: NetOption;
}

/** What identifies a booted state besides its name: the files booted and the guest's shape. */
export interface BootConfig {
  files: Stage;
  memoryMb: number;
  smp: number;
  append: string;
  /** Only present for a machine with a network, so other bases keep their identity. */
  net?: NetMode;
}

/**
 * The first state of a base: boots `files` (vmlinuz, initramfs.cpio,
 * disk.qcow2) to the shell prompt and saves it.
 */
export function bootedState(
  name: string,
  files: Stage,
  opts: BaseOptions & { append?: string; readyTimeoutMs?: number; ready?: RegExp } = {},
): Stage<BootConfig> {
  const net = parseNetOption(opts.net);
  const s = stage<BootConfig>({
    name,
    config: {
      files,
      memoryMb: opts.memoryMb ?? 256,
      smp: opts.smp ?? 1,
      append: opts.append ?? DEFAULT_APPEND,
      ...(net.mode ? { net: net.mode } : {}),
    },
    outputs: [DESCRIPTION, 'memory.bin'],
    matcher: freshState(),
    version: 'cairn-booted-state-1',
    async build(ctx) {
      const files = ctx.config.files;
      const disk = { file: path.join(ctx.tmp, 'disk.qcow2'), clone: chooseCloneMode(cloneModeFromEnv(), ctx.tmp) };
      await cloneDisk(files.file('disk.qcow2'), disk.file, disk.clone);
      const session = await bootSession(
        {
          kernel: files.file('vmlinuz'),
          initramfs: files.file('initramfs.cpio'),
          append: ctx.config.append,
          memoryMb: ctx.config.memoryMb,
          smp: ctx.config.smp,
          net: ctx.config.net ?? null,
          forwards: net.forwards,
          // Not in the config: the marker only says when the boot is done.
          ...(opts.ready ? { ready: opts.ready } : {}),
        },
        path.join(ctx.tmp, 'vm'),
        disk,
        { timeoutMs: opts.readyTimeoutMs ?? 120_000 },
      );
      ctx.log(`booted ${name}`);
      logForwards(session.machine, ctx.log);
      await saveSession(ctx, session, finalOutDir(files.path, ctx.dref), { expiresAt: null }, null, async (vm) => {
        await vm.exec('true', { check: true });
      });
    },
  });
  // Every machine built on this base runs with these forwards (not part of any identity).
  return withRunOptions(s, { forwards: net.forwards });
}
