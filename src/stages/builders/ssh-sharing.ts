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
 * master's life if cairn dies without closing. A command that already
 * chooses its own ControlMaster/ControlPath is left as it is.
 *
 * When cairn exits without closing (Ctrl-C: the realize guard ends the
 * process), an 'exit' hook asks the master to exit synchronously, so it
 * neither lingers for ControlPersist nor holds on to cairn's output pipes
 * (a `cairn realize ... | tee` would wait for it).
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { shellQuote, splitCommand } from '../../store/sync-plan.js';

/** Seconds an idle master outlives its last use when nobody closes it. */
const PERSIST_S = 60;

export interface SharedSsh {
  /** The ssh command to use for every call to this host (rsync's `-e` included). */
  readonly command: string;
  /** Ends the master connection (if one was started) and removes the socket directory. */
  close(): Promise<void>;
}

/** Masters not closed yet: told to exit when the process exits (one 'exit' listener for all). */
const unclosed = new Set<() => void>();
const exitAll = (): void => {
  for (const f of unclosed) f();
};
function atExit(f: () => void, on: boolean): void {
  if (on) {
    if (unclosed.size === 0) process.on('exit', exitAll);
    unclosed.add(f);
  } else if (unclosed.delete(f) && unclosed.size === 0) process.off('exit', exitAll);
}

export function sharedSsh(sshCmd: string, target: string): SharedSsh {
  if (/\bControl(Master|Path)\b/i.test(sshCmd)) return { command: sshCmd, close: async () => {} };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-ssh-'));
  // %C: a hash of the connection's host, port and user, short enough for a socket path.
  const control = ['-o', `ControlPath=${path.join(dir, '%C')}`];
  const command = `${sshCmd} -o ControlMaster=auto ${control.map(shellQuote).join(' ')} -o ControlPersist=${PERSIST_S}`;
  const ssh = splitCommand(sshCmd);
  const exitArgs = [...ssh.slice(1), ...control, '-O', 'exit', '--', target];
  const onExit = (): void => {
    spawnSync(ssh[0]!, exitArgs, { stdio: 'ignore', timeout: 2000 });
    fs.rmSync(dir, { recursive: true, force: true });
  };
  atExit(onExit, true);
  return {
    command,
    async close() {
      atExit(onExit, false);
      // `-O exit` with no master listening fails quietly; either way the directory goes.
      await new Promise<void>((resolve) => {
        const child = spawn(ssh[0]!, exitArgs, { stdio: 'ignore' });
        child.on('error', () => resolve());
        child.on('close', () => resolve());
      });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
