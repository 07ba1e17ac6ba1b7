import * as fs from 'node:fs';
import * as path from 'node:path';
import { ownerAlive, removeTree, treeBytes } from './fsutil.js';
import type { DRef, RRef } from './refs.js';
import { parseScore } from '../stages/score.js';
import { readOutputFileSync } from './read-output.js';
import { collectFailedLogs, FAILED_LOG_MAX_AGE_MS } from './failed-logs.js';
import { listRoots, type RootEntry, type StaleOutLink } from './roots.js';
import type { LocalStore } from './store.js';
import { storeIndex } from './internals.js';
import { collectCode } from './code-files.js';

export interface GcOptions {
  /** Report what would be deleted; delete nothing. */
  dryRun?: boolean;
  /** Also keep the N newest realizations of every derivation. */
  keepLast?: number;
  /** Only collect realizations older than this many milliseconds. */
  olderThanMs?: number;
  /**
   * Also keep the N best-scoring realizations of every derivation (for
   * each set of inputs it was built from, as its matcher sees them), scored
   * as `best({ file, key, lowest })` scores them (readScore). Realizations
   * without a readable score are not kept by this; nor are derivations
   * none of whose realizations has one.
   */
  keepBest?: { n: number; file: string; key?: string; lowest?: boolean };
  /** Also keep realizations (and so their closures) for which this is true, e.g. everything but machine states. */
  keep?: (row: { rref: RRef; dref: DRef }) => boolean;
}

export interface GcReport {
  dryRun: boolean;
  /** Realizations deleted (or that would be). */
  realizations: RRef[];
  /** Derivations deleted because none of their realizations is left. */
  derivations: DRef[];
  /** Bytes freed on disk (files, logs and metadata). */
  bytes: number;
  /** Realizations kept. */
  kept: number;
  roots: number;
  /** Out-link entries whose link was deleted or moved, now forgotten. */
  staleOutLinks: number;
  /** Those out-links, and why each no longer counts as a root. */
  droppedOutLinks: { link?: string; reason: string }[];
  /** Logs of failed builds deleted (older than --older-than, else FAILED_LOG_MAX_AGE_MS). */
  failedLogs: string[];
  /** Code objects deleted because no derivation left points to them (see code-files.ts). */
  code: string[];
}

/** Temp-root owners are `<pid>.<start>#<n>`: alive while the process is. */
export const tempRootOwnerAlive = (owner: string): boolean => ownerAlive(owner.split('#')[0]!);

/**
 * Deletes every realization not reachable from a root. The live set is the
 * closure (realizations and, through them, their derivations) of: named
 * roots, out-links that still exist, every realization of a derivation that
 * a running realize has declared (temp roots), and whatever --keep-last and
 * --older-than keep.
 *
 * Safety against concurrent realizes: realize declares its derivations in
 * one write transaction *before* it queries the index. gc computes the dead
 * set, moves their directories aside and deletes their rows inside one
 * IMMEDIATE transaction. SQLite orders the two: either the declaration came
 * first, and gc keeps those realizations, or it came after, and realize no
 * longer sees the deleted rows (and the directories are already gone, so a
 * rebuild cannot "merge" into one). A running build's inputs are therefore
 * never deleted.
 */
