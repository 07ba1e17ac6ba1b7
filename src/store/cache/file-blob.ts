/**
 * A binary cache in a local directory (`file:///DIR`): one file per key.
 * Puts write a temporary file under DIR/.tmp and rename it into place, so a
 * reader sees the old object, none or the new one, and a put killed midway
 * leaves only a temporary file that no listing shows. Nothing here follows
 * a symlink planted in the directory: reads open with O_NOFOLLOW, writes
 * refuse a key whose directories are not real directories, and listings
 * show regular files only.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { CairnError } from '../../errors.js';
import type { BlobStore } from './blob.js';
import { checkBlobKey, checkBlobPrefix } from './blob-key.js';

const { O_RDONLY, O_NOFOLLOW, O_WRONLY, O_CREAT, O_EXCL } = fs.constants;
const TMP = '.tmp';
/** How many stat calls `has` keeps in flight. */
const PARALLEL = 32;

/** Keys are the project's safe relative paths (checkBlobKey); the temporary area is never one. */
export function checkKey(key: string): string {
  checkBlobKey(key);
  if (key.split('/')[0] === TMP) {
    throw new CairnError('E_BAD_ARGUMENT', `${JSON.stringify(key)} is not a cache object key`, { key });
  }
  return key;
}

const isMissing = (e: unknown): boolean => ['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '');

export class FileBlobStore implements BlobStore {
  readonly url: string;
  readonly identity: string;
  readonly writable = true;
  readonly dir: string;

  constructor(dir: string) {
    if (!path.isAbsolute(dir)) {
      throw new CairnError('E_BAD_CACHE_URL', `bad cache directory ${JSON.stringify(dir)}: not absolute`, { dir });
    }
    this.dir = path.resolve(dir);
    this.url = `file://${this.dir}`;
    let real = this.dir;
    try {
      real = fs.realpathSync(this.dir);
    } catch {
      /* not created yet: the first put makes it */
    }
    this.identity = `file://${real}`;
  }

  private abs(key: string): string {
    return path.join(this.dir, checkKey(key));
  }

  /**
   * Whether every directory on the way to `key` (below the cache directory)
   * is a real directory: a link planted as `r` or `a` must not lead reads
   * elsewhere. `memo` spares repeated lstat calls within one batch.
   */
  private async realDirs(key: string, memo?: Map<string, Promise<boolean>>): Promise<boolean> {
    const segs = checkKey(key).split('/').slice(0, -1);
    for (let i = 1; i <= segs.length; i++) {
      const rel = segs.slice(0, i).join('/');
      const check = async (): Promise<boolean> => {
        try {
          return (await fs.promises.lstat(path.join(this.dir, rel))).isDirectory();
        } catch (e) {
          if (isMissing(e)) return false;
          return this.fail(e, `look up ${rel}`);
        }
      };
      let p = memo?.get(rel);
      if (p === undefined) {
        p = check();
        memo?.set(rel, p);
      }
      if (!(await p)) return false;
    }
    return true;
  }

  private fail(e: unknown, what: string): never {
    if (e instanceof CairnError) throw e;
    throw new CairnError(
      'E_CACHE_UNAVAILABLE',
      `${this.url}: cannot ${what}: ${(e as Error).message}`,
      {
        url: this.url,
      },
      { cause: e },
    );
  }

  async get(key: string): Promise<Buffer | undefined> {
    const fh = await this.openRegular(key);
    if (fh === undefined) return undefined;
    try {
      return await fh.readFile();
    } catch (e) {
      return this.fail(e, `read ${key}`);
    } finally {
      await fh.close();
    }
  }

  async getStream(key: string): Promise<Readable | undefined> {
    const fh = await this.openRegular(key);
    return fh?.createReadStream({ highWaterMark: 1 << 20 });
  }

  /** The object's file, opened without following a link; undefined when it is missing, a link or not a file. */
  private async openRegular(key: string): Promise<fs.promises.FileHandle | undefined> {
    const p = this.abs(key);
    if (!(await this.realDirs(key))) return undefined;
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(p, O_RDONLY | O_NOFOLLOW);
    } catch (e) {
      if (isMissing(e) || (e as NodeJS.ErrnoException).code === 'ELOOP') return undefined;
      return this.fail(e, `read ${key}`);
    }
    try {
      if ((await fh.stat()).isFile()) return fh;
    } catch (e) {
      await fh.close();
      return this.fail(e, `read ${key}`);
    }
    await fh.close();
    return undefined;
  }

  async has(keys: readonly string[]): Promise<Set<string>> {
    const found = new Set<string>();
    const memo = new Map<string, Promise<boolean>>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const key = keys[next++]!;
        try {
          const p = this.abs(key);
          if ((await this.realDirs(key, memo)) && (await fs.promises.lstat(p)).isFile()) found.add(key);
        } catch (e) {
          if (!isMissing(e)) this.fail(e, `look up ${key}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, keys.length) }, worker));
    return found;
  }

  /** Creates the directories of `key` and checks that each is a real directory (not a planted link). */
  private async parentOf(key: string): Promise<string> {
    let dir = this.dir;
    await fs.promises.mkdir(dir, { recursive: true });
    for (const seg of key.split('/').slice(0, -1)) {
      dir = path.join(dir, seg);
      try {
        await fs.promises.mkdir(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      if (!(await fs.promises.lstat(dir)).isDirectory()) {
        throw new CairnError(
          'E_CACHE_UNAVAILABLE',
          `${dir} in the cache is not a directory; refusing to write through it`,
        );
      }
    }
    return dir;
  }

  async put(key: string, body: Buffer | Readable, _opts?: { contentType?: string; size?: number }): Promise<void> {
    const dest = this.abs(key);
    let tmp: string | undefined;
    try {
      await this.parentOf(key);
      const tmpDir = path.join(this.dir, TMP);
      await fs.promises.mkdir(tmpDir, { recursive: true });
      if (!(await fs.promises.lstat(tmpDir)).isDirectory()) throw new Error(`${tmpDir} is not a directory`);
      tmp = path.join(tmpDir, `${process.pid}-${crypto.randomBytes(8).toString('hex')}`);
      const fh = await fs.promises.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
      try {
        if (Buffer.isBuffer(body)) await fh.writeFile(body);
        else {
          for await (const chunk of body) {
            const b = chunk as Buffer;
            for (let off = 0; off < b.length;) off += (await fh.write(b, off, b.length - off)).bytesWritten;
          }
        }
        // Durable before it is visible: an object that exists is whole, even after a power cut.
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, dest);
      tmp = undefined;
    } catch (e) {
      if (!Buffer.isBuffer(body)) body.destroy();
      return this.fail(e, `write ${key}`);
    } finally {
      if (tmp !== undefined) await fs.promises.rm(tmp, { force: true });
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    checkBlobPrefix(prefix);
    // Walk only the directories that can hold keys with this prefix.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash);
    if (base !== '' && !(await this.realDirs(`${base}/_`))) return;
    const stack = [base];
    while (stack.length > 0) {
      const rel = stack.pop()!;
      let entries: fs.Dirent[];
      try {
        entries = await fs.promises.readdir(path.join(this.dir, rel), { withFileTypes: true });
      } catch (e) {
        if (isMissing(e)) continue;
        return this.fail(e, `list ${prefix}`);
      }
      for (const ent of entries) {
        const key = rel === '' ? ent.name : `${rel}/${ent.name}`;
        if (rel === '' && ent.name === TMP) continue;
        if (ent.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) stack.push(key);
        } else if (ent.isFile() && key.startsWith(prefix)) {
          yield key;
        }
      }
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        const p = this.abs(key);
        // Through a planted directory link, unlink would delete a file outside the cache.
        if (await this.realDirs(key)) await fs.promises.unlink(p);
      } catch (e) {
        if (!isMissing(e)) this.fail(e, `delete ${key}`);
      }
    }
  }
}
