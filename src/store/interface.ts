import type { Readable } from 'node:stream';
import type { DRef, RRef } from './refs.js';

/**
 * The Store interface: what the rest of Cairn (realize, matchers, machines,
 * the CLI, sync) may ask of a store. `LocalStore` (store.ts) implements it
 * over a directory, a SQLite index and derivation files, all private to
 * src/store; a binary cache or a remote builder's store implements the same
 * operations over other media. Every operation is asynchronous so that a
 * store behind a network fits; a local store answers from memory or one
 * indexed query.
 *
 * The conformance suite (test/store-conformance.test.ts) runs one set of
 * tests against every implementation: see docs/design.md, "The Store
 * interface", for the guarantees it checks.
 */
export interface Store {
  /** Where the store is, for messages: a directory, or a URL. */
  readonly location: string;

  /** The realizations of `dref` built from exactly the inputs `ctx` (a context hash), oldest first. */
  candidates(dref: DRef, ctx: string): Promise<Candidate[]>;
  /**
   * `candidates` for many derivations in one round trip, keyed by
   * `candidateKey(dref, ctx)`: what realize asks once for a whole graph.
   */
  candidatesOfAll(drefs: readonly DRef[]): Promise<Map<string, Candidate[]>>;
  /** Every realization of `dref` (any context), oldest first. */
  realizationsOf(dref: DRef): Promise<RealizationInfo[]>;
  /** One realization's summary, or undefined if the store lacks it. */
  info(rref: RRef): Promise<RealizationInfo | undefined>;
  /** A realization's `meta.json`; E_NO_SUCH_REF if the store lacks it. */
  meta(rref: RRef): Promise<RealizationMeta>;
  /** The given realizations and every realization they were built from, transitively. */
  closure(rrefs: Iterable<RRef>): Promise<RRef[]>;
  /** The canonical config (`drv.json`) of a derivation, or undefined. */
  derivation(dref: DRef): Promise<string | undefined>;

  /**
   * Stage code objects (code-object.ts): the bundled code a host with no
   * checkout loads to build a derivation. Optional: a store that cannot
   * hold code lacks these, and a derivation from it cannot be built
   * elsewhere. `addCode` checks the text and returns its name; `readCode`
   * checks what it reads against the name (E_CODE_CORRUPT).
   */
  addCode?(text: string): Promise<string>;
  readCode?(hash: string): Promise<string | undefined>;
  /** The code object recorded for a derivation, or undefined. */
  derivationCode?(dref: DRef): Promise<string | undefined>;
  /** Stores derivations (and their code pointers) without building them. */
  addDerivations?(list: readonly DerivationRecord[], opts?: { settle?: boolean }): Promise<void>;

  /**
   * A file of a realization's output, by a path relative to `out/`. Links
   * inside the output are followed only while they resolve inside it:
   * E_NO_SUCH_PATH for a path that is missing, not a regular file, or
   * leaves the output.
   */
  readFile(rref: RRef, rel: string | Buffer): Promise<Buffer>;
  /** `readFile` as a stream, for large outputs. */
  openFile(rref: RRef, rel: string | Buffer): Promise<Readable>;
  /** The build log of a realization (empty if it has none). */
  readLog(rref: RRef): Promise<Buffer>;

  /**
   * Adds the outputs of one build of a derivation, in one call: the store
   * seals and hashes each output (never following a link), stores the
   * derivation, writes the metadata, moves each into place atomically and
   * indexes it. The promise settles once everything is durable and
   * indexed; `onReadable` is told earlier, as soon as every output is
   * complete and readable, so dependent work can start. An output
   * identical to one the store has merges with it (`merged`).
   */
  add(request: AddRequest, opts?: AddOptions): Promise<Added[]>;

  /**
   * Keeps every realization of these derivations from garbage collection
   * until `release`, and while this process lives: what a realize declares
   * before it queries, so gc never deletes what it may choose.
   */
  addTempRoots(drefs: readonly DRef[], label: string): Promise<TempRoots>;

