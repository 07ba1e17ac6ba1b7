import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { symlinkAtomic } from './atomic-file.js';
import { fsyncPath } from './fsutil.js';
import { FILE_MODE, makeDirs } from './permissions.js';
import { isName, parseRRef, type RRef } from './refs.js';
import type { LocalStore } from './store.js';
import { storeIndex } from './internals.js';

/**
 * GC roots, kept as files so they survive index rebuilds and travel with
 * the store:
 *
 *     ROOT/roots/named/<name>      RRefs, one per line (`cairn root add`)
 *     ROOT/roots/auto/<hash>       symlink to an out-link made by `realize --out-link`
 *
 * An out-link is an indirect root, as in Nix: the root is the link the user
 * made, not the entry in `auto/`. It counts only while the link still exists
 * at that path and still points into this store, so deleting or moving the
 * link releases the realization.
 */
export interface RootEntry {
  kind: 'named' | 'out-link';
  /** Root name, or the out-link's path. */
  name: string;
  rrefs: RRef[];
}

const namedDir = (store: LocalStore): string => path.join(store.root, 'roots', 'named');
const autoDir = (store: LocalStore): string => path.join(store.root, 'roots', 'auto');

function writeAtomically(store: LocalStore, file: string, text: string): void {
  const tmpDir = store.makeTempDir('root');
  const tmp = path.join(tmpDir, 'root');
  fs.writeFileSync(tmp, text, { mode: FILE_MODE });
  fsyncPath(tmp);
  fs.renameSync(tmp, file);
  fs.rmdirSync(tmpDir);
  fsyncPath(path.dirname(file));
}

export function addNamedRoot(store: LocalStore, name: string, rrefs: RRef[]): void {
  if (!isName(name))
    throw new CairnError(
      'E_BAD_NAME',
      `root name ${JSON.stringify(name)} is not allowed: use letters, digits, . _ + -`,
      { name },
    );
  for (const r of rrefs) parseRRef(r);
  makeDirs(namedDir(store));
  // Ordered against gc's transaction: either gc already deleted a
  // realization (and it is refused here), or gc will see the root.
  storeIndex(store)
    .db.transaction(() => {
      for (const r of rrefs) {
        if (!store.has(r)) throw new CairnError('E_NO_SUCH_REF', `realization ${r} is not in the store`, { ref: r });
      }
      writeAtomically(store, path.join(namedDir(store), name), rrefs.join('\n') + '\n');
    })
    .immediate();
}

export function removeNamedRoot(store: LocalStore, name: string): void {
  if (!isName(name)) throw new CairnError('E_BAD_NAME', `root name ${JSON.stringify(name)} is not allowed`, { name });
  try {
    fs.unlinkSync(path.join(namedDir(store), name));
  } catch {
    throw new CairnError('E_NO_SUCH_REF', `there is no root named ${name}`, { name });
  }
}

/** Makes `link` a symlink to the realization's output and registers it as an indirect root. */
export function addOutLink(store: LocalStore, link: string, rref: RRef): string {
  const abs = path.resolve(link);
  const target = store.outPath(rref);
  // Replace an existing link atomically; refuse to clobber anything else.
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(abs);
  } catch {
    /* free */
  }
  if (existing && !existing.isSymbolicLink()) {
    throw new CairnError(
      'E_OUT_LINK_NOT_SYMLINK',
      `out-link ${link} exists and is not a symlink; refusing to replace it`,
      { path: abs },
    );
  }
  symlinkAtomic(target, abs);
  makeDirs(autoDir(store));
  const key = createHash('sha256').update(abs).digest('hex').slice(0, 32);
  const entry = path.join(autoDir(store), key);
  symlinkAtomic(abs, entry);
  return abs;
}

/** The RRef an out-path in this store belongs to, or null. */
function rrefOfOutPath(store: LocalStore, p: string): RRef | null {
  const rel = path.relative(path.join(store.root, 'd'), p).split(path.sep);
  if (rel.length !== 4 || rel[1] !== 'r' || rel[3] !== 'out') return null;
  try {
    return parseRRef(`${rel[2]}-${rel[0]}`).rref;
  } catch {
    return null;
  }
}

/** An out-link entry whose link no longer makes it a root (gc deletes the entry). */
export interface StaleOutLink {
  /** The entry in ROOT/roots/auto/. */
  entry: string;
  /** The out-link's path, when the entry still names one. */
  link?: string;
  reason: string;
}

/**
 * All current roots. Out-link entries whose link is gone, moved, or now
 * points elsewhere are returned in `stale`, with why (gc deletes them).
 */
export function listRoots(store: LocalStore): { roots: RootEntry[]; stale: StaleOutLink[] } {
  const roots: RootEntry[] = [];
  const stale: StaleOutLink[] = [];
  let names: string[] = [];
  try {
    names = fs.readdirSync(namedDir(store));
  } catch {
    /* none yet */
  }
  for (const name of names.sort()) {
    if (!isName(name)) continue;
    const rrefs = fs
      .readFileSync(path.join(namedDir(store), name), 'utf8')
      .split('\n')
      .filter(Boolean) as RRef[];
    roots.push({ kind: 'named', name, rrefs });
  }
  let autos: string[] = [];
  try {
    autos = fs.readdirSync(autoDir(store));
  } catch {
    /* none yet */
  }
  for (const key of autos.sort()) {
    const entry = path.join(autoDir(store), key);
    let link: string;
    try {
      link = fs.readlinkSync(entry);
    } catch {
      stale.push({ entry, reason: 'the entry names no out-link' });
      continue;
    }
    let target: string;
    try {
      target = fs.readlinkSync(link);
    } catch (e) {
      const gone = (e as NodeJS.ErrnoException).code === 'ENOENT';
      const reason = gone
        ? 'the link is gone (deleted or moved; a moved link is not a root)'
        : 'it is no longer a symlink';
      stale.push({ entry, link, reason });
      continue;
    }
    const resolved = path.resolve(path.dirname(link), target);
    const rref = rrefOfOutPath(store, resolved);
    if (rref === null) stale.push({ entry, link, reason: `it now points to ${resolved}, not into this store` });
    else roots.push({ kind: 'out-link', name: link, rrefs: [rref] });
  }
  return { roots, stale };
}
