/**
 * `cairn sync push|pull`: moves closures between stores on different hosts
 * with rsync over ssh. The pure planning lives in sync-plan.ts and the
 * verified intake in receive.ts; this module runs the processes.
 *
 * One sync, either direction:
 *  1. the sender lists the closure (realizations, their contexts,
 *     transitively, and their derivations);
 *  2. the receiver says which of them it has: one round trip for the whole
 *     list (push: `cairn store have` over ssh; pull: a local index query);
 *  3. rsync copies what is missing into ROOT/incoming/<key>/ on the
 *     receiver's filesystem, with --inplace, where <key> is derived from the
 *     source and the roots, so a re-run after an interruption finds the
 *     bytes the first run left;
 *  4. the receiver re-hashes everything and renames it into place
 *     (receive.ts; push: `cairn store receive` over ssh).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError, ErrorCodes, type ErrorCode } from '../errors.js';
import { removeTree } from './fsutil.js';
import { codePath, readCodePointer } from './code-files.js';
import { PRIVATE_DIR_MODE } from './permissions.js';
import { parseRef, parseRRef, type DRef, type RRef } from './refs.js';
import { receiveClosure, type ReceiveReport } from './receive.js';
import { listRoots } from './roots.js';
import type { LocalStore } from './store.js';
import { storeIndex } from './internals.js';
import { oneSyncPerKey } from './sync-serial.js';
import {
  closureOf,
  manifestPaths,
  parseManifest,
  parseRemote,
  planTransfer,
  shellQuote,
  splitCommand,
  syncKey,
  type ClosureManifest,
  type ClosureNode,
  type RemoteSpec,
} from './sync-plan.js';

export interface SyncOptions {
  /** The ssh command, as for rsync's -e (default `ssh`). */
  ssh?: string;
  /** The cairn command on the remote host, a shell command line (default `cairn`). */
  remoteCairn?: string;
  /** Plan and report only: nothing is written on either side. */
  dryRun?: boolean;
  /** Passed to rsync as --bwlimit (KiB/s). */
  bwlimit?: number;
  /** The local rsync binary (default `rsync`). */
  rsync?: string;
}

export interface TransferStats {
  /** Regular files rsync transferred. */
  files: number;
  /** Bytes of file data rsync sent as such (not matched from a partial copy). */
  literalBytes: number;
  /** Bytes of file data of the transferred files. */
  fileBytes: number;
}

export interface SyncReport {
  direction: 'push' | 'pull';
  dryRun: boolean;
  /** Realizations in the closure. */
  closure: number;
  /** Realizations of the closure the receiver already had. */
  present: number;
  /** What was (or, with dryRun, would be) sent. */
  plan: ClosureManifest;
  /** rsync's figures; null when nothing was transferred. */
  transfer: TransferStats | null;
  /** The receiver's report; null when nothing was received. */
  received: ReceiveReport | null;
}

/** A listing of a closure, as `cairn store closure --json` prints it. */
export interface ClosureListing {
  root: string;
  roots: RRef[];
  nodes: ClosureNode[];
  /** The code object of each derivation of the closure that has one (absent from older Cairns). */
  code?: Record<DRef, string>;
}

/** Incoming directories untouched for this long belong to abandoned syncs and are deleted. */
const STALE_INCOMING_MS = 7 * 24 * 3600 * 1000;

// ---------------------------------------------------------------------------
// The store side (local, or run remotely through the plumbing commands).

/** The RRefs `refs` name, or when none is given, every root's. */
export function resolveRoots(store: LocalStore, refs: readonly string[]): RRef[] {
  if (refs.length > 0) return [...new Set(refs.flatMap((r) => store.resolve(r)))];
  return [...new Set(listRoots(store).roots.flatMap((r) => r.rrefs))].filter((r) => store.has(r));
}

export function listClosure(store: LocalStore, refs: readonly string[]): ClosureListing {
  const roots = resolveRoots(store, refs);
  const nodes = closureOf(roots, (r) => storeIndex(store).depsOf(r));
  const code: Record<DRef, string> = {};
  for (const d of drefsOf(nodes)) {
    const c = codeOf(store, d);
    if (c !== undefined) code[d] = c;
  }
  return { root: store.root, roots, nodes, ...(Object.keys(code).length > 0 ? { code } : {}) };
}

