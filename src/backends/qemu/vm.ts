/**
 * A QEMU x86_64 virtual machine booted from a kernel + initramfs (+ an
 * optional qcow2 disk), driven over QMP and its serial console, whose full
 * state (memory + disk) can be saved to files and restored.
 *
 * Disk rule: the `disk` in a VmSpec is a read-only base; every VM (booted or
 * restored) writes to its own qcow2 overlay in its working directory. Saving
 * stops the guest (QEMU flushes the disk on stop), migrates the memory to a
 * file, quits, and moves the overlay next to the memory file: the two are
 * frozen together. A restore creates a fresh overlay on top of the saved one
 * and starts the identical command line with `-incoming`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, isCairnError } from '../../errors.js';
import { SerialConsole, type RunResult } from './console.js';
import { detectAccel, QEMU_X86, type Accel } from './kvm.js';
import { QmpClient } from './qmp.js';
import { createOverlay } from './disk.js';
import {
  checkForwards,
  matchForwards,
  netArgs,
  parseUsernet,
  type ActiveForward,
  type NetMode,
  type PortForward,
} from './net.js';

/** Pinned so a saved state always restores into the same machine model. */
export const DEFAULT_MACHINE = 'pc-q35-7.2';

export interface VmSpec {
  kernel: string;
  initramfs: string;
  /** Kernel command line (default: serial console, quiet). */
  append?: string;
  /** A read-only base disk (qcow2 or raw) attached as virtio /dev/vda through a private overlay. */
  disk?: string;
  diskFormat?: 'qcow2' | 'raw';
  memoryMb?: number;
  smp?: number;
  machine?: string;
  /** Default: detectAccel() with this kernel. */
  accel?: Accel;
  qemu?: string;
  /** Regex on the console that means the guest shell is ready. */
  ready?: RegExp;
  /** A user-mode network card (net.ts); part of the device set, so a state restores only with the same. */
  net?: NetMode | null;
  /** Port forwards host -> guest for this run only (not device state). */
  forwards?: readonly PortForward[];
}

// init_on_free=1: the guest zeroes memory it frees, and migration sends
// zero pages as a few bytes each, so a saved tiny guest's memory.bin is
// ~55 MB instead of ~96 MB (and restores that much faster).
export const DEFAULT_APPEND = 'console=ttyS0 quiet panic=-1 init_on_free=1';
export const TINY_READY = /CAIRN-TINY-READY[\s\S]*?cairn# /;

/** What a saved state records: enough to rebuild the identical command line. */
export interface SavedStateInfo {
  version: 1;
  memory: string;
  disk: string | null;
  machine: string;
  memoryMb: number;
  smp: number;
  accel: Accel['kind'];
  accelArgs: string[];
  kernel: string;
  initramfs: string;
  append: string;
  /** The network card's mode, or null (absent in states saved before networks existed). */
  net?: NetMode | null;
  bytes: number;
  saveMs: number;
}

export interface SaveResult extends SavedStateInfo {
  dir: string;
}

export interface Timings {
  /** Spawn to shell prompt (boot) or to answering the first command (restore). */
  readyMs: number;
}

/** The QEMU argument list for a spec, minus -incoming. Exported for docs and tests. */
export function qemuArgs(
  spec: Required<Pick<VmSpec, 'kernel' | 'initramfs'>> & VmSpec,
  accel: Accel,
  dir: string,
  overlay: string | null,
): string[] {
  const args = [
    '-machine',
    spec.machine ?? DEFAULT_MACHINE,
    ...accel.args,
    '-m',
    String(spec.memoryMb ?? 256),
    '-smp',
    String(spec.smp ?? 1),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-kernel',
    spec.kernel,
    '-initrd',
    spec.initramfs,
    '-append',
    spec.append ?? DEFAULT_APPEND,
    '-chardev',
    `socket,id=ser0,path=${path.join(dir, 'console.sock')},server=on,wait=off,logfile=${path.join(dir, 'console.log')}`,
    '-serial',
    'chardev:ser0',
    '-chardev',
    `socket,id=qmp0,path=${path.join(dir, 'qmp.sock')},server=on,wait=off`,
    '-mon',
    'chardev=qmp0,mode=control',
  ];
  if (overlay) args.push('-drive', `file=${overlay},if=virtio,format=qcow2,cache=writeback`);
  if (spec.net) args.push(...netArgs(spec.net, spec.forwards ?? []));
  return args;
}

