/**
 * The coordinator's end of one builder worker (worker-serve.ts): `cairn
 * builder-worker` started over ssh, then asked for one thing at a time.
 * Anything that goes wrong with the worker itself (it exits, the stream is
 * malformed, the protocol versions differ) marks it `broken` and throws a
 * builder failure (the pool builds elsewhere); an `error` reply carries the
 * worker's own error code (a build's own failure stays E_BUILD_FAILED and
 * the worker stays usable).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { CairnError, ErrorCodes, type ErrorCode } from '../../errors.js';
import type { DRef, RRef } from '../../store/refs.js';
import type { LocalStore } from '../../store/store.js';
import { discard, FrameChannel, type Frame } from './worker-channel.js';
import {
  checkVersion,
  parseReply,
  protocolError,
  WORKER_PROTOCOL_VERSION,
  type WorkerReply,
  type WorkerRequest,
} from './worker-frames.js';

export interface WorkerCommand {
  /** The command and its arguments (ssh ... -- host 'cairn --store S builder-worker'). */
  argv: readonly string[];
  /** The builder's name, for messages. */
  name: string;
}

/** How long a closed worker may take to exit before its ssh is ended. */
const CLOSE_WAIT_MS = 5000;
const STDERR_KEPT = 8192;

export class BuilderWorker {
  /** True once the worker can no longer be used (it exited, or the stream failed). */
  broken = false;
  host = '?';
  private stderr = '';
  private readonly exited: Promise<number | null>;

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly ch: FrameChannel<WorkerReply, WorkerRequest>,
    private readonly name: string,
  ) {
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-STDERR_KEPT);
    });
    this.exited = new Promise((resolve) => {
      child.on('close', (code) => resolve(code));
      child.on('error', () => resolve(null));
    });
    // An idle worker whose host went away is not handed out again (its failure is not a new build's).
    void this.exited.then(() => (this.broken = true));
    void ch.closed.then(() => (this.broken = true));
  }

  /** Starts a worker and shakes hands with it. */
  static async start(store: LocalStore, cmd: WorkerCommand): Promise<BuilderWorker> {
    const child = spawn(cmd.argv[0]!, cmd.argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let spawnError: Error | undefined;
    child.on('error', (e) => (spawnError = e));
    // The other side may be gone: a failed write is seen as the end of its output.
    child.stdin.on('error', () => {});
    const ch = new FrameChannel<WorkerReply, WorkerRequest>(
      child.stdout,
      (bytes) => new Promise((resolve, reject) => child.stdin.write(bytes, (e) => (e ? reject(e) : resolve()))),
      parseReply,
      () => store.makeTempDir('worker-result'),
    );
    const w = new BuilderWorker(child, ch, cmd.name);
    try {
      const hello = await w.request({ t: 'hello', version: WORKER_PROTOCOL_VERSION });
      if (hello.msg.t !== 'hello') throw protocolError(`the worker answered hello with ${hello.msg.t}`);
      checkVersion(hello.msg.version, `the builder worker on ${cmd.name}`);
      w.host = hello.msg.host;
    } catch (e) {
      void w.close();
      if (spawnError)
        throw new CairnError('E_BUILDER_FAILED', `cannot run ${cmd.argv[0]}: ${spawnError.message}`, {
          builder: cmd.name,
        });
      throw e;
    }
    return w;
  }

  /**
   * Sends one request and waits for its answer; `log` replies before it go
   * to `onLog`. A `error` reply is thrown with its code.
   */
  private async request(
    msg: WorkerRequest,
    payload?: string,
    onLog?: (line: string) => void,
  ): Promise<Frame<WorkerReply>> {
    if (this.broken) throw new CairnError('E_BUILDER_FAILED', `${this.name}: its builder worker is gone`);
    try {
      await this.ch.send(msg, payload);
      for (;;) {
        const f = await this.ch.read();
        if (f === null) throw await this.ended();
        const m = f.msg;
        if (m.t === 'log') {
          onLog?.(m.line);
          continue;
        }
        if (m.t === 'error') {
          const known = m.code in ErrorCodes;
          // Only a build's own failure leaves the worker usable; it says so by its code.
          throw new CairnError(
            known ? (m.code as ErrorCode) : 'E_BUILDER_FAILED',
            `on ${this.name}: ${known ? '' : `${m.code}: `}${m.message}`,
            { builder: this.name },
          );
        }
        return f;
      }
    } catch (e) {
      if (!(e instanceof CairnError) || e.code === 'E_WORKER_PROTOCOL' || e.code === 'E_WORKER_VERSION') {
        this.broken = true;
        if (!(e instanceof CairnError)) throw await this.ended();
      }
      throw e;
    }
  }

  /** The worker is gone: a builder failure naming its exit and the end of its stderr. */
  private async ended(): Promise<CairnError> {
    this.broken = true;
    const code = await Promise.race([this.exited, new Promise<null>((r) => setTimeout(() => r(null), 2000))]);
    const tail = this.stderr.trim().split('\n').slice(-5).join('\n');
    return new CairnError(
      'E_BUILDER_FAILED',
      `${this.name}: the builder worker ended${code !== null ? ` (exit ${code})` : ''}: ${tail || 'no output'}`,
      { builder: this.name, exit: code },
    );
  }

  /** Which of `refs` the worker's store has. */
  async have(refs: readonly string[]): Promise<Set<string>> {
    const f = await this.request({ t: 'have', refs: [...refs] });
    if (f.msg.t !== 'have') throw this.unexpected(f);
    return new Set(f.msg.have);
  }

  /** Sends a closure tar (`file`); the worker takes it in through its verified import. */
  async sendClosure(file: string): Promise<void> {
    const f = await this.request({ t: 'closure' }, file);
    if (f.msg.t !== 'received') throw this.unexpected(f);
  }

  /**
   * Builds `dref` (its export in `drvFile`) from exactly `inputs`. Returns
   * the worker's report (unchecked) and the file of the result closure,
   * which the caller must `discard` when done.
   */
  async build(
    dref: DRef,
    inputs: readonly RRef[],
    drvFile: string,
    onLog: (line: string) => void,
    force = false,
  ): Promise<{ report: unknown; result: Frame<WorkerReply> }> {
    const msg = { t: 'build' as const, dref, inputs: [...inputs], ...(force ? { force } : {}) };
    const f = await this.request(msg, drvFile, onLog);
    if (f.msg.t !== 'built') throw this.unexpected(f);
    return { report: f.msg.report, result: f };
  }

  private unexpected(f: Frame<WorkerReply>): CairnError {
    discard(f);
    this.broken = true;
    return protocolError(`${this.name} answered with ${f.msg.t}`);
  }

  /** Ends the worker: closes its stdin (it exits when idle), then ends ssh if it lingers. */
  async close(): Promise<void> {
    this.broken = true;
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGTERM'), CLOSE_WAIT_MS);
    await this.exited;
    clearTimeout(timer);
  }
}
