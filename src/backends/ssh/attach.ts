/**
 * An interactive terminal on an ssh machine: `ssh -tt` (a pty on the host,
 * even though our end is a pipe) between `input` and `output`, until the
 * remote shell exits, `input` ends, or Ctrl-] (0x1d) is typed, as on the
 * QEMU console.
 */
import { spawn } from 'node:child_process';
import { CairnError } from '../../errors.js';

export function attachTerminal(
  argv: readonly string[],
  input: NodeJS.ReadableStream,
  output: NodeJS.WritableStream,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn('ssh', argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.on('error', () => {});
    child.stdout.on('data', (b: Buffer) => output.write(b));
    // ssh -tt merges the remote stderr into the pty; what arrives here is ssh's own.
    child.stderr.on('data', (b: Buffer) => output.write(b));
    let finished = false;
    const done = (e?: Error): void => {
      if (finished) return;
      finished = true;
      input.off('data', onInput);
      input.off('end', onEnd);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      if (e) reject(e);
      else resolve();
    };
    const onInput = (d: Buffer | string): void => {
      const b = typeof d === 'string' ? Buffer.from(d) : d;
      const stop = b.indexOf(0x1d);
      if (stop < 0) child.stdin.write(b);
      else {
        if (stop > 0) child.stdin.write(b.subarray(0, stop));
        done();
      }
    };
    // The end of piped input ends the remote shell (its EOF), whose exit ends the session.
    const onEnd = (): void => {
      child.stdin.end();
    };
    input.on('data', onInput);
    input.on('end', onEnd);
    child.once('error', (e) => done(new CairnError('E_MACHINE_UNREACHABLE', `cannot run ssh: ${e.message}`)));
    child.once('close', () => done());
  });
}
