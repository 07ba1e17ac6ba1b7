/**
 * A binary cache as `cairn realize` uses it: a Substituter (the cache's
 * Store for candidates, `pullClosure` for fetches) and a PushTarget
 * (`pushClosure`). Both take an opened BlobStore, so a malformed URL fails
 * before anything is built; nothing here talks to the cache until the
 * realize first asks it (a fully cached realize makes no request, and an
 * unreachable cache surfaces as the substitution's one warning line).
 */
import type { Readable } from 'node:stream';
import { CairnError } from '../../errors.js';
import type { PushTarget, Substituter } from '../../stages/substitute.js';
import {
  candidateKey,
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
import type { DRef, RRef } from '../refs.js';
import type { BlobStore } from './blob.js';
import { CacheStore } from './cache-store.js';
import type { CacheEntry } from './format.js';
import { pullClosure } from './pull.js';
import { pushClosure } from './push.js';
import type { PublicKey, SecretKey } from './sign.js';

/** The cache at `blob` as a substituter whose entries must be signed by one of `trustedKeys`. */
export function cacheSubstituter(name: string, blob: BlobStore, trustedKeys: readonly PublicKey[]): Substituter {
  const store = new SubstituterStore(blob, trustedKeys);
  return {
    name,
    store,
    fetch: async (into, rrefs) => {
      await pullClosure(blob, into, rrefs, { trustedKeys, known: store.known() });
    },
  };
}

/** The cache at `blob` as the target of `--push-to`, signing with `key`. */
export function cachePushTarget(name: string, blob: BlobStore, key: SecretKey): PushTarget {
  if (!blob.writable) {
    throw new CairnError('E_CACHE_READ_ONLY', `${name} is read-only; push to its s3:// or file:// URL`, { url: name });
  }
  return {
    name,
    push: async (from, rrefs) => {
      await pushClosure(from, blob, rrefs, { key });
    },
  };
}

/**
 * The cache's Store, opened on first use (opening reads cache-info, a
 * request), and strict where a CacheStore is lenient: a CacheStore lists
 * only entries that count, but a realize must not quietly match over part of
 * a team's cache (a refused `best` model would lose to a worse one without a
 * word). So when a DRef's listing holds an entry that does not count
 * (unsigned, untrusted, tampered, malformed, archive missing), the batch
 * query (no request more than the cache store's own) fails with that entry's refusal: the substitution prints it as its
 * one warning line and realizes without this cache.
 */
class SubstituterStore implements Store {
  private ready: { store: CacheStore; checked: Promise<unknown> } | undefined;

  constructor(
    private readonly blob: BlobStore,
    private readonly trustedKeys: readonly PublicKey[],
  ) {}

  get location(): string {
    return this.blob.url;
  }

  private opening(): { store: CacheStore; checked: Promise<unknown> } {
    this.ready ??= CacheStore.openReading({ blob: this.blob, trustedKeys: this.trustedKeys });
    return this.ready;
  }

  private async open(): Promise<CacheStore> {
    const { store, checked } = this.opening();
    await checked;
    return store;
  }

  async candidatesOfAll(drefs: readonly DRef[]): Promise<Map<string, Candidate[]>> {
    // The cache-info check and the first query go out together.
    const { store, checked } = this.opening();
    const [, { found, refused }] = await Promise.all([checked, store.query(drefs)]);
    // The refusal (E_CACHE_UNSIGNED, _UNTRUSTED, _BAD_SIGNATURE, _BAD_ENTRY, _MISSING) of an entry that is there.
    if (refused.length > 0) throw refused[0]!;
    return found;
  }

  /** Entries the queries read and trusted already: the fetch that follows does not read them again. */
  known(): ReadonlyMap<RRef, CacheEntry> | undefined {
    return this.ready?.store.knownEntries();
  }

  async candidates(dref: DRef, ctx: string): Promise<Candidate[]> {
    return (await this.candidatesOfAll([dref])).get(candidateKey(dref, ctx)) ?? [];
  }

  async realizationsOf(dref: DRef): Promise<RealizationInfo[]> {
    return (await this.open()).realizationsOf(dref);
  }

  async info(rref: RRef): Promise<RealizationInfo | undefined> {
    return (await this.open()).info(rref);
  }

  async meta(rref: RRef): Promise<RealizationMeta> {
    return (await this.open()).meta(rref);
  }

  async closure(rrefs: Iterable<RRef>): Promise<RRef[]> {
    return (await this.open()).closure(rrefs);
  }

  async derivation(dref: DRef): Promise<string | undefined> {
    return (await this.open()).derivation(dref);
  }

  async readFile(rref: RRef, rel: string | Buffer): Promise<Buffer> {
    return (await this.open()).readFile(rref, rel);
  }

  async openFile(rref: RRef, rel: string | Buffer): Promise<Readable> {
    return (await this.open()).openFile(rref, rel);
  }

  async readLog(rref: RRef): Promise<Buffer> {
    return (await this.open()).readLog(rref);
  }

  async add(request: AddRequest, opts?: AddOptions): Promise<Added[]> {
    return (await this.open()).add(request, opts);
  }

  async addTempRoots(drefs: readonly DRef[], label: string): Promise<TempRoots> {
    return (await this.open()).addTempRoots(drefs, label);
  }

  async withLock<T>(key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts?: LockOptions): Promise<T> {
    return (await this.open()).withLock(key, what, fn, opts);
  }

  close(): void {
    this.ready?.store.close();
  }
}
