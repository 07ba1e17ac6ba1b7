import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type * as Tar from 'tar';
import { CairnError } from '../../errors.js';
import { checkName } from '../../store/refs.js';
import type { Dep } from '../stage.js';
import { stage, type Stage } from '../stage.js';

export type ArchiveFormat = 'tar' | 'tar.gz' | 'tar.xz' | 'tar.bz2' | 'tar.zst' | 'deb';

export interface UnpackSpec {
  /** The stage whose output holds the archive (fetchurl, fetchlocal, ...). */
  src: Stage<any>;
  /** The archive's path inside `src`'s output (default: its only file). */
  file?: string;
  /** Leading path components to drop, as tar --strip-components. */
  strip?: number;
  /** Default: detected from the file's first bytes. */
  format?: ArchiveFormat;
  name?: string;
}

const unsafe = (entry: string, why: string): CairnError =>
  new CairnError('E_UNSAFE_ARCHIVE', `archive entry ${JSON.stringify(entry)} ${why}`, { entry });

/** Reads the first bytes and names the format. */
export function detectFormat(file: string): ArchiveFormat {
  const fd = fs.openSync(file, 'r');
  const head = Buffer.alloc(512);
  const n = fs.readSync(fd, head, 0, 512, 0);
  fs.closeSync(fd);
  const starts = (bytes: number[]): boolean => bytes.every((b, i) => head[i] === b);
  if (starts([0x1f, 0x8b])) return 'tar.gz';
  if (starts([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return 'tar.xz';
  if (starts([0x42, 0x5a, 0x68])) return 'tar.bz2';
  if (starts([0x28, 0xb5, 0x2f, 0xfd])) return 'tar.zst';
  if (head.subarray(0, 8).toString('latin1') === '!<arch>\n') return 'deb';
  if (n >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  throw new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} is not a tar, tar.gz, tar.xz, tar.bz2, tar.zst or .deb archive`, { file });
}

/** A readable stream of the uncompressed tar bytes of `file`. */
function tarStream(file: string, format: Exclude<ArchiveFormat, 'deb'>): Readable {
  const tool = { 'tar.xz': 'xz', 'tar.bz2': 'bzip2', 'tar.zst': 'zstd' } as const;
  if (format === 'tar' || format === 'tar.gz') return fs.createReadStream(file); // node-tar gunzips itself
  const child = spawn(tool[format], ['-dc', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  // The stream ends only once the tool's exit status is known, so a
  // truncated or corrupt file fails the read instead of looking complete.
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d; });
  child.on('error', (e) => out.destroy(new CairnError('E_BAD_ARCHIVE', `cannot run ${tool[format]} to read ${format}: ${e.message}`)));
  child.on('close', (code) => {
    if (code === 0) out.end();
    else out.destroy(new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} is not a readable ${format} archive: ${tool[format]} says ${stderr.trim() || `exit ${code}`}`, { file }));
  });
  return out;
}

/** Checks one entry (after stripping) against the rules: no escapes, no devices. */
export function checkEntry(p: string, type: string, linkpath: string | undefined): void {
  if (p.startsWith('/')) throw unsafe(p, 'has an absolute path');
  if (p.split('/').includes('..')) throw unsafe(p, "has a '..' component");
  if (type === 'CharacterDevice' || type === 'BlockDevice' || type === 'FIFO') throw unsafe(p, `is a ${type}, which cannot enter the store`);
  if (type === 'SymbolicLink' || type === 'Link') {
    const target = linkpath ?? '';
    if (target.startsWith('/')) throw unsafe(p, `is a link to the absolute path ${target}`);
    // Symlinks resolve from their own directory, hard links from the archive root.
    const resolved = path.posix.normalize(type === 'Link' ? target : path.posix.join(path.posix.dirname(p), target));
    if (resolved === '..' || resolved.startsWith('../')) throw unsafe(p, `is a link to ${target}, which leaves the output`);
  }
}

function stripped(p: string, strip: number): string | null {
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  return parts.length > strip ? parts.slice(strip).join('/') : null;
}

/**
 * Extracts a tar archive into `dest` in two passes: first every entry is
 * checked (an archive with a bad entry extracts nothing), then it is
 * extracted with node-tar, which independently refuses to write through
 * symlinks or outside `dest`.
 */
