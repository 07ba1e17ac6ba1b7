/**
 * The part of better-sqlite3's API that Cairn uses, declared here rather
 * than imported: StoreIndex is reachable from the public Store class, and
 * Cairn's published types must not need @types/better-sqlite3, which is a
 * development package. index-db.ts casts the real Database to this type,
 * which the compiler refuses if the two disagree.
 */
export interface SqliteRunResult {
  changes: number;
  lastInsertRowid: number | bigint;
}

export interface SqliteStatement<Params extends unknown[] = unknown[], Row = unknown> {
  run(...params: Params): SqliteRunResult;
  get(...params: Params): Row | undefined;
  all(...params: Params): Row[];
}

/** A function wrapped in a transaction; the variants choose BEGIN DEFERRED, IMMEDIATE or EXCLUSIVE. */
export interface SqliteTransaction<F extends (...args: never[]) => unknown> {
  (...params: Parameters<F>): ReturnType<F>;
  deferred(...params: Parameters<F>): ReturnType<F>;
  immediate(...params: Parameters<F>): ReturnType<F>;
  exclusive(...params: Parameters<F>): ReturnType<F>;
}

export interface SqliteDatabase {
  prepare<Params extends unknown[] = unknown[], Row = unknown>(source: string): SqliteStatement<Params, Row>;
  transaction<F extends (...args: never[]) => unknown>(fn: F): SqliteTransaction<F>;
  exec(source: string): SqliteDatabase;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  close(): SqliteDatabase;
}
