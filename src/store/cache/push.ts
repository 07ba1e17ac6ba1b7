/**
 * `cairn cache push`: the closures of some refs from a local store into a
 * binary cache. Existence is asked in one batched `has`; archives (one per
 * distinct tree), logs and derivations are uploaded in parallel with bounded
 * concurrency; the signed metadata goes last, dependencies before dependants,
 * so an entry never appears before its archive or its dependencies. A push
 * holds a temporary root in the cache naming what it is about to reference,
 * so a concurrent cache gc leaves those archives alone.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { removeTree } from '../fsutil.js';
import { sha256Hex } from '../hash.js';
import { parseRef, parseRRef, type DRef, type RRef } from '../refs.js';
import type { LocalStore, RealizationMeta } from '../store.js';
import { dependencyOrder } from '../sync-plan.js';
import { listClosure } from '../sync.js';
import { gzip, packTree } from './archive.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, addCacheTempRoot, ensureInfo, mapLimit } from './entries.js';
import {
  ENTRY_FORMAT,
  INLINE_ARCHIVE_MAX,
  INLINE_DRV_MAX,
  INLINE_LOG_MAX,
  archiveKey,
  archiveKeys,
  blobsOf,
  drvKey,
  entryKey,
  fingerprint,
  logKey,
  parseEntry,
  type ArchiveKind,
  type CacheEntry,
} from './format.js';
import { pushDerivationCode } from './code-objects.js';
import { checkSignatures, parsePublicKey, publicKeyOf, sign, type SecretKey } from './sign.js';

export interface PushOptions {
  /** Signs every entry pushed. */
  key: SecretKey;
  /** Uploads in flight (default 16). */
  concurrency?: number;
  /**
   * Archives up to this many bytes ride in their entry (default: $CAIRN_CACHE_INLINE_MAX, else
   * INLINE_ARCHIVE_MAX, which is also the most a reader accepts); 0 stores every archive as an object.
   */
  inlineArchiveMax?: number;
}

/** The environment variable that sets `inlineArchiveMax` (0 to INLINE_ARCHIVE_MAX). */
export const INLINE_ENV = 'CAIRN_CACHE_INLINE_MAX';

function inlineMax(opts: PushOptions): number {
  if (opts.inlineArchiveMax !== undefined) return Math.min(opts.inlineArchiveMax, INLINE_ARCHIVE_MAX);
  const v = process.env[INLINE_ENV];
  if (v === undefined || v === '') return INLINE_ARCHIVE_MAX;
  if (!/^\d+$/.test(v) || Number(v) > INLINE_ARCHIVE_MAX) {
    throw new CairnError('E_BAD_ENV', `${INLINE_ENV} must be a whole number from 0 to ${INLINE_ARCHIVE_MAX}: ${v}`, {
      name: INLINE_ENV,
    });
  }
  return Number(v);
}

export interface PushReport {
  /** Realizations in the closure. */
  closure: number;
  /** Realizations whose entry and archive the cache had already. */
  present: RRef[];
  /** Realizations whose entries this push wrote, dependencies first. */
  pushed: RRef[];
  /** Realizations already there, with the same fields, whose entries this push added its signature to. */
  signed: RRef[];
  /** Archives uploaded (a tree already in the cache, or shared by two realizations, is uploaded once). */
  archives: number;
  /** Compressed bytes of the archives uploaded. */
  archiveBytes: number;
  /** Derivations whose signed code pointer this push wrote (pushClosure only; see code-objects.ts). */
  codePointers?: DRef[];
  /** Code objects uploaded (pushClosure only). */
  code?: string[];
}

/** The environment variable that pauses a push between its uploads and its metadata (tests kill it there). */
export const PAUSE_ENV = 'CAIRN_TEST_CACHE_PAUSE_BEFORE_METADATA';

/** Pushes the closures of `refs` (DRefs stand for all their realizations). */
export async function pushClosure(
  local: LocalStore,
  blob: BlobStore,
  refs: readonly string[],
  opts: PushOptions,
): Promise<PushReport> {
  if (refs.length === 0) throw new CairnError('E_BAD_ARGUMENT', 'push needs at least one DRef or RRef');
  const { nodes } = listClosure(local, refs);
  const report = await pushRealizations(local, blob, dependencyOrder(nodes), opts);
  // The derivations go with their code objects, so a host with only the cache can build them (build-drv):
  // those of the closure, and a DRef named with no realization yet, which is what a builder is sent.
  const named = refs.map((r) => parseRef(r)).flatMap((p) => (p.kind === 'drv' ? [p.dref] : []));
  const unbuilt = named.filter((d) => !nodes.some((n) => parseRRef(n.rref).dref === d));
  for (const d of unbuilt) {
    if ((await local.derivationCode(d)) === undefined) {
      throw new CairnError(
        'E_NO_CODE',
        `${d} has no realization and no code object in the store: there is nothing to push ` +
          '(realize its stage file with self-contained code to push it unbuilt, for build-drv elsewhere)',
        { dref: d },
      );
    }
  }
  const drefs = [...new Set([...nodes.map((n) => parseRRef(n.rref).dref), ...named])];
  const code = await pushDerivationCode(local, blob, drefs, opts.key, opts.concurrency ?? PARALLEL);
  return { ...report, codePointers: code.pointers, code: code.code };
}

