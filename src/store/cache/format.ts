/**
 * The binary cache format (docs/cache.md): static objects only, so any
 * S3-compatible bucket, a directory or a plain HTTP server can hold it.
 *
 *   cache-info.json            format version and compression
 *   a/<tree>.tar.gz            a realization's output tree, keyed by its tree hash (stored once);
 *   a/<tree>.tar               the same, uncompressed, when gzip would not pay (random or compressed data)
 *   l/<sha256>.log.gz          a build log too big to carry in its entry, keyed by the hash of its bytes
 *   d/<dref>.json              a derivation's drv.json (hashes to its DRef)
 *   r/<dref>/<rhash>.json      one realization's signed metadata: one object each, so two
 *                              pushers of the same DRef never overwrite each other's entries
 *   tmp-roots/<id>.json        what a push or a reader is using, kept from cache gc
 *
 * Pure: keys, the shapes of objects and their checks. An entry counts only
 * when its metadata is well formed, signed by a trusted key and its archive
 * exists; pushers upload archives, logs and derivations first and metadata
 * last.
 */
import { CairnError } from '../../errors.js';
import { canonicalJson } from '../canonical.js';
import { sha256Hex } from '../hash.js';
import { parseRef, parseRRef, type DRef, type RRef } from '../refs.js';
import { contextHash, realizationHash, type Context, type RealizationMeta } from '../store.js';

// Format 2: logs and derivations small enough travel inside their entry, and an archive may be a plain tar.
export const CACHE_FORMAT = 'cairn-cache-2';
export const ENTRY_FORMAT = 'cairn-cache-entry-2';
export const COMPRESSION = 'gzip';
export const INFO_KEY = 'cache-info.json';
export const TMP_ROOTS = 'tmp-roots/';

export interface CacheInfo {
  format: typeof CACHE_FORMAT;
  compression: typeof COMPRESSION;
}

/** A realization's metadata object: its `meta.json` fields, and where its parts are in the cache. */
export interface CacheEntry extends Omit<RealizationMeta, 'format'> {
  format: typeof ENTRY_FORMAT;
  /** sha256 (hex) of the derivation's drv.json, which also hashes to the DRef. */
  drv: string;
  /** Key of the archive of the output tree. */
  archive: string;
  /** Key of the build log when it is too big to carry here (INLINE_LOG_MAX), else null. */
  log: string | null;
  /** The build log itself (base64) when it has one of at most INLINE_LOG_MAX bytes, else null. */
  inlineLog: string | null;
  /** The drv.json itself when it has at most INLINE_DRV_MAX bytes (saves a request per DRef on pull), else null. */
  inlineDrv: string | null;
  /**
   * The archive itself (base64, of the kind `archive` names) when it is at
   * most INLINE_ARCHIVE_MAX bytes; then no object holds it. As Bazel's remote
   * cache inlines small outputs: a tiny tree stored twice costs less than a
   * request per realization on every pull.
   */
  inlineArchive: string | null;
  /** `NAME:BASE64` ed25519 signatures of `fingerprint(entry)`. */
  signatures: string[];
}

/**
 * Logs and derivations up to these sizes ride in their entry: most logs are
 * empty or a line, and a pull of many small realizations is bound by its
 * request count, not its bytes.
 */
export const INLINE_LOG_MAX = 4096;
export const INLINE_DRV_MAX = 65536;
export const INLINE_ARCHIVE_MAX = 4096;

/** How an archive is stored: gzip, or a plain tar when gzip does not pay. */
export type ArchiveKind = 'tar.gz' | 'tar';
export const archiveKey = (tree: string, kind: ArchiveKind = 'tar.gz'): string => `a/${tree}.${kind}`;
/** Every key an archive of `tree` may have. */
export const archiveKeys = (tree: string): string[] => [archiveKey(tree, 'tar.gz'), archiveKey(tree, 'tar')];
export const archiveKindOf = (key: string): ArchiveKind => (key.endsWith('.tar.gz') ? 'tar.gz' : 'tar');
export const logKey = (sha256: string): string => `l/${sha256}.log.gz`;
export const drvKey = (dref: DRef): string => `d/${dref}.json`;
export const entryPrefix = (dref: DRef): string => `r/${dref}/`;
export function entryKey(rref: RRef): string {
  const p = parseRRef(rref);
  return `r/${p.dref}/${p.rhash}.json`;
}

/** The RRef an `r/<dref>/<rhash>.json` key names, or null for another key. */
export function rrefOfKey(key: string): RRef | null {
  const m = /^r\/([^/]+)\/([^/]+)\.json$/.exec(key);
  if (!m) return null;
  try {
    return parseRRef(`${m[2]}-${m[1]}`).rref;
  } catch {
    return null;
  }
}

export const infoObject = (): CacheInfo => ({ format: CACHE_FORMAT, compression: COMPRESSION });

/** Checks a cache-info object: E_CACHE_FORMAT for another version or compression. */
export function parseInfo(text: string, url: string): CacheInfo {
  let json: Partial<CacheInfo> | undefined;
  try {
    json = JSON.parse(text) as Partial<CacheInfo>;
  } catch {
    json = undefined;
  }
  if (json?.format !== CACHE_FORMAT || json.compression !== COMPRESSION) {
    throw new CairnError(
      'E_CACHE_FORMAT',
      `${url}: ${INFO_KEY} says ${text.slice(0, 200).trim()}; ` +
        `this cairn reads format ${CACHE_FORMAT} with ${COMPRESSION}`,
      { url },
    );
  }
  return { format: CACHE_FORMAT, compression: COMPRESSION };
}

