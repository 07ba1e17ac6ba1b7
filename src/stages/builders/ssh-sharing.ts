/**
 * One ssh connection per builder host for a whole realize, as OpenSSH's
 * connection sharing gives it: every build on a host makes two or three ssh
 * calls (the inputs' push, `build-drv`, the results' pull, each possibly
 * several rsync and cairn invocations), and each new connection pays a key
 * exchange and authentication. On the 16-stage fan-out over two hosts
 * (bench/builders.ts) sharing cut the wall time from 22.8 s to 14.3 s.
 *
 * The control sockets live in a private directory (mkdtemp: mode 0700) that
 * `close` removes after asking each master to exit. ControlPersist bounds a
 * master's life if cairn dies without closing. Ctrl-C (or SIGTERM, or a
 * build's process.exit) ends the process through process.exit, past any
 * `finally` that would call `close`: an exit hook does the same synchronously
 * then, so no master and no directory outlive an interrupted realize. A
 * command that already chooses its own ControlMaster/ControlPath is left as
 * it is.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { shellQuote, splitCommand } from '../../store/sync-plan.js';

/** Seconds an idle master outlives its last use when nobody closes it. */
const PERSIST_S = 60;

/**
 * The longest socket directory ssh can use: a unix socket path holds at most
 * 107 bytes, and ssh names the master's socket `DIR/%C` (40 hex digits) plus
 * a 17-byte temporary suffix while it sets it up. Past that the master fails
 * and so would every build on the host.
 */
const MAX_SOCKET_DIR = 107 - 1 - 40 - 17;

/** Where the socket directory goes: the temporary directory, or /tmp when that is too long (macOS, Slurm jobs). */
function socketParent(): string | undefined {
  const name = 'cairn-ssh-XXXXXX'.length + 1;
  for (const base of [os.tmpdir(), '/tmp']) {
    if (Buffer.byteLength(base) + name > MAX_SOCKET_DIR) continue;
    try {
      if (fs.statSync(base).isDirectory()) return base;
    } catch {
      /* not there */
    }
  }
  return undefined;
}

export interface SharedSsh {
  /** The ssh command to use for every call to this host (rsync's `-e` included). */
  readonly command: string;
  /** Ends the master connection (if one was started) and removes the socket directory. */
  close(): Promise<void>;
  /** Whether the master connection is up (its socket exists); always true without sharing. */
  connected(): boolean;
}

/** Exit hooks of the masters not closed yet, behind one 'exit' listener (one per host warned past 10 hosts). */
const open = new Set<() => void>();
const endAll = (): void => {
  for (const end of open) end();
  open.clear();
};

/**
 * Removes socket directories that cairn processes killed outright left
 * behind (no exit hook runs on SIGKILL): this user's `cairn-ssh-*`
 * directories, empty (their master has exited, taking its socket) and older
 * than a master could live. rmdir never removes anything inside.
 */
function sweepStaleDirs(parent: string): void {
  const uid = process.getuid?.();
  const before = Date.now() - 2 * PERSIST_S * 1000;
  let names: string[];
  try {
    names = fs.readdirSync(parent).filter((n) => n.startsWith('cairn-ssh-'));
  } catch {
    return;
  }
  for (const n of names) {
    try {
      const p = path.join(parent, n);
      const st = fs.lstatSync(p);
      if (st.isDirectory() && st.uid === uid && st.mtimeMs < before) fs.rmdirSync(p);
    } catch {
      /* not empty, gone, or not ours: left alone */
    }
  }
}

export function sharedSsh(sshCmd: string, target: string): SharedSsh {
  const parent = socketParent();
  if (parent !== undefined) sweepStaleDirs(parent);
  // Without a short enough directory, no sharing: slower, but every call still works.
  if (/\bControl(Master|Path)\b/i.test(sshCmd) || parent === undefined)
    return { command: sshCmd, close: async () => {}, connected: () => true };
  const dir = fs.mkdtempSync(path.join(parent, 'cairn-ssh-'));
  // %C: a hash of the connection's host, port and user, short enough for a socket path.
  const control = ['-o', `ControlPath=${path.join(dir, '%C')}`];
  const command = `${sshCmd} -o ControlMaster=auto ${control.map(shellQuote).join(' ')} -o ControlPersist=${PERSIST_S}`;
  const ssh = splitCommand(sshCmd);
  const exitArgs = [...ssh.slice(1), ...control, '-O', 'exit', '--', target];
  // `-O exit` with no master listening fails at once (it never dials the host); either way the directory goes.
  const onExit = (): void => {
    spawnSync(ssh[0]!, exitArgs, { stdio: 'ignore', timeout: 5000 });
    fs.rmSync(dir, { recursive: true, force: true });
  };
  if (open.size === 0) process.once('exit', endAll);
  open.add(onExit);
  return {
    command,
    // The master binds DIR/%C (40 hex digits) once it has logged in; a temporary name may come first.
    connected: () => fs.existsSync(dir) && fs.readdirSync(dir).some((n) => /^[0-9a-f]{40}$/.test(n)),
    async close() {
      open.delete(onExit);
      if (open.size === 0) process.off('exit', endAll);
      await new Promise<void>((resolve) => {
        const child = spawn(ssh[0]!, exitArgs, { stdio: 'ignore' });
        child.on('error', () => resolve());
        child.on('close', () => resolve());
      });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