/** The code object a derivation of `store` points to, if the store has both. */
export function codeOf(store: LocalStore, dref: DRef): string | undefined {
  const c = readCodePointer(store.drvDir(dref));
  return c !== undefined && fs.existsSync(codePath(store.root, c)) ? c : undefined;
}

/** Which of `refs` (RRefs and DRefs) the store has. */
export function haveRefs(store: LocalStore, refs: readonly string[]): string[] {
  return refs.filter((ref) => {
    const p = parseRef(ref);
    return p.kind === 'rz' ? store.has(p.rref) : storeIndex(store).hasDrv(p.dref);
  });
}

export const incomingRoot = (store: LocalStore): string => path.join(store.root, 'incoming');

/** The staging directory of sync `key` (created if needed); abandoned ones are swept. */
export function prepareIncoming(store: LocalStore, key: string): string {
  if (!/^[0-9a-z]{32}$/.test(key))
    throw new CairnError('E_BAD_SYNC_KEY', `${JSON.stringify(key)} is not a sync key`, { key });
  const root = incomingRoot(store);
  // Private: what rsync stages here is unchecked, with whatever modes the sender gave it.
  fs.mkdirSync(root, { recursive: true, mode: PRIVATE_DIR_MODE });
  const now = Date.now();
  for (const name of fs.readdirSync(root)) {
    if (name === key) continue;
    try {
      if (now - fs.statSync(path.join(root, name)).mtimeMs > STALE_INCOMING_MS) removeTree(path.join(root, name));
    } catch {
      /* another process removed it */
    }
  }
  const dir = path.join(root, key);
  fs.mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  return dir;
}

/**
 * Receives into the store from its staging directory for `key`; removes
 * the directory when done, and also when content was refused (so a re-run
 * fetches clean bytes). It is kept for a re-run only when a dependency was
 * missing (another process's gc may have raced the sync).
 */
export async function receiveIncoming(
  store: LocalStore,
  key: string,
  manifest: ClosureManifest,
): Promise<ReceiveReport> {
  const dir = path.join(incomingRoot(store), key);
  if (!/^[0-9a-z]{32}$/.test(key) || !fs.existsSync(dir)) {
    if (manifest.rrefs.length === 0 && manifest.drvs.length === 0)
      return { received: [], present: [], drvs: [], refused: [] };
    throw new CairnError('E_SYNC_FAILED', `there is no staging directory for sync ${key} in ${store.root}`, { key });
  }
  try {
    const r = await receiveClosure(store, dir, manifest);
    removeTree(dir);
    return r;
  } catch (e) {
    if (e instanceof CairnError && e.code === 'E_SYNC_HASH_MISMATCH') removeTree(dir);
    throw e;
  }
}

// ---------------------------------------------------------------------------
// Processes.

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: readonly string[], input?: string | Buffer): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        new CairnError(
          'E_SYNC_FAILED',
          e.code === 'ENOENT' ? `${cmd} is not installed (or not on PATH)` : `cannot run ${cmd}: ${e.message}`,
          { cmd },
          { cause: e },
        ),
      );
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // The other side may exit before reading all of its input (an error).
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

const tail = (s: string): string => s.trim().split('\n').slice(-5).join('\n');

/**
 * Runs `cairn ARGS` on the remote host through ssh. A Cairn error there
 * comes back as the same error code here.
 */
export async function remoteCairn(
  remote: RemoteSpec,
  opts: SyncOptions,
  args: readonly string[],
  input?: string | Buffer,
): Promise<string> {
  const ssh = splitCommand(opts.ssh ?? 'ssh');
  const command = [opts.remoteCairn ?? 'cairn', '--store', shellQuote(remote.store), ...args.map(shellQuote)].join(' ');
  const r = await run(ssh[0]!, [...ssh.slice(1), '--', remote.sshTarget, command], input);
  if (r.code === 0) return r.stdout;
  const m = /cairn: error (E_[A-Z_]+): (.*)/s.exec(r.stderr);
  if (m && m[1]! in ErrorCodes) {
    throw new CairnError(m[1] as ErrorCode, `on ${remote.sshTarget}: ${m[2]!.trim()}`, { remote: remote.sshTarget });
  }
  const why =
    r.code === 255
      ? `ssh to ${remote.sshTarget} failed`
      : r.code === 127
        ? `the remote cairn command (${opts.remoteCairn ?? 'cairn'}) was not found on ${remote.sshTarget}`
        : `the remote cairn on ${remote.sshTarget} failed (exit ${r.code})`;
  // notFound: the CLI points at its --remote-cairn flag; the library names no flags.
  const notFound = r.code === 127 ? { notFound: opts.remoteCairn ?? 'cairn' } : {};
  throw new CairnError('E_SYNC_FAILED', `${why}: ${tail(r.stderr) || 'no output'}`, {
    remote: remote.sshTarget,
    exit: r.code,
    ...notFound,
  });
}

