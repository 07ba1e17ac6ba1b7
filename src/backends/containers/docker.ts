/**
 * The one place Cairn runs the `docker` CLI. Every call goes to the engine
 * named by CAIRN_DOCKER_HOST, else DOCKER_HOST, else
 * unix:///run/cairn-docker.sock (the engine scripts/dockerd.sh starts), so
 * Cairn never silently talks to some other engine on the machine.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { CairnError } from '../../errors.js';

export const DEFAULT_DOCKER_HOST = 'unix:///run/cairn-docker.sock';

export function dockerHost(env: NodeJS.ProcessEnv = process.env): string {
  return env.CAIRN_DOCKER_HOST || env.DOCKER_HOST || DEFAULT_DOCKER_HOST;
}

export interface DockerResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface DockerOptions {
  /** Written to docker's stdin. */
  input?: string | Uint8Array;
  /** Reject with E_DOCKER on a non-zero exit (default true). */
  check?: boolean;
  /** Kill docker and reject with `timeoutCode` after this long. */
  timeoutMs?: number;
  timeoutCode?: 'E_DOCKER' | 'E_MACHINE_TIMEOUT';
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Called with every chunk of output (build logs). */
  onOutput?: (chunk: string) => void;
  /** Aborting sends the client SIGINT (a `docker build` then cancels the build in the engine). */
  signal?: AbortSignal;
}

/**
 * Runs `docker -H HOST ARGS`. The client on PATH may be newer than the
 * engine (a 28.x client, a 20.10 engine): the client negotiates the API
 * version down by itself, so DOCKER_API_VERSION is passed through only
 * when the caller set it.
 */
export function docker(args: readonly string[], opts: DockerOptions = {}): Promise<DockerResult> {
  const host = dockerHost();
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['-H', host, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let done = false;
    const onAbort = (): void => void child.kill('SIGINT');
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.once('close', () => opts.signal?.removeEventListener('abort', onAbort));
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            if (done) return;
            done = true;
            child.kill('SIGKILL');
            reject(
              new CairnError(
                opts.timeoutCode ?? 'E_DOCKER',
                `docker ${args.slice(0, 3).join(' ')} timed out after ${opts.timeoutMs} ms`,
                { args },
              ),
            );
          }, opts.timeoutMs);
    child.stdout!.on('data', (b: Buffer) => {
      out.push(b);
      opts.onOutput?.(b.toString());
    });
    child.stderr!.on('data', (b: Buffer) => {
      err.push(b);
      opts.onOutput?.(b.toString());
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      if (done) return;
      done = true;
      reject(
        new CairnError(
          'E_DOCKER',
          `cannot run the docker client: ${e.message} (apt-get install docker.io)`,
          {},
          { cause: e },
        ),
      );
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (done) return;
      done = true;
      const r = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        exitCode: code ?? 128 + (signal ? 9 : 0),
      };
      if (r.exitCode !== 0 && opts.check !== false) {
        reject(
          new CairnError(
            'E_DOCKER',
            `docker ${args.slice(0, 3).join(' ')} failed (exit ${r.exitCode}): ${lastLines(r.stderr || r.stdout)}`,
            { args, exitCode: r.exitCode, stderr: r.stderr },
          ),
        );
      } else {
        resolve(r);
      }
    });
    if (child.stdin) {
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input);
    }
  });
}

/**
 * Starts `docker -H HOST ARGS` and hands back the process, for streams that
 * `docker()` would buffer: followed logs, interactive exec and run.
 */
export function dockerProcess(args: readonly string[], stdio: StdioOptions): ChildProcess {
  return spawn('docker', ['-H', dockerHost(), ...args], { stdio });
}

const lastLines = (s: string): string => s.trim().split('\n').slice(-3).join(' | ');

let reachable: Promise<string> | null = null;

/** Checks once per process that the engine answers; E_DOCKER with what to do otherwise. Returns the server version. */
export function requireDocker(): Promise<string> {
  reachable ??= docker(['version', '--format', '{{.Server.Version}}'], { timeoutMs: 20_000 }).then(
    (r) => r.stdout.trim(),
    (e: unknown) => {
      reachable = null;
      throw new CairnError(
        'E_DOCKER',
        `no Docker engine answers on ${dockerHost()} (start one with ` +
          `scripts/dockerd.sh, or set CAIRN_DOCKER_HOST): ${(e as Error).message}`,
        { host: dockerHost() },
        { cause: e },
      );
    },
  );
  return reachable;
}

/** Whether an image (tag or id) exists in the engine. */
export async function imageExists(ref: string): Promise<boolean> {
  const r = await docker(['image', 'inspect', '--format', '{{.Id}}', ref], { check: false });
  return r.exitCode === 0;
}

/** Parses `docker inspect` JSON output (an array) into its first element. */
export function inspectOne<T>(stdout: string): T | undefined {
  const arr = JSON.parse(stdout) as T[];
  return arr[0];
}
