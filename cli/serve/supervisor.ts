/**
 * The cairn server: listens on a unix socket and hands each client command
 * to an idle, warmed-up worker process (worker.ts), relaying the worker's
 * output to the client. It never runs a command itself and never queues
 * one: with no idle worker, with another build of Cairn, or for a command
 * workers do not run, it answers R and the client runs the Node CLI as if
 * there were no server. So a server can make a command faster, never slower
 * (beyond a connect), and never different.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CairnError } from '../../src/errors.js';
import { commandWord } from '../command-word.js';
import { peerFacts, readProcFacts, sandboxDifference, type ProcFacts } from './sandbox.js';
import { installation, readBuildId } from './install.js';
import { trustedSocketPath } from './socket-dir.js';
import {
  EndMarkerScanner,
  frame,
  FrameReader,
  ownProcessReason,
  parseRequest,
  SERVED_COMMANDS,
  type ClientRequest,
} from './protocol.js';
import type { FromWorker, ToWorker } from './worker-messages.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WORKER_MODULE = path.join(HERE, 'worker.js');
/**
 * libuv's thread pool size for workers, unless the server's environment
 * sets one. A build's output is published after one concurrent round of up
 * to six fsyncs (its files and directories, meta.json, the staging
 * directory, a new derivation's files); with the default four threads that
 * round takes two waves of device flushes instead of one, on the critical
 * path of every chain of stages (docs/benchmarks.md). libuv reads the
 * variable when the process starts, so it is given to the fork; commands
 * run with their client's environment, so builds never see it.
 */
const WORKER_POOL_SIZE = '8';
/** Reads a client's process for the sandbox check (cli/client/peer.c, built with the client). */
const PEER_HELPER = path.join(HERE, '..', '..', 'bin', 'cairn-peer');
/**
 * A client sends its whole request right after it connects. One that has
 * not within this time (a half frame, or nothing) is dropped, so that
 * stuck or hostile connections cannot pile up.
 */
export const REQUEST_TIMEOUT_MS = 5000;
/**
 * Connections open at once. Beyond it a new one is answered R at once (the
 * client runs the Node CLI) and closed; a client is never made to wait.
 */
export const MAX_CONNECTIONS = 64;
export interface ServerOptions {
  socket: string;
  /** Warm workers kept (each runs one command at a time). */
  workers: number;
  /** Exit after this long without a command. */
  idleMs: number;
  /** Recycle a worker after this many commands (each keeps its stage modules in memory)... */
  maxRequests: number;
  /** ...or once its heap exceeds this many bytes. */
  maxHeapBytes: number;
  /** Defaults: REQUEST_TIMEOUT_MS, MAX_CONNECTIONS. */
  requestTimeoutMs?: number;
  maxConnections?: number;
}

/** What `C status` answers: whose server this is, and what it has done. */
export interface ServerStatus {
  pid: number;
  uid: number;
  socket: string;
  /** The installation it runs (the real path of its dist/ directory): it serves only clients of this one. */
  install: string;
  build: string;
  startedAt: string;
  served: number;
  fallbacks: number;
  workers: { pid: number | undefined; state: WorkerState; served: number }[];
}

type WorkerState = 'warming' | 'idle' | 'busy' | 'exiting';

interface Job {
  client: net.Socket;
  out: EndMarkerScanner;
  err: EndMarkerScanner;
  outEnded: boolean;
  errEnded: boolean;
  code?: number;
}

interface Worker {
  child: ChildProcess;
  state: WorkerState;
  served: number;
  job?: Job;
  /** The worker's process as sandbox.ts compares it with a client's; read once it is warm. */
  facts?: ProcFacts;
}

/** Environment that a Node process reads when it starts (options, preloads, locale), not later. */
/** Signals a client forwards (cli/client/cairn.c): the ones the Node CLI stops its builds on. */
const FORWARDED_SIGNALS = new Set(['SIGINT', 'SIGTERM', 'SIGHUP']);

/**
 * A connection's forwarded signals: held until its command runs, then handed to its worker. Only the first two
 * count (the second one skips the grace), so a client cannot flood the server with them.
 */
interface Signals {
  pending: string[];
  received: number;
  forward?: (name: string) => void;
}

const STARTUP_ENV = /^(NODE_OPTIONS|NODE_PATH|NODE_ICU_DATA|LANG|LANGUAGE|LC_[A-Z_]+)$/;

const log = (s: string): void => {
  process.stderr.write(`${new Date().toISOString()} ${s}\n`);
};