export function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new CairnError('E_SYNC_FAILED', `${what} did not print JSON: ${tail(text) || 'no output'}`);
  }
}

/** rsync's --stats lines, e.g. `Literal data: 1,234 bytes`. */
function statsField(out: string, label: string): number {
  const m = new RegExp(`^${label}: ([\\d,.]+)`, 'm').exec(out);
  return m ? Number(m[1]!.replace(/[,.]/g, '')) : 0;
}

/**
 * Copies the paths of `manifest` from `src` to `dst` (one of them remote,
 * `host:path`), as a list given on stdin. --inplace writes each file at
 * its final name in the staging directory: a run killed with SIGKILL
 * (which no temporary-file cleanup survives) leaves a prefix there that the
 * next run takes as its basis and completes, and never a stray temporary
 * file inside an output that would spoil its tree hash. A cut-short file
 * has another size or time than the source, so the next run never skips
 * it, and receive re-hashes everything in any case. --chmod=u+w keeps the
 * staging copy writable; receive seals it again while it hashes it.
 */
async function rsyncPaths(
  opts: SyncOptions,
  manifest: ClosureManifest,
  src: string,
  dst: string,
): Promise<TransferStats> {
  const args = ['-rlpt', '--chmod=u+w', '--inplace', '--stats', '--files-from=-', '-e', opts.ssh ?? 'ssh'];
  if (opts.bwlimit !== undefined) args.push(`--bwlimit=${opts.bwlimit}`);
  args.push(`${src}/`, `${dst}/`);
  const r = await run(opts.rsync ?? 'rsync', args, manifestPaths(manifest).join('\n') + '\n');
  if (r.code !== 0)
    throw new CairnError('E_SYNC_FAILED', `rsync failed (exit ${r.code}): ${tail(r.stderr) || 'no output'}`, {
      exit: r.code,
    });
  return {
    files: statsField(r.stdout, 'Number of regular files transferred'),
    literalBytes: statsField(r.stdout, 'Literal data'),
    fileBytes: statsField(r.stdout, 'Total transferred file size'),
  };
}

const drefsOf = (nodes: readonly ClosureNode[]): DRef[] => [...new Set(nodes.map((n) => parseRRef(n.rref).dref))];
const nothingToSend = (m: ClosureManifest): boolean => m.rrefs.length === 0 && m.drvs.length === 0;

// ---------------------------------------------------------------------------
// push and pull.

/** Sends the closure of `refs` (all roots when empty) to the remote store. */
export async function push(
  store: LocalStore,
  remoteSpec: string,
  refs: readonly string[],
  opts: SyncOptions = {},
): Promise<SyncReport> {
  const remote = parseRemote(remoteSpec);
  const { roots, nodes } = listClosure(store, refs);
  const key = syncKey({
    op: 'push',
    from: `${os.hostname()}:${store.root}`,
    to: `${remote.sshTarget}:${remote.store}`,
    roots: [...roots].sort(),
  });
  return oneSyncPerKey(key, () => pushStaged(store, remote, opts, key, roots, nodes));
}