/**
 * QEMU's own words from its stderr ("Unknown ramblock \"pc.ram\", cannot
 * accept migration; load of migration failed: Invalid argument"), else `fallback`.
 */
export function qemuReason(stderr: string, fallback: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^qemu-system-[\w-]+: /, '').trim())
    .filter((l) => l !== '' && !l.startsWith('---'));
  const text = lines.join('; ');
  return text === '' ? fallback : text.length > 600 ? `…${text.slice(-600)}` : text;
}

/** A restore that failed: QEMU refused the snapshot, died, or the guest never answered. */
function restoreRefused(memoryFile: string, e: unknown, stderr: string): CairnError {
  const reason = qemuReason(stderr, (e as Error)?.message ?? String(e));
  return new CairnError(
    'E_MACHINE_RESTORE',
    `QEMU could not restore ${path.basename(memoryFile)}: ${reason}`,
    { memory: memoryFile, reason },
    { cause: e },
  );
}

export class Vm {
  private exitPromise: Promise<number | null>;
  private stderr = '';
  exited = false;
  /** The port forwards of this run, with the host ports slirp bound. */
  forwards: ActiveForward[] = [];

  private constructor(
    readonly dir: string,
    readonly spec: VmSpec,
    readonly accel: Accel,
    readonly args: string[],
    readonly overlay: string | null,
    readonly proc: ChildProcess,
    public qmp: QmpClient,
    public console: SerialConsole,
    readonly timings: Timings,
  ) {
    this.exitPromise = new Promise((resolve) => {
      if (proc.exitCode !== null) {
        this.exited = true;
        resolve(proc.exitCode);
      }
      proc.on('exit', (code) => {
        this.exited = true;
        dropShortPath(dir);
        resolve(code);
      });
    });
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
  }

  /** QEMU's stderr so far. */
  get log(): string {
    return this.stderr;
  }

  /**
   * Boots a fresh VM in `dir` (created; holds sockets, console.log and the
   * disk overlay) and waits for the shell prompt.
   */
  static async boot(spec: VmSpec, dir: string, opts: { timeoutMs?: number; ownDisk?: string } = {}): Promise<Vm> {
    fs.mkdirSync(dir, { recursive: true });
    const accel =
      spec.accel ?? (await detectAccel({ qemu: spec.qemu, kernel: spec.kernel, initramfs: spec.initramfs }));
    // `ownDisk`: a writable qcow2 the caller prepared (and owns), used as is.
    let overlay: string | null = opts.ownDisk ?? null;
    if (!overlay && spec.disk) {
      overlay = path.join(dir, 'disk.qcow2');
      await createOverlay(spec.disk, spec.diskFormat ?? 'qcow2', overlay);
    }
    const args = qemuArgs(spec, accel, shortPath(dir), overlay);
    const t0 = performance.now();
    const { proc, qmp, con } = await Vm.launch(spec.qemu ?? QEMU_X86, args, shortPath(dir));
    const vm = new Vm(dir, spec, accel, args, overlay, proc, qmp, con, { readyMs: 0 });
    try {
      await con.expect(spec.ready ?? TINY_READY, opts.timeoutMs ?? 60_000);
      vm.timings.readyMs = performance.now() - t0;
      await vm.readForwards();
    } catch (e) {
      await vm.kill();
      throw new Error(`${(e as Error).message}\n--- qemu stderr ---\n${vm.stderr.slice(-500)}`);
    }
    return vm;
  }

  /**
   * Restores a saved state into a new VM in `dir`: a new overlay on top of
   * the saved disk, the identical command line plus `-incoming`, then `cont`.
   * Resolves once the guest shell answers a command.
   */
  static async restore(
    stateDir: string,
    dir: string,
    opts: { timeoutMs?: number; qemu?: string; forwards?: readonly PortForward[] } = {},
  ): Promise<Vm> {
    const info = readState(stateDir);
    fs.mkdirSync(dir, { recursive: true });
    let overlay: string | null = null;
    if (info.disk) {
      overlay = path.join(dir, 'disk.qcow2');
      await createOverlay(path.join(stateDir, info.disk), 'qcow2', overlay);
    }
    const spec: VmSpec = {
      kernel: info.kernel,
      initramfs: info.initramfs,
      append: info.append,
      memoryMb: info.memoryMb,
      smp: info.smp,
      machine: info.machine,
      accel: { kind: info.accel, args: info.accelArgs, reason: 'from the saved state' },
      net: info.net ?? null,
      forwards: opts.forwards ?? [],
      ...(opts.qemu ? { qemu: opts.qemu } : {}),
    };
    return Vm.incoming(spec, dir, path.join(stateDir, info.memory), overlay, opts);
  }

