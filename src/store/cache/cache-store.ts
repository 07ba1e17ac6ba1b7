/**
 * The Store interface over a binary cache: a BlobStore, the keys it trusts,
 * and (to add) a signing key. Queries read the cache's metadata objects and
 * see only entries that count (well formed, signed by a trusted key, archive
 * present). File reads fetch the realization into a local store kept for
 * this cache (keyed by the cache's identity, so it never crosses over to
 * another bucket) through the same verified receive path as pull, then read
 * it there with the local store's rules for links. `add` seals and hashes in
 * that local store exactly as LocalStore does, then pushes (archive, log and
 * derivation first, signed metadata last) before telling `onReadable`.
 *
 * Locks and temporary roots: every object of the cache is immutable or
 * one-per-realization, so adds and pushes need no lock against each other.
 * `withLock` is the local store's: it excludes processes of this host that
 * use this cache (a build lock), not other hosts; S3 offers no lock to build
 * one on. Temporary roots are objects in the cache (tmp-roots/), honoured by
 * cache gc while their process lives (this host) or for a day (other hosts).
 */
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { CairnError } from '../../errors.js';
import { sha256Hex, shortHash } from '../hash.js';
import {
  candidateKey,
  candidateOf,
  type AddOptions,
  type AddRequest,
  type Added,
  type Candidate,
  type HeldLock,
  type LockOptions,
  type RealizationInfo,
  type RealizationMeta,
  type Store,
  type TempRoots,
} from '../interface.js';
import { parseRRef, type DRef, type RRef } from '../refs.js';
import { storeIndex } from '../internals.js';
import { LocalStore } from '../store.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, addCacheTempRoot, ensureInfo, listRRefs, mapLimit, readEntry, readInfo } from './entries.js';
import { archiveKindOf, blobsOf, depsOf, drvKey, drvMatches, metaOf, type CacheEntry } from './format.js';
import { unpackTree } from './archive.js';
import { removeTree } from '../fsutil.js';
import { readOutputFile } from '../read-output.js';
import { walkTree } from '../tree.js';
import { fetchClosureEntries, takeIn } from './pull.js';
import { pushRealizations } from './push.js';
import { parsePublicKey, publicKeyOf, type PublicKey, type SecretKey } from './sign.js';

export interface CacheStoreOptions {
  blob: BlobStore;
  trustedKeys: readonly PublicKey[];
  /** Signs what `add` pushes; without one, `add` is refused. */
  signingKey?: SecretKey;
  /** The local store that holds fetched realizations; default: one per cache under $XDG_CACHE_HOME/cairn/caches. */
  localDir?: string;
  /**
   * Told once per realization whose entry does not count (malformed,
   * unsigned, untrusted, tampered): such an entry is never used, and a
   * caller such as realize says so in a warning.
   */
  onRefused?: (rref: RRef, error: CairnError) => void;
}

/** Where a cache's local copies live by default: keyed by the cache's identity (endpoint, bucket, prefix). */
export function defaultLocalDir(identity: string, env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'cairn', 'caches', sha256Hex(identity).slice(0, 32));
}

export class CacheStore implements Store {
  readonly blob: BlobStore;
  private readonly trusted: PublicKey[];
  private readonly signingKey: SecretKey | undefined;
  private readonly onRefused: ((rref: RRef, error: CairnError) => void) | undefined;
  /** Entries the last query found not to count, with why. */
  private readonly refused = new Map<RRef, CairnError>();
  /** Those told to onRefused (once each). */
  private readonly told = new Set<RRef>();
  /**
   * Entries the last query read, trusted and found complete. Queries always
   * ask the cache again (a cache gc may have run); a fetch that follows a
   * query takes its entries from here instead of reading them again, so a
   * query followed by file reads costs each entry one GET. A deletion since
   * surfaces when the fetch's GET finds the archive gone, which refuses that
   * fetch as a whole.
   */
  private readonly known = new Map<RRef, CacheEntry>();
  /** The local copies: what reads fetched and what adds staged. */
  readonly local: LocalStore;