async function pushStaged(
  store: LocalStore,
  remote: RemoteSpec,
  opts: SyncOptions,
  key: string,
  roots: readonly RRef[],
  nodes: readonly ClosureNode[],
): Promise<SyncReport> {
  const asked = [...nodes.map((n) => n.rref), ...drefsOf(nodes)];
  const stageArgs = opts.dryRun ? [] : ['--stage', key];
  const answer = parseJson<{ have: string[]; staging: string | null }>(
    await remoteCairn(remote, opts, ['store', 'have', ...stageArgs], asked.join('\n') + '\n'),
    'cairn store have',
  );
  const have = new Set(answer.have);
  const plan = planTransfer(
    roots,
    nodes,
    (r) => have.has(r),
    (d) => codeOf(store, d),
  );
  const report: SyncReport = {
    direction: 'push',
    dryRun: !!opts.dryRun,
    closure: nodes.length,
    present: nodes.filter((n) => have.has(n.rref)).length,
    plan,
    transfer: null,
    received: null,
  };
  if (opts.dryRun || nothingToSend(plan)) return report;
  if (!answer.staging) throw new CairnError('E_SYNC_FAILED', `the remote store did not prepare a staging directory`);
  report.transfer = await rsyncPaths(opts, plan, store.root, `${remote.rsyncTarget}:${answer.staging}`);
  report.received = parseJson<ReceiveReport>(
    await remoteCairn(remote, opts, ['store', 'receive', '--json', key], JSON.stringify(plan)),
    'cairn store receive',
  );
  return report;
}

/**
 * Fetches the closure of `refs` (all of the remote's roots when empty) into
 * the store. With dryRun, `store` may be null (a store that does not exist
 * yet, which a dry run must not create): everything counts as missing.
 */
export async function pull(
  store: LocalStore | null,
  remoteSpec: string,
  refs: readonly string[],
  opts: SyncOptions = {},
): Promise<SyncReport> {
  if (store === null && !opts.dryRun)
    throw new CairnError('E_BAD_ARGUMENT', 'pull needs a store unless it is a dry run');
  const remote = parseRemote(remoteSpec);
  const listing = parseJson<ClosureListing>(
    await remoteCairn(remote, opts, ['store', 'closure', '--json', ...refs]),
    'cairn store closure',
  );
  return pullListed(store, remote, listing, checkListing(listing), opts);
}

/**
 * Fetches a closure whose listing the caller already knows (a builder's
 * results: the realizations it made, whose context is the inputs this side
 * sent), saving the `store closure` round trip. Nothing in the listing is
 * trusted: the receive re-derives and checks every name.
 */
export async function pullKnown(
  store: LocalStore,
  remoteSpec: string,
  listing: ClosureListing,
  opts: SyncOptions = {},
): Promise<SyncReport> {
  return pullListed(store, parseRemote(remoteSpec), listing, listing.nodes, opts);
}

async function pullListed(
  store: LocalStore | null,
  remote: RemoteSpec,
  listing: ClosureListing,
  nodes: ClosureNode[],
  opts: SyncOptions,
): Promise<SyncReport> {
  const has = (r: string): boolean => store !== null && haveRefs(store, [r]).length > 0;
  const plan = planTransfer(listing.roots, nodes, has, (d) => listing.code?.[d]);
  const report: SyncReport = {
    direction: 'pull',
    dryRun: !!opts.dryRun,
    closure: nodes.length,
    present: nodes.filter((n) => has(n.rref)).length,
    plan,
    transfer: null,
    received: null,
  };
  if (opts.dryRun || nothingToSend(plan) || store === null) return report;
  const key = syncKey({
    op: 'pull',
    from: `${remote.sshTarget}:${listing.root}`,
    to: store.root,
    roots: [...listing.roots].sort(),
  });
  return oneSyncPerKey(key, async () => {
    const staging = prepareIncoming(store, key);
    report.transfer = await rsyncPaths(opts, plan, `${remote.rsyncTarget}:${listing.root}`, staging);
    report.received = await receiveIncoming(store, key, plan);
    return report;
  });
}

/** The remote's listing is checked for shape before it is planned with (its content is checked on arrival). */
function checkListing(l: ClosureListing): ClosureNode[] {
  const ok =
    typeof l === 'object' &&
    l !== null &&
    typeof l.root === 'string' &&
    l.root.startsWith('/') &&
    Array.isArray(l.nodes) &&
    Array.isArray(l.roots);
  if (!ok) throw new CairnError('E_SYNC_FAILED', 'cairn store closure printed something that is not a closure listing');
  parseManifest({ format: 'cairn-closure-1', roots: l.roots, rrefs: l.nodes.map((n) => n?.rref), drvs: [], drefs: [] });
  for (const n of l.nodes) parseManifest({ format: 'cairn-closure-1', roots: [], rrefs: n.deps, drvs: [], drefs: [] });
  return l.nodes;
}