/**
 * What a signature covers: the realization's identity (RRef, tree hash,
 * context, derivation hash) and every other field a reader acts on
 * (creation time orders candidates, sizes, the log), as canonical JSON.
 */
export function fingerprint(e: Omit<CacheEntry, 'signatures'>): string {
  const { format, rref, dref, name, context, ctx, tree, bytes, files, created, buildMs, drv, archive, log } = e;
  const { inlineLog, inlineDrv, inlineArchive } = e;
  return `${ENTRY_FORMAT}:${canonicalJson({
    format,
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
    drv,
    archive,
    log,
    inlineLog,
    inlineDrv,
    inlineArchive,
  })}`;
}

/** Tree hashes are sha256 in hex. */
const HASH = /^[0-9a-f]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** Not base64, or more than `max` bytes once decoded. */
const tooBig = (v: string, max: number): boolean => !BASE64.test(v) || v.length > Math.ceil(max / 3) * 4;
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/**
 * Parses and checks a metadata object read from `key`: every field present
 * and typed, the RRef the key names, the context hashing to ctx, and
 * (dref, context, tree) hashing to the RRef, so a reader never acts on an
 * entry that could not have been built. Signatures are checked separately.
 */
export function parseEntry(text: string, key: string): CacheEntry {
  const bad = (why: string): CairnError =>
    new CairnError('E_CACHE_BAD_ENTRY', `cache entry ${key} is malformed: ${why}`, { key });
  let e: CacheEntry;
  try {
    e = JSON.parse(text) as CacheEntry;
  } catch {
    throw bad('not JSON');
  }
  if (typeof e !== 'object' || e === null || e.format !== ENTRY_FORMAT) throw bad(`format is not ${ENTRY_FORMAT}`);
  const named = rrefOfKey(key);
  if (named === null || e.rref !== named) throw bad(`it names ${JSON.stringify(e.rref)}`);
  const p = parseRRef(named);
  if (e.dref !== p.dref || e.name !== p.name) throw bad('dref or name differs from the RRef');
  if (typeof e.tree !== 'string' || !HASH.test(e.tree)) throw bad('tree is not a hash');
  if (!isContextShape(e.context)) throw bad('the context is malformed');
  if (e.ctx !== contextHash(e.context)) throw bad('the context does not hash to ctx');
  if (realizationHash(e.dref, e.context, e.tree) !== p.rhash)
    throw bad('derivation, context and tree do not hash to the RRef');
  if (![e.bytes, e.files, e.created, e.buildMs].every(isNum)) throw bad('sizes or times are not numbers');
  if (typeof e.drv !== 'string' || !/^[0-9a-f]{64}$/.test(e.drv)) throw bad('drv is not a sha256');
  if (!archiveKeys(e.tree).includes(e.archive)) throw bad('archive is not a key of its tree');
  if (e.log !== null && (typeof e.log !== 'string' || !/^l\/[0-9a-f]{64}\.log\.gz$/.test(e.log))) throw bad('log key');
  const log = e.inlineLog;
  if (log !== null && (typeof log !== 'string' || tooBig(log, INLINE_LOG_MAX))) throw bad('inline log');
  if (e.inlineLog !== null && e.log !== null) throw bad('a log both inline and by key');
  const inline = e.inlineArchive;
  if (inline !== null && (typeof inline !== 'string' || tooBig(inline, INLINE_ARCHIVE_MAX)))
    throw bad('inline archive');
  if (e.inlineDrv !== null && (typeof e.inlineDrv !== 'string' || sha256Hex(e.inlineDrv.replace(/\n$/, '')) !== e.drv))
    throw bad('the inline derivation is not the one its hash names');
  if (!Array.isArray(e.signatures) || !e.signatures.every((s) => typeof s === 'string')) throw bad('signatures');
  return e;
}

function isContextShape(v: unknown): v is Context {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  for (const [dref, rrefs] of Object.entries(v as Record<string, unknown>)) {
    if (!Array.isArray(rrefs)) return false;
    for (const r of rrefs) {
      try {
        if (typeof r !== 'string' || parseRRef(r).dref !== dref) return false;
      } catch {
        return false;
      }
    }
  }
  return true;
}

/** An entry's build log when it carries it (empty when it has none), or undefined when the log is an object. */
export function inlineLogOf(e: CacheEntry): Buffer | undefined {
  if (e.inlineLog !== null) return Buffer.from(e.inlineLog, 'base64');
  return e.log === null ? Buffer.alloc(0) : undefined;
}

/** The objects an entry needs besides its derivation: its archive and log, unless it carries them. */
export const blobsOf = (e: CacheEntry): string[] => [
  ...(e.inlineArchive === null ? [e.archive] : []),
  ...(e.log === null ? [] : [e.log]),
];

/** The realizations an entry was built from. */
export const depsOf = (e: { context: Context }): RRef[] => Object.values(e.context).flat();

/** The `meta.json` a local store keeps for an entry. */
export function metaOf(e: CacheEntry): RealizationMeta {
  const { rref, dref, name, context, ctx, tree, bytes, files, created, buildMs } = e;
  return { format: 'cairn-realization-1', rref, dref, name, context, ctx, tree, bytes, files, created, buildMs };
}

/** Whether `text` (a drv.json) hashes to `dref`. */
export function drvMatches(dref: DRef, text: string, shortHash: (t: string) => string): boolean {
  return `${shortHash(text.replace(/\n$/, ''))}-${parseRef(dref).name}` === dref;
}
