import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import { CairnError } from '../../errors.js';
import { noStatCache, type StatCache, type StatKey } from './stat-cache.js';

/**
 * Content identity of file inputs (format `cairn-input-1`), a Merkle tree so
 * each file's content hash can come from the stat cache:
 *
 *     dir      sha256( 'd'  for each entry, sorted by name bytes: u64(len) name kind hash )
 *
 * where kind is one byte, `f` (file), `x` (owner-executable file), `l`
 * (symlink) or `d`, and hash is 32 bytes: sha256 of a file's content, of a
 * link's target bytes, or a subdirectory's own hash. A file input alone is
 * the sha256 of its content (what `sha256sum` prints) plus its executable bit.
 *
 * Names and link targets are bytes (Buffer paths throughout), so a name that
 * is not UTF-8 is hashed and copied as it is. Symlinks inside a directory
 * input are never followed; one whose target leaves the input is refused.
 * A top-level input that is a symlink is followed (it names the input).
 */
export interface InputDigest {
  kind: 'file' | 'dir';
  /** file: sha256 of the content; dir: the cairn-input-1 hash of the tree (hex). */
  hash: string;
  /** file: the owner-executable bit (part of the identity: a build may run it). */
  exec: boolean;
  files: number;
  bytes: number;
  /**
   * The input's entry name, when it is not the basename of the path hashed:
   * set for a recorded input on a builder (recorded-inputs.ts), whose path
   * lies elsewhere than where the stage was declared.
   */
  entry?: string;
}

export interface HashStats {
  /** Regular files looked at. */
  files: number;
  /** Files read and hashed (stat cache misses). */
  hashedFiles: number;
  hashedBytes: number;
  /** Files whose hash came from the stat cache, unread. */
  cacheHits: number;
}

const SLASH = Buffer.from('/');
const CHUNK = 8 << 20;
let chunk: Buffer | undefined;

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const join = (dir: Buffer, name: Buffer): Buffer => Buffer.concat([dir, SLASH, name]);
const show = (p: Buffer): string => JSON.stringify(p.toString());

function statKey(st: fs.BigIntStats): StatKey {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs };
}
const sameKey = (a: StatKey, b: StatKey): boolean =>
  a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;

function unsafe(input: string, rel: Buffer, why: string): CairnError {
  return new CairnError('E_UNSAFE_INPUT', `file input ${input}: entry ${show(rel)} ${why}`, {
    input,
    path: rel.toString(),
  });
}

/**
 * An I/O error met while walking an input, as a coded error: an entry that
 * vanished or turned into a symlink under us (ENOENT, ELOOP from
 * O_NOFOLLOW, ENOTDIR) means the input changed while it was hashed; anything
 * else (EACCES, EIO) means it cannot be read.
 */
function walkError(e: unknown, input: string, abs: string): unknown {
  if (e instanceof CairnError) return e;
  const err = e as NodeJS.ErrnoException;
  const changed = err?.code === 'ENOENT' || err?.code === 'ELOOP' || err?.code === 'ENOTDIR';
  return new CairnError(
    changed ? 'E_INPUT_CHANGED' : 'E_INPUT_MISSING',
    `file input ${input} ${changed ? 'changed while it was being hashed' : 'cannot be read'}` +
      `: ${err?.message ?? String(e)}`,
    { input, path: abs, errno: err?.code },
    { cause: e },
  );
}

/**
 * True when a symlink at `parent/...` (components relative to the input
 * root) with this target, resolved physically through other symlinks in
 * the tree, stays inside the root (see linkStaysInside in store/tree.ts,
 * which works on strings; this one keeps names as bytes).
 */
function linkStaysInside(root: Buffer, parent: Buffer[], target: Buffer): boolean {
  let hops = 0;
  const resolve = (base: Buffer[], t: Buffer): Buffer[] | null => {
    if (t[0] === 0x2f) return null;
    let parts = [...base];
    let start = 0;
    for (let i = 0; i <= t.length; i++) {
      if (i < t.length && t[i] !== 0x2f) continue;
      const c = t.subarray(start, i);
      start = i + 1;
      if (c.length === 0 || (c.length === 1 && c[0] === 0x2e)) continue;
      if (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e) {
        if (parts.length === 0) return null;
        parts.pop();
        continue;
      }
      parts.push(Buffer.from(c));
      const abs = parts.reduce(join, root);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(abs);
      } catch {
        continue;
      }
      if (st.isSymbolicLink()) {
        if (++hops > 40) return null;
        const next = resolve(parts.slice(0, -1), fs.readlinkSync(abs, { encoding: 'buffer' }));
        if (next === null) return null;
        parts = next;
      }
    }
    return parts;
  };
  return resolve(parent, target) !== null;
}

/**
 * Hashes file inputs, taking each regular file's content hash from the stat
 * cache when its (device, inode, size, mtime, ctime) are unchanged: a warm
 * run costs one lstat per file. Synchronous on purpose: it runs before any
 * build, and large sequential reads into one buffer are the fastest way to
 * feed sha256 (node:crypto runs on this thread either way).
 */
export class InputHasher {
  readonly stats: HashStats = { files: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0 };

