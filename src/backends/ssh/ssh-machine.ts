/**
 * Hosts reached over ssh as machines (MachineBackend). The system `ssh`
 * client does all the talking, so the user's keys, agent and ~/.ssh/config
 * apply. A session is one master connection (ControlMaster, its socket in
 * a private temp directory, the process owned and stopped by PID); every
 * command, transfer and console is a multiplexed session over it, so a
 * chain of steps logs in once.
 *
 * A host cannot be snapshotted or restored: "resuming" a state connects to
 * the host as it is now, after checking that it presents the host key the
 * state recorded. The pipeline therefore never saves a step on an ssh
 * machine (see `liveBase` in src/stages/machine.ts and docs/machines.md).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { removeTree } from '../../store/fsutil.js';
import type {
  BackendSession,
  BackendState,
  ExecOptions,
  ExecResult,
  MachineBackend,
  MachineConsole,
  RunningMachine,
} from '../machine.js';
import { ProcessConsole } from '../process-console.js';
import { attachTerminal } from './attach.js';
import { downloadTree, uploadTree } from './transfer.js';
import {
  baseOptions,
  CONNECT_TIMEOUT_S,
  describeTarget,
  muxArgv,
  serverHostKey,
  shQuote,
  sshFailure,
  type SshTarget,
} from './target.js';

/** machine.json's `state` for an ssh machine. */
export interface SshState extends SshTarget {
  backend: 'ssh';
  /** `TYPE SHA256:...`: the host key ssh verified when the state was recorded. */
  hostKey: string;
}

export function checkSshState(state: BackendState, where: string): SshState {
  const s = state as Partial<SshState>;
  const str = (v: unknown): boolean => typeof v === 'string';
  const strOrNull = (v: unknown): boolean => v === null || str(v);
  if (
    s.backend !== 'ssh' ||
    !str(s.host) ||
    !str(s.hostKey) ||
    !(s.port === null || (Number.isInteger(s.port) && s.port! > 0 && s.port! < 65536)) ||
    !strOrNull(s.user) ||
    !strOrNull(s.identityFile) ||
    !strOrNull(s.knownHostsFile)
  )
    throw new CairnError('E_MACHINE_STATE', `${where} is not an ssh machine state`, { dir: where });
  return s as SshState;
}

/** Master processes still running, stopped if this process exits without discarding them. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  // A session a caller never discards must not keep Node alive: the exit hook below stops it.
  child.unref();
  (child.stderr as unknown as { unref?(): void } | null)?.unref?.();
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

/** A master connection: the process, its control socket, and the host key it verified. */
interface Master {
  child: ChildProcess;
  controlPath: string;
  hostKey: string;
  /** The master's recent stderr (debug lines), for the error when it dies. */
  stderr(): string;
}

/**
 * Connects to the host and waits until the control socket accepts
 * sessions. `-v` makes ssh print the host key it verified; ssh has checked
 * it against known_hosts (StrictHostKeyChecking=yes) before authenticating.
 */
async function startMaster(t: SshTarget, dir: string): Promise<Master> {
  const controlPath = path.join(dir, 'ctl');
  const child = spawn(
    'ssh',
    [...baseOptions(t), '-v', '-M', '-S', controlPath, '-N', '-o', 'ControlPersist=no', '--', t.host],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  track(child);
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err = (err + d).slice(-64 * 1024);
  });
  let hostKey: string | null = null;
  try {
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(
        () => reject(new CairnError('E_MACHINE_UNREACHABLE', `${describeTarget(t)}: no answer to the login`)),
        (CONNECT_TIMEOUT_S + 30) * 1000,
      );
      const done = (e?: Error): void => {
        clearTimeout(deadline);
        clearInterval(poll);
        child.off('exit', onExit);
        if (e) reject(e);
        else resolve();
      };
      const onExit = (): void => done(sshFailure(t, err));
      child.once('exit', onExit);
      child.once('error', (e) =>
        done(new CairnError('E_MACHINE_UNREACHABLE', `cannot run ssh: ${e.message} (is openssh-client installed?)`)),
      );
      // The socket appears once the login succeeded (ssh sets it up after authentication).
      const poll = setInterval(() => {
        hostKey ??= serverHostKey(err);
        if (hostKey !== null && fs.existsSync(controlPath)) done();
      }, 20);
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return { child, controlPath, hostKey: hostKey!, stderr: () => err };
}

function stopMaster(m: Master): Promise<void> {
  if (m.child.exitCode !== null || m.child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => m.child.once('exit', () => r()));
  // Waiting for it must keep Node alive (track() unref'd it).
  m.child.ref();
  m.child.kill('SIGTERM');
  return exited;
}

/** A private directory for the control socket: short, because a unix socket path has ~107 bytes. */
const socketDir = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-ssh-'));

/**
 * Logs in once and returns the host key ssh verified (`TYPE SHA256:...`):
 * the identity a base records. E_MACHINE_UNREACHABLE, E_MACHINE_HOST_KEY or
 * E_MACHINE_AUTH when that fails.
 */
