/**
 * Whether a worker may run a client's command: only if the worker's
 * process lives in the same sandbox as the client's. A worker was started
 * by the server, so it has the server's namespaces, root, credentials,
 * limits and cgroup, not the client's; a command run under `unshare --net`
 * or with a lower file limit would otherwise escape them. Environment, cwd
 * and umask travel with the request; all else must already be equal.
 *
 * Facts are the raw texts under /proc/PID (keys as in dist/bin/cairn-peer,
 * cli/client/peer.c, which reads a client's). The comparison is pure.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import type * as net from 'node:net';
import * as path from 'node:path';

export type ProcFacts = ReadonlyMap<string, string>;

/** Lines of /proc/PID/status that a forked worker does not take from the client. */
const STATUS_LINES = [
  'Uid',
  'Gid',
  'Groups',
  'NoNewPrivs',
  'Seccomp',
  'Seccomp_filters',
  'CapInh',
  'CapPrm',
  'CapEff',
  'CapBnd',
  'CapAmb',
  'Cpus_allowed_list',
  'Mems_allowed_list',
];

function statusLine(status: string | undefined, name: string): string | undefined {
  const line = status?.split('\n').find((l) => l.startsWith(`${name}:`));
  return line
    ?.slice(name.length + 1)
    .trim()
    .replace(/\s+/g, ' ');
}

/**
 * /proc/PID/limits as limit name -> "soft hard". Node raises its soft
 * limit of open files to the hard one when it starts, so the Node CLI the
 * client would run has soft = hard too: only the hard limit counts there.
 */
function limits(text: string | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of (text ?? '').split('\n').slice(1)) {
    const cols = /^(.*?)\s{2,}(\S+)\s+(\S+)/.exec(line);
    if (!cols) continue;
    const [, name, soft, hard] = cols as unknown as [string, string, string, string];
    m.set(name, name === 'Max open files' ? hard : `${soft} ${hard}`);
  }
  return m;
}

/** The nice value, field 19 of /proc/PID/stat (counted after the command name, which may hold anything). */
function nice(stat: string | undefined): string | undefined {
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[16];
}

/** Why a worker with `worker`'s facts must not run the command of a client with `client`'s; undefined if it may. */
export function sandboxDifference(client: ProcFacts, worker: ProcFacts): string | undefined {
  const keys = new Set([...client.keys(), ...worker.keys()]);
  for (const k of [...keys].filter((x) => x.startsWith('ns/')).sort()) {
    if (client.get(k) !== worker.get(k)) return `the client's ${k.slice(3)} namespace differs from the server's`;
  }
  if (!client.has('status') || !worker.has('status')) return "the client's process could not be read";
  if (client.get('root') !== worker.get('root')) {
    return "the client's root directory (chroot) differs from the server's";
  }
  for (const name of STATUS_LINES) {
    const [c, w] = [statusLine(client.get('status'), name), statusLine(worker.get('status'), name)];
    if (c !== w) return `the client's ${name} (${c ?? 'unknown'}) differs from the server's (${w ?? 'unknown'})`;
  }
  const [cl, wl] = [limits(client.get('limits')), limits(worker.get('limits'))];
  for (const name of new Set([...cl.keys(), ...wl.keys()])) {
    const [c, w] = [cl.get(name) ?? 'unknown', wl.get(name) ?? 'unknown'];
    if (c !== w) return `the client's limit "${name}" (${c}) differs from the server's (${w})`;
  }
  if (client.get('cgroup') !== worker.get('cgroup')) return "the client's cgroup differs from the server's";
  if (nice(client.get('stat')) !== nice(worker.get('stat'))) return "the client's nice value differs from the server's";
  if (client.get('attr/current') !== worker.get('attr/current')) {
    return "the client's security label (attr/current) differs from the server's";
  }
  return undefined;
}

/** Parses cairn-peer's output: NUL-terminated keys and values. */
export function parseFacts(out: Buffer): ProcFacts {
  const parts = out.toString('utf8').split('\0');
  const m = new Map<string, string>();
  for (let i = 0; i + 1 < parts.length; i += 2) m.set(parts[i]!, parts[i + 1]!);
  return m;
}

/**
 * The same facts for a process of the server's own (a worker: its child,
 * so its pid cannot be reused while the server has not reaped it).
 */
export function readProcFacts(pid: number): ProcFacts {
  const dir = `/proc/${pid}`;
  const m = new Map<string, string>();
  const tryRead = (key: string, read: () => string): void => {
    try {
      m.set(key, read());
    } catch {
      /* left out: counts as a difference */
    }
  };
  for (const ns of fs.readdirSync(path.join(dir, 'ns'))) {
    tryRead(`ns/${ns}`, () => fs.readlinkSync(path.join(dir, 'ns', ns)));
  }
  tryRead('root', () => fs.readlinkSync(path.join(dir, 'root')));
  for (const f of ['status', 'limits', 'cgroup', 'stat', 'attr/current']) {
    tryRead(f, () => fs.readFileSync(path.join(dir, f), 'utf8'));
  }
  return m;
}

/**
 * The facts of the process at the other end of `client` (by cairn-peer,
 * given the connection as fd 3); null if they cannot be read.
 */
export function peerFacts(helper: string, client: net.Socket): Promise<ProcFacts | null> {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(helper, [], { stdio: ['ignore', 'pipe', 'ignore', client] });
    } catch {
      return resolve(null);
    }
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => chunks.push(c));
    child.once('error', () => resolve(null));
    child.once('close', (code) => resolve(code === 0 ? parseFacts(Buffer.concat(chunks)) : null));
  });
}