interface Item {
  meta: RealizationMeta;
  log: Buffer | null;
  /** The log's key when it is too big to ride in the entry. */
  logKey: string | null;
  /** The archive, when small enough to ride in the entry. */
  inline: { kind: ArchiveKind; body: Buffer } | null;
  /** A small tree's archive, packed already (uploaded as it is when too big to ride in the entry). */
  packed: { kind: ArchiveKind; body: Buffer } | null;
}

/** Trees up to this many bytes are packed before asking the cache anything: most fit in their entry. */
const SMALL_TREE = 64 << 10;

/**
 * Pushes the given realizations, which must be closed under dependencies
 * (or have their dependencies in the cache already), in dependency order.
 */
export async function pushRealizations(
  local: LocalStore,
  blob: BlobStore,
  rrefs: readonly RRef[],
  opts: PushOptions,
): Promise<PushReport> {
  if (!blob.writable) throw new CairnError('E_CACHE_READ_ONLY', `${blob.url} is read-only`, { url: blob.url });
  const limit = opts.concurrency ?? PARALLEL;
  const inlineLimit = inlineMax(opts);
  await ensureInfo(blob);
  const items = new Map<RRef, Item>();
  const tmp = local.makeTempDir('cache-push');
  let root: { release(): Promise<void> } | undefined;
  try {
    await mapLimit(rrefs, limit, async (rref) => {
      const meta = local.readMeta(rref);
      const log = await local.readLog(rref);
      const key = log.length > INLINE_LOG_MAX ? logKey(sha256Hex(log)) : null;
      let packed: Item['packed'] = null;
      if (meta.bytes <= SMALL_TREE && inlineLimit > 0) {
        const p = await packTree(local.outPath(rref), path.join(tmp, `${rref}.tar.gz`));
        if (p.body) packed = { kind: p.kind, body: p.body };
      }
      const inline = packed && packed.body.length <= inlineLimit ? packed : null;
      items.set(rref, { meta, log: log.length > 0 ? log : null, logKey: key, inline, packed });
    });
    const drefs = [...new Set(rrefs.map((r) => parseRRef(r).dref))];
    const blobKeys = [
      ...new Set(
        [...items.values()].flatMap((i) => [
          ...(i.inline ? [] : archiveKeys(i.meta.tree)),
          ...(i.logKey ? [i.logKey] : []),
        ]),
      ),
    ];
    root = await addCacheTempRoot(blob, drefs, blobKeys);
    const asked = [...rrefs.map(entryKey), ...blobKeys, ...drefs.map(drvKey)];
    const there = await blob.has(asked);
    // An entry counts only with its objects: one whose archive, drv or log was deleted is pushed again whole.
    const complete = (e: CacheEntry): boolean => [...blobsOf(e), drvKey(e.dref)].every((k) => there.has(k));
    // The archive a tree has in the cache already, under either key (gzip preferred, as a pusher would choose).
    const archiveOf = new Map<string, string>();
    for (const i of items.values()) {
      const k = i.inline ? archiveKey(i.meta.tree, i.inline.kind) : archiveKeys(i.meta.tree).find((a) => there.has(a));
      if (k !== undefined) archiveOf.set(i.meta.tree, k);
    }
    // Entries already there are read (one GET each, in parallel). A malformed one, or one whose signature by
    // this key's name fails, is replaced whole. One with the same fields but not yet signed by this key gets
    // the signature added (a rotated key, a second teammate's key), as `nix store sign` does; one written
    // by another build of the same RRef (another creation time) is left as it is.
    const withEntry = rrefs.filter((r) => there.has(entryKey(r)));
    const bodies = await mapLimit(withEntry, limit, (r) => blob.get(entryKey(r)));
    const existing = new Map<RRef, CacheEntry>();
    withEntry.forEach((r, n) => {
      try {
        existing.set(r, parseEntry(bodies[n]?.toString('utf8') ?? '', entryKey(r)));
      } catch {
        /* malformed: pushed again */
      }
    });
    const ours = parsePublicKey(publicKeyOf(opts.key));
    const toSign: CacheEntry[] = [];
    const todo: Item[] = [];
    const present: RRef[] = [];
    for (const rref of rrefs) {
      const i = items.get(rref)!;
      const e = existing.get(rref);
      const verdict = e ? checkSignatures(fingerprint(e), e.signatures, [ours]) : 'unsigned';
      if (!e || !complete(e) || verdict === 'bad-signature') {
        todo.push(i);
        continue;
      }
      present.push(rref);
      if (verdict === 'ok') continue;
      const mine = entryOf(i, e.archive, (await local.derivation(i.meta.dref)) ?? '', opts.key);
      if (fingerprint(mine) === fingerprint(e))
        toSign.push({ ...e, signatures: [...e.signatures, ...mine.signatures] });
    }

    const trees = new Map<string, RRef>();
    for (const i of todo) if (!archiveOf.has(i.meta.tree)) trees.set(i.meta.tree, i.meta.rref);
    let archiveBytes = 0;
    await mapLimit([...trees], limit, async ([tree, rref]) => {
      // A small tree was packed while deciding whether it rides in its entry: not packed again.
      const small = items.get(rref)!.packed;
      const packed = small
        ? { kind: small.kind, body: small.body, size: small.body.length, file: undefined }
        : await packTree(local.outPath(rref), path.join(tmp, `${tree}.tar.gz`));
      archiveBytes += packed.size;
      const key = archiveKey(tree, packed.kind);
      const contentType = packed.kind === 'tar' ? 'application/x-tar' : 'application/gzip';
      await blob.put(key, packed.body ?? fs.createReadStream(packed.file!), { contentType, size: packed.size });
      if (packed.file !== undefined) fs.rmSync(packed.file, { force: true });
      archiveOf.set(tree, key);
    });
    const logs = new Map<string, Buffer>();
    for (const i of todo) if (i.logKey !== null && !there.has(i.logKey)) logs.set(i.logKey, i.log!);
    await mapLimit([...logs], limit, ([key, log]) => blob.put(key, gzip(log), { contentType: 'application/gzip' }));
    const drvTexts = new Map<DRef, string>();
    for (const dref of new Set(todo.map((i) => i.meta.dref))) {
      const text = await local.derivation(dref);
      if (text === undefined)
        throw new CairnError('E_STORE_IO', `the local store lacks the derivation ${dref}`, { dref });
      drvTexts.set(dref, text);
    }
    await mapLimit(
      [...drvTexts].filter(([d]) => !there.has(drvKey(d))),
      limit,
      ([dref, text]) => blob.put(drvKey(dref), Buffer.from(text), { contentType: 'application/json' }),
    );

    await pauseForTests();

    // Metadata last, level by level: an entry's dependencies are written before it.
    const pushed: RRef[] = [];
    for (const level of levels(
      todo.map((i) => i.meta.rref),
      (r) => deps(items.get(r)!.meta),
    )) {
      await mapLimit(level, limit, async (rref) => {
        const i = items.get(rref)!;
        const entry = entryOf(i, archiveOf.get(i.meta.tree)!, drvTexts.get(i.meta.dref)!, opts.key);
        await blob.put(entryKey(rref), Buffer.from(JSON.stringify(entry, null, 1) + '\n'), {
          contentType: 'application/json',
        });
      });
      pushed.push(...level);
    }
    await mapLimit(toSign, limit, (e) =>
      blob.put(entryKey(e.rref), Buffer.from(JSON.stringify(e, null, 1) + '\n'), { contentType: 'application/json' }),
    );
    return {
      closure: rrefs.length,
      present,
      pushed,
      signed: toSign.map((e) => e.rref),
      archives: trees.size,
      archiveBytes,
    };
  } finally {
    removeTree(tmp);
    await root?.release().catch(() => undefined);
  }
}

