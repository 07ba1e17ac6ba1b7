/**
 * Which accelerator QEMU can really use here.
 *
 * `/dev/kvm` existing is not enough: on some hosts (nested virtualization,
 * containers) `-accel kvm` starts, `query-kvm` says enabled, SeaBIOS even
 * runs, yet a Linux kernel never prints a line. So the probe boots the kernel
 * it is given under KVM and waits for `Linux version` on the serial port;
 * without a kernel it falls back to checking that the vCPU's instruction
 * pointer moves. Anything else means `-accel tcg -cpu max`.
 *
 * The answer is cached per process (per kernel). `CAIRN_QEMU_ACCEL=kvm|tcg`
 * overrides the probe.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient } from './qmp.js';

export interface Accel {
  kind: 'kvm' | 'tcg';
  /** The QEMU arguments that select it. */
  args: string[];
  /** Why this one was chosen. */
  reason: string;
}

export const TCG: Accel = { kind: 'tcg', args: ['-accel', 'tcg', '-cpu', 'max'], reason: '' };
export const KVM: Accel = { kind: 'kvm', args: ['-accel', 'kvm', '-cpu', 'host'], reason: '' };

export const QEMU_X86 = 'qemu-system-x86_64';

export interface ProbeOptions {
  qemu?: string;
  /** A bzImage to boot under KVM as the test (strongly recommended). */
  kernel?: string;
  initramfs?: string;
  /** How long the guest gets to show it runs (default 4000 ms). */
  timeoutMs?: number;
}

const cache = new Map<string, Promise<Accel>>();

/** The accelerator to use, probed once per process (and per kernel). */
export function detectAccel(opts: ProbeOptions = {}): Promise<Accel> {
  const forced = process.env.CAIRN_QEMU_ACCEL;
  if (forced === 'tcg') return Promise.resolve({ ...TCG, reason: 'CAIRN_QEMU_ACCEL=tcg' });
  if (forced === 'kvm') return Promise.resolve({ ...KVM, reason: 'CAIRN_QEMU_ACCEL=kvm' });
  const key = `${opts.qemu ?? QEMU_X86}\0${opts.kernel ?? ''}`;
  let p = cache.get(key);
  if (!p) {
    p = probeKvm(opts);
    cache.set(key, p);
  }
  return p;
}

/** Forgets cached answers (for tests). */
export function clearAccelCache(): void {
  cache.clear();
}

/** Probes without caching. */
export async function probeKvm(opts: ProbeOptions = {}): Promise<Accel> {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { ...TCG, reason: '/dev/kvm is missing or not accessible' };
  }
  const qemu = opts.qemu ?? QEMU_X86;
  const timeoutMs = opts.timeoutMs ?? 4000;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-kvm-probe-'));
  const qmpPath = path.join(dir, 'qmp.sock');
  const args = [
    '-accel',
    'kvm',
    '-cpu',
    'host',
    '-machine',
    'q35',
    '-m',
    '128',
    '-smp',
    '1',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
  ];
  if (opts.kernel) {
    args.push('-kernel', opts.kernel, '-append', 'console=ttyS0 earlyprintk=ttyS0 panic=-1');
    if (opts.initramfs) args.push('-initrd', opts.initramfs);
  }
  const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let exited = false;
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = new Promise<void>((resolve) => {
    child.on('exit', () => {
      exited = true;
      resolve();
    });
    child.on('error', (e) => {
      exited = true;
      err += e.message;
      resolve();
    });
  });
  let qmp: QmpClient | null = null;
  try {
    qmp = await QmpClient.connect(qmpPath, { timeoutMs: 3000 }).catch(() => null);
    if (!qmp) return { ...TCG, reason: `-accel kvm did not start: ${firstLine(err) || 'no QMP socket'}` };
    const kvm = await qmp.execute<{ enabled: boolean; present: boolean }>('query-kvm');
    if (!kvm.enabled) return { ...TCG, reason: 'query-kvm: not enabled' };
    const deadline = Date.now() + timeoutMs;
    if (opts.kernel) {
      while (Date.now() < deadline && !exited) {
        if (/Linux version/.test(out)) return { ...KVM, reason: 'a kernel booted under KVM' };
        await sleep(50);
      }
      return {
        ...TCG,
        reason:
          `a kernel printed nothing under KVM in ${timeoutMs} ms` + (exited ? ` (QEMU exited: ${firstLine(err)})` : ''),
      };
    }
    // No kernel: the vCPU must at least move (SeaBIOS running).
    const rip = async (): Promise<string> => {
      const r = await qmp!.execute<string>('human-monitor-command', { 'command-line': 'info registers' });
      return /[ER]IP=([0-9a-f]+)/.exec(r)?.[1] ?? '';
    };
    const status = await qmp.execute<{ status: string }>('query-status');
    if (status.status !== 'running') return { ...TCG, reason: `query-status: ${status.status}` };
    const a = await rip();
    await sleep(Math.min(300, timeoutMs));
    const b = await rip();
    if (a && b && a !== b) return { ...KVM, reason: 'vCPU runs under KVM (no kernel was probed)' };
    return { ...TCG, reason: 'vCPU did not move under KVM' };
  } catch (e) {
    return { ...TCG, reason: `probe failed: ${(e as Error).message}` };
  } finally {
    qmp?.destroy();
    if (!exited) child.kill('SIGKILL');
    await exit;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function firstLine(s: string): string {
  return (
    s
      .split('\n')
      .find((l) => l.trim() && !/warning:/.test(l))
      ?.trim() ?? ''
  );
}
