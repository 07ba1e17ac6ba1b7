/**
 * Reading a binary cache: its cache-info object, and its realization
 * entries, each checked (well formed, signed by a trusted key) before a
 * caller sees it. Small helpers shared by push, pull, the cache store, gc
 * and verify.
 */
import * as os from 'node:os';
import { CairnError } from '../../errors.js';
import { ownerAlive, ownerId } from '../fsutil.js';
import { parseRRef, type DRef, type RRef } from '../refs.js';
import type { BlobStore } from './blob.js';
import {
  INFO_KEY,
  TMP_ROOTS,
  entryKey,
  entryPrefix,
  fingerprint,
  infoObject,
  parseEntry,
  parseInfo,
  rrefOfKey,
  type CacheEntry,
  type CacheInfo,
} from './format.js';
import { checkSignatures, verdictError, type PublicKey } from './sign.js';

/** How many requests a cache operation keeps in flight. */
export const PARALLEL = 16;

/** `fn` over `items` with at most `limit` calls in flight; results in order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** The cache-info object; E_CACHE_FORMAT when it is missing or of another format. */
export async function readInfo(blob: BlobStore): Promise<CacheInfo> {
  const body = await blob.get(INFO_KEY);
  if (body === undefined) {
    throw new CairnError(
      'E_CACHE_FORMAT',
      `${blob.url} has no ${INFO_KEY}: it is not a cairn cache (push creates one)`,
      {
        url: blob.url,
      },
    );
  }
  return parseInfo(body.toString('utf8'), blob.url);
}

/** The cache-info object, written first if the cache is new (a first push makes the cache). */
export async function ensureInfo(blob: BlobStore): Promise<CacheInfo> {
  const body = await blob.get(INFO_KEY);
  if (body !== undefined) return parseInfo(body.toString('utf8'), blob.url);
  await blob.put(INFO_KEY, Buffer.from(JSON.stringify(infoObject()) + '\n'), { contentType: 'application/json' });
  return infoObject();
}

/** Throws unless one of the entry's signatures verifies under a trusted key. */
export function checkTrust(entry: CacheEntry, trusted: readonly PublicKey[], url: string): void {
  const verdict = checkSignatures(fingerprint(entry), entry.signatures, trusted);
  if (verdict !== 'ok') throw verdictError(verdict, `${url}: entry ${entry.rref}`);
}

/** The entry of `rref`, well formed and trusted; undefined when the cache lacks it. */
export async function readEntry(
  blob: BlobStore,
  rref: RRef,
  trusted: readonly PublicKey[],
): Promise<CacheEntry | undefined> {
  const key = entryKey(rref);
  const body = await blob.get(key);
  if (body === undefined) return undefined;
  const entry = parseEntry(body.toString('utf8'), key);
  checkTrust(entry, trusted, blob.url);
  return entry;
}

/** The RRefs the cache has metadata for (of one DRef, or all), unchecked. */
export async function listRRefs(blob: BlobStore, dref?: DRef): Promise<RRef[]> {
  const out: RRef[] = [];
  for await (const key of blob.list(dref === undefined ? 'r/' : entryPrefix(dref))) {
    const rref = rrefOfKey(key);
    if (rref !== null && (dref === undefined || parseRRef(rref).dref === dref)) out.push(rref);
  }
  return out.sort();
}

/** One reader's or pusher's claim on parts of the cache, honoured by cache gc. */
export interface TempRootObject {
  host: string;
  owner: string;
  created: number;
  drefs: DRef[];
  /** Archive and log keys a push is about to reference. */
  keys: string[];
}

/** How long a temporary root of another host counts (its process cannot be asked whether it lives). */
export const FOREIGN_ROOT_MS = 24 * 3600 * 1000;

let rootCounter = 0;

/** Writes a temporary root; `release` deletes it. */
export async function addCacheTempRoot(
  blob: BlobStore,
  drefs: readonly DRef[],
  keys: readonly string[],
): Promise<{ release(): Promise<void> }> {
  const host = os.hostname();
  const owner = ownerId();
  const key = `${TMP_ROOTS}${encodeURIComponent(host).replace(/%/g, '_')}-${owner}-${++rootCounter}.json`;
  const obj: TempRootObject = { host, owner, created: Date.now(), drefs: [...drefs], keys: [...keys] };
  await blob.put(key, Buffer.from(JSON.stringify(obj) + '\n'), { contentType: 'application/json' });
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await blob.delete([key]);
    },
  };
}

/** The temporary roots that still count: a live process of this host, or another host's younger than a day. */
export async function liveTempRoots(
  blob: BlobStore,
  now = Date.now(),
): Promise<{ live: TempRootObject[]; dead: string[] }> {
  const live: TempRootObject[] = [];
  const dead: string[] = [];
  const keys: string[] = [];
  for await (const key of blob.list(TMP_ROOTS)) keys.push(key);
  const bodies = await mapLimit(keys, PARALLEL, (k) => blob.get(k));
  keys.forEach((key, i) => {
    let r: TempRootObject | undefined;
    try {
      r = JSON.parse(bodies[i]?.toString('utf8') ?? 'null') as TempRootObject;
    } catch {
      r = undefined;
    }
    if (r === undefined || r === null || !Array.isArray(r.drefs) || !Array.isArray(r.keys)) {
      dead.push(key);
      return;
    }
    const alive = r.host === os.hostname() ? ownerAlive(r.owner) : now - r.created < FOREIGN_ROOT_MS;
    if (alive) live.push(r);
    else dead.push(key);
  });
  return { live, dead };
}
