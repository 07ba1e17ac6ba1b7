import { createHash, randomBytes, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import { CairnError } from '../errors.js';
import { displayPath, joinPath, type FsPath } from './fsutil.js';

/**
 * The content hash of an output tree, in the spirit of Nix's NAR: it covers
 * entry names (sorted by bytes), entry types, the executable bit of files,
 * file contents and symlink targets, and nothing else (no times, owners or
 * other mode bits), so the same tree hashes the same on every machine.
 *
 * Every name, target and file body is length-prefixed, so no two different
 * trees can serialise to the same byte stream. Names are the raw bytes the
 * directory holds (Buffer paths from end to end), so a name that is not
 * valid UTF-8 is hashed, sealed and visited like any other.
 */
export interface TreeSummary {
  /** sha256 (hex) of the serialised tree. */
  treeHash: string;
  /** Bytes of file content. */
  bytes: number;
  files: number;
  /** When sealing: every file and directory (byte paths), to be fsynced before the tree is published. */
  toSync: Buffer[];
  /** When not sealing: entries (relative, for display) with a write bit set, which a sealed tree never has. */
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
const SLASH = 0x2f;
const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY } = fs.constants;
/** O_NONBLOCK: a FIFO swapped in after the first pass must not hang the open. */
const OPEN_FILE = O_RDONLY | O_NOFOLLOW | O_NONBLOCK;
const OPEN_DIR = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;

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

/** One entry as the read-only first pass saw it. */
interface Entry {
  abs: Buffer;
  /** From lstat; only what the second pass needs (a whole Stats per entry weighs on big trees). */
  mode: number;
  dev: number;
  ino: number;
  parent: Entry | null;
  /** The name in the parent (null for the root). */
  name: Buffer | null;
  /** Directories: names in byte order, and the entries under them. */
  names?: Buffer[];
  children?: Entry[];
  /** Symlinks: the target's bytes. */
  target?: Buffer;
}

function relOf(root: Buffer, abs: Buffer): string {
  return abs.length <= root.length ? '.' : displayPath(abs.subarray(root.length + 1));
}

function unsafe(root: Buffer, abs: Buffer, why: string): CairnError {
  const rel = relOf(root, abs);
  return new CairnError('E_UNSAFE_OUTPUT', `output entry ${rel} ${why}`, { path: rel });
}

function splitBytes(b: Buffer): Buffer[] {
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= b.length; i++) {
    if (i === b.length || b[i] === SLASH) {
      if (i > start) parts.push(b.subarray(start, i));
      start = i + 1;
    }
  }
  return parts;
}

/**
 * Resolves the symlink target `target`, found in the directory `base`
 * (components below the root), physically: through the other symlinks of
 * the tree, as `linkAt` reports them. Returns null when it leaves the root.
 * Components that do not exist are resolved lexically, which is exact
 * because the tree is immutable once sealed.
 */
function resolveInside(base: Buffer[], target: Buffer, linkAt: (parts: Buffer[]) => Buffer | null): boolean {
  let hops = 0;
  const resolve = (from: Buffer[], t: Buffer): Buffer[] | null => {
    if (t[0] === SLASH) return null;
    let parts = [...from];
    for (const c of splitBytes(t)) {
      if (c.length === 1 && c[0] === 0x2e) continue;
      if (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e) {
        if (parts.length === 0) return null;
        parts.pop();
        continue;
      }
      parts.push(c);
      const next = linkAt(parts);
      if (next !== null) {
        if (++hops > 40) return null;
        const r = resolve(parts.slice(0, -1), next);
        if (r === null) return null;
        parts = r;
      }
    }
    return parts;
  };
  return resolve(base, target) !== null;
}

/**
 * True when the symlink at `linkAbs`, resolved physically through any other
 * symlinks in the tree, never leaves `root`. A lexical check is not enough:
 * with `s -> .` at the top, `s/../x` names a sibling of the output.
 */
export function linkStaysInside(root: FsPath, linkAbs: FsPath): boolean {
  const rootB = Buffer.from(root as string);
  const rel = splitBytes(Buffer.from(linkAbs as string).subarray(rootB.length));
  const linkAt = (parts: Buffer[]): Buffer | null => {
    const p = joinPath(rootB, ...parts);
    try {
      return fs.lstatSync(p).isSymbolicLink() ? fs.readlinkSync(p, { encoding: 'buffer' }) : null;
    } catch {
      return null;
    }
  };
  const target = fs.readlinkSync(Buffer.from(linkAbs as string), { encoding: 'buffer' });
  return resolveInside(rel.slice(0, -1), target, linkAt);
}

