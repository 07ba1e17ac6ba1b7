/**
 * `cairn server start|stop|status`: the resident server that lets the
 * `cairn` client skip Node's start-up (see docs/server.md). The server
 * code itself is loaded only by these commands.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CliContext } from '../context.js';
import { CairnError } from '../../src/errors.js';
import { parseDuration } from '../../src/duration.js';
import { durationFlag } from '../library-errors.js';
import { installation } from '../serve/install.js';
import { frame, FrameReader, serverSocketPath } from '../serve/protocol.js';
import { trustedSocketPath } from '../serve/socket-dir.js';
import type { ServerStatus } from '../serve/supervisor.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'main.js');

/** Sends a control word; null when no server answers on the socket. */
export function control(socket: string, word: 'status' | 'stop'): Promise<{ code: number; out: string } | null> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    const reader = new FrameReader();
    let out = '';
    let answered = false;
    c.once('connect', () => c.write(frame('C', word)));
    c.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (f.type === 'O') out += f.payload.toString();
        if (f.type === 'X') {
          answered = true;
          c.destroy();
          resolve({ code: Number(f.payload.toString()), out });
        }
      }
    });
    c.once('error', () => {
      if (!answered) resolve(null);
    });
    c.once('close', () => {
      if (!answered) resolve(null);
    });
  });
}

/**
 * The server's status; null when none answers. Throws E_SERVER_SOCKET when
 * the socket's directory is not this user's alone (socket-dir.ts): what
 * answers there may be anyone's.
 */
export async function serverStatus(socket: string): Promise<ServerStatus | null> {
  const real = trustedSocketPath(socket, false);
  if (real === null) return null;
  const r = await control(real, 'status');
  return r ? (JSON.parse(r.out) as ServerStatus) : null;
}

/** This installation's socket (one server per user and installation). */
const ourSocket = (): string => serverSocketPath(installation().id);

/** Whether `s` runs this very installation (a shared CAIRN_SERVER_SOCKET may hold another's). */
const isOurs = (s: ServerStatus): boolean => s.install === installation().dir;

/** Whose server answered, for messages. */
const whose = (s: ServerStatus): string =>
  `pid ${s.pid}, uid ${s.uid ?? '?'}, installation ${s.install ?? '(not named: an older cairn)'}, build ${s.build}`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function positive(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new CairnError('E_USAGE', `${flag} needs a whole number >= 1, not ${JSON.stringify(v)}`);
  return n;
}

interface StartOpts {
  workers: number;
  idle: number;
  maxRequests: number;
  foreground?: boolean;
  wait?: boolean;
}

