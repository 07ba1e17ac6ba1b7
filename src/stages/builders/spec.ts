/**
 * Builder specs (`cairn realize --builders SPEC`, the store configuration's
 * `builders`), parsed without I/O:
 *
 *   local                                   this process (the default, and the fallback)
 *   ssh://[user@]host[:port][/STORE][?maxJobs=N]   `cairn build-drv` on that host over ssh
 *   slurm[:PARTITION][?maxJobs=N]           one Slurm job per ready derivation
 *
 * An ssh builder's STORE is the store on that host (default
 * `.cache/cairn-builder`, relative to the login directory); maxJobs is how
 * many builds it runs at once (default 1, as Nix's remote builders).
 */
import { CairnError } from '../../errors.js';

export interface LocalSpec {
  kind: 'local';
  name: 'local';
}

export interface SshSpec {
  kind: 'ssh';
  /** As the user wrote it, minus nothing secret (ssh URLs carry no password here). */
  name: string;
  user?: string;
  host: string;
  port?: number;
  /** The store directory on the host. */
  store: string;
  maxJobs: number;
}

export interface SlurmSpec {
  kind: 'slurm';
  name: string;
  partition?: string;
  maxJobs: number;
}

export type BuilderSpec = LocalSpec | SshSpec | SlurmSpec;

export const DEFAULT_REMOTE_STORE = '.cache/cairn-builder';
/** Jobs a Slurm builder keeps submitted at once unless told: the cluster queues the rest. */
export const DEFAULT_SLURM_JOBS = 16;

const USER = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const HOST = /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const PARTITION = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

const bad = (spec: string, why: string): CairnError =>
  new CairnError(
    'E_BAD_BUILDER',
    `${JSON.stringify(spec)} is not a builder (local, ssh://[user@]host[:port][/STORE][?maxJobs=N] ` +
      `or slurm[:PARTITION][?maxJobs=N]): ${why}`,
    { spec },
  );

function parseQuery(spec: string, query: string | undefined, dflt: number): number {
  let maxJobs = dflt;
  if (query === undefined) return maxJobs;
  for (const part of query.split('&')) {
    const [k, v] = part.split('=', 2) as [string, string | undefined];
    if (k !== 'maxJobs') throw bad(spec, `unknown option ${JSON.stringify(k)} (only maxJobs)`);
    const n = Number(v);
    if (v === undefined || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > 4096)
      throw bad(spec, `maxJobs must be a whole number from 1 to 4096, not ${JSON.stringify(v ?? '')}`);
    maxJobs = n;
  }
  return maxJobs;
}

export function parseBuilderSpec(spec: string): BuilderSpec {
  if (spec === 'local') return { kind: 'local', name: 'local' };
  const [head, query, extra] = spec.split('?') as [string, string | undefined, string | undefined];
  if (extra !== undefined) throw bad(spec, 'more than one "?"');
  if (head === 'slurm' || head.startsWith('slurm:')) {
    const partition = head === 'slurm' ? undefined : head.slice('slurm:'.length);
    if (partition !== undefined && !PARTITION.test(partition))
      throw bad(spec, `bad partition name ${JSON.stringify(partition)}`);
    const maxJobs = parseQuery(spec, query, DEFAULT_SLURM_JOBS);
    return { kind: 'slurm', name: head, ...(partition !== undefined ? { partition } : {}), maxJobs };
  }
  if (!head.startsWith('ssh://')) throw bad(spec, 'unknown kind');
  const rest = head.slice('ssh://'.length);
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  const store = slash < 0 ? DEFAULT_REMOTE_STORE : rest.slice(slash);
  const m = /^(?:([^@]*)@)?([^:@]*)(?::(\d+))?$/.exec(authority);
  if (!m) throw bad(spec, 'expected [user@]host[:port]');
  const [, user, host, port] = m as unknown as [string, string | undefined, string, string | undefined];
  // A user or host starting with "-" would be read by ssh as an option.
  if (user !== undefined && !USER.test(user)) throw bad(spec, `bad user name ${JSON.stringify(user)}`);
  if (!HOST.test(host)) throw bad(spec, host === '' ? 'the host is empty' : `bad host name ${JSON.stringify(host)}`);
  const portNum = port === undefined ? undefined : Number(port);
  if (portNum !== undefined && (portNum < 1 || portNum > 65535)) throw bad(spec, `bad port ${port}`);
  if (store === '/' || /[\n\0]/.test(store)) throw bad(spec, 'bad store path');
  const maxJobs = parseQuery(spec, query, 1);
  return {
    kind: 'ssh',
    name: head,
    ...(user !== undefined ? { user } : {}),
    host,
    ...(portNum !== undefined ? { port: portNum } : {}),
    store,
    maxJobs,
  };
}

/** Parses every spec; the same builder twice is one builder. */
export function parseBuilderSpecs(specs: readonly string[]): BuilderSpec[] {
  const seen = new Map<string, BuilderSpec>();
  for (const s of specs) {
    const b = parseBuilderSpec(s);
    if (!seen.has(b.name)) seen.set(b.name, b);
  }
  return [...seen.values()];
}
