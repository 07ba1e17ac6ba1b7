/**
 * `cairn cache pull`: the closures of some refs from a binary cache into a
 * local store. Every entry must be well formed and signed by a trusted key
 * before anything is downloaded; the archives are then unpacked (hostile
 * input rules) into a staging directory laid out as the store is, and taken
 * in through the same verified receive path as sync and import: each tree
 * re-hashed against its entry, each RRef against (dref, context, tree),
 * each drv.json against its DRef, the closure complete. All or nothing: one
 * refusal and nothing enters the store.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { removeTree } from '../fsutil.js';
import { sha256Hex } from '../hash.js';
import { receiveClosure, type ReceiveReport } from '../receive.js';
import { parseRef, parseRRef, type DRef, type RRef } from '../refs.js';
import type { LocalStore } from '../store.js';
import { dependencyOrder, type ClosureManifest } from '../sync-plan.js';
import { fetchObject, gunzip, unpackTree } from './archive.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, listRRefs, mapLimit, readEntry, readInfo } from './entries.js';
import { archiveKindOf, depsOf, drvKey, inlineLogOf, logKey, metaOf, type CacheEntry } from './format.js';
import type { PublicKey } from './sign.js';

export interface PullOptions {
  trustedKeys: readonly PublicKey[];
  /** Downloads in flight (default 16). */
  concurrency?: number;
  /**
   * Entries read (and trusted) already, by a query of the same cache in the
   * same run: not read again. A substituter passes what its candidate query
   * read, so the fetch that follows costs the archives only.
   */
  known?: ReadonlyMap<RRef, CacheEntry>;
}

export interface PullReport {
  /** Realizations in the closure. */
  closure: number;
  /** Realizations of the closure the local store had already. */
  present: RRef[];
  /** Realizations that entered the local store, dependencies first. */
  received: RRef[];
  /** Realizations of a DRef asked for whose entries do not count (untrusted, malformed), with the reason. */
  skipped: { rref: RRef; code: string }[];
  receive: ReceiveReport | null;
}

/**
 * The RRefs `refs` name in the cache. An RRef is taken as asked (and
 * refused later if its entry does not count). A DRef stands for every
 * realization the cache has of it that counts: the others (untrusted,
 * malformed) are skipped and reported, unless none counts, when the first
 * reason is the error.
 */
export async function resolveInCache(
  blob: BlobStore,
  refs: readonly string[],
  trusted: readonly PublicKey[],
): Promise<{ roots: RRef[]; skipped: { rref: RRef; code: string }[]; read: Map<RRef, CacheEntry> }> {
  const out: RRef[] = [];
  const read = new Map<RRef, CacheEntry>();
  const skipped: { rref: RRef; code: string }[] = [];
  for (const ref of refs) {
    const p = parseRef(ref);
    if (p.kind === 'rz') {
      out.push(p.rref);
      continue;
    }
    const found = await listRRefs(blob, p.dref);
    if (found.length === 0) throw missing(blob, ref, 'has no realization of it');
    const checked = await mapLimit(found, PARALLEL, async (r) => {
      try {
        const e = await readEntry(blob, r, trusted);
        if (e === undefined) return missing(blob, r, 'lost the entry of');
        read.set(r, e);
        return null;
      } catch (e) {
        if (e instanceof CairnError && e.code !== 'E_CACHE_UNAVAILABLE') return e;
        throw e;
      }
    });
    const good = found.filter((_, i) => checked[i] === null);
    if (good.length === 0) throw checked[0]!;
    out.push(...good);
    found.forEach((rref, i) => {
      const e = checked[i];
      if (e) skipped.push({ rref, code: e.code });
    });
  }
  return { roots: [...new Set(out)], skipped, read };
}

const missing = (blob: BlobStore, ref: string, why: string): CairnError =>
  new CairnError('E_CACHE_MISSING', `${blob.url} ${why}: ${ref}`, { url: blob.url, ref });

/**
 * The trusted entries of the closure of `roots` that the local store lacks
 * (a realization it has brings its closure with it). Fetched frontier by
 * frontier, in parallel; those in `known` (trusted already) are not read again.
 */
export async function fetchClosureEntries(
  blob: BlobStore,
  roots: readonly RRef[],
  trusted: readonly PublicKey[],
  have: (r: RRef) => boolean,
  limit = PARALLEL,
  known: ReadonlyMap<RRef, CacheEntry> = new Map(),
): Promise<{ entries: Map<RRef, CacheEntry>; present: RRef[] }> {
  const entries = new Map<RRef, CacheEntry>();
  const present: RRef[] = [];
  const seen = new Set<RRef>();
  let frontier = [...new Set(roots)];
  while (frontier.length > 0) {
    for (const r of frontier) seen.add(r);
    const local = frontier.filter((r) => have(r));
    present.push(...local);
    const wanted = frontier.filter((r) => !have(r));
    const got = await mapLimit(wanted, limit, async (r) => known.get(r) ?? (await readEntry(blob, r, trusted)));
    const next: RRef[] = [];
    wanted.forEach((r, i) => {
      const e = got[i];
      if (e === undefined) throw missing(blob, r, 'lacks an entry for');
      entries.set(r, e);
      for (const d of depsOf(e)) if (!seen.has(d)) next.push(d);
    });
    frontier = [...new Set(next)];
  }
  return { entries, present };
}

