/**
 * The QEMU machine backend: a state is `memory.bin` (the migration stream),
 * `disk.qcow2` (frozen at the same instant) and the exact settings needed
 * to start the identical command line again, with the kernel and initramfs
 * recorded as paths relative to the state (they live in other
 * realizations of the same store).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CairnError } from '../../errors.js';
import type {
  BackendSession,
  BackendState,
  ExecOptions,
  ExecResult,
  MachineBackend,
  MachineConsole,
  ResumeOptions,
  RunningMachine,
} from '../machine.js';
import { parseForward, type ActiveForward, type NetMode } from './net.js';
import { ConsoleError, type SerialConsole } from './console.js';
import { chainLength, chooseCloneMode, cloneDisk, makeBackingRelative, type CloneMode } from './disk.js';
import { DEFAULT_APPEND, DEFAULT_MACHINE, Vm, type VmSpec } from './vm.js';

export interface QemuState extends BackendState {
  backend: 'qemu';
  qemuVersion: string;
  machine: string;
  memoryMb: number;
  smp: number;
  accel: 'kvm' | 'tcg';
  accelArgs: string[];
  /** Relative to the state's directory. */
  kernel: string;
  initramfs: string;
  append: string;
  memory: string;
  disk: string | null;
  /** How the disk was cloned when this state ran, and its backing chain length. */
  clone: CloneMode | null;
  chain: number;
  /** The network card's mode, or null; absent in states saved before machines had networks. */
  net?: NetMode | null;
}

/** CAIRN_DISK_CLONE=auto|reflink|overlay|copy picks the clone strategy (default auto). */
export function cloneModeFromEnv(): CloneMode | 'auto' {
  const v = process.env.CAIRN_DISK_CLONE ?? 'auto';
  if (v === 'auto' || v === 'reflink' || v === 'overlay' || v === 'copy') return v;
  throw new CairnError(
    'E_BAD_ENV',
    `CAIRN_DISK_CLONE must be auto, reflink, overlay or copy, not ${JSON.stringify(v)}`,
  );
}

function checkState(state: BackendState): QemuState {
  const s = state as QemuState;
  const ok =
    s.backend === 'qemu' &&
    typeof s.machine === 'string' &&
    Number.isInteger(s.memoryMb) &&
    Number.isInteger(s.smp) &&
    Array.isArray(s.accelArgs) &&
    typeof s.kernel === 'string' &&
    typeof s.initramfs === 'string' &&
    typeof s.memory === 'string' &&
    typeof s.qemuVersion === 'string' &&
    (s.net === undefined || s.net === null || s.net === 'user' || s.net === 'restrict');
  if (!ok) throw new CairnError('E_MACHINE_STATE', 'machine.json does not describe a QEMU state', { state });
  return s;
}

export const qemuBackend: MachineBackend = {
  kind: 'qemu',
  async resume(
    stateDir: string,
    state: BackendState,
    workDir: string,
    opts: ResumeOptions = {},
  ): Promise<BackendSession> {
    const s = checkState(state);
    if (!s.net && opts.forwards?.length)
      throw new CairnError('E_BAD_ARGUMENT', 'port forwards need a machine with a network (a base with net)');
    const clone = s.disk ? chooseCloneMode(cloneModeFromEnv(), workDir) : null;
    let disk: string | null = null;
    if (s.disk) {
      disk = path.join(workDir, 'disk.qcow2');
      await cloneDisk(path.join(stateDir, s.disk), disk, clone!);
    }
    const spec: VmSpec = {
      kernel: path.resolve(stateDir, s.kernel),
      initramfs: path.resolve(stateDir, s.initramfs),
      append: s.append,
      memoryMb: s.memoryMb,
      smp: s.smp,
      machine: s.machine,
      accel: { kind: s.accel, args: s.accelArgs, reason: 'from the saved state' },
      net: s.net ?? null,
      forwards: s.net ? (opts.forwards ?? []) : [],
    };
    const vm = await Vm.incoming(spec, workDir, path.join(stateDir, s.memory), disk, { expectVersion: s.qemuVersion });
    return qemuSession(vm, clone);
  },
};

