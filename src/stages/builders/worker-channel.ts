/**
 * Frames (worker-frames.ts) over a pair of streams: the worker's stdin and
 * stdout, or the ssh child's on the coordinator. Reading never stops: a
 * payload goes straight into a fresh file of a temporary directory the
 * owner names (never held in memory whole), and the end of input is seen
 * even while the owner is busy (`closed`), which is how a worker notices
 * that its coordinator went away mid-build.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { CairnError } from '../../errors.js';
import { removeTree } from '../../store/fsutil.js';
import type { LocalStore } from '../../store/store.js';
import { encodeFrame, FrameDecoder, type WorkerReply, type WorkerRequest } from './worker-frames.js';

/** A received message; `payload` is a file in `dir`, which the receiver removes when done (Frame.discard). */
export interface Frame<T> {
  msg: T;
  payload?: { file: string; dir: string };
}

export function discard(f: Frame<unknown> | null | undefined): void {
  if (f?.payload) removeTree(f.payload.dir);
}

/** A payload file to send (`LABEL.tar` in a fresh temporary directory of the store), removed after `fn`. */
export async function withTempFile<T>(store: LocalStore, label: string, fn: (file: string) => Promise<T>): Promise<T> {
  const dir = store.makeTempDir(label);
  try {
    return await fn(path.join(dir, `${label}.tar`));
  } finally {
    removeTree(dir);
  }
}

/** Where bytes go: resolves once they are handed to the OS (so a large payload never piles up in memory). */
export type FrameOutput = (bytes: Buffer) => Promise<void>;

const CHUNK = 1 << 20;

export class FrameChannel<In, Out extends WorkerRequest | WorkerReply> {
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame<In>[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private fault: Error | undefined;
  /** The frame being received: its message and the payload file open for writing. */
  private current: { msg: In; fd?: number; payload?: { file: string; dir: string } } | undefined;
  private sending: Promise<void> = Promise.resolve();
  /** Resolves when input has ended (cleanly or not) or failed. */
  readonly closed: Promise<void>;

  constructor(
    input: Readable,
    private readonly output: FrameOutput,
    private readonly parse: (header: unknown, payloadBytes: number) => In,
    /** A fresh private directory for one payload (in the store's temporary area). */
    private readonly payloadDir: () => string,
  ) {
    let close!: () => void;
    this.closed = new Promise((r) => (close = r));
    input.on('data', (chunk: Buffer) => {
      if (this.fault) return;
      try {
        for (const ev of this.decoder.push(chunk)) this.onEvent(ev);
      } catch (e) {
        this.fail(e as Error);
        input.destroy();
        close();
      }
      this.wake();
    });
    const ended = (): void => {
      if (!this.fault) {
        try {
          this.decoder.finish();
        } catch (e) {
          this.fail(e as Error);
        }
      }
      this.ended = true;
      this.wake();
      close();
    };
    input.on('end', ended);
    input.on('close', ended);
    input.on('error', (e) => {
      this.fail(new CairnError('E_WORKER_PROTOCOL', `builder worker stream: ${e.message}`));
      ended();
    });
  }

  private onEvent(ev: ReturnType<FrameDecoder['push']>[number]): void {
    if (ev.kind === 'header') {
      const msg = this.parse(ev.header, ev.payloadBytes);
      this.current = { msg };
      if (ev.payloadBytes > 0) {
        const dir = this.payloadDir();
        const file = path.join(dir, 'payload.tar');
        this.current.payload = { file, dir };
        this.current.fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      }
    } else if (ev.kind === 'payload') {
      const c = this.current!;
      let off = 0;
      while (off < ev.chunk.length) off += fs.writeSync(c.fd!, ev.chunk, off);
    } else {
      const c = this.current!;
      if (c.fd !== undefined) fs.closeSync(c.fd);
      this.current = undefined;
      this.queue.push({ msg: c.msg, ...(c.payload ? { payload: c.payload } : {}) });
    }
  }

  /** Nothing of a half-received frame is kept. */
  private fail(e: Error): void {
    this.fault ??= e;
    const c = this.current;
    this.current = undefined;
    if (c?.fd !== undefined) fs.closeSync(c.fd);
    if (c?.payload) removeTree(c.payload.dir);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** The next frame; null at a clean end of input; throws on a malformed or truncated stream. */
  async read(): Promise<Frame<In> | null> {
    for (;;) {
      const f = this.queue.shift();
      if (f) return f;
      if (this.fault) throw this.fault;
      if (this.ended) return null;
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  /** Sends a message, with the file `payload` after it; sends are queued, never interleaved. */
  send(msg: Out, payload?: string): Promise<void> {
    const next = this.sending.then(() => this.write(msg, payload));
    this.sending = next.catch(() => {});
    return next;
  }

  private async write(msg: Out, payload?: string): Promise<void> {
    if (payload === undefined) return this.output(encodeFrame(msg));
    const fd = fs.openSync(payload, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const size = fs.fstatSync(fd).size;
      await this.output(encodeFrame(msg, size));
      let left = size;
      while (left > 0) {
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, left));
        const n = fs.readSync(fd, buf, 0, buf.length, null);
        if (n === 0) throw new CairnError('E_STORE_IO', `${payload} shrank while it was sent`);
        await this.output(buf.subarray(0, n));
        left -= n;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}
