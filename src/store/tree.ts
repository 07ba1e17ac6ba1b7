import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';

/**
 * The content hash of an output tree, in the spirit of Nix's NAR: it covers
 * entry names (sorted by bytes), entry types, the executable bit of files,
 * file contents and symlink targets, and nothing else (no times, owners or
 * other mode bits), so the same tree hashes the same on every machine.
 *
 * Every string and file body is length-prefixed, so no two different trees
 * can serialise to the same byte stream.
 */
export interface TreeSummary {
  /** sha256 (hex) of the serialised tree. */
  treeHash: string;
  /** Bytes of file content. */
  bytes: number;
  files: number;
  /** When sealing: every file and directory, to be fsynced before the tree is published. */
  toSync: string[];
  /** When not sealing: entries (relative paths) that have a write bit set, which a sealed tree never has. */
  writable: string[];
}

export interface TreeWalkOptions {
  /**
   * Seal while hashing: clear write bits, copy away hard links shared with
   * anything else (so making the output read-only never changes a file
   * outside it), and list every entry for the caller to fsync. The fsyncs
   * are left to the caller so it can issue them all at once with its own
   * (one journal commit instead of one per entry).
   */
  seal: boolean;
}

const BIG_FILE = 4 << 20;
const CHUNK = 1 << 20;

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function putString(h: Hash, s: string | Buffer): void {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  h.update(u64(b.length));
  h.update(b);
}

function unsafe(root: string, abs: string, why: string): CairnError {
  const rel = path.relative(root, abs) || '.';
  return new CairnError('E_UNSAFE_OUTPUT', `output entry ${rel} ${why}`, { path: rel });
}

/**
 * True when the symlink at `linkAbs`, resolved physically through any other
 * symlinks in the tree, never leaves `root`. A lexical check is not enough:
 * with `s -> .` at the top, `s/../x` names a sibling of the output.
 * Components that do not exist are resolved lexically, which is exact
 * because the tree is immutable once sealed.
 */
export function linkStaysInside(root: string, linkAbs: string): boolean {
  let hops = 0;
  const resolve = (base: string[], target: string): string[] | null => {
    if (target.startsWith('/')) return null;
    let parts = [...base];
    for (const c of target.split('/')) {
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (parts.length === 0) return null;
        parts.pop();
        continue;
      }
      parts.push(c);
      let st: fs.Stats;
      try { st = fs.lstatSync(path.join(root, ...parts)); } catch { continue; }
      if (st.isSymbolicLink()) {
        if (++hops > 40) return null;
        const next = resolve(parts.slice(0, -1), fs.readlinkSync(path.join(root, ...parts)));
        if (next === null) return null;
        parts = next;
      }
    }
    return parts;
  };
  const rel = path.relative(root, linkAbs).split(path.sep);
  return resolve(rel.slice(0, -1), fs.readlinkSync(linkAbs)) !== null;
}

async function hashFileBody(h: Hash, abs: string, fd: number, size: number): Promise<void> {
  h.update(u64(size));
  let off = 0;
  if (size <= BIG_FILE) {
    const buf = Buffer.allocUnsafe(size);
    while (off < size) {
      const n = fs.readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    h.update(buf.subarray(0, off));
  } else {
    // Large files (disk images) are read asynchronously so parallel builds
    // and the progress display keep moving while gigabytes are hashed.
    const fh = await fs.promises.open(abs, 'r');
    try {
      const buf = Buffer.allocUnsafe(CHUNK);
      while (off < size) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, size - off), off);
        if (bytesRead === 0) break;
        h.update(buf.subarray(0, bytesRead));
        off += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  if (off !== size) throw new CairnError('E_STORE_IO', `${abs} changed size while it was being hashed`);
}

function breakHardLink(abs: string): void {
  const copy = `${abs}.cairn-unlink`;
  fs.copyFileSync(abs, copy);
  fs.renameSync(copy, abs);
}

/** Hashes (and optionally seals) the tree at `root`, refusing unsafe entries. */
export async function walkTree(root: string, opts: TreeWalkOptions): Promise<TreeSummary> {
  const h = createHash('sha256');
  h.update('cairn-tree-1\0');
  let bytes = 0;
  let files = 0;
  const toSync: string[] = [];
  const writable: string[] = [];
  const visit = async (abs: string): Promise<void> => {
    const st = fs.lstatSync(abs);
    if (!opts.seal && !st.isSymbolicLink() && (st.mode & 0o222) !== 0) writable.push(path.relative(root, abs) || '.');
    if (st.isSymbolicLink()) {
      if (!linkStaysInside(root, abs)) throw unsafe(root, abs, `is a symlink to ${JSON.stringify(fs.readlinkSync(abs))}, which leaves the output`);
      h.update('l');
      putString(h, fs.readlinkSync(abs, { encoding: 'buffer' }));
    } else if (st.isFile()) {
      if (opts.seal && st.nlink > 1) breakHardLink(abs);
      const exec = (st.mode & 0o100) !== 0;
      h.update(exec ? 'x' : 'f');
      const fd = fs.openSync(abs, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        await hashFileBody(h, abs, fd, size);
        bytes += size;
        files += 1;
        if (opts.seal) {
          fs.fchmodSync(fd, exec ? 0o555 : 0o444);
          toSync.push(abs);
        }
      } finally {
        fs.closeSync(fd);
      }
    } else if (st.isDirectory()) {
      h.update('d');
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const name of names) {
        putString(h, name);
        await visit(path.join(abs, name.toString()));
      }
      h.update(')');
      if (opts.seal) {
        fs.chmodSync(abs, 0o555);
        toSync.push(abs);
      }
    } else {
      const kind = st.isSocket() ? 'a socket' : st.isFIFO() ? 'a fifo' : st.isBlockDevice() ? 'a block device' : st.isCharacterDevice() ? 'a character device' : 'of an unknown type';
      throw unsafe(root, abs, `is ${kind}; only files, directories and symlinks can enter the store`);
    }
  };
  await visit(root);
  return { treeHash: h.digest('hex'), bytes, files, toSync, writable };
}
