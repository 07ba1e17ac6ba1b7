import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';

/**
 * The per-user stat cache of file inputs: (device, inode, size, mtime ns,
 * ctime ns) -> sha256 of the content, as git's index and DVC's state keep,
 * so a large dataset is read once, not on every run. ctime is in the key
 * because no ordinary program can set it: a file rewritten to the same size
 * with its mtime restored (`touch -r`, `rsync -t`) still misses.
 *
 * Racy entries (git's "racily clean" problem): a file written in the same
 * timestamp granule as it was hashed could change again without its times
 * changing. An entry is therefore only recorded when the file's mtime and
 * ctime are more than RACY_MARGIN_NS older than the moment its reading
 * started; a younger file is simply hashed again next time. The margin
 * covers the kernel's coarse timestamp clock (a jiffy), 2-second FAT times
 * and modest clock skew on network filesystems.
 */
export interface StatKey {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

export interface StatCache {
  /** The sha256 (32 bytes) recorded for exactly this stat, if any. */
  get(k: StatKey): Buffer | undefined;
  /** Records a hash; `startedNs` is the wall-clock time reading began. */
  put(k: StatKey, sha256: Buffer, startedNs: bigint): void;
  /** Writes what `put` collected (one transaction). */
  flush(): void;
  close(): void;
}

export const RACY_MARGIN_NS = 2_000_000_000n;

/** A file is racy when it changed too recently for its times to prove it unchanged later. */
export function isRacy(k: StatKey, startedNs: bigint): boolean {
  const newest = k.mtimeNs > k.ctimeNs ? k.mtimeNs : k.ctimeNs;
  return newest > startedNs - RACY_MARGIN_NS;
}

/** A cache that remembers nothing: every input is read and hashed. */
export const noStatCache: StatCache = { get: () => undefined, put: () => {}, flush: () => {}, close: () => {} };

/** `$CAIRN_STAT_CACHE` (a file, or `off`), else `$XDG_CACHE_HOME/cairn/stat-cache.sqlite`. */
export function defaultStatCacheFile(env: NodeJS.ProcessEnv = process.env): string | null {
  if (env.CAIRN_STAT_CACHE === 'off') return null;
  if (env.CAIRN_STAT_CACHE) return path.resolve(env.CAIRN_STAT_CACHE);
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cairn', 'stat-cache.sqlite');
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS stat (
  dev INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  ctime_ns INTEGER NOT NULL,
  sha256 BLOB NOT NULL,
  used INTEGER NOT NULL,
  PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stat_by_used ON stat (used);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
`;

/** Entries not used for this many days are dropped (at most one pruning a day). */
const KEEP_DAYS = 60;

/**
 * Opens the SQLite stat cache (WAL, so concurrent runs share it). The cache
 * is an optimisation: when it cannot be opened (a read-only home, a damaged
 * file) inputs are hashed without it.
 */
export function openStatCache(file: string | null = defaultStatCacheFile()): StatCache {
  if (file === null) return noStatCache;
  let db: BetterSqlite3.Database;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // require(), not import: see src/store/index-db.ts.
    const Database = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
    db = new Database(file, { timeout: 10_000 });
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec(SCHEMA);
  } catch {
    return noStatCache;
  }
  const select = db
    .prepare('SELECT size, mtime_ns, ctime_ns, sha256, used FROM stat WHERE dev = ? AND ino = ?')
    .safeIntegers(true);
  const upsert =
    db.prepare(`INSERT INTO stat (dev, ino, size, mtime_ns, ctime_ns, sha256, used) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (dev, ino) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
    ctime_ns = excluded.ctime_ns, sha256 = excluded.sha256, used = excluded.used`);
  const touch = db.prepare('UPDATE stat SET used = ? WHERE dev = ? AND ino = ?');
  const today = BigInt(Math.floor(Date.now() / 86_400_000));
  const pending: [StatKey, Buffer][] = [];
  const touched: StatKey[] = [];
  // SQLite stores signed 64-bit integers; device and inode numbers are
  // unsigned and may use the top bit.
  const s64 = (n: bigint): bigint => BigInt.asIntN(64, n);
  type Row = { size: bigint; mtime_ns: bigint; ctime_ns: bigint; sha256: Buffer; used: bigint };
  return {
    get(k) {
      let row: Row | undefined;
      try {
        row = select.get(s64(k.dev), s64(k.ino)) as Row | undefined;
      } catch {
        return undefined;
      }
      if (!row || row.size !== k.size || row.mtime_ns !== k.mtimeNs || row.ctime_ns !== k.ctimeNs) return undefined;
      if (row.used !== today) touched.push(k);
      return row.sha256;
    },
    put(k, sha, startedNs) {
      if (!isRacy(k, startedNs)) pending.push([k, sha]);
    },
    flush() {
      if (pending.length === 0 && touched.length === 0) return;
      try {
        db.transaction(() => {
          for (const [k, sha] of pending) upsert.run(s64(k.dev), s64(k.ino), k.size, k.mtimeNs, k.ctimeNs, sha, today);
          for (const k of touched) touch.run(today, s64(k.dev), s64(k.ino));
          const pruned = db.prepare("SELECT value FROM meta WHERE key = 'pruned'").safeIntegers(true).get() as
            { value: bigint } | undefined;
          if (pruned === undefined || pruned.value < today) {
            db.prepare('DELETE FROM stat WHERE used < ?').run(today - BigInt(KEEP_DAYS));
            db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned', ?)").run(today);
          }
        })();
      } catch {
        /* an optimisation: a busy or read-only cache costs a re-hash next time */
      }
      pending.length = 0;
      touched.length = 0;
    },
    close() {
      try {
        db.close();
      } catch {
        /* already closed */
      }
    },
  };
}

/** The same, opened on first use, so a process that hashes nothing never opens the database. */
export function lazyStatCache(file: string | null = defaultStatCacheFile()): StatCache {
  let cache: StatCache | undefined;
  const open = (): StatCache => (cache ??= openStatCache(file));
  return {
    get: (k) => open().get(k),
    put: (k, sha, startedNs) => open().put(k, sha, startedNs),
    flush: () => cache?.flush(),
    close: () => cache?.close(),
  };
}