/**
 * Runs the server until it is stopped or idle; resolves when it has shut
 * down, with `restart` set when it stopped because Cairn was rebuilt.
 */
export async function runServer(o: ServerOptions): Promise<{ restart: boolean }> {
  const build = readBuildId();
  const install = installation().dir;
  /** The socket's path with its directory resolved (socket-dir.ts), once listening. */
  let socket = o.socket;
  const workers = new Set<Worker>();
  const startedAt = new Date();
  let served = 0;
  let fallbacks = 0;
  let warmFailures = 0;
  let stopping = false;
  let restart = false;
  let idleTimer: NodeJS.Timeout | undefined;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => {
    resolveDone = r;
  });

  const spawnWorker = (): void => {
    const child = fork(WORKER_MODULE, [], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      detached: true,
      execArgv: [],
      env: { UV_THREADPOOL_SIZE: WORKER_POOL_SIZE, ...process.env },
    });
    const w: Worker = { child, state: 'warming', served: 0 };
    workers.add(w);
    // A failed fork (EAGAIN, say) ends in 'close' like any other death.
    child.on('error', (e) => log(`worker ${child.pid ?? '(not started)'}: ${e.message}`));
    const relay = (type: 'O' | 'E', chunk: Buffer): void => {
      const job = w.job;
      if (!job) {
        log(`worker ${child.pid} wrote outside a command: ${chunk.toString().trimEnd()}`);
        return;
      }
      const r = (type === 'O' ? job.out : job.err).push(chunk);
      if (r.data.length > 0 && !job.client.destroyed && !job.client.write(frame(type, r.data))) {
        // A slow reader: hold the worker's output in its pipes, not in this process's memory.
        child.stdout!.pause();
        child.stderr!.pause();
        job.client.once('drain', () => {
          child.stdout!.resume();
          child.stderr!.resume();
        });
      }
      if (r.ended) {
        if (type === 'O') job.outEnded = true;
        else job.errEnded = true;
        finishIfComplete(w);
      }
    };
    child.stdout!.on('data', (c: Buffer) => relay('O', c));
    child.stderr!.on('data', (c: Buffer) => relay('E', c));
    child.on('message', (m: FromWorker) => {
      if (m.type === 'ready') {
        warmFailures = 0;
        try {
          w.facts = readProcFacts(child.pid!);
        } catch (e) {
          log(`worker ${child.pid}: cannot read its /proc entry (${(e as Error).message}); it serves no one`);
        }
        w.state = 'idle';
      } else if (m.type === 'done' && w.job) {
        w.job.code = m.code;
        w.served++;
        served++;
        if (m.tainted) log(`worker ${child.pid}: a command left ${m.tainted}; replacing the worker`);
        if (w.served >= o.maxRequests || m.heapUsed > o.maxHeapBytes || m.tainted) w.state = 'exiting';
        finishIfComplete(w);
      }
    });
    // 'close', not 'exit': after 'close' the worker's pipes hold no more output.
    child.on('close', (code, signal) => {
      workers.delete(w);
      if (w.job) {
        // The command ended its process (process.exit, a crash, a signal):
        // the client gets what it wrote and the status it died with.
        const job = w.job;
        w.job = undefined;
        for (const [type, s] of [
          ['O', job.out],
          ['E', job.err],
        ] as const) {
          const rest = s.flush();
          if (rest.length > 0 && !job.client.destroyed) job.client.write(frame(type, rest));
        }
        const status = code ?? 128 + (signal ? signalNumber(signal) : 0);
        if (!job.client.destroyed) job.client.end(frame('X', String(status)));
      }
      if (w.state === 'warming') {
        warmFailures++;
        log(`worker ${child.pid} failed while warming up (${code ?? signal}); see the lines above`);
      }
      if (!stopping) {
        // A worker that cannot even start would fail forever; clients then
        // fall back to the Node CLI, which shows them the real error.
        if (warmFailures < 3) spawnWorker();
        else log('not starting more workers after 3 failed warm-ups');
      } else if (workers.size === 0) {
        resolveDone();
      }
    });
  };

  const finishIfComplete = (w: Worker): void => {
    const job = w.job;
    if (!job || job.code === undefined || !job.outEnded || !job.errEnded) return;
    w.job = undefined;
    if (!job.client.destroyed) job.client.end(frame('X', String(job.code)));
    if (w.state === 'exiting' || stopping) {
      send(w, { type: 'exit' });
    } else {
      w.state = 'idle';
    }
    if (stopping && ![...workers].some((x) => x.state === 'busy')) shutdownIdle();
  };

  const send = (w: Worker, m: ToWorker): void => {
    if (w.child.connected) w.child.send(m);
  };

  const killJob = (w: Worker): void => {
    // The client is gone (Ctrl-C, a broken pipe): end the command the way a
    // terminal's Ctrl-C ends a process group, then replace the worker.
    w.state = 'exiting';
    try {
      process.kill(-w.child.pid!, 'SIGINT');
    } catch {
      /* already gone */
    }
    setTimeout(() => {
      try {
        process.kill(-w.child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 2000).unref();
  };

  const signalWorker = (w: Worker, name: string): void => {
    // The client was sent a signal: its worker gets it, and handles it as the Node CLI's process would
    // (builds stopped, their process groups ended, then exit 128 + the signal), while the client waits
    // for that status. The worker is replaced afterwards; one that hangs is killed.
    if (!FORWARDED_SIGNALS.has(name)) return;
    w.state = 'exiting';
    try {
      process.kill(w.child.pid!, name);
    } catch {
      /* already gone */
    }
    setTimeout(() => {
      try {
        process.kill(-w.child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 10_000).unref();
  };

  const dispatch = async (client: net.Socket, req: ClientRequest, signals: Signals): Promise<void> => {
    const pass = (why: string): void => {
      fallbacks++;
      client.end(frame('R', why));
    };
    if (stopping) return pass('the server is stopping');
    if (req.install !== install) {
      // Another installation's client (a shared CAIRN_SERVER_SOCKET, or a clash of socket names): same
      // build or not, its commands must run its own code, and a rebuild there is no reason to restart.
      return pass(`the server is the installation in ${install}, the client's is ${req.install || 'not named'}`);
    }
    if (req.build !== build) {
      // Cairn was rebuilt where this server was loaded from: make way for a
      // server of the new build.
      const onDisk = readBuildId();
      if (onDisk !== build) {
        log(`Cairn was rebuilt (build ${onDisk}): restarting`);
        restart = true;
        stop();
      }
      return pass(`the server runs Cairn build ${build}, the client is build ${req.build}`);
    }
    const word = commandWord(req.args);
    if (word !== undefined && !SERVED_COMMANDS.has(word)) return pass(`${word} runs in a process of its own`);
    const own = ownProcessReason(req.args);
    if (own) return pass(`${own}, so it runs in a process of its own`);
    // Node reads these once, at start-up: a worker started with others would behave differently.
    const fixed = Object.keys({ ...process.env, ...req.env }).filter(
      (k) => STARTUP_ENV.test(k) && (process.env[k] ?? '') !== (req.env[k] ?? ''),
    );
    if (fixed.length > 0)
      return pass(`the client's ${fixed.join(', ')} differ from the server's, and Node reads them at start-up`);
    // A worker chdirs there: a directory that is gone, or whose name is not UTF-8 (the request is
    // decoded as UTF-8), failed the command with an internal error. The Node CLI copes as it always does.
    if (!isDirectory(req.cwd))
      return pass(`the client's working directory ${JSON.stringify(req.cwd)} cannot be entered`);
    if (![...workers].some((x) => x.state === 'idle')) return pass('every worker is busy or warming up');
    // The client is blocked reading its answer, so its process (and pid) lives while this runs;
    // cairn-peer holds a pidfd of it and checks that it still lived after reading /proc.
    const facts = await peerFacts(PEER_HELPER, client);
    if (client.destroyed || client.readableEnded) return;
    // Node stops reading a socket handed to a child as stdio (cairn-peer's): read on, for the client's signals.
    client.resume();
    if (!facts) return pass("the server cannot read the client's process");
    const w = [...workers].find((x) => x.state === 'idle');
    if (!w) return pass('every worker is busy or warming up');
    const differs = w.facts ? sandboxDifference(facts, w.facts) : "the worker's process could not be read";
    if (differs) return pass(differs);
    const marker = Buffer.from(`\0cairn-end-${randomBytes(12).toString('hex')}\0`);
    w.state = 'busy';
    w.job = {
      client,
      out: new EndMarkerScanner(marker),
      err: new EndMarkerScanner(marker),
      outEnded: false,
      errEnded: false,
    };
    client.on('close', () => {
      if (w.job?.client === client) killJob(w);
    });
    send(w, { type: 'run', request: req, marker: marker.toString('latin1') });
    signals.forward = (name) => {
      if (w.job?.client === client) signalWorker(w, name);
    };
    for (const name of signals.pending.splice(0)) signals.forward(name);
  };

  const status = (): ServerStatus => ({
    pid: process.pid,
    uid: process.getuid!(),
    socket,
    install,
    build,
    startedAt: startedAt.toISOString(),
    served,
    fallbacks,
    workers: [...workers].map((w) => ({ pid: w.child.pid, state: w.state, served: w.served })),
  });

  const touch = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      if ([...workers].some((w) => w.state === 'busy')) return touch();
      log(`idle for ${Math.round(o.idleMs / 1000)} s: stopping`);
      stop();
    }, o.idleMs);
    idleTimer.unref();
  };

  const shutdownIdle = (): void => {
    for (const w of workers) if (w.state !== 'busy') send(w, { type: 'exit' });
    for (const w of workers) if (w.state === 'warming') w.child.kill('SIGKILL');
    if (workers.size === 0) resolveDone();
  };

  const requestTimeoutMs = o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const maxConnections = o.maxConnections ?? MAX_CONNECTIONS;
  let connections = 0;
  const server = net.createServer((client) => {
    touch();
    connections++;
    client.once('close', () => {
      connections--;
    });
    client.on('error', () => {
      /* the client went away; 'close' follows */
    });
    if (connections > maxConnections) {
      fallbacks++;
      client.end(frame('R', `the server has ${maxConnections} connections open`));
      return;
    }
    const reader = new FrameReader();
    const timer = setTimeout(() => {
      log(`dropped a client that sent no complete request within ${requestTimeoutMs} ms`);
      client.destroy();
    }, requestTimeoutMs);
    timer.unref();
    client.once('close', () => clearTimeout(timer));
    const signals: Signals = { pending: [], received: 0 };
    let requested = false;
    const onData = (chunk: Buffer): void => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (e) {
        client.destroy();
        log(`refused a client: ${(e as Error).message}`);
        return;
      }
      // After its request, a client sends only signals (S frames).
      for (const g of requested ? frames : frames.slice(1)) {
        if (g.type !== 'S') continue;
        if (++signals.received > 2) continue;
        const name = g.payload.toString('latin1');
        if (signals.forward) signals.forward(name);
        else signals.pending.push(name);
      }
      if (requested || frames.length === 0) return;
      requested = true;
      clearTimeout(timer);
      const f = frames[0]!;
      if (f.type === 'C') {
        const word = f.payload.toString();
        if (word === 'status') client.end(Buffer.concat([frame('O', JSON.stringify(status())), frame('X', '0')]));
        else if (word === 'stop') {
          client.end(frame('X', '0'));
          stop();
        } else client.end(Buffer.concat([frame('E', `cairn: unknown control word ${word}\n`), frame('X', '2')]));
        return;
      }
      if (f.type !== 'Q') return void client.destroy();
      let req: ClientRequest;
      try {
        req = parseRequest(f.payload);
      } catch (e) {
        client.end(
          Buffer.concat([frame('E', `cairn: error E_SERVER_PROTOCOL: ${(e as Error).message}\n`), frame('X', '2')]),
        );
        return;
      }
      void dispatch(client, req, signals);
    };
    client.on('data', onData);
  });

  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    clearTimeout(idleTimer);
    server.close();
    log('stopping');
    shutdownIdle();
  };

  socket = await listenPrivately(server, o.socket);
  log(
    `cairn server ${process.pid} listening on ${socket} (installation ${install}, build ${build}, ` +
      `${o.workers} workers)`,
  );
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  for (let i = 0; i < o.workers; i++) spawnWorker();
  touch();
  await done;
  log('stopped');
  return { restart };
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function signalNumber(sig: NodeJS.Signals): number {
  const n = (os.constants.signals as Record<string, number>)[sig];
  return n ?? 0;
}

/**
 * Listens on `socket` so that only this user can connect: the directory
 * must be this user's alone (socket-dir.ts; it is made 0700 if missing),
 * and the socket itself is 0600. A socket file left by a dead server is
 * replaced; a live one is an error. Returns the path it listens on (its directory resolved).
 */
async function listenPrivately(server: net.Server, socket: string): Promise<string> {
  const real = trustedSocketPath(socket, true)!;
  if (fs.existsSync(real)) {
    if (await answers(real)) {
      throw new CairnError('E_SERVER_RUNNING', `a cairn server already listens on ${socket}`, { socket });
    }
    fs.rmSync(real, { force: true });
  }
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(real, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(umask);
  }
  return real;
}

/** Whether something accepts connections on the socket. */
export function answers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}