  constructor(private readonly cache: StatCache = noStatCache) {}

  /** The digest of the file or directory at `abs`; `input` names it in errors (the declared path). */
  digest(abs: string, input: string): InputDigest {
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(abs, { bigint: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        throw new CairnError('E_INPUT_MISSING', `file input ${input} does not exist (looked for ${abs})`, {
          input,
          path: abs,
        });
      }
      throw new CairnError(
        'E_INPUT_MISSING',
        `file input ${input} cannot be read: ${(e as Error).message}`,
        { input, path: abs },
        { cause: e },
      );
    }
    const root = Buffer.from(abs);
    const filesBefore = this.stats.files;
    const bytesBefore = this.bytesSeen;
    let hash: string;
    try {
      if (st.isFile()) hash = this.fileHash(root, st, input, () => Buffer.alloc(0), true).toString('hex');
      else if (st.isDirectory()) hash = this.dirHash(root, root, [], input).toString('hex');
      else throw unsafe(input, Buffer.from('.'), 'is not a file or a directory');
    } catch (e) {
      throw walkError(e, input, abs);
    }
    return {
      kind: st.isFile() ? 'file' : 'dir',
      hash,
      exec: st.isFile() && (Number(st.mode) & 0o100) !== 0,
      files: this.stats.files - filesBefore,
      bytes: this.bytesSeen - bytesBefore,
    };
  }

  /** Bytes of every regular file looked at, read or not. */
  private bytesSeen = 0;

  private dirHash(root: Buffer, dir: Buffer, rel: Buffer[], input: string): Buffer {
    const h = createHash('sha256');
    h.update('d');
    const names = fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare);
    for (const name of names) {
      h.update(u64(name.length));
      h.update(name);
      this.entry(h, root, join(dir, name), [...rel, name], input);
    }
    return h.digest();
  }

  /** Feeds one directory entry's kind and hash to its directory's hash. */
  private entry(h: Hash, root: Buffer, abs: Buffer, rel: Buffer[], input: string): void {
    const st = fs.lstatSync(abs, { bigint: true });
    const relPath = () => Buffer.concat(rel.flatMap((r, i) => (i === 0 ? [r] : [SLASH, r])));
    if (st.isSymbolicLink()) {
      const target = fs.readlinkSync(abs, { encoding: 'buffer' });
      if (!linkStaysInside(root, rel.slice(0, -1), target)) {
        throw unsafe(input, relPath(), `is a symlink to ${show(target)}, which leaves the input`);
      }
      h.update('l');
      h.update(createHash('sha256').update(target).digest());
    } else if (st.isFile()) {
      h.update((Number(st.mode) & 0o100) !== 0 ? 'x' : 'f');
      h.update(this.fileHash(abs, st, input, relPath, false));
    } else if (st.isDirectory()) {
      h.update('d');
      h.update(this.dirHash(root, abs, rel, input));
    } else {
      throw unsafe(input, relPath(), 'is a socket, fifo or device; only files, directories and symlinks can be inputs');
    }
  }

  /** sha256 of a regular file's content, from the stat cache or by reading it. */
  private fileHash(abs: Buffer, st: fs.BigIntStats, input: string, rel: () => Buffer, follow: boolean): Buffer {
    this.stats.files++;
    this.bytesSeen += Number(st.size);
    const cached = this.cache.get(statKey(st));
    if (cached) {
      this.stats.cacheHits++;
      return cached;
    }
    // A file being written while it is read is read again; one that never
    // holds still is an error rather than an identity of mixed content.
    for (let attempt = 0; attempt < 3; attempt++) {
      const startedNs = BigInt(Date.now()) * 1_000_000n;
      const fd = fs.openSync(abs, fs.constants.O_RDONLY | (follow ? 0 : fs.constants.O_NOFOLLOW));
      try {
        // Read exactly the size lstat saw; the fstat afterwards proves the
        // open file is that same inode, unchanged (no write: mtime/ctime,
        // no growth or truncation: size), with no extra syscall per file.
        const key = attempt === 0 ? statKey(st) : statKey(fs.fstatSync(fd, { bigint: true }));
        const size = Number(key.size);
        const h = createHash('sha256');
        const buf = (chunk ??= Buffer.allocUnsafe(CHUNK));
        let total = 0;
        while (total < size) {
          const n = fs.readSync(fd, buf, 0, Math.min(CHUNK, size - total), null);
          if (n === 0) break;
          h.update(buf.subarray(0, n));
          total += n;
        }
        this.stats.hashedFiles++;
        this.stats.hashedBytes += total;
        if (total !== size || !sameKey(key, statKey(fs.fstatSync(fd, { bigint: true })))) continue;
        const sha = h.digest();
        this.cache.put(key, sha, startedNs);
        return sha;
      } finally {
        fs.closeSync(fd);
      }
    }
    const where = rel().length > 0 ? ` (entry ${show(rel())})` : '';
    throw new CairnError('E_INPUT_CHANGED', `file input ${input}${where} kept changing while it was being hashed`, {
      input,
    });
  }

  /** Writes the stat cache entries collected so far. */
  flush(): void {
    this.cache.flush();
  }

  close(): void {
    this.cache.close();
  }
}