export function registerServer({ program }: CliContext): void {
  const server = program
    .command('server')
    .description('a resident server that runs cairn commands without starting Node each time (see docs/server.md)');

  server
    .command('start')
    .description('start the server in the background (if none runs), and wait until its workers are warm')
    .option(
      '--workers <n>',
      'warm worker processes, each running one command at a time',
      (v) => positive(v, '--workers'),
      Math.max(2, os.availableParallelism()),
    )
    .option('--idle <duration>', 'stop after this long without a command', durationFlag('--idle'), parseDuration('3h'))
    .option(
      '--max-requests <n>',
      'replace a worker after this many commands',
      (v) => positive(v, '--max-requests'),
      500,
    )
    .option('--foreground', 'run in this process, logging to stderr, until stopped')
    .option('--no-wait', 'return as soon as the server listens')
    .action(async (o: StartOpts) => {
      const socket = ourSocket();
      const args = [
        '--workers',
        String(o.workers),
        '--idle',
        `${Math.ceil(o.idle / 1000)}s`,
        '--max-requests',
        String(o.maxRequests),
      ];
      if (o.foreground) {
        const { runServer } = await import('../serve/supervisor.js');
        const { restart } = await runServer({
          socket,
          workers: o.workers,
          idleMs: o.idle,
          maxRequests: o.maxRequests,
          maxHeapBytes: 512 << 20,
        });
        // The successor loads the rebuilt code; it logs where this one did.
        if (restart)
          spawn(process.execPath, [MAIN, 'server', 'start', '--foreground', ...args], {
            detached: true,
            stdio: ['ignore', 'inherit', 'inherit'],
          }).unref();
        return;
      }
      const running = await serverStatus(socket);
      if (running && !isOurs(running)) {
        throw new CairnError(
          'E_SERVER_RUNNING',
          `the cairn server on ${socket} is another installation's ` +
            `(${whose(running)}); this one is ${installation().dir}: stop that server with its own cairn, ` +
            'or set another CAIRN_SERVER_SOCKET',
          { socket, install: running.install },
        );
      }
      if (running) {
        process.stdout.write(`cairn server already running: pid ${running.pid} on ${socket}\n`);
        return;
      }
      // Checked again by the server before it listens; the log is opened here first, by the resolved path.
      const logFile = `${trustedSocketPath(socket, true)!}.log`;
      const { O_WRONLY, O_CREAT, O_APPEND, O_NOFOLLOW } = fs.constants;
      const logFd = fs.openSync(logFile, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0o600);
      const child = spawn(process.execPath, [MAIN, 'server', 'start', '--foreground', ...args], {
        detached: true,
        stdio: ['ignore', logFd, logFd],
      });
      fs.closeSync(logFd);
      let exited = null as number | null; // set by the 'exit' listener, which TypeScript cannot see
      child.once('exit', (code) => {
        exited = code ?? 1;
      });
      child.unref();
      const deadline = Date.now() + 60_000;
      for (;;) {
        if (exited !== null)
          throw new CairnError(
            'E_SERVER_START',
            `the server exited (status ${exited}) before it was ready; see ${logFile}`,
            { log: logFile },
          );
        const found = await serverStatus(socket);
        // Another installation's server that won the race for a shared socket is not ours to wait for.
        const s = found && isOurs(found) ? found : null;
        const warm = s?.workers.filter((w) => w.state === 'idle').length ?? 0;
        if (s && (!o.wait || warm >= o.workers)) {
          process.stdout.write(
            `cairn server running: pid ${s.pid} on ${socket}, ${warm} of ${o.workers} workers warm (log: ${logFile})\n`,
          );
          return;
        }
        if (Date.now() > deadline)
          throw new CairnError('E_SERVER_START', `the server did not get ready within 60 s; see ${logFile}`, {
            log: logFile,
          });
        await sleep(50);
      }
    });

  server
    .command('stop')
    .description("stop this installation's server (commands it is running finish first)")
    .action(async () => {
      const socket = ourSocket();
      const s = await serverStatus(socket);
      if (s && !isOurs(s)) {
        process.stdout.write(
          `no cairn server of this installation on ${socket}; ` +
            `left running another installation's there (${whose(s)})\n`,
        );
        return;
      }
      if (!s || !(await control(trustedSocketPath(socket, false)!, 'stop'))) {
        process.stdout.write(`no cairn server on ${socket}\n`);
        return;
      }
      // Stopped means gone: running commands finish first.
      const alive = (): boolean => {
        try {
          process.kill(s.pid, 0);
          return true;
        } catch {
          return false;
        }
      };
      while (alive()) await sleep(50);
      process.stdout.write('cairn server stopped\n');
    });

  server
    .command('status')
    .description(
      "show whose server answered (this installation's or another's), its workers and what it has " +
        "served; exits 1 unless this installation's server runs",
    )
    .option('--json', 'print the status as JSON (null when no server answers; thisInstallation tells whose it is)')
    .action(async (o: { json?: boolean }) => {
      const socket = ourSocket();
      const s = await serverStatus(socket);
      if (!s) {
        process.stdout.write(o.json ? 'null\n' : `no cairn server on ${socket}\n`);
        process.exitCode = 1;
        return;
      }
      const ours = isOurs(s);
      if (!ours) process.exitCode = 1;
      if (o.json) {
        process.stdout.write(JSON.stringify({ ...s, thisInstallation: ours }, null, 2) + '\n');
        return;
      }
      if (!ours) {
        process.stdout.write(
          `no cairn server of this installation (${installation().dir}); ` +
            `the one on ${socket} is another installation's, and serves none of this one's commands:\n`,
        );
      }
      process.stdout.write(`cairn server pid ${s.pid} (uid ${s.uid ?? '?'}) on ${s.socket}, since ${s.startedAt}\n`);
      process.stdout.write(`installation ${s.install ?? '(not named: an older cairn)'}, build ${s.build}\n`);
      process.stdout.write(`served ${s.served} command(s); ${s.fallbacks} left to the client\n`);
      for (const w of s.workers) process.stdout.write(`  worker ${w.pid}: ${w.state}, ${w.served} served\n`);
    });
}
