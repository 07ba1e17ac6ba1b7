/**
 * Archives of output trees: Cairn's own tar writer (names stay bytes, modes
 * 0644/0755 by the exec bit, times and owners zero, entries in byte order),
 * so one tree always gives the same tar and two pushers of the same tree
 * write the same object; gzip from node:zlib when it pays, else the tar. Unpacking goes through
 * extractTar, which checks every entry before writing any (no absolute or
 * `..` names, no devices, no link that resolves outside, no write through a
 * link), and the result must be exactly one `out/` directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { CairnError } from '../../errors.js';
import { TarWriter } from '../export.js';
import { extractTar } from '../extract.js';
import type { BlobStore } from './blob.js';
import type { ArchiveKind } from './format.js';

const { O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

/** Archives up to this size (uncompressed) are compressed in memory, on libuv's thread pool. */
const IN_MEMORY = 8 << 20;
const gzipAsync = promisify(zlib.gzip);
/**
 * gzip pays when it saves at least a tenth. Random bytes, images, models and
 * archives do not compress, and gzip at ~32 MiB/s would then be most of a
 * push's time (the PUT alone runs at ~200 MiB/s), and the gunzip, twice
 * (extractTar plans, then writes), most of a pull's.
 */
const WORTH = 0.9;
/** A large tar is judged by gzip of this many samples of SAMPLE bytes, spread over it. */
const SAMPLES = 4;
const SAMPLE = 256 << 10;

/**
 * The archive of the output tree `outDir`: a tar written to `dest`.tar (a
 * fresh name in a private temporary directory), then compressed when that
 * pays: in memory for small trees (`body`), or into `file` for large ones.
 * `kind` says which: 'tar.gz', or 'tar' (the tar as it is).
 */
export async function packTree(
  outDir: string,
  dest: string,
): Promise<{ size: number; kind: ArchiveKind; body?: Buffer; file?: string }> {
  const tar = `${dest}.tar`;
  // Read and write: a large tar is sampled back through the same descriptor.
  const fd = fs.openSync(tar, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  let size: number;
  try {
    const w = new TarWriter(fd);
    w.tree(Buffer.from(outDir), Buffer.from('out'));
    w.end();
    size = fs.fstatSync(fd).size;
    if (size > IN_MEMORY && !(await gzipPays(fd, size))) return { size, kind: 'tar', file: tar };
  } finally {
    fs.closeSync(fd);
  }
  try {
    if (size <= IN_MEMORY) {
      const raw = fs.readFileSync(tar);
      const body = await gzipAsync(raw);
      return body.length <= raw.length * WORTH
        ? { size: body.length, kind: 'tar.gz', body }
        : { size: raw.length, kind: 'tar', body: raw };
    }
    // Level 6 (zlib's default): level 9 costs about 3x the time for a few percent.
    await pipeline(
      fs.createReadStream(tar),
      zlib.createGzip(),
      fs.createWriteStream(dest, { flags: 'wx', mode: 0o600 }),
    );
  } finally {
    fs.rmSync(tar, { force: true });
  }
  return { size: fs.statSync(dest).size, kind: 'tar.gz', file: dest };
}

/** Whether gzip saves a tenth on samples spread over the file (the tar of a large tree). */
async function gzipPays(fd: number, size: number): Promise<boolean> {
  const samples: Buffer[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const b = Buffer.alloc(SAMPLE);
    const at = Math.floor(((size - SAMPLE) * i) / Math.max(1, SAMPLES - 1));
    samples.push(b.subarray(0, fs.readSync(fd, b, 0, SAMPLE, Math.max(0, at))));
  }
  const raw = Buffer.concat(samples);
  return (await gzipAsync(raw)).length <= raw.length * WORTH;
}

/** Copies a stream to a fresh file. */
export async function download(body: Readable, dest: string): Promise<void> {
  await pipeline(body, fs.createWriteStream(dest, { flags: 'wx', mode: 0o600 }));
}

/** The object `key` into the fresh file `dest`, the fastest way the backend has; false when it does not exist. */
export async function fetchObject(blob: BlobStore, key: string, dest: string): Promise<boolean> {
  if (blob.download) return blob.download(key, dest);
  const body = await blob.getStream(key);
  if (body === undefined) return false;
  await download(body, dest);
  return true;
}

/**
 * Unpacks the archive `file` into the empty directory `dir`, which then
 * holds `out/` and nothing else. A damaged archive is E_BAD_ARCHIVE (nothing
 * written), a hostile one E_UNSAFE_ARCHIVE.
 */
export async function unpackTree(file: string, dir: string, kind: ArchiveKind): Promise<void> {
  // No size limits: the entry's signed sizes are checked against the tree after unpacking.
  const unlimited = { bytes: Number.MAX_SAFE_INTEGER, entries: Number.MAX_SAFE_INTEGER };
  await extractTar(file, kind, dir, { limits: unlimited });
  const names = fs.readdirSync(dir);
  const out = path.join(dir, 'out');
  if (names.length !== 1 || names[0] !== 'out' || !fs.lstatSync(out).isDirectory()) {
    throw new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} does not hold exactly one out/ directory`, { file });
  }
}

/** gzip of a buffer (logs, small objects). */
export const gzip = (b: Buffer): Buffer => zlib.gzipSync(b);

/** gunzip of a buffer; E_BAD_ARCHIVE when it is not gzip. */
export function gunzip(b: Buffer, what: string): Buffer {
  try {
    return zlib.gunzipSync(b);
  } catch (e) {
    throw new CairnError('E_BAD_ARCHIVE', `${what} is not gzip data: ${(e as Error).message}`, { what });
  }
}
