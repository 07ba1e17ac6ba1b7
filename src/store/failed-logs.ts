import * as fs from 'node:fs';
import * as path from 'node:path';
import { withRegularFile } from './fsutil.js';
import { FILE_MODE, makeDirs } from './permissions.js';
import type { DRef } from './refs.js';
import type { LocalStore } from './store.js';

/**
 * Build logs of failed builds, kept without --keep-failed so a failure can
 * be read after the fact (`cairn log DREF --failed`):
 *
 *     ROOT/failed-logs/<dref>/<UTC time>-<pid>.log
 *
 * At most FAILED_LOGS_KEPT per derivation (the newest); gc deletes those
 * older than FAILED_LOG_MAX_AGE_MS (or its --older-than).
 */
export const FAILED_LOGS_KEPT = 5;
export const FAILED_LOG_MAX_AGE_MS = 14 * 24 * 3600_000;

export interface FailedLog {
  file: string;
  /** When the build failed (ms since the epoch). */
  time: number;
}

const dirOf = (store: LocalStore, dref: DRef): string => path.join(store.root, 'failed-logs', dref);

/** `2026-12-05T18:20:39.123Z` → `20261205T182039.123Z`: sorts by time, no ':' in file names. */
const stamp = (ms: number): string => new Date(ms).toISOString().replace(/[-:]/g, '');
function parseStamp(name: string): number | null {
  const m = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)\.(\d{3})Z-\d+\.log$/.exec(name);
  return m ? Date.parse(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`) : null;
}

/**
 * Keeps a copy of a failed build's log and drops the oldest beyond the
 * bound. Best effort: failing to keep a log must not hide the build's error.
 * The log lies in the build's own directory, which the build could have
 * changed: it is read through a descriptor opened O_NOFOLLOW (a link planted
 * there, or a hard link to a file outside, is not kept) and copied, never
 * hard-linked, into a new file of the store's own mode.
 */
export function keepFailedLog(store: LocalStore, dref: DRef, logFile: string, now = Date.now()): string | undefined {
  try {
    const data = withRegularFile(logFile, (fd, st) => (st.nlink === 1 ? fs.readFileSync(fd) : null));
    return data === null ? undefined : keepFailedLogData(store, dref, data, now);
  } catch {
    return undefined;
  }
}

/**
 * Keeps a failed build's log given as its content: the log lines a remote
 * builder sent while it built, so `cairn log DREF --failed` works here too,
 * not only in the builder's store. Best effort, as keepFailedLog.
 */
export function keepFailedLogData(
  store: LocalStore,
  dref: DRef,
  data: string | Buffer,
  now = Date.now(),
): string | undefined {
  try {
    const dir = dirOf(store, dref);
    makeDirs(dir);
    const file = path.join(dir, `${stamp(now)}-${process.pid}.log`);
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    const out = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, FILE_MODE);
    try {
      fs.writeFileSync(out, data);
    } finally {
      fs.closeSync(out);
    }
    for (const old of failedLogs(store, dref).slice(0, -FAILED_LOGS_KEPT)) fs.rmSync(old.file, { force: true });
    return file;
  } catch {
    return undefined;
  }
}

/** A derivation's kept failed logs, oldest first. */
export function failedLogs(store: LocalStore, dref: DRef): FailedLog[] {
  let names: string[];
  try {
    names = fs.readdirSync(dirOf(store, dref));
  } catch {
    return [];
  }
  const logs: FailedLog[] = [];
  for (const n of names.sort()) {
    const time = parseStamp(n);
    if (time !== null) logs.push({ file: path.join(dirOf(store, dref), n), time });
  }
  return logs;
}

/** Deletes (or, dry, lists) the failed logs older than `maxAgeMs`; empty derivation directories go too. */
export function collectFailedLogs(
  store: LocalStore,
  maxAgeMs: number,
  dryRun: boolean,
  now = Date.now(),
): { files: string[]; bytes: number } {
  const root = path.join(store.root, 'failed-logs');
  let drefs: string[];
  try {
    drefs = fs.readdirSync(root);
  } catch {
    return { files: [], bytes: 0 };
  }
  const files: string[] = [];
  let bytes = 0;
  for (const name of drefs.sort()) {
    // A directory here is named by its DRef; junk is collected all the same.
    const logs = failedLogs(store, name as DRef);
    const old = logs.filter((l) => l.time < now - maxAgeMs);
    for (const l of old) {
      try {
        bytes += fs.lstatSync(l.file).size;
      } catch {
        continue;
      }
      files.push(l.file);
      if (!dryRun) fs.rmSync(l.file, { force: true });
    }
    if (!dryRun && old.length === logs.length) {
      // Only logs were there; anything else (not ours) stops the removal.
      try {
        fs.rmdirSync(path.join(root, name));
      } catch {
        /* not empty */
      }
    }
  }
  return { files, bytes };
}
