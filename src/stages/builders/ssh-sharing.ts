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
 */
import { spawn } from 'node:child_process';
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

export function sharedSsh(sshCmd: string, target: string): SharedSsh {
  if (/\bControl(Master|Path)\b/i.test(sshCmd)) return { command: sshCmd, close: async () => {} };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-ssh-'));
  // %C: a hash of the connection's host, port and user, short enough for a socket path.
  const control = ['-o', `ControlPath=${path.join(dir, '%C')}`];
  const command = `${sshCmd} -o ControlMaster=auto ${control.map(shellQuote).join(' ')} -o ControlPersist=${PERSIST_S}`;
  return {
    command,
    async close() {
      const ssh = splitCommand(sshCmd);
      // `-O exit` with no master listening fails quietly; either way the directory goes.
      await new Promise<void>((resolve) => {
        const child = spawn(ssh[0]!, [...ssh.slice(1), ...control, '-O', 'exit', '--', target], { stdio: 'ignore' });
        child.on('error', () => resolve());
        child.on('close', () => resolve());
      });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