  /**
   * Starts `spec` (whose accel must be set: the one the state was saved
   * under) with `-incoming` from `memoryFile` and `disk` (a writable qcow2
   * holding the disk as it was saved, or null), then `cont`. Resolves once
   * the guest shell answers a command. `expectVersion`: the QEMU version
   * that saved the state; a different one is refused before migrating.
   */
  static async incoming(
    spec: VmSpec,
    dir: string,
    memoryFile: string,
    disk: string | null,
    opts: { timeoutMs?: number; expectVersion?: string } = {},
  ): Promise<Vm> {
    const args = qemuArgs(spec, spec.accel!, shortPath(dir), disk);
    args.push('-incoming', `exec:cat ${shellQuote(memoryFile)}`);
    const t0 = performance.now();
    // QEMU loads the snapshot as it starts, so a refused one may end it before QMP even answers.
    const { proc, qmp, con } = await Vm.launch(spec.qemu ?? QEMU_X86, args, shortPath(dir)).catch((e: unknown) => {
      // A taken host port is this run's trouble, not the snapshot's.
      if (isCairnError(e, 'E_MACHINE_FORWARD')) throw e;
      throw restoreRefused(memoryFile, e, (e as Error).message);
    });
    const vm = new Vm(dir, spec, spec.accel!, args, disk, proc, qmp, con, { readyMs: 0 });
    try {
      if (opts.expectVersion && vm.qemuVersion !== opts.expectVersion) {
        throw new CairnError(
          'E_MACHINE_INCOMPATIBLE',
          `the state was saved by QEMU ${opts.expectVersion}, and this is QEMU ` +
            `${vm.qemuVersion}: a memory snapshot only restores into the same QEMU version`,
          { saved: opts.expectVersion, running: vm.qemuVersion },
        );
      }
      const timeoutMs = opts.timeoutMs ?? 60_000;
      await vm.waitMigration(timeoutMs, 'incoming');
      await qmp.execute('cont');
      // The guest sits at its prompt; a command proves the shell is alive,
      // and the same command sets the guest's clock, which resumes at the
      // instant of the save (measured under TCG: nothing else moves it forward).
      await con.run(clockCommand(Date.now()), timeoutMs);
      vm.timings.readyMs = performance.now() - t0;
      await vm.readForwards();
    } catch (e) {
      await vm.kill();
      if (e instanceof CairnError) throw e;
      throw restoreRefused(memoryFile, e, vm.stderr);
    }
    return vm;
  }

  /** Reads back the host ports slirp bound for the spec's forwards. */
  private async readForwards(): Promise<void> {
    const wanted = this.spec.forwards ?? [];
    if (!this.spec.net || wanted.length === 0) return;
    this.forwards = matchForwards(wanted, await this.usernet());
  }

  private async usernet(): Promise<ActiveForward[]> {
    return parseUsernet(await this.qmp.execute<string>('human-monitor-command', { 'command-line': 'info usernet' }));
  }

  /**
   * Adds a port forward to the running machine (a host port of 0: slirp
   * picks a free one) and returns it with the host port bound.
   */
  async forward(f: PortForward): Promise<ActiveForward> {
    if (!this.spec.net)
      throw new CairnError('E_BAD_ARGUMENT', 'forward: this machine has no network (a base with net)');
    checkForwards([...this.forwards, f]);
    const before = await this.usernet();
    const rule = `${f.proto}:127.0.0.1:${f.hostPort}-:${f.guestPort}`;
    const said = await this.qmp.execute<string>('human-monitor-command', {
      'command-line': `hostfwd_add net0 ${rule}`,
    });
    // HMP answers errors as text (e.g. a host port in use), not as a QMP error.
    if (said.trim()) throw forwardError(said.trim(), f);
    const added = (await this.usernet()).find(
      (a) =>
        a.proto === f.proto &&
        a.guestPort === f.guestPort &&
        !before.some((b) => b.proto === a.proto && b.hostPort === a.hostPort),
    );
    if (!added) throw new Error(`forward ${rule}: slirp does not report it`);
    this.forwards.push(added);
    return added;
  }

