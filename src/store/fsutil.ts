import * as fs from 'node:fs';
import { CairnError } from '../errors.js';

/** A filesystem path: a string, or the raw bytes of one (names need not be UTF-8). */
export type FsPath = string | Buffer;

const SLASH = 0x2f;
const SLASH_BUF = Buffer.from('/');
const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

/** `dir/a/b` as bytes: path.join works on strings only, and decoding would lose non-UTF-8 names. */
export function joinPath(dir: FsPath, ...names: Buffer[]): Buffer {
  const d = Buffer.from(dir as string);
  const parts: Buffer[] = [d];
  let last = d[d.length - 1];
  for (const n of names) {
    if (last !== SLASH) parts.push(SLASH_BUF);
    parts.push(n);
    last = n[n.length - 1];
  }
  return Buffer.concat(parts);
}

/**
 * A byte path for messages and listings: unchanged when it is valid UTF-8
 * without control characters, otherwise each byte outside printable ASCII
 * (and the backslash) as \xNN. A name from outside must not forge a line
 * of `lsref` with a newline, nor drive the terminal with an escape sequence.
 */
export function displayPath(p: FsPath): string {
  if (typeof p === 'string') return p;
  const s = p.toString('utf8');
  if (!/[\x00-\x1f\x7f]/.test(s) && (!s.includes('\ufffd') || Buffer.from(s).equals(p))) return s;
  let out = '';
  for (const b of p) {
    out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/**
 * The bytes a name shown by displayPath stands for: each `\xNN` that
 * displayPath would have written (a control byte, DEL, a backslash, a byte
 * >= 0x80) is decoded; null when there is none. A `\x2f` stays as it is,
 * so decoding never adds a path separator.
 */
export function parseDisplayPath(text: string): Buffer | null {
  let found = false;
  const parts: Buffer[] = [];
  let last = 0;
  for (const m of text.matchAll(/\\x([0-9a-fA-F]{2})/g)) {
    const b = parseInt(m[1]!, 16);
    if (!(b < 0x20 || b >= 0x7f || b === 0x5c) || b === 0) continue;
    parts.push(Buffer.from(text.slice(last, m.index)), Buffer.from([b]));
    last = m.index + m[0].length;
    found = true;
  }
  if (!found) return null;
  parts.push(Buffer.from(text.slice(last)));
  return Buffer.concat(parts);
}

/**
 * Runs `f` on the regular file `p`, opened without following a link (a tree
 * from outside can plant one where Cairn expects its own file); null when
 * `p` is a symlink or not a regular file.
 */
export function withRegularFile<T>(p: FsPath, f: (fd: number, st: fs.Stats) => T): T | null {
  let fd: number;
  try {
    fd = fs.openSync(p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') return null;
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    return st.isFile() ? f(fd, st) : null;
  } finally {
    fs.closeSync(fd);
  }
}

/** chmod that never follows a symlink: a build can plant one where Cairn expects its own file. */
export function chmodNoFollow(p: FsPath, mode: number): void {
  const fd = fs.openSync(p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  try {
    fs.fchmodSync(fd, mode);
  } finally {
    fs.closeSync(fd);
  }
}

export function fsyncPath(p: FsPath): void {
  const fd = fs.openSync(p, O_RDONLY | O_NONBLOCK);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * fsyncs many paths concurrently. On journaling filesystems concurrent
 * fsyncs share journal commits, so a realization costs about one commit
 * instead of one per file and directory. Only the fsync itself goes to
 * libuv's thread pool: opening and closing are a few microseconds inline,
 * while every trip to the pool costs two thread wake-ups, which on a VM
 * take longer than the open (about 250 µs a round trip on the benchmark
 * machine, see docs/benchmarks.md). The opens follow no final symlink and
 * never block on a fifo: the paths name entries of a tree from outside.
 */
export async function fsyncAll(paths: readonly FsPath[], concurrency = 16): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const fd = fs.openSync(paths[next++]!, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
      try {
        await new Promise<void>((resolve, reject) => fs.fsync(fd, (e) => (e ? reject(e) : resolve())));
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, paths.length) }, worker));
}

function mountPointError(p: Buffer, doing: string): CairnError {
  const shown = displayPath(p);
  return new CairnError('E_MOUNT_IN_TREE', `${shown} is a mount point inside a tree being ${doing}; it is left alone`, {
    path: shown,
  });
}

/**
 * Deletes a tree even when it is read-only. Directories must be writable to
 * unlink their entries, so write bits are restored on the way down; for a
 * read-only store tree this is the one place that ever adds them back.
 * Entries that vanish meanwhile (another process removing the same tree)
 * count as removed. Names are bytes, no symlink is followed (the write bit
 * is set through a descriptor opened O_NOFOLLOW), and a directory on
 * another device than its parent (a build's leftover /proc or tmpfs
 * mount) is never entered: E_MOUNT_IN_TREE names it and nothing under it
 * is touched.
 */
export function removeTree(p: FsPath): void {
  removeBelow(Buffer.from(p as string), null);
}

function removeBelow(p: Buffer, parentDev: number | null): void {
  const gone = (e: unknown): boolean => (e as NodeJS.ErrnoException).code === 'ENOENT';
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch (e) {
    if (gone(e)) return;
    throw e;
  }
  try {
    if (st.isDirectory()) {
      if (parentDev !== null && st.dev !== parentDev) throw mountPointError(p, 'removed');
      if ((st.mode & 0o700) !== 0o700) {
        const fd = fs.openSync(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
        try {
          const now = fs.fstatSync(fd);
          if (now.dev !== st.dev || now.ino !== st.ino) {
            throw new CairnError('E_STORE_IO', `${displayPath(p)} changed while it was being removed`);
          }
          fs.fchmodSync(fd, 0o700);
        } finally {
          fs.closeSync(fd);
        }
      }
      for (const name of fs.readdirSync(p, { encoding: 'buffer' })) removeBelow(joinPath(p, name), st.dev);
      fs.rmdirSync(p);
    } else {
      fs.unlinkSync(p);
    }
  } catch (e) {
    if (!gone(e)) throw e;
  }
}

/**
 * Bytes used by a tree (apparent sizes of files, plus symlink targets).
 * Byte names, no symlink followed, and no mount point entered (E_MOUNT_IN_TREE).
 */
export function treeBytes(p: FsPath): number {
  return bytesBelow(Buffer.from(p as string), null);
}

function bytesBelow(p: Buffer, parentDev: number | null): number {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return st.size;
  if (parentDev !== null && st.dev !== parentDev) throw mountPointError(p, 'measured');
  let total = 0;
  for (const name of fs.readdirSync(p, { encoding: 'buffer' })) total += bytesBelow(joinPath(p, name), st.dev);
  return total;
}

/**
 * A process is named by its pid and its kernel start time, so a recycled
 * pid is never mistaken for the process that once held a lock.
 */
export function processStartTime(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses; fields after the
    // last ')' are space-separated, and starttime is field 22 overall.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

let selfOwner: string | undefined;
let tempCounter = 0;

/**
 * A fresh name for an entry of a store's `tmp/`: `owner` makes it unique
 * among processes and the counter within this one. (Random bytes cost
 * about 25 µs a call on the benchmark VM, and a build takes two names.)
 */
export function tempName(owner: string, label: string): string {
  return `${owner}-${label}-${(++tempCounter).toString(36)}`;
}

export function ownerId(): string {
  selfOwner ??= `${process.pid}.${processStartTime(process.pid) ?? '0'}`;
  return selfOwner;
}

export function ownerAlive(owner: string): boolean {
  const [pidText, start] = owner.split('.');
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return owner === ownerId();
  const actual = processStartTime(pid);
  if (actual !== null) return actual === start;
  if (fs.existsSync('/proc/self/stat')) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
