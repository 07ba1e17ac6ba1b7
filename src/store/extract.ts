/**
 * Extracts a tar archive into a fresh, empty directory, safely: the archive
 * is read twice. The first pass only reads headers and plans the tree
 * (src/store/extract-plan.ts: every rule, the limits, where each symlink
 * really resolves); a bad entry anywhere means nothing is written. The second
 * pass creates every directory, then regular files (O_CREAT|O_EXCL|O_NOFOLLOW,
 * so no name that already exists is ever opened) and hard links, and the
 * symlinks last: while anything is written, the tree holds no link the
 * archive planted. Only the exec bit of modes is kept; owners never are.
 * Names are bytes throughout (Buffer paths).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { CairnError } from '../errors.js';
import { ExtractionPlanner, type ExtractionPlan, type UnpackLimits } from './extract-plan.js';
import { TarParser, type TarEntry, type TarSink } from './tar-format.js';

export type TarCompression = 'tar' | 'tar.gz' | 'tar.xz' | 'tar.bz2' | 'tar.zst';

const damaged = (file: string, format: string, e: unknown): CairnError =>
  e instanceof CairnError
    ? e
    : new CairnError(
        'E_BAD_ARCHIVE',
        `${path.basename(file)} is not a readable ${format} archive: ${(e as Error).message}`,
        { file },
        { cause: e },
      );

/** A readable stream of the uncompressed tar bytes of `file`; destroying it stops any helper process. */
export function tarStream(file: string, format: TarCompression): Readable {
  if (format === 'tar') return fs.createReadStream(file);
  if (format === 'tar.gz') {
    const raw = fs.createReadStream(file);
    const gunzip = zlib.createGunzip();
    raw.on('error', (e) => gunzip.destroy(e));
    gunzip.on('close', () => raw.destroy());
    return raw.pipe(gunzip);
  }
  const tool = { 'tar.xz': 'xz', 'tar.bz2': 'bzip2', 'tar.zst': 'zstd' }[format];
  const child = spawn(tool, ['-dc', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  // The stream ends only once the tool's exit status is known, so a
  // truncated or corrupt file fails the read instead of looking complete.
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  child.on('error', (e) =>
    out.destroy(new CairnError('E_BAD_ARCHIVE', `cannot run ${tool} to read ${format}: ${e.message}`)),
  );
  child.on('close', (code) => {
    if (code === 0) out.end();
    else
      out.destroy(
        new CairnError(
          'E_BAD_ARCHIVE',
          `${path.basename(file)} is not a readable ${format} archive: ` +
            `${tool} says ${stderr.trim() || `exit ${code}`}`,
          { file },
        ),
      );
  });
  // Stopping early (a refused entry, the limits) must not leave the tool decompressing a GiB nobody reads.
  out.on('close', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill();
  });
  // The reader sees errors while it reads; one after it stopped (the killed tool's EPIPE) is of no interest.
  out.on('error', () => {});
  return out;
}

/** Runs the archive's bytes through a parser feeding `sink`; any failure is a CairnError. */
async function readArchive(file: string, format: TarCompression, sink: TarSink): Promise<void> {
  const stream = tarStream(file, format);
  const parser = new TarParser(sink);
  try {
    for await (const chunk of stream) parser.write(chunk as Buffer);
    parser.end();
  } catch (e) {
    throw damaged(file, format, e);
  } finally {
    stream.destroy();
  }
}

/**
 * The headers of an uncompressed tar, read by seeking past every entry's
 * data: planning a 1 GiB archive of one file reads a few blocks, not 1 GiB.
 */
async function readPlainHeaders(file: string, sink: TarSink): Promise<void> {
  const fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  const parser = new TarParser(sink);
  const buf = Buffer.alloc(64 << 10);
  try {
    while (!parser.ended) {
      parser.skipData();
      const { bytesRead } = await fh.read(buf, 0, buf.length, parser.offset);
      if (bytesRead === 0) break;
      parser.write(buf.subarray(0, bytesRead));
    }
    parser.end();
  } catch (e) {
    throw damaged(file, 'tar', e);
  } finally {
    await fh.close();
  }
}

/** First pass: the plan, or the reason nothing may be extracted. */
export async function planArchive(
  file: string,
  format: TarCompression,
  strip = 0,
  limits: UnpackLimits = {},
): Promise<ExtractionPlan> {
  const planner = new ExtractionPlanner(strip, limits);
  const sink: TarSink = { entry: (e) => planner.add(e), data: () => {}, entryEnd: () => {} };
  await (format === 'tar' ? readPlainHeaders(file, sink) : readArchive(file, format, sink));
  return planner.finish();
}

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

/** A write into the destination failed (disk full, ...): the store's trouble, not the archive's. */
function io<T>(dest: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new CairnError('E_STORE_IO', `cannot extract into ${dest}: ${(e as Error).message}`, { dest }, { cause: e });
  }
}

/**
 * Extracts `file` into `dest`, which must be an empty directory this process
 * made (a build's out/, a fresh temporary directory). Returns the number of
 * entries. E_UNSAFE_ARCHIVE, E_ARCHIVE_TOO_LARGE and E_BAD_ARCHIVE from the
 * first pass leave `dest` untouched.
 */
export async function extractTar(
  file: string,
  format: TarCompression,
  dest: string,
  opts: { strip?: number; limits?: UnpackLimits } = {},
): Promise<number> {
  const plan = await planArchive(file, format, opts.strip ?? 0, opts.limits);
  const root = Buffer.from(dest.endsWith('/') ? dest : `${dest}/`);
  const at = (p: string): Buffer => Buffer.concat([root, Buffer.from(p, 'latin1')]);
  // Sorted, so parents come first; mkdir fails on any name that exists.
  io(dest, () => {
    for (const d of plan.dirs) fs.mkdirSync(at(d), 0o755);
  });
  let index = -1;
  let fd: number | null = null;
  const changed = (): CairnError =>
    new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} read differently the second time`, { file });
  await readArchive(file, format, {
    entry: (e: TarEntry) => {
      const step = plan.steps[++index];
      if (step === undefined) throw changed();
      if (step === null) return;
      if (step.kind === 'file') {
        if (e.type !== 'file' || e.size !== step.size) throw changed();
        const p = at(step.path);
        fd = io(dest, () => fs.openSync(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, step.exec ? 0o755 : 0o644));
      } else {
        if (e.type !== 'hardlink') throw changed();
        // link(2) does not follow a symlink in the target, and the tree holds none yet.
        io(dest, () => fs.linkSync(at(step.target), at(step.path)));
      }
    },
    data: (chunk) => {
      // A regular file that strip removes (a top-level README with strip 1): its data is skipped, as tar does.
      if (fd === null) return;
      io(dest, () => {
        for (let off = 0; off < chunk.length;) off += fs.writeSync(fd!, chunk, off, chunk.length - off);
      });
    },
    entryEnd: () => {
      if (fd !== null) fs.closeSync(fd);
      fd = null;
    },
  }).finally(() => {
    if (fd !== null) fs.closeSync(fd);
  });
  if (index !== plan.steps.length - 1) throw changed();
  io(dest, () => {
    for (const l of plan.symlinks) fs.symlinkSync(Buffer.from(l.target, 'latin1'), at(l.path));
  });
  return plan.steps.length;
}
