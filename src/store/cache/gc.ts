/**
 * `cairn cache gc`: deletes old realizations from a binary cache, keeping
 * closures whole. A realization is a candidate when it is beyond the newest
 * `keepLast` of its DRef and/or older than `olderThanMs` (both when both
 * are given); everything else is kept, and so is the closure of everything
 * kept, and every DRef a live temporary root names. Entries that do not
 * count (malformed, archive missing, a dependency missing) are deleted too.
 * Metadata goes first, then the archives, logs and derivations no remaining
 * entry names (minus those a live push has claimed), so at no point does an
 * entry name a deleted archive or a deleted dependency. Code pointers
 * (code-objects.ts) go with their derivation's last realization, or, never
 * built here, once older than `olderThanMs`; then the code objects and
 * derivations no remaining pointer or entry names.
 *
 * gc does not check signatures: it deletes by age and shape, never because
 * of a key, so a gc run with a different trust setting cannot empty a cache.
 */
import { CairnError } from '../../errors.js';
import { parseRRef, type DRef, type RRef } from '../refs.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, liveTempRoots, mapLimit, readInfo } from './entries.js';
import { codeKey, parsePointer, pointerOfKey } from './code-objects.js';
import { blobsOf, depsOf, drvKey, entryKey, parseEntry, rrefOfKey, type CacheEntry } from './format.js';

export interface CacheGcOptions {
  /** Keep the newest N realizations of each DRef. */
  keepLast?: number;
  /** Delete realizations created more than this many milliseconds ago. */
  olderThanMs?: number;
  dryRun?: boolean;
  now?: number;
}

export interface CacheGcReport {
  kept: number;
  /** Realizations whose entries were deleted. */
  deleted: RRef[];
  /** Entries that did not count (malformed, or naming something missing). */
  broken: RRef[];
  /** Archive, log, derivation and dead temporary-root objects deleted. */
  objects: number;
}

/** Reads every entry (unchecked signatures) and lists every object. */
async function survey(blob: BlobStore): Promise<{ entries: Map<RRef, CacheEntry>; broken: RRef[]; keys: Set<string> }> {
  // Entries first, then the rest: a pusher writes an entry only after its archive, log and derivation,
  // so every entry this listing sees has its objects in the later listing (unless they are really gone).
  const entryKeys: string[] = [];
  for await (const k of blob.list('r/')) if (rrefOfKey(k) !== null) entryKeys.push(k);
  const keys = new Set<string>(entryKeys);
  for (const prefix of ['a/', 'l/', 'd/', 'c/']) for await (const k of blob.list(prefix)) keys.add(k);
  const bodies = await mapLimit(entryKeys, PARALLEL, (k) => blob.get(k));
  const entries = new Map<RRef, CacheEntry>();
  const broken: RRef[] = [];
  entryKeys.forEach((k, i) => {
    const rref = rrefOfKey(k)!;
    const body = bodies[i];
    if (body === undefined) return; // deleted meanwhile
    try {
      entries.set(rref, parseEntry(body.toString('utf8'), k));
    } catch {
      broken.push(rref);
    }
  });
  return { entries, broken, keys };
}

/** Entries whose archive, log or (transitively) dependency is missing. */
export function incomplete(entries: Map<RRef, CacheEntry>, exists: (key: string) => boolean): Set<RRef> {
  const bad = new Set<RRef>();
  for (const [r, e] of entries) {
    if (![...blobsOf(e), drvKey(e.dref)].every(exists)) bad.add(r);
  }
  // A dependency that is missing or bad makes its dependants bad, to a fixed point.
  for (let changed = true; changed;) {
    changed = false;
    for (const [r, e] of entries) {
      if (bad.has(r)) continue;
      if (depsOf(e).some((d) => bad.has(d) || !entries.has(d))) {
        bad.add(r);
        changed = true;
      }
    }
  }
  return bad;
}