/** Pulls the closures of `refs` into `local`. */
export async function pullClosure(
  blob: BlobStore,
  local: LocalStore,
  refs: readonly string[],
  opts: PullOptions,
): Promise<PullReport> {
  if (refs.length === 0) throw new CairnError('E_BAD_ARGUMENT', 'pull needs at least one DRef or RRef');
  // A caller that knows entries has read this cache's info already.
  if (opts.known === undefined) await readInfo(blob);
  const { roots, skipped, read } = await resolveInCache(blob, refs, opts.trustedKeys);
  const known = new Map([...(opts.known ?? []), ...read]);
  const { entries, present } = await fetchClosureEntries(
    blob,
    roots,
    opts.trustedKeys,
    (r) => local.has(r),
    opts.concurrency,
    known,
  );
  if (entries.size === 0) return { closure: present.length, present, received: [], skipped, receive: null };
  const receive = await takeIn(blob, local, roots, entries, present, opts.concurrency ?? PARALLEL);
  return { closure: entries.size + present.length, present, received: receive.received, skipped, receive };
}

/**
 * Downloads and unpacks `entries` (trusted already) and takes them in
 * through receiveClosure. Shared with the cache store's reads. No existence
 * check first: a missing archive, log or derivation fails its GET, which
 * refuses the lot before anything enters the store, as the check would.
 */
export async function takeIn(
  blob: BlobStore,
  local: LocalStore,
  roots: readonly RRef[],
  entries: Map<RRef, CacheEntry>,
  present: readonly RRef[],
  limit = PARALLEL,
): Promise<ReceiveReport> {
  const list = [...entries.values()];
  const drefs = new Set<DRef>(list.map((e) => e.dref));
  const needDrv: DRef[] = [];
  for (const d of drefs) if ((await local.derivation(d)) === undefined) needDrv.push(d);
  const gone = (key: string): CairnError =>
    new CairnError('E_CACHE_MISSING', `${blob.url} lacks ${key}, which its entries name: those entries do not count`, {
      url: blob.url,
      keys: [key],
    });

  const staging = local.makeTempDir('cache-pull');
  const downloads = local.makeTempDir('cache-download');
  try {
    // Each tree is downloaded once, however many realizations share it, and unpacked into each.
    const byTree = new Map<string, CacheEntry[]>();
    for (const e of list) (byTree.get(e.tree) ?? byTree.set(e.tree, []).get(e.tree)!).push(e);
    await mapLimit([...byTree.values()], limit, async (group) => {
      const key = group[0]!.archive;
      const kind = archiveKindOf(key);
      const file = path.join(downloads, `${group[0]!.tree}.${kind}`);
      const inline = group.find((e) => e.inlineArchive !== null)?.inlineArchive;
      if (inline !== undefined && inline !== null) {
        fs.writeFileSync(file, Buffer.from(inline, 'base64'), { flag: 'wx', mode: 0o600 });
      } else {
        if (!(await fetchObject(blob, key, file))) throw gone(key);
      }
      for (const e of group) {
        const p = parseRRef(e.rref);
        const dir = path.join(staging, 'd', p.dref, 'r', p.rhash);
        fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
        await unpackTree(file, dir, kind);
        fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify(metaOf(e), null, 2) + '\n', { flag: 'wx' });
        const log = inlineLogOf(e) ?? (await fetchLog(blob, e.log!, gone));
        if (log.length > 0) fs.writeFileSync(path.join(dir, 'build.log'), log, { flag: 'wx' });
      }
      fs.rmSync(file, { force: true });
    });
    await mapLimit(needDrv, limit, async (dref) => {
      const signed = list.find((e) => e.dref === dref)!;
      // An inline derivation was checked against the signed hash when its entry was parsed.
      let text = list.find((e) => e.dref === dref && e.inlineDrv !== null)?.inlineDrv ?? null;
      if (text === null) {
        const body = await blob.get(drvKey(dref));
        if (body === undefined) throw gone(drvKey(dref));
        text = body.toString('utf8');
      }
      // The signature covers the drv's hash: a replaced drv.json is refused here, receive checks it against the DRef.
      if (sha256Hex(text.replace(/\n$/, '')) !== signed.drv) {
        throw new CairnError('E_SYNC_HASH_MISMATCH', `${blob.url}: ${drvKey(dref)} is not the signed derivation`, {
          dref,
        });
      }
      fs.mkdirSync(path.join(staging, 'd', dref), { recursive: true, mode: 0o700 });
      fs.writeFileSync(path.join(staging, 'd', dref, 'drv.json'), text, { flag: 'wx' });
    });
    const nodes = list.map((e) => ({ rref: e.rref, deps: depsOf(e) }));
    const manifest: ClosureManifest = {
      format: 'cairn-closure-1',
      roots: [...roots],
      rrefs: dependencyOrder(nodes),
      drvs: needDrv,
      drefs: [...new Set([...drefs, ...present.map((r) => parseRRef(r).dref)])],
    };
    return await receiveClosure(local, staging, manifest, { allOrNothing: true });
  } finally {
    removeTree(staging);
    removeTree(downloads);
  }
}

/** A log kept as its own object, checked against the hash its key names. */
async function fetchLog(blob: BlobStore, key: string, gone: (key: string) => CairnError): Promise<Buffer> {
  const body = await blob.get(key);
  if (body === undefined) throw gone(key);
  const log = gunzip(body, `${blob.url}/${key}`);
  if (logKey(sha256Hex(log)) !== key) {
    throw new CairnError('E_SYNC_HASH_MISMATCH', `${blob.url}: ${key} does not hash to its key`, { key });
  }
  return log;
}