  /**
   * Opens a cache as a store: checks its cache-info object, or writes it
   * when a cache that is to be written (a signing key is given) is new.
   */
  static async open(opts: CacheStoreOptions): Promise<CacheStore> {
    if (opts.signingKey && opts.blob.writable) await ensureInfo(opts.blob);
    else await readInfo(opts.blob);
    return new CacheStore(opts);
  }

  /**
   * Opens a cache for reading without waiting for its cache-info check:
   * `checked` settles when that is done, so a caller can overlap it with its
   * first query (a round trip fewer); it must await both before using what
   * the query found.
   */
  static openReading(opts: CacheStoreOptions): { store: CacheStore; checked: Promise<unknown> } {
    const checked = readInfo(opts.blob);
    checked.catch(() => undefined); // awaited by the caller; not unhandled meanwhile
    return { store: new CacheStore(opts), checked };
  }

  private constructor(opts: CacheStoreOptions) {
    this.blob = opts.blob;
    this.signingKey = opts.signingKey;
    this.onRefused = opts.onRefused;
    // Whoever holds a secret key trusts what it signed.
    this.trusted = [...opts.trustedKeys, ...(opts.signingKey ? [parsePublicKey(publicKeyOf(opts.signingKey))] : [])];
    this.local = LocalStore.open(opts.localDir ?? defaultLocalDir(opts.blob.identity));
  }

  get location(): string {
    return this.blob.url;
  }

  /** The trusted entry of `rref` whose archive exists, or undefined (absent, malformed, untrusted, incomplete). */
  private async entry(rref: RRef): Promise<CacheEntry | undefined> {
    return (await this.entries([rref]))[0];
  }

  /** `entry` for many, with one batched existence check. */
  private async entries(rrefs: readonly RRef[]): Promise<(CacheEntry | undefined)[]> {
    const ask = [...new Set(rrefs)];
    for (const r of ask) {
      this.known.delete(r);
      this.refused.delete(r);
    }
    const got = await mapLimit(ask, PARALLEL, async (r) => {
      try {
        return await readEntry(this.blob, r, this.trusted);
      } catch (e) {
        // An entry that does not count is not there for a reader; `cache verify` reports it.
        if (e instanceof CairnError && e.code !== 'E_CACHE_UNAVAILABLE') {
          this.refuse(r, e);
          return undefined;
        }
        throw e;
      }
    });
    const there = await this.blob.has(got.flatMap((e) => (e ? blobsOf(e) : [])));
    for (const e of got) {
      if (e === undefined) continue;
      const gone = blobsOf(e).find((k) => !there.has(k));
      if (gone === undefined) this.known.set(e.rref, e);
      else {
        const why = `${this.blob.url}: entry ${e.rref} names ${gone}, which is missing`;
        this.refuse(e.rref, new CairnError('E_CACHE_MISSING', why, { url: this.blob.url, rref: e.rref }));
      }
    }
    return rrefs.map((r) => this.known.get(r));
  }

  private refuse(rref: RRef, error: CairnError): void {
    this.refused.set(rref, error);
    if (this.told.has(rref)) return;
    this.told.add(rref);
    this.onRefused?.(rref, error);
  }

  /** The realizations of `dref` that count, and the refusals of those listed that do not. */
  private async scan(dref: DRef): Promise<{ found: RealizationInfo[]; refused: CairnError[] }> {
    const rrefs = await listRRefs(this.blob, dref);
    const found = (await this.entries(rrefs)).filter((e): e is CacheEntry => e !== undefined).map(infoOf);
    found.sort((a, b) => a.created - b.created || (a.rref < b.rref ? -1 : a.rref > b.rref ? 1 : 0));
    const refused = rrefs.flatMap((r) => this.refused.get(r) ?? []);
    return { found, refused };
  }

  async realizationsOf(dref: DRef): Promise<RealizationInfo[]> {
    return (await this.scan(dref)).found;
  }

