/** Starting `cairn ui` as a user does (the built CLI, a child process) for the web view's tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as http from 'node:http';
import { cairnBin, repoRoot } from './helpers.js';

export interface RunningUi {
  url: string;
  port: number;
  child: ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
}

/** Runs `cairn --store STORE ui ARGS --port 0` and waits for the URL it prints. */
export function startUi(
  store: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunningUi> {
  const child = spawn(process.execPath, [cairnBin, '--store', store, 'ui', '--port', '0', ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`cairn ui printed no URL within 60 s; stderr: ${err}`));
    }, 60_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^(http:\/\/\S+:(\d+)\/)\n/m.exec(out);
      if (!m) return;
      clearTimeout(timer);
      resolve({ url: m[1]!, port: Number(m[2]), child, stderr: () => err, stop });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cairn ui exited with ${code} before printing its URL; stderr: ${err}`));
    });
  });
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request with the path and Host header exactly as given (no URL normalisation, unlike fetch). */
export function rawRequest(
  port: number,
  reqPath: string,
  opts: { method?: string; host?: string } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: reqPath,
        method: opts.method ?? 'GET',
        headers: { host: opts.host ?? `127.0.0.1:${port}` },
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}
