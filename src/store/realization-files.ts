/**
 * Reading a realization's files for callers outside the store: one file,
 * the build log, a listing of the output tree, and (for local tools such
 * as a shell) the output directory itself.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { joinPath, parseDisplayPath } from './fsutil.js';
import type { RRef } from './refs.js';
import type { Store } from './store.js';

/**
 * The bytes of file `rel` of a realization's output; null when it names no
 * readable file (missing, or a directory). `rel` may be a display path
 * (`a\xff`, as listings show a name that is not UTF-8: argv cannot carry its
 * bytes). A path that leaves the output is refused with E_NO_SUCH_PATH.
 */
export function readRealizationFile(store: Store, rref: RRef, rel: string): Buffer | null {
  const base = store.outPath(rref);
  const file = path.resolve(base, rel);
  if (file !== base && !file.startsWith(base + path.sep)) {
    throw new CairnError('E_NO_SUCH_PATH', `${rel} is outside the realization`, { path: rel });
  }
  try { return fs.readFileSync(file); } catch { /* perhaps a display path */ }
  const bytes = parseDisplayPath(file);
  if (bytes === null) return null;
  try { return fs.readFileSync(bytes); } catch { return null; }
}

/** The build log of a realization. */
export function readBuildLog(store: Store, rref: RRef): Buffer {
  return fs.readFileSync(path.join(store.rzDir(rref), 'build.log'));
}

/**
 * The local directory of a realization's output, for tools that need a
 * path (a shell started in it). Its files are read-only.
 */
export function localOutputDir(store: Store, rref: RRef): string {
  return store.outPath(rref);
}

export interface TreeEntry {
  /** Relative to the output; bytes, since a name need not be UTF-8. */
  path: Buffer;
  /** 'file' is anything that is neither a directory nor a symlink. */
  type: 'file' | 'directory' | 'symlink';
  /** Permission bits (mode & 0o777). */
  mode: number;
  size: number;
  /** A symlink's target, as stored (never followed). */
  target: Buffer | null;
}

/** Every entry of a realization's output, depth first, names in byte order. Symlinks are not followed. */
export function outputTree(store: Store, rref: RRef): TreeEntry[] {
  const entries: TreeEntry[] = [];
  const walk = (dir: Buffer, rel: Buffer | null): void => {
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare)) {
      const abs = joinPath(dir, name);
      const r = rel === null ? name : joinPath(rel, name);
      const st = fs.lstatSync(abs);
      const type = st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'directory' : 'file';
      const target = type === 'symlink' ? fs.readlinkSync(abs, { encoding: 'buffer' }) : null;
      entries.push({ path: r, type, mode: st.mode & 0o777, size: st.size, target });
      if (type === 'directory') walk(abs, r);
    }
  };
  walk(Buffer.from(store.outPath(rref)), null);
  return entries;
}
