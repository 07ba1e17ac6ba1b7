/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * Protocol: the server sends a greeting `{"QMP": {...}}`; the client must
 * send `qmp_capabilities` before any other command. Each command may carry
 * an `id`, echoed in its `{"return": ...}` or `{"error": ...}` reply, which
 * is how replies are matched here. Asynchronous `{"event": ...}` messages may
 * arrive at any time, interleaved with replies.
 */
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** A QMP `{"error": ...}` reply, or a transport failure (class `Timeout` / `Closed`). */
export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    message: string,
    readonly command?: string,
  ) {
    super(command ? `QMP ${command}: ${errorClass}: ${message}` : `QMP: ${errorClass}: ${message}`);
    this.name = 'QmpError';
  }
}

export interface QmpConnectOptions {
  /** Total time to wait for the socket to appear, accept, greet and negotiate (default 10 s). */
  timeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

type EventListener = (ev: QmpEvent) => void;

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<EventListener>();
  /** Every event received so far, oldest first (bounded). */
  readonly events: QmpEvent[] = [];
  private closedErr: Error | null = null;
  private readonly closedPromise: Promise<void>;
  greeting!: QmpGreeting;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    this.closedPromise = new Promise((resolve) => {
      sock.on('close', () => {
        this.fail(new QmpError('Closed', 'connection closed'));
        resolve();
      });
    });
    sock.on('error', (e) => this.fail(new QmpError('Closed', e.message)));
    sock.on('data', (chunk: string) => this.onData(chunk));
  }

  /**
   * Connects to a QMP unix socket, retrying while QEMU has not created it
   * yet, then reads the greeting and enters command mode.
   */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let sock: net.Socket | null = null;
    let lastErr: unknown;
    while (!sock) {
      try {
        sock = await connectOnce(socketPath);
      } catch (e) {
        lastErr = e;
        if (Date.now() >= deadline) {
          throw new QmpError('Timeout', `cannot connect to ${socketPath}: ${(lastErr as Error).message}`);
        }
        await sleep(5);
      }
    }
    const client = new QmpClient(sock);
    try {
      client.greeting = await client.waitGreeting(Math.max(1, deadline - Date.now()));
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
    } catch (e) {
      client.destroy();
      throw e;
    }
    return client;
  }

  private greetingWaiter: { resolve: (g: QmpGreeting) => void } | null = null;
  private pendingGreeting: QmpGreeting | null = null;

  private waitGreeting(timeoutMs: number): Promise<QmpGreeting> {
    if (this.pendingGreeting) return Promise.resolve(this.pendingGreeting);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new QmpError('Timeout', `no greeting within ${timeoutMs} ms`)), timeoutMs);
      this.greetingWaiter = {
        resolve: (g) => {
          clearTimeout(timer);
          resolve(g);
        },
      };
      void this.closedPromise.then(() => {
        clearTimeout(timer);
        reject(this.closedErr ?? new QmpError('Closed', 'connection closed'));
      });
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    // A QMP message: a greeting, an event or a reply; fields are checked before use where it matters.
    let msg: {
      QMP?: QmpGreeting;
      event?: unknown;
      data?: Record<string, unknown>;
      timestamp?: QmpEvent['timestamp'];
      id?: string | number;
      error?: { class?: string; desc?: string };
      return?: unknown;
    };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return; // not JSON: ignore (QMP only ever sends JSON objects)
    }
    if (msg.QMP) {
      this.pendingGreeting = msg.QMP;
      this.greetingWaiter?.resolve(msg.QMP);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = { event: msg.event, data: msg.data, timestamp: msg.timestamp };
      this.events.push(ev);
      if (this.events.length > 1000) this.events.shift();
      for (const l of [...this.listeners]) l(ev);
      return;
    }
    const id = msg.id === undefined ? undefined : String(msg.id);
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return; // a reply to a command that timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg)
      p.reject(new QmpError(msg.error?.class ?? 'GenericError', msg.error?.desc ?? 'unknown error', p.command));
    else p.resolve(msg.return);
  }

  private fail(err: Error): void {
    if (!this.closedErr) this.closedErr = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new QmpError('Closed', `connection closed before the reply`, p.command));
    }
  }

  /** True once the socket has closed (QEMU quit, or `close()`). */
  get closed(): boolean {
    return this.closedErr !== null;
  }

  /** Runs one command and resolves with its `return` value; rejects with QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedErr) return Promise.reject(new QmpError('Closed', 'connection is closed', command));
    const id = `cairn-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError('Timeout', `no reply within ${timeoutMs} ms`, command));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args) msg.arguments = args;
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Subscribes to events; returns an unsubscribe function. */
  onEvent(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Waits for the next event named `name` (and matching `pred`, if given).
   * With `since`, an event already in `events` at or after that index counts too.
   */
  waitEvent(
    name: string,
    opts: { timeoutMs?: number; pred?: (ev: QmpEvent) => boolean; since?: number } = {},
  ): Promise<QmpEvent> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const ok = (ev: QmpEvent): boolean => ev.event === name && (!opts.pred || opts.pred(ev));
    if (opts.since !== undefined) {
      const hit = this.events.slice(opts.since).find(ok);
      if (hit) return Promise.resolve(hit);
    }
    return new Promise((resolve, reject) => {
      const off = this.onEvent((ev) => {
        if (!ok(ev)) return;
        off();
        clearTimeout(timer);
        resolve(ev);
      });
      const timer = setTimeout(() => {
        off();
        reject(new QmpError('Timeout', `no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      void this.closedPromise.then(() => {
        off();
        clearTimeout(timer);
        reject(new QmpError('Closed', `connection closed while waiting for ${name}`));
      });
    });
  }

  /** Resolves when the connection has closed. */
  waitClosed(timeoutMs = 10_000): Promise<boolean> {
    return Promise.race([
      this.closedPromise.then(() => true),
      sleep(timeoutMs, undefined, { ref: false }).then(() => false),
    ]);
  }

  /** Closes the connection (QEMU keeps running); waits for the socket to close. */
  async close(): Promise<void> {
    if (!this.sock.destroyed) this.sock.end();
    const closed = await this.waitClosed(2000);
    if (!closed) this.sock.destroy();
  }

  /** Drops the connection immediately. */
  destroy(): void {
    this.sock.destroy();
  }
}

function connectOnce(socketPath: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    const onErr = (e: Error): void => {
      s.destroy();
      reject(e);
    };
    s.once('error', onErr);
    s.once('connect', () => {
      s.off('error', onErr);
      resolve(s);
    });
  });
}
