/**
 * What `cairn build-drv DREF --substituter URL` fetches before it builds, on
 * a host that has only a binary cache: the derivation and a code object
 * that defines it (through a signed pointer, store/cache/code-objects.ts),
 * then the input realizations it lacks (the named RRefs, else every
 * realization of each dependency), all through the cache's verified paths.
 * Nothing the store has is fetched again. Substituters are tried in order:
 * each step takes the first one that serves it, and fails with the first
 * refusal when none does.
 */
import { CairnError } from '../errors.js';
import { fetchDerivationCode } from '../store/cache/code-objects.js';
import { readInfo } from '../store/cache/entries.js';
import { openBlobStore } from '../store/cache/open-blob.js';
import { pullClosure } from '../store/cache/pull.js';
import { parsePublicKey, readTrustedKey, type PublicKey } from '../store/cache/sign.js';
import type { BlobStore } from '../store/cache/blob.js';
import { readStoreConfig } from '../store/config.js';
import { parseRRef, type DRef, type RRef } from '../store/refs.js';
import type { LocalStore } from '../store/store.js';

export interface FetchForBuildReport {
  /** Whether the derivation or its code object came from a cache. */
  derivation: boolean;
  /** Realizations that entered the store. */
  inputs: RRef[];
}

/** The store's trusted keys and the extra ones (NAME:BASE64 or .public files). */
export function trustedKeysOf(store: LocalStore, extra: readonly string[]): PublicKey[] {
  return [...readStoreConfig(store.root).trustedPublicKeys.map(parsePublicKey), ...extra.map(readTrustedKey)];
}

/** The dependencies a drv.json names (its `deps`), as written by instantiate. */
function depsOfDrv(dref: DRef, text: string): DRef[] {
  try {
    const deps = (JSON.parse(text) as { deps?: unknown }).deps;
    if (Array.isArray(deps) && deps.every((d) => typeof d === 'string')) return deps as DRef[];
  } catch {
    /* refused below */
  }
  throw new CairnError('E_CODE_MISMATCH', `derivation ${dref} in the store is not a drv.json of this Cairn`, { dref });
}

/** Tries `step` on each cache in turn; the first success wins, else the first error is thrown. */
async function firstServing<T>(blobs: readonly BlobStore[], step: (b: BlobStore) => Promise<T>): Promise<T> {
  let first: unknown;
  for (const b of blobs) {
    try {
      return await step(b);
    } catch (e) {
      first ??= e;
    }
  }
  throw first;
}

export async function fetchForBuild(
  store: LocalStore,
  urls: readonly string[],
  dref: DRef,
  inputs: readonly RRef[],
  trusted: readonly PublicKey[],
): Promise<FetchForBuildReport> {
  if (urls.length === 0) return { derivation: false, inputs: [] };
  // Opened only when something is missing: a host whose store has it all asks no cache.
  let opened: Promise<BlobStore[]> | undefined;
  const blobs = (): Promise<BlobStore[]> => (opened ??= Promise.all(urls.map((u) => openBlobStore(u))));
  let fetched = false;
  const code = (await store.derivation(dref)) === undefined ? undefined : await store.derivationCode(dref);
  if (code === undefined || (await store.readCode(code).catch(() => undefined)) === undefined) {
    const drv = await firstServing(await blobs(), async (b) => {
      await readInfo(b);
      return fetchDerivationCode(b, store, dref, trusted);
    });
    fetched = drv.fetched;
  }
  const deps = depsOfDrv(dref, (await store.derivation(dref))!);
  const named = new Set(inputs.map((r) => parseRRef(r).dref));
  const wanted: string[] = [
    ...inputs.filter((r) => !store.has(r)),
    // A dependency with no input named and none here: every realization the cache trusts (build-drv
    // then asks for one to be named when there are several, as it does for a store's own).
    ...(
      await Promise.all(deps.filter((d) => !named.has(d)).map(async (d) => [d, await store.realizationsOf(d)] as const))
    )
      .filter(([, have]) => have.length === 0)
      .map(([d]) => d),
  ];
  const received: RRef[] = [];
  if (wanted.length > 0) {
    const r = await firstServing(await blobs(), (b) => pullClosure(b, store, wanted, { trustedKeys: trusted }));
    received.push(...r.received);
  }
  return { derivation: fetched, inputs: received };
}
