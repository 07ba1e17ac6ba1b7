/**
 * `cairn services logs`: the merged output of an ensemble's containers,
 * each line prefixed with its service. Without follow, the histories are
 * merged by the engine's timestamps; with follow, lines are printed as
 * they come, and a follower whose container stops waits for it to run
 * again (a restart by the engine's policy, a `start`, or a new container)
 * and goes on from the last line it printed.
 */
import { CairnError } from '../errors.js';
import { docker, dockerProcess } from '../backends/containers/docker.js';
import { inspectContainer } from './engine.js';
import { dependencyOrder } from './graph.js';
import { LineSplitter, mergeByTime, prefixer, splitTimestamp, timestampKey, type TimedLine } from './log-lines.js';
import { pause } from './pause.js';
import type { Runner } from './runner.js';

export interface LogsOptions {
  /** Services to show (default: all, in dependency order). */
  services?: readonly string[];
  follow?: boolean;
  /** Lines of each service's history to show (default: all). */
  tail?: number;
  /** Only lines since this time (see isSinceValue). */
  since?: string;
  /** Keep the engine's timestamps on the lines. */
  timestamps?: boolean;
  colour: boolean;
  /** Gets whole lines (with their newline), one call per line, so lines never interleave. */
  write: (line: string) => void;
  /** Ends a follow. */
  signal?: AbortSignal;
}

/** How often a follower whose container is stopped or absent looks again. */
const POLL_MS = 500;

/** The selected services, checked against the ensemble, in dependency order. */
export function selectServices(runner: Runner, names: readonly string[] | undefined): string[] {
  const all = dependencyOrder(runner.byName);
  for (const n of names ?? [])
    if (!runner.byName.has(n))
      throw new CairnError('E_SERVICE_INVALID', `no service ${n} in ensemble ${runner.e.name}`, { service: n });
  return names && names.length > 0 ? all.filter((n) => names.includes(n)) : all;
}

export async function ensembleLogs(runner: Runner, o: LogsOptions): Promise<void> {
  const names = selectServices(runner, o.services);
  await runner.claim();
  const prefix = prefixer(names, o.colour);
  const line = (service: string, ts: string, text: string): string =>
    `${prefix(service)}${o.timestamps && ts ? `${ts} ` : ''}${text}\n`;
  if (!o.follow) {
    const all: TimedLine[] = [];
    for (const name of names) {
      const args = ['logs', '--timestamps', ...historyArgs(o), runner.cname(name)];
      const r = await docker(args, { check: false });
      if (r.exitCode !== 0) {
        if (/no such container/i.test(r.stderr)) continue;
        throw new CairnError('E_DOCKER', `docker logs of ${name} failed: ${r.stderr.trim()}`, { service: name });
      }
      for (const out of [r.stdout, r.stderr]) {
        for (const raw of out.split('\n')) {
          if (raw === '') continue;
          const { ts, text } = splitTimestamp(raw.endsWith('\r') ? raw.slice(0, -1) : raw);
          all.push({ key: timestampKey(ts), service: name, text: line(name, ts, text) });
        }
      }
    }
    for (const l of mergeByTime(all)) o.write(l.text);
    return;
  }
  await Promise.all(names.map((name) => follow(runner, name, o, line)));
}

function historyArgs(o: Pick<LogsOptions, 'tail' | 'since'>): string[] {
  return [...(o.tail !== undefined ? ['--tail', String(o.tail)] : []), ...(o.since ? ['--since', o.since] : [])];
}

async function follow(
  runner: Runner,
  name: string,
  o: LogsOptions,
  line: (service: string, ts: string, text: string) => string,
): Promise<void> {
  const cname = runner.cname(name);
  let attachedTo: string | undefined;
  let lastTs = '';
  let lastKey = '';
  while (!o.signal?.aborted) {
    const info = await inspectContainer(cname);
    if (!info || (info.id === attachedTo && !info.running)) {
      await pause(POLL_MS, o.signal);
      continue;
    }
    const again = info.id === attachedTo;
    // First attach: the user's --tail/--since. The same container again (it was restarted): from the
    // last line printed. A new container (recreated): its whole output.
    const from = attachedTo === undefined ? historyArgs(o) : again && lastTs ? ['--since', lastTs] : [];
    if (!again) lastKey = '';
    attachedTo = info.id;
    await stream(['logs', '--follow', '--timestamps', ...from, cname], o.signal, (raw) => {
      const { ts, text } = splitTimestamp(raw);
      const key = timestampKey(ts);
      // --since is inclusive: the line printed last comes again.
      if (again && key !== '' && key <= lastKey) return;
      if (key !== '') [lastKey, lastTs] = [key, ts];
      o.write(line(name, ts, text));
    });
  }
}

/** Runs `docker ARGS`, handing each whole line of its stdout and stderr to onLine, until it ends or signal. */
function stream(args: string[], signal: AbortSignal | undefined, onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = dockerProcess(args, ['ignore', 'pipe', 'pipe']);
    const splitters = [new LineSplitter(), new LineSplitter()];
    child.stdout!.on('data', (b: Buffer) => splitters[0]!.push(b).forEach(onLine));
    child.stderr!.on('data', (b: Buffer) => splitters[1]!.push(b).forEach(onLine));
    const stop = (): void => void child.kill('SIGTERM');
    signal?.addEventListener('abort', stop, { once: true });
    if (signal?.aborted) stop();
    child.on('error', (e) => {
      signal?.removeEventListener('abort', stop);
      reject(new CairnError('E_DOCKER', `cannot run the docker client: ${e.message}`, {}, { cause: e }));
    });
    child.on('close', () => {
      signal?.removeEventListener('abort', stop);
      for (const s of splitters) s.end().forEach(onLine);
      resolve();
    });
  });
}