  /** "major.minor.micro" from the QMP greeting. */
  get qemuVersion(): string {
    const v = this.qmp.greeting.version.qemu;
    return `${v.major}.${v.minor}.${v.micro}`;
  }

  private static async launch(
    qemu: string,
    args: string[],
    dir: string,
  ): Promise<{ proc: ChildProcess; qmp: QmpClient; con: SerialConsole }> {
    for (const s of ['qmp.sock', 'console.sock']) fs.rmSync(path.join(dir, s), { force: true });
    const proc = spawn(qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    liveQemus.add(proc);
    proc.on('exit', () => liveQemus.delete(proc));
    let err = '';
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const failed = new Promise<never>((_, reject) => {
      proc.on('error', (e) => reject(new Error(`cannot run ${qemu}: ${e.message}`)));
      proc.on('exit', (code) => reject(new Error(`${qemu} exited (${code}) during start: ${err.trim().slice(-500)}`)));
    });
    failed.catch(() => {});
    try {
      // The console first: output sent while no client is connected is lost.
      const con = await Promise.race([SerialConsole.connect(path.join(dir, 'console.sock'), 10_000), failed]);
      const qmp = await Promise.race([QmpClient.connect(path.join(dir, 'qmp.sock'), { timeoutMs: 10_000 }), failed]);
      return { proc, qmp, con };
    } catch (e) {
      // Prefer QEMU's own complaint when it died during the handshake.
      const died = await Promise.race([
        failed.catch((x: unknown) => x),
        sleep(1000, undefined, { ref: false }).then(() => null),
      ]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      if (/host forwarding rule/.test(err)) throw forwardError(err.trim());
      throw died ?? e;
    }
  }

  /** Polls query-migrate until completed (or, for `incoming`, until the status leaves inmigrate). */
  private async waitMigration(timeoutMs: number, mode: 'outgoing' | 'incoming'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (mode === 'outgoing') {
        const m = await this.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (m.status === 'completed') return;
        if (m.status === 'failed' || m.status === 'cancelled')
          throw new Error(`migration ${m.status}: ${m['error-desc'] ?? ''}`);
      } else {
        // The source was stopped before saving, so QEMU ends the load paused
        // (autostart or not) and no event says so: poll.
        const s = await this.qmp.execute<{ status: string }>('query-status');
        if (s.status === 'paused' || s.status === 'postmigrate' || s.status === 'running') return;
        if (s.status !== 'inmigrate') throw new Error(`incoming migration ended in status ${s.status}`);
      }
      // A restore or save of the tiny guest takes ~0.1-0.3 s; a query costs
      // well under a millisecond, so a short poll keeps the wait close to that.
      await sleep(5);
    }
    throw new Error(`migration (${mode}) did not finish within ${timeoutMs} ms`);
  }

  /** Runs a shell command in the guest. */
  run(command: string, timeoutMs?: number): Promise<RunResult> {
    return this.console.run(command, timeoutMs);
  }

  /**
   * Saves the full machine state into `stateDir` (created): `memory.bin`
   * (the migration stream), `disk.qcow2` (this VM's overlay, made
   * read-only) and `state.json`. The VM is stopped and quits.
   */
  async save(stateDir: string, opts: { timeoutMs?: number } = {}): Promise<SaveResult> {
    fs.mkdirSync(stateDir, { recursive: true });
    const memory = path.join(stateDir, 'memory.bin');
    const t0 = performance.now();
    await this.freeze(memory, opts);
    const saveMs = performance.now() - t0;
    let disk: string | null = null;
    if (this.overlay) {
      disk = 'disk.qcow2';
      fs.renameSync(this.overlay, path.join(stateDir, disk));
      fs.chmodSync(path.join(stateDir, disk), 0o444);
    }
    fs.chmodSync(memory, 0o444);
    const spec = this.spec;
    const info: SavedStateInfo = {
      version: 1,
      memory: 'memory.bin',
      disk,
      machine: spec.machine ?? DEFAULT_MACHINE,
      memoryMb: spec.memoryMb ?? 256,
      smp: spec.smp ?? 1,
      accel: this.accel.kind,
      accelArgs: this.accel.args,
      kernel: path.resolve(spec.kernel),
      initramfs: path.resolve(spec.initramfs),
      append: spec.append ?? DEFAULT_APPEND,
      net: spec.net ?? null,
      bytes: fs.statSync(memory).size,
      saveMs,
    };
    fs.writeFileSync(path.join(stateDir, 'state.json'), JSON.stringify(info, null, 2) + '\n');
    return { ...info, dir: stateDir };
  }

  /**
   * Stops the guest, migrates its memory into `memoryFile` and quits. QEMU
   * drains and flushes the disk on `stop`, so the disk file (still at
   * `this.overlay`) is frozen at the same instant as the memory.
   */
  async freeze(memoryFile: string, opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.qmp.execute('stop');
    await this.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(memoryFile)}` });
    await this.waitMigration(opts.timeoutMs ?? 120_000, 'outgoing');
    await this.quit();
  }

  /** Asks QEMU to quit and waits for it to exit (kills it after 10 s). */
  async quit(): Promise<void> {
    if (this.exited) return;
    await this.qmp.execute('quit', undefined, { timeoutMs: 5000 }).catch(() => {});
    // ref: false, or the pending timer would keep a finished `cairn` process alive for the full 10 s.
    const code = await Promise.race([
      this.exitPromise,
      sleep(10_000, undefined, { ref: false }).then(() => 'timeout' as const),
    ]);
    if (code === 'timeout') await this.kill();
    this.qmp.destroy();
    this.console.close();
  }

  /** Kills QEMU and waits for it to exit. */
  async kill(): Promise<void> {
    if (!this.exited) this.proc.kill('SIGKILL');
    await this.exitPromise;
    this.qmp.destroy();
    this.console.close();
  }
}

export function readState(stateDir: string): SavedStateInfo {
  const info = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as SavedStateInfo;
  if (info.version !== 1) throw new Error(`${stateDir}/state.json: unknown version ${String(info.version)}`);
  return info;
}

/** QEMU processes of this process that have not exited. */
const liveQemus = new Set<ChildProcess>();

/**
 * Kills every QEMU this process started and has not seen exit: for signal
 * handlers, since a signal to Cairn alone would leave its VMs running.
 */
export function killLiveVms(): void {
  for (const p of liveQemus) p.kill('SIGKILL');
}

/**
 * Unix socket paths are limited to 107 bytes, and a store's temporary
 * directories can be deeper than that. A short symlink in the OS temp
 * directory stands in for a long working directory (removed on exit).
 */
const shortLinks = new Map<string, string>();
function shortPath(dir: string): string {
  if (path.join(dir, 'console.sock').length <= 100) return dir;
  let link = shortLinks.get(dir);
  if (!link) {
    link = path.join(os.tmpdir(), `cairn-vm-${randomBytes(6).toString('hex')}`);
    fs.symlinkSync(path.resolve(dir), link);
    shortLinks.set(dir, link);
  }
  return link;
}
function dropShortPath(dir: string): void {
  const link = shortLinks.get(dir);
  if (link) fs.rmSync(link, { force: true });
  shortLinks.delete(dir);
}

function forwardError(said: string, f?: PortForward): CairnError {
  return new CairnError(
    'E_MACHINE_FORWARD',
    `cannot forward ${f ? `${f.proto} host port ${f.hostPort} to guest port ${f.guestPort}` : 'a port'}: ` +
      `${said.split('\n').slice(-2).join(' ')} (is the host port taken? 0 picks a free one)`,
  );
}

/**
 * Sets the guest's clock to `nowMs`: GNU date takes fractional seconds,
 * busybox's only whole ones (so the second is rounded). Silent unless it fails.
 */
export function clockCommand(nowMs: number): string {
  const secs = Math.floor(nowMs / 1000);
  const frac = String(nowMs % 1000).padStart(3, '0');
  return `date -s @${secs}.${frac} >/dev/null 2>&1 || date -s @${Math.round(nowMs / 1000)} >/dev/null`;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