const deps = (m: RealizationMeta): RRef[] => Object.values(m.context).flat();

/** The signed metadata object of a realization whose archive is at `archive`. */
function entryOf(item: Item, archive: string, drvText: string, key: SecretKey): CacheEntry {
  const { rref, dref, name, context, ctx, tree, bytes, files, created, buildMs } = item.meta;
  const unsigned = {
    format: ENTRY_FORMAT,
    rref,
    dref,
    name,
    context,
    ctx,
    tree,
    bytes,
    files,
    created,
    buildMs,
    drv: sha256Hex(drvText.replace(/\n$/, '')),
    archive,
    log: item.logKey,
    inlineLog: item.logKey === null && item.log !== null ? item.log.toString('base64') : null,
    inlineDrv: Buffer.byteLength(drvText) <= INLINE_DRV_MAX ? drvText : null,
    inlineArchive: item.inline?.body.toString('base64') ?? null,
  } as const;
  return { ...unsigned, signatures: [sign(key, fingerprint(unsigned))] };
}

/** Groups `rrefs` so that each group depends only on earlier groups (or on nothing in the set). */
export function levels(rrefs: readonly RRef[], depsOf: (r: RRef) => RRef[]): RRef[][] {
  const inSet = new Set(rrefs);
  const depth = new Map<RRef, number>();
  const order = dependencyOrder(rrefs.map((rref) => ({ rref, deps: depsOf(rref) })));
  for (const r of order) {
    const d =
      Math.max(
        -1,
        ...depsOf(r)
          .filter((x) => inSet.has(x))
          .map((x) => depth.get(x)!),
      ) + 1;
    depth.set(r, d);
  }
  const out: RRef[][] = [];
  for (const r of order) (out[depth.get(r)!] ??= []).push(r);
  return out;
}

async function pauseForTests(): Promise<void> {
  const file = process.env[PAUSE_ENV];
  if (!file) return;
  fs.writeFileSync(file, `${process.pid}\n`);
  // Wait to be killed (fault injection); never returns.
  await new Promise<never>(() => setInterval(() => undefined, 1 << 30));
}