export async function collectGarbage(store: LocalStore, opts: GcOptions = {}): Promise<GcReport> {
  return store.withLock('gc', 'collecting garbage', async () => {
    let roots: RootEntry[] = [];
    let stale: StaleOutLink[] = [];
    const trash = store.makeTempDir('gc');
    const dryRun = !!opts.dryRun;
    let dead: { rref: RRef; dref: DRef }[] = [];
    let deadDrvs: DRef[] = [];
    let kept = 0;
    let bytes = 0;
    const moved: string[] = [];
    const now = Date.now();

    storeIndex(store)
      .db.transaction(() => {
        // Roots are read inside the transaction: a realize creates its
        // out-links before it drops its temp roots (a write that waits for
        // this transaction), so every result is covered by one or the other.
        ({ roots, stale } = listRoots(store));
        const all = storeIndex(store).all();
        const busy = new Set(
          storeIndex(store)
            .tempRoots()
            .filter((t) => tempRootOwnerAlive(t.owner))
            .flatMap((t) => t.drefs),
        );
        const seeds: RRef[] = roots.flatMap((r) => r.rrefs);
        const byDrv = new Map<DRef, typeof all>();
        for (const row of all) {
          if (busy.has(row.dref)) seeds.push(row.rref);
          if (opts.olderThanMs !== undefined && row.created > now - opts.olderThanMs) seeds.push(row.rref);
          if (opts.keep?.(row)) seeds.push(row.rref);
          const list = byDrv.get(row.dref) ?? [];
          list.push(row);
          byDrv.set(row.dref, list);
        }
        if (opts.keepLast && opts.keepLast > 0) {
          // Rows come oldest first, so the newest N are at the end.
          for (const list of byDrv.values()) for (const row of list.slice(-opts.keepLast)) seeds.push(row.rref);
        }
        if (opts.keepBest) {
          // Ranked per derivation and set of inputs (context), as its matcher ranks them.
          const byCtx = new Map<string, typeof all>();
          for (const row of all) {
            const key = `${row.dref} ${row.ctx}`;
            const list = byCtx.get(key) ?? [];
            list.push(row);
            byCtx.set(key, list);
          }
          for (const list of byCtx.values()) seeds.push(...bestOf(store, list, opts.keepBest));
        }
        const live = new Set(store.closureSync(seeds));
        dead = all.filter((r) => !live.has(r.rref)).map((r) => ({ rref: r.rref, dref: r.dref }));
        kept = all.length - dead.length;
        const liveDrvs = new Set(all.filter((r) => live.has(r.rref)).map((r) => r.dref));
        deadDrvs = storeIndex(store)
          .allDrvs()
          .filter((d) => !liveDrvs.has(d) && !busy.has(d));
        for (const [i, d] of dead.entries()) {
          const dir = store.rzDir(d.rref);
          if (dryRun) {
            bytes += safeBytes(dir);
            continue;
          }
          const to = path.join(trash, `r${i}`);
          if (moveAside(dir, to)) moved.push(to);
          storeIndex(store).removeRealization(d.rref);
        }
        for (const [i, d] of deadDrvs.entries()) {
          const dir = store.drvDir(d);
          if (dryRun) {
            bytes += safeBytes(path.join(dir, 'drv.json'));
            continue;
          }
          const to = path.join(trash, `d${i}`);
          if (moveAside(dir, to)) moved.push(to);
          storeIndex(store).removeDrv(d);
        }
      })
      .immediate();

    for (const m of moved) bytes += safeBytes(m);
    removeTree(trash);
    // After the derivations: a code object lives as long as one derivation left points to it.
    const deadSet = new Set(deadDrvs);
    const left = storeIndex(store)
      .allDrvs()
      .filter((d) => !deadSet.has(d));
    const code = collectCode(
      store.root,
      left.map((d) => store.drvDir(d)),
      dryRun,
      now,
    );
    bytes += code.bytes;
    if (!dryRun) for (const s of stale) fs.rmSync(s.entry, { force: true });
    const logs = collectFailedLogs(store, opts.olderThanMs ?? FAILED_LOG_MAX_AGE_MS, dryRun, now);
    bytes += logs.bytes;
    if (!dryRun) store.sweepTemp();
    return {
      dryRun,
      realizations: dead.map((d) => d.rref),
      derivations: deadDrvs,
      bytes,
      kept,
      roots: roots.length,
      staleOutLinks: stale.length,
      droppedOutLinks: stale.map((s) => ({ ...(s.link === undefined ? {} : { link: s.link }), reason: s.reason })),
      failedLogs: logs.files,
      code: code.code,
    };
  });
}

/** The RRefs best() would rank first among rows of one derivation and context (oldest first), ties to the older. */
function bestOf(
  store: LocalStore,
  rows: readonly { rref: RRef; dref: DRef; created: number }[],
  by: NonNullable<GcOptions['keepBest']>,
): RRef[] {
  const sign = by.lowest ? -1 : 1;
  const scored: { rref: RRef; s: number; i: number }[] = [];
  for (const [i, r] of rows.entries()) {
    try {
      const text = readOutputFileSync(store.outPath(r.rref), by.file, r.rref).toString('utf8');
      scored.push({ rref: r.rref, i, s: sign * parseScore(text, r.rref, by.file, by.key) });
    } catch {
      /* no readable score: not ranked */
    }
  }
  scored.sort((p, q) => q.s - p.s || p.i - q.i);
  return scored.slice(0, by.n).map((e) => e.rref);
}

function moveAside(from: string, to: string): boolean {
  try {
    fs.renameSync(from, to);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

function safeBytes(p: string): number {
  try {
    return treeBytes(p);
  } catch {
    return 0;
  }
}