/**
 * Boots a fresh VM (the first state of a base) with `disk` (a writable
 * qcow2 the caller prepared, or none) and waits for `ready` on the console.
 */
export async function bootSession(
  spec: VmSpec,
  workDir: string,
  disk: { file: string; clone: CloneMode } | null,
  opts: { timeoutMs?: number } = {},
): Promise<BackendSession> {
  const vm = await Vm.boot(spec, workDir, { ...opts, ...(disk ? { ownDisk: disk.file } : {}) });
  return qemuSession(vm, disk?.clone ?? null);
}

function qemuSession(vm: Vm, clone: CloneMode | null): BackendSession {
  return {
    machine: runningQemu(vm),
    async save(outDir: string, finalDir: string): Promise<QemuState> {
      await vm.freeze(path.join(outDir, 'memory.bin'));
      let disk: string | null = null;
      let chain = 0;
      if (vm.overlay) {
        disk = 'disk.qcow2';
        const file = path.join(outDir, disk);
        fs.renameSync(vm.overlay, file);
        chain = chainLength(file); // while the backing path is still absolute
        await makeBackingRelative(file, finalDir);
      }
      const spec = vm.spec;
      return {
        backend: 'qemu',
        qemuVersion: vm.qemuVersion,
        machine: spec.machine ?? DEFAULT_MACHINE,
        memoryMb: spec.memoryMb ?? 256,
        smp: spec.smp ?? 1,
        accel: vm.accel.kind,
        accelArgs: vm.accel.args,
        kernel: path.relative(finalDir, path.resolve(spec.kernel)),
        initramfs: path.relative(finalDir, path.resolve(spec.initramfs)),
        append: spec.append ?? DEFAULT_APPEND,
        ...(spec.net ? { net: spec.net } : {}),
        memory: 'memory.bin',
        disk,
        clone,
        chain,
      };
    },
    async discard(): Promise<void> {
      await vm.kill().catch(() => {});
    },
  };
}

/**
 * Passes on the text it is given up to `marker`, and nothing from the marker
 * on. A tail that could be the start of the marker is held back until the
 * next piece shows whether it is.
 */