  async candidates(dref: DRef, ctx: string): Promise<Candidate[]> {
    return (await this.realizationsOf(dref)).filter((r) => r.ctx === ctx).map((r) => candidateOf(this, r));
  }

  async candidatesOfAll(drefs: readonly DRef[]): Promise<Map<string, Candidate[]>> {
    return (await this.query(drefs)).found;
  }

  /**
   * candidatesOfAll, and the refusals of the entries listed under those
   * DRefs that do not count (malformed, untrusted, tampered, an object
   * missing), in the same requests: a substituter refuses the whole cache on
   * one (see cache-substituter.ts).
   */
  async query(drefs: readonly DRef[]): Promise<{ found: Map<string, Candidate[]>; refused: CairnError[] }> {
    const found = new Map<string, Candidate[]>();
    const all = await mapLimit([...new Set(drefs)], PARALLEL, (d) => this.scan(d));
    for (const { found: list } of all) {
      for (const r of list) {
        const k = candidateKey(r.dref, r.ctx);
        (found.get(k) ?? found.set(k, []).get(k)!).push(candidateOf(this, r));
      }
    }
    return { found, refused: all.flatMap((a) => a.refused) };
  }

  /** The entries this store has read and found to count (see `known`). */
  knownEntries(): ReadonlyMap<RRef, CacheEntry> {
    return this.known;
  }

  async info(rref: RRef): Promise<RealizationInfo | undefined> {
    const e = await this.entry(parseRRef(rref).rref);
    return e ? infoOf(e) : undefined;
  }

  async meta(rref: RRef): Promise<RealizationMeta> {
    const e = await this.entry(parseRRef(rref).rref);
    if (!e) throw noSuchRef(this.blob, rref);
    return metaOf(e);
  }

  async closure(rrefs: Iterable<RRef>): Promise<RRef[]> {
    const seen = new Set<RRef>();
    let frontier = [...new Set(rrefs)];
    while (frontier.length > 0) {
      for (const r of frontier) seen.add(r);
      const got = await this.entries(frontier);
      const next: RRef[] = [];
      got.forEach((e, i) => {
        if (!e) throw noSuchRef(this.blob, frontier[i]!);
        for (const d of depsOf(e)) if (!seen.has(d)) next.push(d);
      });
      frontier = [...new Set(next)];
    }
    return [...seen];
  }

  async derivation(dref: DRef): Promise<string | undefined> {
    const body = await this.blob.get(drvKey(dref));
    if (body === undefined) return undefined;
    const text = body.toString('utf8').replace(/\n$/, '');
    return drvMatches(dref, text, shortHash) ? text : undefined;
  }

  /** Fetches `rref` (and its closure) into the local copies unless they have it. */
  private async fetch(rref: RRef): Promise<void> {
    parseRRef(rref);
    if (this.local.has(rref)) return;
    const { entries, present } = await fetchClosureEntries(
      this.blob,
      [rref],
      this.trusted,
      (r) => this.local.has(r),
      PARALLEL,
      this.known,
    ).catch((e: unknown) => {
      if (e instanceof CairnError && e.code !== 'E_CACHE_UNAVAILABLE') throw noSuchRef(this.blob, rref);
      throw e;
    });
    if (entries.size > 0) await takeIn(this.blob, this.local, [rref], entries, present);
  }

  async readFile(rref: RRef, rel: string | Buffer): Promise<Buffer> {
    const small = await this.readInline(rref, rel);
    if (small) return small;
    await this.fetch(rref);
    return this.local.readFile(rref, rel);
  }

  async openFile(rref: RRef, rel: string | Buffer): Promise<Readable> {
    const small = await this.readInline(rref, rel);
    if (small) return Readable.from([small]);
    await this.fetch(rref);
    return this.local.openFile(rref, rel);
  }