export async function extractTar(file: string, format: Exclude<ArchiveFormat, 'deb'>, dest: string, strip = 0): Promise<number> {
  const tar: typeof Tar = await import('tar'); // loaded only when unpacking
  let entries = 0;
  let refused: CairnError | undefined;
  // strict: a truncated or damaged archive is an error here, in the
  // checking pass, not a warning halfway through extraction.
  const lister: Tar.Parser = new tar.Parser({
    strict: true,
    onReadEntry: (e) => {
      e.resume();
      if (refused) return;
      try {
        // As written (absolute paths, '..'), then as it will be extracted.
        checkEntry(e.path, e.type, e.linkpath);
        const p = stripped(e.path, strip);
        const link = e.linkpath && e.type === 'Link' ? stripped(e.linkpath, strip) ?? '' : e.linkpath;
        if (p !== null && strip > 0) checkEntry(p, e.type, link);
        entries++;
      } catch (err) {
        refused = err as CairnError;
        lister.abort(refused);
      }
    },
  });
  try {
    await pipeline(tarStream(file, format), lister as unknown as Writable);
    if (refused) throw refused;
  } catch (e) {
    if (refused) throw refused;
    if (e instanceof CairnError) throw e;
    throw new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} is not a readable ${format} archive: ${(e as Error).message}`, { file }, { cause: e });
  }
  const extractor = tar.x({ cwd: dest, strip, strict: true, preservePaths: false, preserveOwner: false, noChmod: false });
  try {
    await pipeline(tarStream(file, format), extractor as unknown as Writable);
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError('E_BAD_ARCHIVE', `${path.basename(file)} could not be extracted: ${(e as Error).message}`, { file }, { cause: e });
  }
  return entries;
}

/** Copies the `data.tar.*` member of a Debian package (an ar archive) to `dir`. */
export function debDataMember(deb: string, dir: string): string {
  const fd = fs.openSync(deb, 'r');
  try {
    const header = Buffer.alloc(60);
    let off = 8;
    for (;;) {
      if (fs.readSync(fd, header, 0, 60, off) < 60) break;
      const name = header.subarray(0, 16).toString('latin1').trim().replace(/\/$/, '');
      const size = Number(header.subarray(48, 58).toString('latin1').trim());
      if (header.subarray(58, 60).toString('latin1') !== '`\n' || !Number.isFinite(size)) break;
      off += 60;
      if (name.startsWith('data.tar')) {
        const out = path.join(dir, name);
        const buf = Buffer.alloc(1 << 20);
        const wfd = fs.openSync(out, 'w');
        for (let done = 0; done < size;) {
          const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - done), off + done);
          if (n === 0) throw new CairnError('E_BAD_ARCHIVE', `${path.basename(deb)} is truncated`);
          fs.writeSync(wfd, buf, 0, n);
          done += n;
        }
        fs.closeSync(wfd);
        return out;
      }
      off += size + (size % 2);
    }
  } finally {
    fs.closeSync(fd);
  }
  throw new CairnError('E_BAD_ARCHIVE', `${path.basename(deb)} has no data.tar member; is it a Debian package?`, { file: deb });
}

function archiveIn(dep: Dep, file: string | null): string {
  if (file !== null) return dep.file(file);
  const names = fs.readdirSync(dep.path);
  if (names.length !== 1) throw new CairnError('E_USAGE', `unpack: ${dep.dref} holds ${names.length} entries; say which with \`file\``);
  return dep.file(names[0]!);
}

/**
 * An archive's contents as a realization. Formats: tar, tar.gz, tar.xz,
 * tar.bz2, tar.zst (the last three through the system's xz, bzip2, zstd)
 * and Debian packages (their data.tar.*). Entries with absolute or `..`
 * paths, links that leave the output, and device files are refused with
 * E_UNSAFE_ARCHIVE before anything is extracted.
 */
export function unpack(spec: UnpackSpec): Stage<{ src: Stage<any>; file: string | null; strip: number; format: ArchiveFormat | null }> {
  const strip = spec.strip ?? 0;
  if (!Number.isInteger(strip) || strip < 0) throw new CairnError('E_USAGE', 'unpack: strip must be a whole number >= 0');
  return stage({
    name: checkName(spec.name ?? `${spec.src.name}-unpacked`.slice(0, 100)),
    config: { src: spec.src, file: spec.file ?? null, strip, format: spec.format ?? null },
    version: 'cairn-unpack-1',
    build: async ({ config, out, tmp, log }) => {
      let archive = archiveIn(config.src, config.file);
      let format = config.format ?? detectFormat(archive);
      if (format === 'deb') {
        archive = debDataMember(archive, tmp);
        format = detectFormat(archive);
        if (format === 'deb') throw new CairnError('E_BAD_ARCHIVE', 'a Debian package inside a Debian package');
      }
      const n = await extractTar(archive, format, out, config.strip);
      log(`unpacked ${n} entries from ${path.basename(archive)} (${format})`);
    },
  });
}
