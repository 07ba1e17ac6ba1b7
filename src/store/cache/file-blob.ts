import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CairnError } from '../../errors.js';
import type { BlobStore } from './blob.js';
import { checkBlobKey, checkBlobPrefix } from './blob-key.js';

const { O_RDONLY, O_NOFOLLOW, O_WRONLY, O_CREAT, O_EXCL } = fs.constants;
/** Temporary files of unfinished puts: never listed, never read as objects. */
const TMP = '.tmp-';

/**
 * A BlobStore in a local directory (`file:///DIR`): one file per key.
 * Minimal version written for the S3/HTTP slice so `openBlobStore` can
 * dispatch on file:// (the cache slice owns the real one). A cache
 * directory may be shared, so it is treated as outside input: no symlink
 * in it is followed, and a put renames a finished temporary file into
 * place so a reader sees the old object, none or the new one.
 */
export class FileBlobStore implements BlobStore {
  readonly url: string;
  readonly identity: string;
  readonly writable = true;

  constructor(readonly dir: string) {
    if (!path.isAbsolute(dir)) {
      throw new CairnError('E_BAD_CACHE_URL', `bad cache directory ${JSON.stringify(dir)}: not absolute`, { dir });
    }
    this.dir = path.resolve(dir);
    this.url = `file://${this.dir}`;
    let real = this.dir;
    try {
      real = fs.realpathSync(this.dir);
    } catch {
      // Not there yet: the first put makes it.
    }
    this.identity = `file ${real}`;
  }

  async get(key: string): Promise<Buffer | undefined> {
    const fd = this.openRead(key);
    if (fd === undefined) return undefined;
    try {
      return fs.readFileSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  async getStream(key: string): Promise<Readable | undefined> {
    const fd = this.openRead(key);
    return fd === undefined ? undefined : fs.createReadStream('', { fd });
  }

  async has(keys: readonly string[]): Promise<Set<string>> {
    const out = new Set<string>();
    for (const k of new Set(keys)) {
      const p = this.path(k, false);
      if (p === undefined) continue;
      try {
        if (fs.lstatSync(p).isFile()) out.add(k);
      } catch {
        // missing
      }
    }
    return out;
  }

  async put(key: string, body: Buffer | Readable): Promise<void> {
    const p = this.path(key, true)!;
    const tmp = path.join(path.dirname(p), `${TMP}${randomBytes(8).toString('hex')}`);
    const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
    try {
      const out = fs.createWriteStream('', { fd, autoClose: false });
      await pipeline(Buffer.isBuffer(body) ? Readable.from([body]) : body, out);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, p);
    } catch (e) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
      fs.rmSync(tmp, { force: true });
      throw e;
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    checkBlobPrefix(prefix);
    const walk = function* (dir: string, rel: string): Generator<string> {
      let ents: fs.Dirent[];
      try {
        ents = fs.readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of ents) {
        if (e.name.startsWith(TMP)) continue;
        const k = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) yield* walk(path.join(dir, e.name), k);
        else if (e.isFile() && k.startsWith(prefix)) yield k;
      }
    };
    yield* walk(this.dir, '');
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const k of new Set(keys)) {
      const p = this.path(k, false);
      if (p !== undefined) fs.rmSync(p, { force: true });
    }
  }

  /** The file of a key, its directories checked (or made) one by one, never through a symlink. */
  private path(key: string, create: boolean): string | undefined {
    const segs = checkBlobKey(key).split('/');
    let dir = this.dir;
    for (const s of [undefined, ...segs.slice(0, -1)]) {
      if (s !== undefined) dir = path.join(dir, s);
      let st: fs.Stats | undefined;
      try {
        st = fs.lstatSync(dir);
      } catch {
        if (!create) return undefined;
        fs.mkdirSync(dir, { recursive: s === undefined, mode: 0o755 });
        continue;
      }
      if (!st.isDirectory()) {
        if (!create) return undefined; // a key under a file or a symlink: not an object
        throw new CairnError('E_CACHE_UNAVAILABLE', `cache ${this.url}: ${dir} is not a directory (or is a symlink)`, {
          url: this.url,
          key,
        });
      }
    }
    return path.join(dir, segs[segs.length - 1]!);
  }

  private openRead(key: string): number | undefined {
    const p = this.path(key, false);
    if (p === undefined) return undefined;
    try {
      const fd = fs.openSync(p, O_RDONLY | O_NOFOLLOW);
      if (!fs.fstatSync(fd).isFile()) {
        fs.closeSync(fd);
        return undefined;
      }
      return fd;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ELOOP') {
        return undefined;
      }
      throw e;
    }
  }
}
