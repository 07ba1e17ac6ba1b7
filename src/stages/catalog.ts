import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import type { Node as YamlNode } from 'yaml';
import { CairnError } from '../errors.js';
import { redactUrl } from '../redact-url.js';
import { fetchurl } from './builtins/fetch.js';
import { isHashType, parseHash, showHash } from './builtins/hashes.js';
import { unpack, type UnpackLimits } from './builtins/unpack.js';
import type { Stage } from './stage.js';

/**
 * Image catalogs (f0cal-style): a YAML file listing the versions of a device
 * or OS image. `defaults` is merged into every entry of `history`, which is
 * ordered oldest first. Each entry has a version (or name), a url (or
 * mirrors), a hash and hash_type, a date, device_types, and optionally
 * `__default__: true`.
 */
export interface CatalogEntry {
  /** Position in `history` (0 = oldest). */
  index: number;
  version: string;
  urls: string[];
  hash: string;
  hashType: 'sha256' | 'sha512';
  date?: string;
  deviceTypes: string[];
  isDefault: boolean;
  /** File name in the store (default: from the URL). */
  file?: string;
  /** 1-based line of the entry in the catalog file. */
  line: number;
  /** Every field as written (after merging defaults), for manifests. */
  fields: Record<string, unknown>;
}

export type ActionSpec = string | string[] | { module: string; export?: string };

export interface Catalog {
  file: string;
  name: string;
  entries: CatalogEntry[];
  actions: Record<string, ActionSpec>;
  /** 1-based line where `history` starts, for errors about the whole list. */
  historyLine: number;
}

export interface Selection {
  version?: string;
  index?: number;
  deviceType?: string;
}

/**
 * Identifiers keep the text they were written with: an unquoted `1.10` is
 * version "1.10", not the number 1.1, and a hash `0123…` keeps its zero.
 */
function asWritten(item: YamlNode, keys: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  const { isMap, isScalar } = yaml();
  if (!isMap(item)) return out;
  for (const key of keys) {
    const node = item.get(key, true);
    if (isScalar(node) && typeof node.value !== 'string' && node.value !== null && typeof node.source === 'string')
      out[key] = node.source;
  }
  return out;
}

// yaml is loaded on first use: every stage file imports Cairn's index, and
// most never read a catalog.
let yamlLib: typeof import('yaml') | undefined;
const yaml = (): typeof import('yaml') => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof import('yaml'));

/** Alias expansions allowed while reading a catalog (the yaml library's default, stated here). */
const MAX_ALIAS_COUNT = 100;

const bad = (file: string, line: number, reason: string): CairnError =>
  new CairnError('E_BAD_CATALOG', `${file}:${line}: ${reason}`, { file, line, reason });

