/**
 * The guest's serial console, as QEMU exposes it on a unix socket
 * (`-chardev socket,id=ser0,path=PATH,server=on,wait=off -serial chardev:ser0`).
 *
 * Everything the guest prints is kept in one buffer; `expect` scans it from a
 * cursor that only moves forward, so output that arrived before the call is
 * not missed. `run` executes a shell command and returns its output and exit
 * status, framed by markers that do not appear in the echoed command line.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export class ConsoleError extends Error {
  constructor(
    message: string,
    readonly tail: string,
  ) {
    super(`${message}\n--- console tail ---\n${tail.slice(-800)}`);
    this.name = 'ConsoleError';
  }
}

export interface RunResult {
  /** The command's output (stdout and stderr, as the terminal shows them), `\r` removed. */
  output: string;
  exitCode: number;
}

interface Waiter {
  re: RegExp;
  resolve: (m: RegExpExecArray) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class SerialConsole {
  /** Everything received, with `\r` and terminal queries (ESC [ 6 n) removed. */
  private text = '';
  /** Where the next `expect` starts scanning. */
  private cursor = 0;
  private waiters: Waiter[] = [];
  private closed = false;
  private listeners = new Set<(raw: string) => void>();
  /** Called after every append to `text` (before waiters are checked). */
  private textListeners = new Set<() => void>();

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      for (const l of this.listeners) l(chunk);
      this.text += chunk.replace(/\r/g, '').replace(/\x1b\[6n/g, '');
      for (const l of this.textListeners) l();
      this.check();
    });
    const onEnd = (): void => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) {
        clearTimeout(w.timer);
        w.reject(new ConsoleError(`console closed while waiting for ${w.re}`, this.text));
      }
    };
    sock.on('close', onEnd);
    sock.on('error', onEnd);
  }

  /** Connects, retrying until QEMU has created the socket (default 10 s). */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<SerialConsole> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once('error', (e) => {
            s.destroy();
            reject(e);
          });
          s.once('connect', () => {
            s.removeAllListeners('error');
            resolve(s);
          });
        });
        return new SerialConsole(sock);
      } catch (e) {
        if (Date.now() >= deadline)
          throw new ConsoleError(`cannot connect to ${socketPath}: ${(e as Error).message}`, '');
        await sleep(5);
      }
    }
  }

  /** All output so far. */
  get output(): string {
    return this.text;
  }

  /** Output after the expect cursor. */
  get pending(): string {
    return this.text.slice(this.cursor);
  }

  /** Moves the expect cursor to the end, discarding unread output. */
  drain(): void {
    this.cursor = this.text.length;
  }

  /** Calls `fn` with every raw chunk received from now on; returns the unsubscribe function. */
  onData(fn: (raw: string) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  send(text: string): void {
    if (this.closed) throw new ConsoleError('console is closed', this.text);
    this.sock.write(text);
  }

  /**
   * Resolves with the first match of `re` after the cursor, then moves the
   * cursor past it. Rejects with ConsoleError after `timeoutMs`.
   */
  expect(re: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    const flags = re.flags.replace(/[gy]/g, '');
    const rx = new RegExp(re.source, flags);
    const now = this.match(rx);
    if (now) return Promise.resolve(now);
    if (this.closed) return Promise.reject(new ConsoleError(`console closed while waiting for ${re}`, this.text));
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        re: rx,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new ConsoleError(`timed out after ${timeoutMs} ms waiting for ${re}`, this.text));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  private match(rx: RegExp): RegExpExecArray | null {
    const rest = this.text.slice(this.cursor);
    const m = rx.exec(rest);
    if (!m) return null;
    this.cursor += m.index + m[0].length;
    return m;
  }

  private check(): void {
    // One waiter at a time, in order: each consumes output up to its match.
    while (this.waiters.length) {
      const w = this.waiters[0]!;
      const m = this.match(w.re);
      if (!m) return;
      this.waiters.shift();
      clearTimeout(w.timer);
      w.resolve(m);
    }
  }

  /**
   * Runs `command` in the guest's interactive shell (through `eval`, so it
   * may set variables, span lines or end in `&`), and returns its output and
   * exit status. The markers are printed by printf from two halves, so the
   * terminal's echo of the command line never matches them.
   */
  async run(command: string, timeoutMs = 30_000, onOutput?: (text: string) => void): Promise<RunResult> {
    const id = randomBytes(6).toString('hex');
    const quoted = `'${command.replace(/'/g, `'\\''`)}'`;
    const line =
      `printf '%s%s\\n' __CAIRN_B ${id}__; eval ${quoted}; ` + `printf '\\n%s%s %s\\n' __CAIRN_E ${id}__ "$?"\n`;
    const re = new RegExp(`__CAIRN_B${id}__\\n([\\s\\S]*?)\\n__CAIRN_E${id}__ (\\d+)\\n`);
    const off = onOutput ? this.streamAfter(`__CAIRN_B${id}__\n`, onOutput) : undefined;
    try {
      this.send(line);
      const m = await this.expect(re, timeoutMs);
      return { output: m[1]!, exitCode: Number(m[2]) };
    } finally {
      off?.();
    }
  }

  /**
   * Passes `fn` the text that arrives after the next `start` marker (from
   * the expect cursor on), piece by piece, as it comes; the end marker and
   * anything after it are the caller's to cut off. Returns the unsubscribe.
   */
  private streamAfter(start: string, fn: (text: string) => void): () => void {
    const from = this.cursor;
    let at = -1; // where the text after `start` begins, once seen
    const pump = (): void => {
      if (at < 0) {
        const i = this.text.indexOf(start, from);
        if (i < 0) return;
        at = i + start.length;
      }
      if (this.text.length > at) {
        fn(this.text.slice(at));
        at = this.text.length;
      }
    };
    this.textListeners.add(pump);
    return () => this.textListeners.delete(pump);
  }

  /** Like `run`, but rejects when the exit status is not 0; resolves with the output. */
  async check0(command: string, timeoutMs = 30_000): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.exitCode !== 0)
      throw new ConsoleError(`guest command failed (exit ${r.exitCode}): ${command}\n${r.output}`, this.text);
    return r.output;
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}
