import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { extractTar, type TarCompression } from '../../store/extract.js';
import { extractZip } from '../../store/extract-zip.js';
import type { UnpackLimits } from '../../store/extract-plan.js';
import { checkName } from '../../store/refs.js';
import type { Dep } from '../stage.js';
import { stage, type Stage } from '../stage.js';

export type ArchiveFormat = TarCompression | 'deb' | 'zip';
export type { UnpackLimits };

export interface UnpackSpec {
  /** The stage whose output holds the archive (fetchurl, fetchlocal, ...). */
  src: Stage<any>;
  /** The archive's path inside `src`'s output (default: its only file). */
  file?: string;
  /** Leading path components to drop, as tar --strip-components. */
  strip?: number;
  /** Default: detected from the file's first bytes. */
  format?: ArchiveFormat;
  /**
   * Most file bytes and entries the archive may unpack to (default 64 GiB and
   * 1,000,000: DEFAULT_LIMITS in src/store/extract-plan.ts). More is
   * E_ARCHIVE_TOO_LARGE, found from the headers, and nothing is stored.
   */
  limits?: UnpackLimits;
  name?: string;
}

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
  // A local file header, or the end record alone (an empty zip).
  if (starts([0x50, 0x4b, 0x03, 0x04]) || starts([0x50, 0x4b, 0x05, 0x06])) return 'zip';
  if (n >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  // An archive with no entries is just its end marker: a block of zeros.
  if (n === 512 && head.every((b) => b === 0)) return 'tar';
  throw new CairnError(
    'E_BAD_ARCHIVE',
    `${path.basename(file)} is not a tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip or .deb archive`,
    { file },
  );
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
      const sizeText = header.subarray(48, 58).toString('latin1').trim();
      if (header.subarray(58, 60).toString('latin1') !== '`\n') break;
      // Digits only: a negative size would step back to the same header forever.
      if (!/^[0-9]+$/.test(sizeText)) {
        throw new CairnError('E_BAD_ARCHIVE', `${path.basename(deb)} has a member of size ${JSON.stringify(sizeText)}`);
      }
      const size = Number(sizeText);
      off += 60;
      // The member's name becomes a file name: 'data.tar/../../x' must not climb out of `dir`.
      if (/^data\.tar(\.[a-z0-9]+)?$/.test(name)) {
        const out = path.join(dir, name);
        const buf = Buffer.alloc(1 << 20);
        const wfd = fs.openSync(out, 'wx'); // the build's own fresh tmp: never an existing name
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
  throw new CairnError('E_BAD_ARCHIVE', `${path.basename(deb)} has no data.tar member; is it a Debian package?`, {
    file: deb,
  });
}

function archiveIn(dep: Dep, file: string | null): string {
  if (file !== null) return dep.file(file);
  const names = fs.readdirSync(dep.path);
  if (names.length !== 1)
    throw new CairnError(
      'E_BAD_STAGE_SPEC',
      `unpack: ${dep.dref} holds ${names.length} entries; say which with \`file\``,
    );
  return dep.file(names[0]!);
}

/** The override as it enters the config: only the limits given, so stages without one keep their DRefs. */
function checkLimits(limits: UnpackLimits | undefined): { limits?: UnpackLimits } {
  if (limits === undefined) return {};
  const out: UnpackLimits = {};
  for (const k of ['bytes', 'entries'] as const) {
    const v = limits[k];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new CairnError('E_BAD_STAGE_SPEC', `unpack: limits.${k} must be a whole number >= 0`);
    }
    out[k] = v;
  }
  return Object.keys(out).length > 0 ? { limits: out } : {};
}

/**
 * An archive's contents as a realization. Formats: tar, tar.gz, tar.xz,
 * tar.bz2, tar.zst (the last three through the system's xz, bzip2, zstd),
 * zip (stored and deflate, zip64; src/store/zip-format.ts) and Debian
 * packages (their data.tar.*). Every entry is checked before
 * anything is extracted (src/store/extract-plan.ts): absolute or `..` paths,
 * links that resolve outside the output, writes through links, duplicate
 * names and device files are E_UNSAFE_ARCHIVE; more than `limits` is
 * E_ARCHIVE_TOO_LARGE.
 */
export function unpack(spec: UnpackSpec): Stage<{
  src: Stage<any>;
  file: string | null;
  strip: number;
  format: ArchiveFormat | null;
  limits?: UnpackLimits;
}> {
  const strip = spec.strip ?? 0;
  if (!Number.isInteger(strip) || strip < 0)
    throw new CairnError('E_BAD_STAGE_SPEC', 'unpack: strip must be a whole number >= 0');
  return stage({
    name: checkName(spec.name ?? `${spec.src.name}-unpacked`.slice(0, 100)),
    config: { src: spec.src, file: spec.file ?? null, strip, format: spec.format ?? null, ...checkLimits(spec.limits) },
    version: 'cairn-unpack-1',
    build: async ({ config, out, tmp, log }) => {
      let archive = archiveIn(config.src, config.file);
      let format = config.format ?? detectFormat(archive);
      if (format === 'deb') {
        archive = debDataMember(archive, tmp);
        format = detectFormat(archive);
        if (format === 'deb') throw new CairnError('E_BAD_ARCHIVE', 'a Debian package inside a Debian package');
      }
      const opts = { strip: config.strip, limits: config.limits };
      const n = format === 'zip' ? await extractZip(archive, out, opts) : await extractTar(archive, format, out, opts);
      log(`unpacked ${n} entries from ${path.basename(archive)} (${format})`);
    },
  });
}