/** Parses and validates a catalog; every problem names the file, the line and the reason. */
export function loadCatalog(where: string | URL): Catalog {
  // A URL (e.g. `new URL('./images.yml', import.meta.url)`) names a catalog
  // next to a stage file; a relative path is taken from the current directory.
  const file = typeof where === 'string' ? where : fileURLToPath(where);
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch {
    throw new CairnError('E_BAD_CATALOG', `${file}: cannot read the catalog`, { file });
  }
  const { isMap, isSeq, LineCounter, parseDocument } = yaml();
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true });
  const lineOf = (node: YamlNode | null | undefined): number => (node?.range ? lines.linePos(node.range[0]).line : 1);
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    throw bad(file, e.linePos?.[0]?.line ?? 1, `not valid YAML: ${e.message.split('\n')[0]}`);
  }
  if (!isMap(doc.contents)) throw bad(file, 1, 'a catalog is a mapping with name, defaults and history');
  let top: Record<string, unknown>;
  try {
    // An alias expands to a copy of what it names, so nested aliases ("billion
    // laughs") grow exponentially: the library stops at maxAliasCount
    // expansions and throws, which is the catalog's fault, not Cairn's.
    top = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as Record<string, unknown>;
  } catch (e) {
    const why = (e as Error)?.message ?? String(e);
    throw bad(file, 1, `cannot be read: ${why} (at most ${MAX_ALIAS_COUNT} alias expansions)`);
  }
  if (typeof top.name !== 'string' || top.name === '') throw bad(file, lineOf(doc.contents), '`name` is missing');
  const defaults = top.defaults ?? {};
  if (typeof defaults !== 'object' || defaults === null || Array.isArray(defaults))
    throw bad(file, lineOf(doc.get('defaults', true) as YamlNode), '`defaults` must be a mapping');
  const historyNode = doc.get('history', true) as YamlNode | undefined;
  if (!isSeq(historyNode) || historyNode.items.length === 0)
    throw bad(file, lineOf(historyNode ?? doc.contents), '`history` must be a non-empty list of entries');

  const entries: CatalogEntry[] = [];
  const seen = new Map<string, number>();
  let defaultLine: number | undefined;
  (top.history as unknown[]).forEach((raw, index) => {
    const itemNode = historyNode.items[index] as YamlNode;
    const line = lineOf(itemNode);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      throw bad(file, line, 'an entry must be a mapping');
    const e = {
      ...(defaults as Record<string, unknown>),
      ...(raw as Record<string, unknown>),
      ...asWritten(itemNode, ['version', 'name', 'hash']),
    };
    const version = e.version ?? e.name;
    if ((typeof version !== 'string' && typeof version !== 'number') || String(version) === '')
      throw bad(file, line, 'the entry has no `version` (or `name`)');
    const v = String(version);
    if (seen.has(v)) throw bad(file, line, `version ${v} is listed twice (also on line ${seen.get(v)})`);
    seen.set(v, line);
    const urls = [
      ...(Array.isArray(e.mirrors) ? (e.mirrors as unknown[]) : []),
      ...(e.url !== undefined ? [e.url] : []),
    ];
    if (urls.length === 0 || !urls.every((u) => typeof u === 'string' && u !== ''))
      throw bad(file, line, `version ${v} has no \`url\` (or \`mirrors\`)`);
    if (e.hash === undefined || e.hash === null || e.hash === '') throw bad(file, line, `version ${v} has no \`hash\``);
    const hashType = e.hash_type ?? 'sha256';
    if (!isHashType(hashType) || hashType === 'tree-sha256')
      throw bad(file, line, `version ${v}: unknown hash_type ${JSON.stringify(hashType)}; use sha256 or sha512`);
    let hash: string;
    try {
      hash = showHash(parseHash(typeof e.hash === 'string' ? e.hash : JSON.stringify(e.hash), hashType));
    } catch (err) {
      throw bad(file, line, `version ${v}: ${(err as Error).message}`);
    }
    const deviceTypes = e.device_types === undefined ? [] : e.device_types;
    if (!Array.isArray(deviceTypes) || !deviceTypes.every((d) => typeof d === 'string'))
      throw bad(file, line, `version ${v}: device_types must be a list of names`);
    const isDefault = e.__default__ === true;
    if (isDefault) {
      if (defaultLine !== undefined)
        throw bad(file, line, `two entries are marked __default__ (also line ${defaultLine})`);
      defaultLine = line;
    }
    const date =
      e.date instanceof Date
        ? e.date.toISOString().slice(0, 10)
        : e.date === undefined
          ? undefined
          : typeof e.date === 'string'
            ? e.date
            : JSON.stringify(e.date);
    entries.push({
      index,
      version: v,
      urls: urls as string[],
      hash,
      hashType: hashType,
      date,
      deviceTypes: deviceTypes,
      isDefault,
      file: typeof e.file === 'string' ? e.file : undefined,
      line,
      fields: Object.fromEntries(
        Object.entries(e).map(([k, x]) => [k, x instanceof Date ? x.toISOString().slice(0, 10) : x]),
      ),
    });
  });
  const actions = (top.actions ?? {}) as Record<string, ActionSpec>;
  const historyLine = lineOf(historyNode);
  if (typeof actions !== 'object' || Array.isArray(actions))
    throw bad(
      file,
      lineOf(doc.get('actions', true) as YamlNode),
      '`actions` must be a mapping of names to commands or modules',
    );
  return { file: abs, name: top.name, entries, actions, historyLine };
}