function kindOf(st: fs.Stats): string {
  return st.isSocket()
    ? 'a socket'
    : st.isFIFO()
      ? 'a fifo'
      : st.isBlockDevice()
        ? 'a block device'
        : st.isCharacterDevice()
          ? 'a character device'
          : 'of an unknown type';
}

/**
 * The first, read-only pass: lstats every entry, reads every directory and
 * link, and refuses what cannot enter the store (devices, sockets, fifos,
 * mount points, links that leave the tree) before anything is written.
 */
function survey(root: Buffer): { top: Entry; links: Entry[] } {
  const links: Entry[] = [];
  const look = (abs: Buffer, parent: Entry | null, name: Buffer | null): Entry => {
    try {
      return lookAt(abs, parent, name);
    } catch (err) {
      // An entry that vanishes under the walk (a process of the build still at work) is the tree's doing.
      const code = (err as NodeJS.ErrnoException).code;
      if (parent !== null && (code === 'ENOENT' || code === 'ENOTDIR')) {
        throw unsafe(root, abs, 'changed while it was being sealed');
      }
      throw err;
    }
  };
  const lookAt = (abs: Buffer, parent: Entry | null, name: Buffer | null): Entry => {
    const st = fs.lstatSync(abs);
    const e: Entry = { abs, mode: st.mode, dev: st.dev, ino: st.ino, parent, name };
    if (st.isSymbolicLink()) {
      // The root's own link resolves from outside the tree, so it always leaves it.
      if (parent === null) throw unsafe(root, abs, 'is a symlink; an output must be a directory or a file');
      e.target = fs.readlinkSync(abs, { encoding: 'buffer' });
      links.push(e);
    } else if (st.isDirectory()) {
      // Another filesystem mounted in the output (a build's leftover /proc, say) is never walked.
      if (parent !== null && st.dev !== parent.dev) {
        throw unsafe(root, abs, 'is a mount point; an output is one filesystem');
      }
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      const children: Entry[] = [];
      for (const n of names) children.push(look(joinPath(abs, n), e, n));
      e.names = names;
      e.children = children;
    } else if (!st.isFile()) {
      throw unsafe(root, abs, `is ${kindOf(st)}; only files, directories and symlinks can enter the store`);
    }
    return e;
  };
  return { top: look(root, null, null), links };
}

/** Judges every link by where it resolves through the tree as the first pass saw it. */
function judgeLinks(root: Buffer, top: Entry, links: readonly Entry[]): void {
  const child = (dir: Entry | undefined, name: Buffer): Entry | undefined => {
    const names = dir?.names;
    if (names === undefined) return undefined;
    let lo = 0;
    let hi = names.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = Buffer.compare(names[mid]!, name);
      if (c === 0) return dir!.children![mid];
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  };
  const linkAt = (parts: Buffer[]): Buffer | null => {
    let e: Entry | undefined = top;
    for (const p of parts) e = child(e, p);
    return e?.target ?? null;
  };
  for (const l of links) {
    const base: Buffer[] = [];
    for (let d = l.parent; d !== null && d.name !== null; d = d.parent) base.unshift(d.name);
    if (!resolveInside(base, l.target!, linkAt)) {
      throw unsafe(root, l.abs, `is a symlink to ${JSON.stringify(displayPath(l.target!))}, which leaves the output`);
    }
  }
}

/** Opens what the first pass saw at `e.abs`, without following a link, and checks that it is the same inode. */
function openSame(root: Buffer, e: Entry, flags: number): { fd: number; st: fs.Stats } {
  let fd: number;
  try {
    fd = fs.openSync(e.abs, flags);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR' || code === 'ENXIO' || code === 'ENOENT') {
      throw unsafe(root, e.abs, 'changed while it was being sealed');
    }
    throw err;
  }
  const st = fs.fstatSync(fd);
  if (st.dev !== e.dev || st.ino !== e.ino) {
    fs.closeSync(fd);
    throw unsafe(root, e.abs, 'changed while it was being sealed');
  }
  return { fd, st };
}

async function readAt(fd: number, buf: Buffer, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, 0, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Hashes the file behind `fd`, writing every byte also to `copyTo` when given. */
async function hashFileBody(h: Hash, abs: Buffer, fd: number, size: number, copyTo?: number): Promise<void> {
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
    if (copyTo !== undefined) writeAll(copyTo, buf.subarray(0, off));
  } else {
    // Large files (disk images) are read asynchronously so parallel builds
    // and the progress display keep moving while gigabytes are hashed.
    const buf = Buffer.allocUnsafe(CHUNK);
    while (off < size) {
      const n = await readAt(fd, buf, Math.min(CHUNK, size - off), off);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      if (copyTo !== undefined) writeAll(copyTo, buf.subarray(0, n));
      off += n;
    }
  }
  if (off !== size) throw new CairnError('E_STORE_IO', `${displayPath(abs)} changed size while it was being hashed`);
}