export function untilMarker(marker: string, emit: (text: string) => void): (text: string) => void {
  let held = '';
  let done = false;
  return (text: string): void => {
    if (done) return;
    const buf = held + text;
    const at = buf.indexOf(marker);
    if (at >= 0) {
      done = true;
      if (at > 0) emit(buf.slice(0, at));
      return;
    }
    let keep = Math.min(marker.length - 1, buf.length);
    while (keep > 0 && !marker.startsWith(buf.slice(buf.length - keep))) keep--;
    held = buf.slice(buf.length - keep);
    if (buf.length > keep) emit(buf.slice(0, buf.length - keep));
  };
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** Base64 chunk size per console round trip (well under the tty's line limits: one base64 line per 76 chars). */
const CHUNK = 48 * 1024;

function runningQemu(vm: Vm): RunningMachine {
  const con: SerialConsole = vm.console;
  const exec = async (cmd: string, opts: ExecOptions = {}): Promise<ExecResult> => {
    // stderr goes to a file and is printed after a marker, so the serial
    // line (one stream) still gives stdout and stderr apart. By default the
    // command runs in a subshell of the console's shell, so `exit 3` gives
    // 3 instead of ending the shell; with `shell`, in the shell itself, so
    // `cd` and variables persist (and are saved with the state).
    const id = randomBytes(6).toString('hex');
    const errFile = `/tmp/.cairn-stderr-${id}`;
    const [open, close] = opts.shell ? ['{', '}'] : ['(', ')'];
    // The exit status travels on the stderr marker line, and the stderr
    // file is only read when it is not empty: every process the wrapper
    // forks costs 15-25 ms under TCG, and more on a freshly restored guest.
    // The marker follows stdout directly (no newline of its own before it),
    // so streamed stdout can be passed on up to its last byte as it comes.
    const wrapped =
      `${open} eval ${q(cmd)}\n${close} 2>${errFile}; __cairn_rc=$?; ` +
      `printf '%s%s %s\\n' __CAIRN_S ${id}__ $__cairn_rc; ` +
      `if [ -s ${errFile} ]; then cat ${errFile}; fi; rm -f ${errFile}`;
    let r;
    try {
      const stream = opts.onStdout ? untilMarker(`__CAIRN_S${id}__`, opts.onStdout) : undefined;
      r = await con.run(wrapped, opts.timeoutMs ?? 60_000, stream);
    } catch (e) {
      if (e instanceof ConsoleError)
        throw new CairnError('E_MACHINE_TIMEOUT', `machine command did not finish: ${cmd}: ${e.message}`, { cmd });
      throw e;
    }
    // The last marker line: the command's own output cannot contain it (random id).
    const marker = new RegExp(`__CAIRN_S${id}__ (\\d+)\\n`, 'g');
    let m: RegExpExecArray | null = null;
    for (let x; (x = marker.exec(r.output));) m = x;
    const stdout = m ? r.output.slice(0, m.index) : r.output;
    const stderr = m ? r.output.slice(m.index + m[0].length) : '';
    // Without the marker (the command ended the shell with `exec`/`exit` in shell mode), the shell's own status.
    const res = { stdout, stderr, exitCode: m ? Number(m[1]) : r.exitCode };
    if (opts.check && res.exitCode !== 0) {
      throw new CairnError(
        'E_MACHINE_EXEC',
        `machine command exited ${res.exitCode}: ${cmd}${stderr ? `\n${stderr.trimEnd()}` : ''}`,
        { cmd, exitCode: res.exitCode, stderr },
      );
    }
    return res;
  };
  const console_: MachineConsole = {
    async send(text: string) {
      con.send(text);
    },
    async expect(re: RegExp, timeoutMs?: number) {
      return (await con.expect(re, timeoutMs))[0];
    },
    attach(input, output) {
      return new Promise<void>((resolve) => {
        const off = con.onData((raw) => output.write(raw));
        const done = (): void => {
          off();
          input.off('data', onInput);
          input.off('end', done);
          resolve();
        };
        const onInput = (d: Buffer | string): void => {
          const text = d.toString();
          const stop = text.indexOf('\x1d');
          if (stop >= 0) {
            if (stop > 0) con.send(text.slice(0, stop));
            done();
          } else {
            con.send(text);
          }
        };
        input.on('data', onInput);
        input.on('end', done);
        // A fresh prompt, so the user sees where they are.
        con.send('\n');
      });
    },
  };
  return {
    backend: 'qemu',
    exec,
    console: console_,
    async upload(hostPath: string, machinePath: string): Promise<void> {
      const st = fs.statSync(hostPath);
      if (!st.isFile())
        throw new CairnError(
          'E_BAD_ARGUMENT',
          `upload: ${hostPath} is not a regular file (directories: pack them first)`,
        );
      const data = fs.readFileSync(hostPath).toString('base64');
      const tmp = `/tmp/.cairn-up-${randomBytes(6).toString('hex')}`;
      // The terminal's echo costs more than the data itself (measured: 70 KB
      // in 29 s with echo, 4 s without), so it is off while the data flows.
      await exec(`stty -echo; : > ${tmp}`, { check: true, shell: true });
      try {
        for (let i = 0; i < data.length; i += CHUNK) {
          const lines = data
            .slice(i, i + CHUNK)
            .match(/.{1,76}/g)!
            .join('\n');
          await exec(`printf '%s\\n' ${q(lines)} >> ${tmp}`, { check: true });
        }
        await exec(`base64 -d ${tmp} > ${q(machinePath)} && chmod ${(st.mode & 0o777).toString(8)} ${q(machinePath)}`, {
          check: true,
        });
      } finally {
        await exec(`stty echo; rm -f ${tmp}`, { shell: true });
      }
    },
    async download(machinePath: string, hostPath: string): Promise<void> {
      const r = await exec(`base64 ${q(machinePath)}`, { check: true, timeoutMs: 300_000 });
      fs.writeFileSync(hostPath, Buffer.from(r.stdout.replace(/\s+/g, ''), 'base64'));
    },
    get forwards(): readonly ActiveForward[] {
      return vm.forwards;
    },
    forward: (f) => vm.forward(parseForward(f)),
  };
}
