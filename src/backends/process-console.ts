/**
 * A console over a child process's pipes (an interactive shell in a
 * container, a shell over ssh), with the same send/expect contract as the
 * QEMU serial console. The cursor only moves forward, so output that arrives
 * before `expect` is called is not lost, and a match consumes everything up
 * to its end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { CairnError, type ErrorCode } from '../errors.js';
import type { MachineConsole } from './machine.js';

export class ProcessConsole implements MachineConsole {
  private buf = '';
  private cursor = 0;
  private closed = false;
  private waiters = new Set<() => void>();
  private readonly child: ChildProcess;

  /** `endedCode`: the error code of a send after the process ended (the backend's own). */
  constructor(
    command: string,
    args: readonly string[],
    private readonly endedCode: ErrorCode,
  ) {
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const onData = (b: Buffer): void => {
      this.buf += b.toString();
      for (const w of this.waiters) w();
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    this.child.stdin!.on('error', () => {});
    this.child.on('close', () => {
      this.closed = true;
      for (const w of this.waiters) w();
    });
    this.child.on('error', () => {
      this.closed = true;
    });
  }

  send(text: string): Promise<void> {
    if (this.closed) return Promise.reject(new CairnError(this.endedCode, 'the console session has ended'));
    return new Promise((resolve, reject) => this.child.stdin!.write(text, (e) => (e ? reject(e) : resolve())));
  }

  expect(re: RegExp, timeoutMs = 30_000): Promise<string> {
    // A global/sticky regex keeps lastIndex between calls; a fresh copy without them does not.
    const plain = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const m = plain.exec(this.buf.slice(this.cursor));
        if (m) {
          this.cursor += m.index + m[0].length;
          finish();
          resolve(m[0]);
        } else if (this.closed) {
          finish();
          reject(new CairnError('E_MACHINE_TIMEOUT', `console ended before ${re} appeared`, { pattern: String(re) }));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new CairnError(
            'E_MACHINE_TIMEOUT',
            `console: ${re} did not appear within ${timeoutMs} ms; ` +
              `last output: ${JSON.stringify(this.buf.slice(-200))}`,
            { pattern: String(re) },
          ),
        );
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Ends the session (the machine keeps running). */
  close(): void {
    if (!this.closed) this.child.stdin!.end();
    this.child.kill('SIGKILL');
  }
}