function writeAll(fd: number, b: Buffer): void {
  let off = 0;
  while (off < b.length) off += fs.writeSync(fd, b, off, b.length - off);
}

/**
 * A name in `dir` that refers to exactly the directory the first pass saw,
 * even if a component above it is swapped for a symlink meanwhile: Linux's
 * /proc/self/fd/N names the open directory itself.
 */
function pinnedDir(root: Buffer, dir: Entry): { fd: number; base: Buffer } {
  const { fd } = openSame(root, dir, OPEN_DIR);
  const viaProc = Buffer.from(`/proc/self/fd/${fd}`);
  let base = dir.abs;
  try {
    const st = fs.statSync(viaProc);
    if (st.dev === dir.dev && st.ino === dir.ino) base = viaProc;
  } catch {
    /* no /proc: plain paths */
  }
  return { fd, base };
}

/**
 * Gives `e` an inode of its own: the content is copied, while being hashed,
 * into a fresh file whose random name cannot already exist (O_EXCL, and
 * O_NOFOLLOW so a planted link is never written through), then renamed over
 * the original name. The other names of the old inode keep it unchanged.
 */
async function breakHardLink(
  root: Buffer,
  h: Hash,
  parent: Entry,
  name: Buffer,
  e: Entry,
  src: number,
  size: number,
  mode: number,
): Promise<void> {
  const { fd: dfd, base } = pinnedDir(root, parent);
  try {
    const tmp = joinPath(base, Buffer.from(`.cairn-unlink-${randomBytes(12).toString('hex')}`));
    const out = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      await hashFileBody(h, e.abs, src, size, out);
      fs.fchmodSync(out, mode);
    } catch (err) {
      fs.closeSync(out);
      fs.unlinkSync(tmp);
      throw err;
    }
    fs.closeSync(out);
    fs.renameSync(tmp, joinPath(base, name));
  } finally {
    fs.closeSync(dfd);
  }
}

const IS_ROOT = process.geteuid?.() === 0;

/** Hashes (and optionally seals) the tree at `root`, refusing unsafe entries before anything is written. */
export async function walkTree(root: FsPath, opts: TreeWalkOptions): Promise<TreeSummary> {
  const rootB = Buffer.from(root as string);
  const { top, links } = survey(rootB);
  judgeLinks(rootB, top, links);

  const h = createHash('sha256');
  h.update('cairn-tree-1\0');
  let bytes = 0;
  let files = 0;
  const toSync: Buffer[] = [];
  const writable: string[] = [];
  const visit = async (e: Entry): Promise<void> => {
    if (!opts.seal && e.target === undefined && (e.mode & 0o222) !== 0) writable.push(relOf(rootB, e.abs));
    if (e.target !== undefined) {
      h.update('l');
      putString(h, e.target);
    } else if (e.children === undefined) {
      const exec = (e.mode & 0o100) !== 0;
      const mode = exec ? 0o555 : 0o444;
      h.update(exec ? 'x' : 'f');
      const { fd, st: fst } = openSame(rootB, e, OPEN_FILE);
      try {
        if (opts.seal && fst.nlink > 1 && e.parent !== null && e.name !== null) {
          await breakHardLink(rootB, h, e.parent, e.name, e, fd, fst.size, mode);
        } else {
          await hashFileBody(h, e.abs, fd, fst.size);
          // A root build can give its output file capabilities (setcap), which
          // no mode bit shows and sealing would keep: a chown, even to the same
          // owner, makes the kernel drop them (and set-id bits).
          if (opts.seal && exec && IS_ROOT) fs.fchownSync(fd, fst.uid, fst.gid);
          if (opts.seal && (fst.mode & 0o7777) !== mode) fs.fchmodSync(fd, mode);
        }
        bytes += fst.size;
        files += 1;
        if (opts.seal) toSync.push(e.abs);
      } finally {
        fs.closeSync(fd);
      }
    } else {
      h.update('d');
      const names = e.names!;
      for (let i = 0; i < names.length; i++) {
        putString(h, names[i]!);
        await visit(e.children[i]!);
      }
      h.update(')');
      if (opts.seal) {
        // Already sealed (a reseal, a received copy): nothing to write.
        if ((e.mode & 0o7777) !== 0o555) {
          const { fd } = openSame(rootB, e, OPEN_DIR);
          try {
            fs.fchmodSync(fd, 0o555);
          } finally {
            fs.closeSync(fd);
          }
        }
        toSync.push(e.abs);
      }
    }
  };
  await visit(top);
  return { treeHash: h.digest('hex'), bytes, files, toSync, writable };
}