  /**
   * A file of a realization whose archive rides in its entry (read by the
   * last query), unpacked on its own: no closure, no request, so a matcher
   * reading `score.txt` from every candidate costs nothing beyond the query.
   * The tree is checked against the signed tree hash and read with the local
   * store's rules for links. Undefined when the archive is an object.
   */
  private async readInline(rref: RRef, rel: string | Buffer): Promise<Buffer | undefined> {
    parseRRef(rref);
    const e = this.known.get(rref);
    if (this.local.has(rref) || e === undefined || e.inlineArchive === null) return undefined;
    const dir = this.local.makeTempDir('cache-read');
    try {
      const kind = archiveKindOf(e.archive);
      const file = path.join(dir, `a.${kind}`);
      fs.writeFileSync(file, Buffer.from(e.inlineArchive, 'base64'), { flag: 'wx', mode: 0o600 });
      const into = path.join(dir, 'x');
      fs.mkdirSync(into);
      await unpackTree(file, into, kind);
      if ((await walkTree(path.join(into, 'out'), { seal: false })).treeHash !== e.tree) {
        const why = `${this.blob.url}: the archive in the entry of ${rref} is not its tree`;
        throw new CairnError('E_SYNC_HASH_MISMATCH', why, { rref });
      }
      return await readOutputFile(path.join(into, 'out'), rel, rref);
    } finally {
      removeTree(dir);
    }
  }

  async readLog(rref: RRef): Promise<Buffer> {
    await this.fetch(rref);
    return this.local.readLog(rref);
  }

  async add(request: AddRequest, opts: AddOptions = {}): Promise<Added[]> {
    if (!this.signingKey) {
      throw new CairnError('E_BAD_ARGUMENT', `adding to the cache ${this.blob.url} needs a signing key`, {
        url: this.blob.url,
      });
    }
    if (!this.blob.writable)
      throw new CairnError('E_CACHE_READ_ONLY', `${this.blob.url} is read-only`, { url: this.blob.url });
    // The context must be in the cache (E_BAD_ADD otherwise, as LocalStore says), and locally to build on.
    const deps = Object.values(request.context).flat();
    const have = await this.entries(deps);
    const lacking = deps.filter((_, i) => have[i] === undefined);
    if (lacking.length > 0) {
      throw new CairnError(
        'E_BAD_ADD',
        `cannot add ${request.dref}: its context names ${lacking[0]}, which the cache ` + `${this.blob.url} lacks`,
        { dref: request.dref, missing: lacking },
      );
    }
    for (const d of deps) await this.fetch(d);
    // Seals, hashes and refuses (E_BAD_ADD, E_UNSAFE_OUTPUT) exactly as a local store does.
    const staged = await this.local.add(request);
    const rrefs = [...new Set(staged.map((a) => a.meta.rref))];
    const before = await this.entries(rrefs);
    await pushRealizations(
      this.local,
      this.blob,
      rrefs.filter((_, i) => before[i] === undefined),
      { key: this.signingKey },
    );
    const existing = new Map(before.filter((e): e is CacheEntry => e !== undefined).map((e) => [e.rref, metaOf(e)]));
    const added = staged.map((a) => {
      const had = existing.get(a.meta.rref);
      return had ? { meta: had, merged: true } : a;
    });
    opts.onReadable?.(added);
    // The cache's "index" is its metadata, written now: release the build lock, so a waiter finds the entries.
    if (opts.release && !opts.release.released) {
      storeIndex(this.local).unlock(opts.release.key, opts.release.owner);
      opts.release.released = true;
    }
    return added;
  }

  async addTempRoots(drefs: readonly DRef[], _label: string): Promise<TempRoots> {
    return addCacheTempRoot(this.blob, drefs, []);
  }

  withLock<T>(key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts?: LockOptions): Promise<T> {
    return this.local.withLock(key, what, fn, opts);
  }

  close(): void {
    this.local.close();
  }
}

function infoOf(e: CacheEntry): RealizationInfo {
  const { rref, dref, ctx, created, tree, bytes, files } = e;
  return { rref, dref, ctx, created, tree, bytes, files };
}

const noSuchRef = (blob: BlobStore, rref: string): CairnError =>
  new CairnError('E_NO_SUCH_REF', `${rref} is not in the cache ${blob.url}`, { ref: rref });
