/**
 * Extracts a zip archive into a fresh, empty directory under the same rules
 * as tar (src/store/extract.ts): the central directory is read and the whole
 * tree planned first (src/store/extract-plan.ts: names, links, devices,
 * duplicates, the limits, from declared sizes), so a bad entry anywhere means
 * nothing is written. Then directories, files (O_CREAT|O_EXCL|O_NOFOLLOW)
 * and the symlinks last. Each file is checked while it is written: it may
 * not inflate past its declared size (the size the limits judged), and its
 * length and CRC-32 must match at its end.
 */
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { CairnError } from '../errors.js';
import { DEFAULT_LIMITS, ExtractionPlanner, type ExtractionPlan, type UnpackLimits } from './extract-plan.js';
import { ZipFile, readZip, type ZipEntry } from './zip-format.js';

/** Longest symlink target read into memory (PATH_MAX less the NUL, as the planner's names). */
const MAX_LINK = 4095;
/** Entries whose compressed data is at most this are read and inflated in one call. */
const SMALL = 1 << 20;

/** The compressed bytes of an entry, 1 MiB at a time (positional reads: the descriptor stays open). */
function* compressed(zf: ZipFile, e: ZipEntry): Generator<Buffer> {
  for (let done = 0; done < e.compressedSize;) {
    const n = Math.min(1 << 20, e.compressedSize - done);
    yield zf.read(e.dataOffset + done, n, "an entry's data");
    done += n;
  }
}

/** The uncompressed data of an entry, as chunks; a stream error is the archive's. */
function entryData(zf: ZipFile, e: ZipEntry): Readable {
  const raw = Readable.from(compressed(zf, e), { objectMode: false });
  if (e.method === 0) return raw;
  const inflate = zlib.createInflateRaw({ chunkSize: 1 << 18 });
  raw.on('error', (err: Error) => inflate.destroy(err));
  return raw.pipe(inflate);
}

/**
 * Reads an entry's data, checking it against the central directory; `sink`
 * gets each chunk. Stops as soon as the data outgrows its declared size, so
 * a size lie costs at most one chunk.
 */
async function readEntry(zf: ZipFile, e: ZipEntry, sink: (chunk: Buffer) => void): Promise<void> {
  const shown = JSON.stringify(Buffer.from(e.path, 'latin1').toString('utf8'));
  if (e.compressedSize <= SMALL && e.dataSize <= SMALL * 16) {
    // Most entries are small: one read and one inflate call, no streams.
    let data = zf.read(e.dataOffset, e.compressedSize, `the data of ${shown}`);
    if (e.method === 8) {
      try {
        data = zlib.inflateRawSync(data, { maxOutputLength: Math.max(1, e.dataSize) });
      } catch (err) {
        const lie = (err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE';
        const why = lie ? `unpacks to more than the ${e.dataSize} bytes it declares` : `: ${(err as Error).message}`;
        throw zf.bad(`entry ${shown}${lie ? ' ' : ''}${why}`);
      }
    }
    if (data.length !== e.dataSize)
      throw zf.bad(`entry ${shown} unpacks to ${data.length} bytes, not the ${e.dataSize} it declares`);
    if (zlib.crc32(data) !== e.crc32) throw zf.bad(`entry ${shown} fails its CRC-32 check`);
    if (data.length > 0) sink(data);
    return;
  }
  const stream = entryData(zf, e);
  let n = 0;
  let crc = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > e.dataSize) throw zf.bad(`entry ${shown} unpacks to more than the ${e.dataSize} bytes it declares`);
      crc = zlib.crc32(chunk, crc);
      sink(chunk);
    }
  } catch (err) {
    if (err instanceof CairnError) throw err;
    throw zf.bad(`entry ${shown}: ${(err as Error).message}`);
  } finally {
    stream.destroy();
  }
  if (n !== e.dataSize) throw zf.bad(`entry ${shown} unpacks to ${n} bytes, not the ${e.dataSize} it declares`);
  if (crc >>> 0 !== e.crc32) throw zf.bad(`entry ${shown} fails its CRC-32 check`);
}

async function symlinkTarget(zf: ZipFile, e: ZipEntry): Promise<string> {
  if (e.dataSize > MAX_LINK) {
    throw new CairnError(
      'E_BAD_ARCHIVE',
      `archive entry ${JSON.stringify(Buffer.from(e.path, 'latin1').toString('utf8'))} is a link ` +
        `of ${e.dataSize} bytes, longer than ${MAX_LINK}`,
      { file: zf.file },
    );
  }
  const parts: Buffer[] = [];
  await readEntry(zf, e, (c) => parts.push(Buffer.from(c)));
  return Buffer.concat(parts).toString('latin1');
}

/** First pass: every entry checked and the tree planned, nothing written. */
async function planZip(
  zf: ZipFile,
  strip: number,
  limits: UnpackLimits,
): Promise<{ plan: ExtractionPlan; entries: ZipEntry[] }> {
  const planner = new ExtractionPlanner(strip, limits);
  const maxEntries = limits.entries ?? DEFAULT_LIMITS.entries;
  const entries = readZip(zf, {
    onCount: (count) => {
      // Found from the end record, before a directory of that many entries is read.
      if (count > maxEntries)
        throw new CairnError('E_ARCHIVE_TOO_LARGE', `the archive holds more than ${maxEntries} entries`, {
          limit: 'entries',
          max: maxEntries,
        });
    },
  });
  for (const e of entries) {
    if (e.type === 'symlink') e.linkpath = await symlinkTarget(zf, e);
    planner.add(e);
  }
  return { plan: planner.finish(), entries };
}

/** A write into the destination failed (disk full, ...): the store's trouble, not the archive's. */
function io<T>(dest: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new CairnError('E_STORE_IO', `cannot extract into ${dest}: ${(e as Error).message}`, { dest }, { cause: e });
  }
}

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

/**
 * Extracts the zip `file` into `dest` (an empty directory this process
 * made). Returns the number of entries. E_UNSAFE_ARCHIVE, E_ARCHIVE_TOO_LARGE
 * and most E_BAD_ARCHIVE (all but data that fails its own check) leave
 * `dest` untouched.
 */
export async function extractZip(
  file: string,
  dest: string,
  opts: { strip?: number; limits?: UnpackLimits } = {},
): Promise<number> {
  const zf = ZipFile.open(file);
  try {
    const { plan, entries } = await planZip(zf, opts.strip ?? 0, opts.limits ?? {});
    const root = Buffer.from(dest.endsWith('/') ? dest : `${dest}/`);
    const at = (p: string): Buffer => Buffer.concat([root, Buffer.from(p, 'latin1')]);
    io(dest, () => {
      for (const d of plan.dirs) fs.mkdirSync(at(d), 0o755);
    });
    for (const [i, e] of entries.entries()) {
      const step = plan.steps[i];
      if (!step) continue; // a directory, a symlink (made last), or stripped away: zip has no hard links
      const mode = step.kind === 'file' && step.exec ? 0o755 : 0o644;
      const fd = io(dest, () => fs.openSync(at(step.path), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode));
      try {
        await readEntry(zf, e, (chunk) =>
          io(dest, () => {
            for (let off = 0; off < chunk.length;) off += fs.writeSync(fd, chunk, off, chunk.length - off);
          }),
        );
      } finally {
        fs.closeSync(fd);
      }
    }
    io(dest, () => {
      for (const l of plan.symlinks) fs.symlinkSync(Buffer.from(l.target, 'latin1'), at(l.path));
    });
    return entries.length;
  } finally {
    zf.close();
  }
}
