import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';

// require(), not import: ESM importing a CommonJS package runs Node's
// cjs-module-lexer over it on every start (~20 ms of each CLI run).
const Database = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
import type { RealizationInfo } from './interface.js';
import type { DRef, RRef } from './refs.js';
import type { SqliteDatabase } from './sqlite.js';

/**
 * The SQLite index is a cache of what the files say, kept so that a cached
 * realize costs one indexed query per stage instead of directory scans. It
 * never holds anything the files do not: `rebuildIndex` recreates it from
 * the `meta.json` of every realization. WAL mode lets readers run while one
 * process writes.
 */
export const INDEX_SCHEMA_VERSION = 3;

/** A row of the realization table: what queries return, plus its insertion order. */
export interface RzRow extends RealizationInfo {
  seq: number;
}

/** What is indexed of a realization: its summary and its dependencies. */
export interface IndexedRealization extends RealizationInfo {
  deps: RRef[];
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS drv (
  dref TEXT PRIMARY KEY,
  name TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rz (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  rref TEXT NOT NULL UNIQUE,
  dref TEXT NOT NULL,
  ctx TEXT NOT NULL,
  created REAL NOT NULL,
  tree TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  files INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rz_by_ctx ON rz (dref, ctx, created, rref);
CREATE TABLE IF NOT EXISTS rz_dep (
  rref TEXT NOT NULL,
  dep TEXT NOT NULL,
  PRIMARY KEY (rref, dep)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rz_dep_by_dep ON rz_dep (dep);
CREATE TABLE IF NOT EXISTS inuse (
  owner TEXT PRIMARY KEY,
  drefs TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lock (
  key TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  since INTEGER NOT NULL,
  what TEXT NOT NULL
) WITHOUT ROWID;
`;

const BUSY_TIMEOUT_MS = 120_000;

/**
 * Runs the index's set-up again while SQLite answers SQLITE_BUSY. Switching
 * a new database to WAL fails at once, without the busy timeout, while
 * another connection holds its write lock: several processes opening a new
 * store together (the first realizes on it) otherwise fail with "database
 * is locked". Every step is idempotent.
 */
function retryWhileBusy(setUp: () => void): void {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
    try {
      setUp();
      return;
    } catch (e) {
      if (!String((e as { code?: unknown }).code).startsWith('SQLITE_BUSY') || Date.now() > deadline) throw e;
      Atomics.wait(pause, 0, 0, wait * (0.5 + Math.random()));
    }
  }
}

export class StoreIndex {
  readonly db: SqliteDatabase;
  private readonly q: ReturnType<StoreIndex['prepare']>;

  constructor(file: string) {
    // A long busy timeout: many processes may queue for the write lock
    // during a large parallel realize, and each holds it only briefly.
    // `as`, not a plain assignment: better-sqlite3 types prepare()'s result
    // with a conditional type that a generic signature cannot match, but a
    // method missing from, or mistyped in, sqlite.ts still fails to compile.
    this.db = new Database(file, { timeout: BUSY_TIMEOUT_MS }) as SqliteDatabase;
    retryWhileBusy(() => {
      this.db.pragma('journal_mode = WAL');
      // NORMAL in WAL mode can lose the last transactions on power loss but
      // never corrupts; the files are the truth and the index can be rebuilt.
      this.db.pragma('synchronous = NORMAL');
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version < INDEX_SCHEMA_VERSION) {
        // Every statement is CREATE ... IF NOT EXISTS, so older indexes are
        // brought up to date in place; the index is a cache in any case.
        this.db.exec(SCHEMA);
        this.db.pragma(`user_version = ${INDEX_SCHEMA_VERSION}`);
      }
    });
    this.q = this.prepare();
  }

  private prepare() {
    const db = this.db;
    return {
      candidates: db.prepare<[string, string], RzRow>(
        'SELECT * FROM rz WHERE dref = ? AND ctx = ? ORDER BY created, rref',
      ),
      byDrefs: db.prepare<[string], RzRow>(
        'SELECT rz.* FROM rz WHERE dref IN (SELECT value FROM json_each(?)) ORDER BY created, rref',
      ),
      byDref: db.prepare<[string], RzRow>('SELECT * FROM rz WHERE dref = ? ORDER BY created, rref'),
      one: db.prepare<[string], RzRow>('SELECT * FROM rz WHERE rref = ?'),
      all: db.prepare<[], RzRow>('SELECT * FROM rz ORDER BY created, rref'),
      deps: db.prepare<[string], { dep: string }>('SELECT dep FROM rz_dep WHERE rref = ?'),
      dependants: db.prepare<[string], { rref: string }>('SELECT rref FROM rz_dep WHERE dep = ?'),
      insertDrv: db.prepare('INSERT OR IGNORE INTO drv (dref, name) VALUES (?, ?)'),
      deleteDrv: db.prepare('DELETE FROM drv WHERE dref = ?'),
      allDrvs: db.prepare<[], { dref: string }>('SELECT dref FROM drv'),
      hasDrv: db.prepare<[string], { dref: string }>('SELECT dref FROM drv WHERE dref = ?'),
      haveDrvs: db.prepare<[string], { dref: string }>(
        'SELECT dref FROM drv WHERE dref IN (SELECT value FROM json_each(?))',
      ),
      insertRz: db.prepare(
        'INSERT OR IGNORE INTO rz (rref, dref, ctx, created, tree, bytes, files) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      insertDep: db.prepare('INSERT OR IGNORE INTO rz_dep (rref, dep) VALUES (?, ?)'),
      deleteRz: db.prepare('DELETE FROM rz WHERE rref = ?'),
      deleteDeps: db.prepare('DELETE FROM rz_dep WHERE rref = ?'),
      lockGet: db.prepare<[string], { owner: string; since: number; what: string }>(
        'SELECT owner, since, what FROM lock WHERE key = ?',
      ),
      lockPut: db.prepare('INSERT OR REPLACE INTO lock (key, owner, since, what) VALUES (?, ?, ?, ?)'),
      lockDel: db.prepare('DELETE FROM lock WHERE key = ? AND owner = ?'),
      addTempRoots: db.prepare('INSERT OR REPLACE INTO inuse (owner, drefs) VALUES (?, ?)'),
      dropTempRoots: db.prepare('DELETE FROM inuse WHERE owner = ?'),
      tempRoots: db.prepare<[], { owner: string; drefs: string }>('SELECT owner, drefs FROM inuse'),
    };
  }

  candidates(dref: DRef, ctx: string): RzRow[] {
    return this.q.candidates.all(dref, ctx);
  }
  realizationsOf(dref: DRef): RzRow[] {
    return this.q.byDref.all(dref);
  }

  /** Every realization of these derivations, in one query, grouped by `dref` and `ctx`. */
  candidatesByContext(drefs: readonly DRef[]): Map<string, RzRow[]> {
    const groups = new Map<string, RzRow[]>();
    for (const row of this.q.byDrefs.all(JSON.stringify(drefs))) {
      const key = `${row.dref} ${row.ctx}`;
      const list = groups.get(key);
      if (list) list.push(row);
      else groups.set(key, [row]);
    }
    return groups;
  }
  get(rref: RRef): RzRow | undefined {
    return this.q.one.get(rref);
  }
  all(): RzRow[] {
    return this.q.all.all();
  }
  depsOf(rref: RRef): RRef[] {
    return this.q.deps.all(rref).map((r) => r.dep as RRef);
  }
  dependantsOf(rref: RRef): RRef[] {
    return this.q.dependants.all(rref).map((r) => r.rref as RRef);
  }
  hasDrv(dref: DRef): boolean {
    return this.q.hasDrv.get(dref) !== undefined;
  }
  addDrvs(drvs: readonly { dref: DRef; name: string }[]): void {
    this.db
      .transaction(() => {
        for (const d of drvs) this.q.insertDrv.run(d.dref, d.name);
      })
      .immediate();
  }

  /** Which of these derivations the index has, in one query. */
  haveDrvs(drefs: readonly DRef[]): Set<DRef> {
    return new Set(this.q.haveDrvs.all(JSON.stringify(drefs)).map((r) => r.dref as DRef));
  }
  removeDrv(dref: DRef): void {
    this.q.deleteDrv.run(dref);
  }
  allDrvs(): DRef[] {
    return this.q.allDrvs.all().map((r) => r.dref as DRef);
  }

  /**
   * Indexes realizations, and their derivations, in one transaction (one
   * WAL commit however many there are).
   */
  addRealizations(
    rs: readonly (IndexedRealization & { name: string })[],
    unlock?: { key: string; owner: string },
  ): void {
    this.db
      .transaction(() => {
        if (unlock) this.q.lockDel.run(unlock.key, unlock.owner);
        for (const r of rs) {
          this.q.insertDrv.run(r.dref, r.name);
          this.q.insertRz.run(r.rref, r.dref, r.ctx, r.created, r.tree, r.bytes, r.files);
          for (const dep of r.deps) this.q.insertDep.run(r.rref, dep);
        }
      })
      .immediate();
  }

  removeRealization(rref: RRef): void {
    this.db
      .transaction(() => {
        this.q.deleteRz.run(rref);
        this.q.deleteDeps.run(rref);
      })
      .immediate();
  }

  /**
   * Takes `key` if it is free or its owner process is dead. The check and
   * the take happen in one IMMEDIATE transaction, so two processes can never
   * both see the lock as free.
   */
  tryLock(
    key: string,
    owner: string,
    what: string,
    isAlive: (owner: string) => boolean,
  ): { taken: boolean; holder?: string; stale?: string } {
    return this.db
      .transaction(() => {
        const row = this.q.lockGet.get(key);
        if (row && row.owner !== owner && isAlive(row.owner)) return { taken: false, holder: row.owner };
        this.q.lockPut.run(key, owner, Date.now(), what);
        return { taken: true, stale: row && row.owner !== owner ? row.owner : undefined };
      })
      .immediate();
  }

  /**
   * Declares that `owner` is realizing these derivations: gc keeps all their
   * realizations until the row is dropped or the owner dies. One row and one
   * write transaction however large the graph (a cached realize of 10,000
   * stages pays about a millisecond), ordered against gc's own (see gc.ts).
   */
  addTempRoots(owner: string, drefs: readonly DRef[]): void {
    this.q.addTempRoots.run(owner, drefs.join('\n'));
  }

  dropTempRoots(owner: string): void {
    this.q.dropTempRoots.run(owner);
  }

  tempRoots(): { owner: string; drefs: DRef[] }[] {
    return this.q.tempRoots.all().map((r) => ({ owner: r.owner, drefs: r.drefs.split('\n') as DRef[] }));
  }

  unlock(key: string, owner: string): void {
    this.q.lockDel.run(key, owner);
  }

  /** Replaces all realization rows in one transaction (used by index rebuilds). */
  replaceAll(drvs: { dref: DRef; name: string }[], rzs: IndexedRealization[]): void {
    this.db
      .transaction(() => {
        this.db.exec('DELETE FROM rz; DELETE FROM rz_dep; DELETE FROM drv;');
        for (const d of drvs) this.q.insertDrv.run(d.dref, d.name);
        for (const r of rzs) {
          this.q.insertRz.run(r.rref, r.dref, r.ctx, r.created, r.tree, r.bytes, r.files);
          for (const dep of r.deps) this.q.insertDep.run(r.rref, dep);
        }
      })
      .immediate();
  }

  close(): void {
    this.db.close();
  }
}