/**
 * `raspberry-pi` matches `raspberry-pi` and `raspberry-pi/3b`: a catalog's
 * device type covers every more specific type below it.
 */
export function deviceTypeMatches(declared: string, wanted: string): boolean {
  return wanted === declared || wanted.startsWith(declared.endsWith('/') ? declared : `${declared}/`);
}

/**
 * Picks an entry: a version, an index (negative counts from the end: -1 is
 * the newest), or else the default; with a device type, only entries for it
 * count, and the default (if it is one of them) or the newest wins. With no
 * default and no other choice, the newest entry.
 */
export function selectEntry(cat: Catalog, sel: Selection): CatalogEntry {
  let pool = cat.entries;
  if (sel.deviceType !== undefined) {
    pool = pool.filter((e) => e.deviceTypes.some((d) => deviceTypeMatches(d, sel.deviceType!)));
    if (pool.length === 0) {
      throw new CairnError(
        'E_BAD_CATALOG',
        `${cat.file}:${cat.historyLine}: no entry is for device type ${sel.deviceType} (the catalog has: ` +
          `${[...new Set(cat.entries.flatMap((e) => e.deviceTypes))].join(', ') || 'none'})`,
        { file: cat.file, line: cat.historyLine, deviceType: sel.deviceType },
      );
    }
  }
  if (sel.version !== undefined) {
    const hit = pool.find((e) => e.version === sel.version);
    if (!hit)
      throw new CairnError(
        'E_BAD_CATALOG',
        `${cat.file}: no version ${sel.version}${sel.deviceType ? ` for device type ${sel.deviceType}` : ''}`,
        { file: cat.file, version: sel.version },
      );
    return hit;
  }
  if (sel.index !== undefined) {
    const i = sel.index < 0 ? cat.entries.length + sel.index : sel.index;
    const hit = cat.entries[i];
    if (!Number.isInteger(sel.index) || !hit)
      throw new CairnError(
        'E_BAD_CATALOG',
        `${cat.file}: there is no entry ${sel.index} (the history has ${cat.entries.length})`,
        { file: cat.file, index: sel.index },
      );
    if (!pool.includes(hit))
      throw new CairnError(
        'E_BAD_CATALOG',
        `${cat.file}: entry ${sel.index} (version ${hit.version}) is not for device type ${sel.deviceType}`,
        { file: cat.file },
      );
    return hit;
  }
  return pool.find((e) => e.isDefault) ?? pool[pool.length - 1]!;
}

/** An entry as `catalog list` shows it: its URLs (also in `fields`) redacted, since output ends up in logs. */
export function redactEntryUrls(entry: CatalogEntry): CatalogEntry {
  const fields = { ...entry.fields };
  if (typeof fields.url === 'string') fields.url = redactUrl(fields.url);
  if (Array.isArray(fields.mirrors)) {
    fields.mirrors = (fields.mirrors as unknown[]).map((u) => (typeof u === 'string' ? redactUrl(u) : u));
  }
  return { ...entry, urls: entry.urls.map(redactUrl), fields };
}

/** The stage that fetches an entry (and unpacks it, if asked): usable as a dependency of other stages. */
export function entryStage(
  entry: CatalogEntry,
  opts: { unpack?: boolean; unpackLimits?: UnpackLimits } = {},
): Stage<any> {
  const fetched = fetchurl({ urls: entry.urls, hash: entry.hash, hashType: entry.hashType, file: entry.file });
  return opts.unpack ? unpack({ src: fetched, ...(opts.unpackLimits ? { limits: opts.unpackLimits } : {}) }) : fetched;
}

/** `catalogStage('images.yml', { deviceType: 'raspberry-pi/3b', unpack: true })`: a catalog entry as a stage. */
export function catalogStage(
  file: string | URL,
  sel: Selection & { unpack?: boolean; unpackLimits?: UnpackLimits } = {},
): Stage<any> {
  return entryStage(selectEntry(loadCatalog(file), sel), sel);
}