  /**
   * Runs `fn` holding the store-wide lock `key`: one process at a time per
   * key, across processes; a dead holder's lock is taken over.
   */
  withLock<T>(key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts?: LockOptions): Promise<T>;

  close(): void;
}

/** A derivation to store unbuilt: its canonical config and, optionally, the code object that defines it. */
export interface DerivationRecord {
  dref: DRef;
  name: string;
  drvJson: string;
  code?: string;
}

/** Direct dependencies' chosen realizations, keyed by dependency DRef. */
export type Context = Record<DRef, RRef[]>;

/** `meta.json` of a realization: everything the index holds, so it can be rebuilt. */
export interface RealizationMeta {
  format: 'cairn-realization-1';
  rref: RRef;
  dref: DRef;
  name: string;
  context: Context;
  ctx: string;
  tree: string;
  bytes: number;
  files: number;
  created: number;
  buildMs: number;
}

/** What queries return about a realization. */
export interface RealizationInfo {
  rref: RRef;
  dref: DRef;
  /** The hash of its context. */
  ctx: string;
  /** Milliseconds since the epoch (microsecond resolution) when it was built. */
  created: number;
  tree: string;
  bytes: number;
  files: number;
}

/**
 * A realization a matcher may choose. It reads its own files, from
 * whichever store holds it: matchers never see store paths.
 */
export interface Candidate extends RealizationInfo {
  /** A file of the output (see `Store.readFile`). */
  read(rel: string | Buffer): Promise<Buffer>;
  /** A file of the output as a stream. */
  open(rel: string | Buffer): Promise<Readable>;
}

/** A candidate that reads its files through `store`. */
export function candidateOf(store: Store, info: RealizationInfo): Candidate {
  const { rref, dref, ctx, created, tree, bytes, files } = info;
  return {
    rref,
    dref,
    ctx,
    created,
    tree,
    bytes,
    files,
    read: (rel) => store.readFile(rref, rel),
    open: (rel) => store.openFile(rref, rel),
  };
}

/** Key of `Store.candidatesOfAll`'s map. */
export const candidateKey = (dref: DRef, ctx: string): string => `${dref} ${ctx}`;

/** One build's outputs, for `Store.add`. */
export interface AddRequest {
  dref: DRef;
  name: string;
  /** The derivation's canonical config (`drv.json`), stored with its first realization. */
  drv: string;
  /** The chosen realizations of its direct dependencies. */
  context: Context;
  /** Milliseconds the build took, recorded in every output's metadata. */
  buildMs: number;
  outputs: readonly StagedOutput[];
}

export interface StagedOutput {
  /**
   * A directory holding `out/` and, optionally, `build.log`. The store
   * takes it over: it is moved into the store (a local store on the same
   * filesystem) or copied and removed.
   */
  dir: string;
  /** When the output was made (see creationTime), for the order of candidates. */
  created: number;
}

export interface AddOptions {
  /** Called once, when every output is complete and readable in the store (before it is durable). */
  onReadable?: (added: Added[]) => void;
  /** A build lock to release together with indexing, so waiters find the outputs as soon as they get it. */
  release?: HeldLock;
}

export interface Added {
  meta: RealizationMeta;
  /** An identical realization existed already; `meta` is its. */
  merged: boolean;
}

export interface TempRoots {
  release(): Promise<void>;
}

/** A lock held by this process; `released` once an index write released it (see `AddOptions.release`). */
export interface HeldLock {
  readonly key: string;
  readonly owner: string;
  released: boolean;
}

export interface LockOptions {
  /** Give up after this many milliseconds (default: wait forever). */
  timeoutMs?: number;
  /** Called once if the lock is busy, with the holder's id, so callers can say they are waiting. */
  onWait?: (holder: string) => void;
}