export async function probeHostKey(t: SshTarget): Promise<string> {
  const dir = socketDir();
  try {
    const m = await startMaster(t, dir);
    await stopMaster(m);
    return m.hostKey;
  } finally {
    removeTree(dir);
  }
}

export class SshBackend implements MachineBackend {
  readonly kind = 'ssh';

  async resume(stateDir: string, state: BackendState): Promise<BackendSession> {
    const s = checkSshState(state, stateDir);
    const dir = socketDir();
    let m: Master;
    try {
      m = await startMaster(s, dir);
    } catch (e) {
      removeTree(dir);
      throw e;
    }
    if (m.hostKey !== s.hostKey) {
      await stopMaster(m);
      removeTree(dir);
      throw new CairnError(
        'E_MACHINE_HOST_KEY',
        `${describeTarget(s)} now presents host key ${m.hostKey}, not ${s.hostKey} as recorded in ${stateDir}; ` +
          'nothing was run (realize the base again to record the new key)',
        { host: s.host, recorded: s.hostKey, presented: m.hostKey },
      );
    }
    return new SshSession(s, m, dir);
  }
}

class SshSession implements BackendSession {
  readonly machine: RunningMachine;
  private console: ProcessConsole | undefined;
  private ended = false;

  constructor(
    private readonly target: SshState,
    private readonly master: Master,
    private readonly dir: string,
  ) {
    const self = this;
    const argv = (extra: readonly string[], remote: string): string[] =>
      muxArgv(target, master.controlPath, extra, remote);
    const lost = (): CairnError | null =>
      master.child.exitCode !== null || master.child.signalCode !== null
        ? sshFailure(target, master.stderr() || 'the connection was lost')
        : null;
    const consoleOf = (): MachineConsole => {
      self.console ??= new ProcessConsole('ssh', argv(['-T'], 'sh'), 'E_MACHINE_UNREACHABLE');
      const c = self.console;
      return {
        send: (text) => c.send(text),
        expect: (re, ms) => c.expect(re, ms),
        attach: (input, output) => attachTerminal(argv(['-tt'], loginShell(output)), input, output),
      };
    };
    this.machine = {
      backend: 'ssh',
      exec: (cmd, opts) => execOver(target, argv, lost, cmd, opts),
      get console() {
        return consoleOf();
      },
      upload: (hostPath, machinePath) => uploadTree(hostPath, machinePath, argv, lost),
      download: (machinePath, hostPath) => downloadTree(machinePath, hostPath, argv, lost),
    };
  }

  save(): Promise<BackendState> {
    // The pipeline never saves a step on a live host; a direct caller is told why.
    return Promise.reject(
      new CairnError(
        'E_MACHINE_STATE',
        `${describeTarget(this.target)} is a live host: it has no snapshot to save (steps on it always run)`,
      ),
    );
  }

  async discard(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.console?.close();
    await stopMaster(this.master).catch(() => undefined);
    removeTree(this.dir);
  }
}

/** The remote command of an interactive session: the user's login shell, sized like the local terminal. */
function loginShell(output: NodeJS.WritableStream): string {
  const tty = output as NodeJS.WriteStream;
  const size = tty.isTTY && tty.rows && tty.columns ? `stty rows ${tty.rows} cols ${tty.columns} 2>/dev/null; ` : '';
  return `${size}exec "\${SHELL:-/bin/sh}" -l`;
}

/** Runs `sh -c CMD` on the host: stdout, stderr and exit code apart. */
function execOver(
  target: SshTarget,
  argv: (extra: readonly string[], remote: string) => string[],
  lost: () => CairnError | null,
  cmd: string,
  opts: ExecOptions = {},
): Promise<ExecResult> {
  if (opts.shell)
    // Every command is its own ssh session: there is no long-lived shell whose `cd` could persist.
    return Promise.reject(
      new CairnError(
        'E_BAD_ARGUMENT',
        `exec({shell: true}) needs a long-lived shell; on ${describeTarget(target)} each command runs in its own`,
      ),
    );
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', argv(['-T', '-n'], `sh -c ${shQuote(cmd)}`), { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new CairnError('E_MACHINE_UNREACHABLE', `cannot run ssh: ${e.message}`));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut)
        return reject(
          new CairnError(
            'E_MACHINE_TIMEOUT',
            `${JSON.stringify(cmd)} did not finish within ${timeoutMs} ms on ${describeTarget(target)} ` +
              '(the local ssh session was closed; the remote command may still run)',
            { cmd },
          ),
        );
      // 255 is ssh's own failure only when the connection went; a command may exit 255 itself.
      const gone = code === 255 || code === null ? lost() : null;
      if (gone) return reject(gone);
      const exitCode = code ?? 255;
      if (opts.check && exitCode !== 0)
        return reject(
          new CairnError(
            'E_MACHINE_EXEC',
            `${JSON.stringify(cmd)} exited with ${exitCode}: ` + stderr.trim().split('\n').slice(-3).join(' | '),
            { cmd, stdout, stderr, exitCode },
          ),
        );
      resolve({ stdout, stderr, exitCode });
    });
  });
}
