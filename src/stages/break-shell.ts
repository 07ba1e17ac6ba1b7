import { spawn } from 'node:child_process';
import { holdingInterrupts } from './build-processes.js';
import { cancelledAtBreak, type PausedBuild } from './break-point.js';

export interface BreakShellOptions {
  /** The shell to run (default $SHELL, else /bin/sh). */
  shell?: string;
  /** Where the hint goes (default: stderr). */
  say?: (text: string) => void;
  /** Send the shell's stdout to stderr (when cairn's stdout carries data, such as `--json`). */
  stdoutToStderr?: boolean;
  /** Told when the shell starts (true) and ends (false): a progress display stops drawing meanwhile. */
  hold?: (on: boolean) => void;
}

/**
 * A break point's `enter` for a person: prints the hint and runs a shell
 * in the first output directory with the build's environment, on cairn's
 * own stdin, stdout and stderr (a terminal or not: piped commands work).
 * Exit status 0 continues; anything else, or death by a signal, cancels.
 * While the shell runs, cairn leaves SIGINT to it (Ctrl-C at a prompt or
 * in a program the shell runs must not end the realize); SIGTERM and
 * SIGHUP still stop everything.
 */
export function breakShell(opts: BreakShellOptions = {}): (p: PausedBuild) => Promise<void> {
  return (p) => {
    const shell = opts.shell ?? (process.env.SHELL || '/bin/sh');
    (opts.say ?? ((t) => process.stderr.write(t + '\n')))(`${p.hint}\n  shell: ${shell}`);
    p.log(`the shell is ${shell}`);
    opts.hold?.(true);
    const done = holdingInterrupts(
      () =>
        new Promise<void>((resolve, reject) => {
          const child = spawn(shell, [], {
            cwd: p.out,
            env: { ...process.env, ...p.env },
            stdio: ['inherit', opts.stdoutToStderr ? 2 : 'inherit', 'inherit'],
          });
          child.on('error', (e) => reject(cancelledAtBreak(p, `cannot run ${shell}: ${e.message}`)));
          child.on('close', (code, signal) => {
            if (code === 0) resolve();
            else reject(cancelledAtBreak(p, `the shell exited with ${signal ?? code}`));
          });
        }),
    );
    return done.finally(() => opts.hold?.(false));
  };
}
