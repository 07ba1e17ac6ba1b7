import * as fs from 'node:fs';
import * as path from 'node:path';
import { ownerAlive, removeTree, treeBytes } from './fsutil.js';
import { withLock } from './locks.js';
import type { DRef, RRef } from './refs.js';
import { listRoots, type RootEntry } from './roots.js';
import type { Store } from './store.js';

export interface GcOptions {
  /** Report what would be deleted; delete nothing. */
  dryRun?: boolean;
  /** Also keep the N newest realizations of every derivation. */
  keepLast?: number;
  /** Only collect realizations older than this many milliseconds. */
  olderThanMs?: number;
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
export async function collectGarbage(store: Store, opts: GcOptions = {}): Promise<GcReport> {
  return withLock(store, 'gc', 'collecting garbage', async () => {
    let roots: RootEntry[] = [];
    let stale: string[] = [];
    const trash = store.makeTempDir('gc');
    const dryRun = !!opts.dryRun;
    let dead: { rref: RRef; dref: DRef }[] = [];
    let deadDrvs: DRef[] = [];
    let kept = 0;
    let bytes = 0;
    const moved: string[] = [];
    const now = Date.now();

    store.index.db.transaction(() => {
      // Roots are read inside the transaction: a realize creates its
      // out-links before it drops its temp roots (a write that waits for
      // this transaction), so every result is covered by one or the other.
      ({ roots, stale } = listRoots(store));
      const all = store.index.all();
      const busy = new Set(store.index.tempRoots().filter((t) => tempRootOwnerAlive(t.owner)).flatMap((t) => t.drefs));
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
      const live = new Set(store.closure(seeds));
      dead = all.filter((r) => !live.has(r.rref)).map((r) => ({ rref: r.rref, dref: r.dref }));
      kept = all.length - dead.length;
      const liveDrvs = new Set(all.filter((r) => live.has(r.rref)).map((r) => r.dref));
      deadDrvs = store.index.allDrvs().filter((d) => !liveDrvs.has(d) && !busy.has(d));
      for (const [i, d] of dead.entries()) {
        const dir = store.rzDir(d.rref);
        if (dryRun) { bytes += safeBytes(dir); continue; }
        const to = path.join(trash, `r${i}`);
        if (moveAside(dir, to)) moved.push(to);
        store.index.removeRealization(d.rref);
      }
      for (const [i, d] of deadDrvs.entries()) {
        const dir = store.drvDir(d);
        if (dryRun) { bytes += safeBytes(path.join(dir, 'drv.json')); continue; }
        const to = path.join(trash, `d${i}`);
        if (moveAside(dir, to)) moved.push(to);
        store.index.removeDrv(d);
      }
    }).immediate();

    for (const m of moved) bytes += safeBytes(m);
    removeTree(trash);
    if (!dryRun) for (const entry of stale) fs.rmSync(entry, { force: true });
    if (!dryRun) store.sweepTemp();
    return {
      dryRun, realizations: dead.map((d) => d.rref), derivations: deadDrvs, bytes, kept,
      roots: roots.length, staleOutLinks: stale.length,
    };
  });
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
  try { return treeBytes(p); } catch { return 0; }
}