export async function cacheGc(blob: BlobStore, opts: CacheGcOptions): Promise<CacheGcReport> {
  if (opts.keepLast === undefined && opts.olderThanMs === undefined) {
    throw new CairnError('E_BAD_ARGUMENT', 'cache gc needs keepLast and/or olderThanMs: it never deletes by default');
  }
  if (opts.keepLast !== undefined && (!Number.isInteger(opts.keepLast) || opts.keepLast < 0)) {
    throw new CairnError('E_BAD_ARGUMENT', `keepLast must be a whole number >= 0, not ${opts.keepLast}`);
  }
  if (!blob.writable) throw new CairnError('E_CACHE_READ_ONLY', `${blob.url} is read-only`, { url: blob.url });
  await readInfo(blob);
  const now = opts.now ?? Date.now();
  const { entries, broken, keys } = await survey(blob);
  const bad = incomplete(entries, (k) => keys.has(k));

  const byDref = new Map<string, CacheEntry[]>();
  for (const [r, e] of entries) if (!bad.has(r)) (byDref.get(e.dref) ?? byDref.set(e.dref, []).get(e.dref)!).push(e);
  const { live, dead } = await liveTempRoots(blob, now);
  const rootedDrefs = new Set(live.flatMap((r) => r.drefs));
  const keep = new Set<RRef>();
  for (const list of byDref.values()) {
    list.sort((a, b) => b.created - a.created || (a.rref < b.rref ? 1 : -1));
    list.forEach((e, i) => {
      const beyond = opts.keepLast === undefined || i >= opts.keepLast;
      const old = opts.olderThanMs === undefined || now - e.created > opts.olderThanMs;
      if (!(beyond && old) || rootedDrefs.has(e.dref)) keep.add(e.rref);
    });
  }
  // Closure: what a kept realization was built from stays.
  const stack = [...keep];
  while (stack.length > 0) {
    for (const d of depsOf(entries.get(stack.pop()!)!)) {
      if (!keep.has(d)) {
        keep.add(d);
        stack.push(d);
      }
    }
  }
  const deleted = [...entries.keys()].filter((r) => !keep.has(r) && !bad.has(r));
  const doomed = [...deleted, ...bad, ...broken];
  // Delete dependants before dependencies, so a concurrent reader never finds an entry whose dependency is gone.
  const depths = new Map<RRef, number>();
  for (const r of doomed) depth(r, entries, depths);
  const order = [...doomed].sort((a, b) => depths.get(b)! - depths.get(a)!);
  if (opts.dryRun) return { kept: keep.size, deleted, broken: [...bad, ...broken], objects: 0 };
  for (const r of order) await blob.delete([entryKey(r)]);

  // What the remaining entries and live pushes name stays; the rest of a/, l/, d/ goes.
  // Temporary roots read again: a push that started since the first read claims its archives by now.
  const again = await liveTempRoots(blob, now);
  const named = new Set<string>([...live, ...again.live].flatMap((r) => r.keys));
  for (const r of keep) {
    const e = entries.get(r)!;
    for (const k of [...blobsOf(e), drvKey(e.dref)]) named.add(k);
  }
  for (const r of [...live, ...again.live]) for (const d of r.drefs) named.add(`d/${d}.json`);
  // And entries written since the survey (a push that finished meanwhile): what they name stays.
  const doomedSet = new Set(doomed);
  const fresh: string[] = [];
  for await (const k of blob.list('r/')) {
    const r = rrefOfKey(k);
    if (r !== null && !keep.has(r) && !doomedSet.has(r)) fresh.push(k);
  }
  for (const body of await mapLimit(fresh, PARALLEL, (k) => blob.get(k))) {
    try {
      const e = JSON.parse(body?.toString('utf8') ?? 'null') as Partial<CacheEntry> | null;
      for (const k of [e?.archive, e?.log, e?.dref === undefined ? undefined : `d/${e.dref}.json`]) {
        if (typeof k === 'string') named.add(k);
      }
    } catch {
      /* malformed: the next gc removes it */
    }
  }
  const pointers = await doomedPointers(blob, opts, now, {
    live: new Set([...keep, ...fresh.map((k) => rrefOfKey(k)!)].map((r) => parseRRef(r).dref)),
    rooted: new Set([...live, ...again.live].flatMap((r) => r.drefs)),
    built: new Set([...entries.keys(), ...broken].map((r) => parseRRef(r).dref)),
  });
  // The pointers that stay keep their derivation and code object; those that go, go before them.
  for (const { dref, code } of pointers.kept) named.add(drvKey(dref)).add(codeKey(code));
  await mapLimit(chunks(pointers.doomed, 100), 4, (c) => blob.delete(c));
  const objects = [...keys].filter((k) => /^(a|l|d|c)\//.test(k) && !named.has(k));
  await mapLimit(chunks([...objects, ...dead], 100), 4, (c) => blob.delete(c));
  return {
    kept: keep.size,
    deleted,
    broken: [...bad, ...broken],
    objects: objects.length + dead.length + pointers.doomed.length,
  };
}

/**
 * Which code pointers (code-objects.ts) go: one stays while its derivation
 * has a realization in the cache or a live push names it; one whose
 * realizations this gc deleted goes with them; one of a derivation never
 * built here stays until it is older than `olderThanMs` (always, without it).
 */
async function doomedPointers(
  blob: BlobStore,
  opts: CacheGcOptions,
  now: number,
  drefs: { live: Set<string>; rooted: Set<string>; built: Set<string> },
): Promise<{ kept: { dref: DRef; code: string }[]; doomed: string[] }> {
  const kept: { dref: DRef; code: string }[] = [];
  const doomed: string[] = [];
  const unbuilt: string[] = [];
  for await (const k of blob.list('p/')) {
    const p = pointerOfKey(k);
    if (p === null) continue;
    if (drefs.live.has(p.dref) || drefs.rooted.has(p.dref)) kept.push(p);
    else if (drefs.built.has(p.dref)) doomed.push(k);
    else if (opts.olderThanMs === undefined) kept.push(p);
    else unbuilt.push(k);
  }
  const bodies = await mapLimit(unbuilt, PARALLEL, (k) => blob.get(k));
  unbuilt.forEach((k, i) => {
    let created: number | undefined;
    try {
      created = parsePointer(bodies[i]?.toString('utf8') ?? '', k).created;
    } catch {
      created = undefined; // malformed: no reader uses it
    }
    if (created !== undefined && now - created <= opts.olderThanMs!) kept.push(pointerOfKey(k)!);
    else doomed.push(k);
  });
  return { kept, doomed };
}

function depth(r: RRef, entries: Map<RRef, CacheEntry>, memo: Map<RRef, number>): number {
  const e = entries.get(r);
  if (e === undefined) return 0;
  const known = memo.get(r);
  if (known !== undefined) return known;
  memo.set(r, 0);
  const d = 1 + Math.max(0, ...depsOf(e).map((x) => depth(x, entries, memo)));
  memo.set(r, d);
  return d;
}

const chunks = <T>(xs: readonly T[], n: number): T[][] =>
  Array.from({ length: Math.ceil(xs.length / n) }, (_, i) => xs.slice(i * n, i * n + n));
