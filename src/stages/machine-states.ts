/**
 * The machine states in a store (realizations whose output holds a
 * machine description): listing them, and collecting those no root keeps.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { collectGarbage, type GcReport } from '../store/gc.js';
import { allRealizations } from '../store/ref-queries.js';
import { localOutputDir } from '../store/realization-files.js';
import type { RRef } from '../store/refs.js';
import { listRoots } from '../store/roots.js';
import type { LocalStore } from '../store/store.js';
import type { Json } from '../store/canonical.js';
import { DESCRIPTION, readDescription, staleReason } from './machine.js';
import { redactArgs } from './step-args-text.js';

export interface MachineStateInfo {
  rref: RRef;
  /** The step that made the state; '(base)' for a base. */
  step: string;
  /** The step's args with secrets in URLs masked (null for a base). */
  args: Json | null;
  /** Creation time, ms since the epoch. */
  created: number;
  /** When the state stops being reused (ms since the epoch), or null. */
  expiresAt: number | null;
  /** Why the state would not be reused now (expired, a file changed), or null. */
  stale: string | null;
  /** Whether a root (named root or out-link) names the state itself. */
  rooted: boolean;
  /** Bytes of the files at the top of the state's output (disk images, description). */
  bytes: number;
}

const isMachineStateDir = (dir: string): boolean => fs.existsSync(path.join(dir, DESCRIPTION));

/** Whether a realization is a machine state. */
export function isMachineState(store: LocalStore, rref: RRef): boolean {
  return isMachineStateDir(localOutputDir(store, rref));
}

/** Every machine state in the store, oldest first. */
export function listMachineStates(store: LocalStore, now = Date.now()): MachineStateInfo[] {
  const rooted = new Set(listRoots(store).roots.flatMap((r) => r.rrefs));
  return allRealizations(store).flatMap((row) => {
    const dir = localOutputDir(store, row.rref);
    if (!isMachineStateDir(dir)) return [];
    const d = readDescription(dir);
    let bytes = 0;
    for (const f of fs.readdirSync(dir)) bytes += fs.statSync(path.join(dir, f)).size;
    return [
      {
        rref: row.rref,
        step: d.step ? d.step.name : '(base)',
        args: d.step ? redactArgs(d.step.args) : null,
        created: row.created,
        expiresAt: d.expiresAt,
        stale: staleReason(d, now),
        rooted: rooted.has(row.rref),
        bytes,
      },
    ];
  });
}

/**
 * Deletes the machine states no root reaches. A kept state's parents and
 * files stay (its closure), and realizations that are not machine states
 * are left alone.
 */
export function collectMachineGarbage(store: LocalStore, opts: { dryRun?: boolean } = {}): Promise<GcReport> {
  return collectGarbage(store, { dryRun: opts.dryRun, keep: (row) => !isMachineState(store, row.rref) });
}
