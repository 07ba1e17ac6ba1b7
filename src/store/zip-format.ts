/**
 * Reads a zip archive's directory: the end record (zip64 too), the central
 * directory and each entry's local header, with positional reads on a file
 * descriptor (a zip is read from its end, not as a stream). Nothing here
 * decompresses file data or writes anything; src/store/extract-zip.ts does.
 *
 * Names are bytes, as latin1 strings (one char per byte, as tar-format.ts):
 * - with the UTF-8 flag (bit 11), the bytes as they are;
 * - else Info-ZIP's Unicode path field (0x7075) when its CRC matches the name;
 * - else, for archives made on MS-DOS, OS/2 or Windows (the hosts whose
 *   tools write the OEM code page), the name is read as CP437, as the
 *   format says, and `\` separates directories there;
 * - else (Unix, macOS, ...) the bytes as they are, as unzip and tar keep them.
 *
 * Everything that a careful extractor cannot trust is refused here with
 * E_BAD_ARCHIVE: split archives, encryption, methods other than stored and
 * deflate, sizes that do not add up, a declared size deflate cannot reach
 * from the compressed size (more than 1032:1), local headers that disagree
 * with the central directory, and entries whose data overlap one another or
 * the directory (the "overlapping files" zip bomb).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { CairnError } from '../errors.js';
import type { TarEntry } from './tar-format.js';

export interface ZipEntry extends TarEntry {
  /** 0 stored, 8 deflate. */
  method: 0 | 8;
  compressedSize: number;
  /** Bytes its data declares (a file's size, a symlink's target length). */
  dataSize: number;
  crc32: number;
  /** The name's bytes as stored, which the local header must repeat. */
  rawName: Buffer;
  /** Where the entry's local header starts. */
  localOffset: number;
  /** Where its (compressed) data starts: after the local header, which readZip has checked. */
  dataOffset: number;
}

export interface ZipDirectory {
  entries: ZipEntry[];
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_END = 0x06054b50;
const SIG_END64 = 0x06064b50;
const SIG_LOCATOR64 = 0x07064b50;
/** zlib's limit: deflate cannot produce more than 1032 bytes from one compressed byte. */
const DEFLATE_MAX_RATIO = 1032;
/** Hosts (the high byte of "version made by") whose tools write names in the OEM code page. */
const OEM_HOSTS = new Set([0, 6, 10, 14]);
/** Hosts whose external attributes carry a Unix mode in their high 16 bits. */
const UNIX_HOSTS = new Set([3, 19]);
const CP437_HIGH =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐' +
  '└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';
const METHODS: Record<number, string> = {
  1: 'shrink',
  6: 'implode',
  9: 'deflate64',
  12: 'bzip2',
  14: 'lzma',
  93: 'zstd',
  95: 'xz',
  98: 'ppmd',
  99: 'AES encryption',
};

/** One file's bytes at a position; short reads past the end are the archive's fault. */
export class ZipFile {
  readonly size: number;
  private constructor(
    readonly file: string,
    readonly fd: number,
  ) {
    this.size = fs.fstatSync(fd).size;
  }

  static open(file: string): ZipFile {
    return new ZipFile(file, fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW));
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  bad(why: string, details: Record<string, unknown> = {}): CairnError {
    return new CairnError('E_BAD_ARCHIVE', `${path.basename(this.file)} is not a readable zip archive: ${why}`, {
      file: this.file,
      ...details,
    });
  }

  read(pos: number, n: number, what: string): Buffer {
    if (pos < 0 || n < 0 || pos + n > this.size) throw this.bad(`${what} lies beyond the end of the file`);
    const b = Buffer.alloc(n);
    for (let got = 0; got < n;) {
      const k = fs.readSync(this.fd, b, got, n - got, pos + got);
      if (k === 0) throw this.bad(`${what} is cut short`);
      got += k;
    }
    return b;
  }
}

/** A 64-bit field as a number; beyond 2^53 no file can be, so it is damage. */
function u64(zf: ZipFile, b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw zf.bad(`${what} is ${v}`);
  return Number(v);
}

interface End {
  entries: number;
  cdSize: number;
  cdOffset: number;
  /** Where the directory must end: the zip64 end record, or the end record. */
  cdLimit: number;
}

/** Finds the end of central directory record (and its zip64 form) from the file's tail. */
function readEnd(zf: ZipFile): End {
  const tailLen = Math.min(zf.size, 22 + 0xffff);
  const tail = zf.read(zf.size - tailLen, tailLen, 'the end record');
  let at = -1;
  // The record whose comment ends exactly at the end of the file: the signature's bytes may also occur in
  // data or in a comment, and trailing bytes after the archive would let two readers see two directories.
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === SIG_END && i + 22 + tail.readUInt16LE(i + 20) === tailLen) {
      at = i;
      break;
    }
  }
  if (at < 0) throw zf.bad('no end of central directory record at its end');
  const endPos = zf.size - tailLen + at;
  const e = tail.subarray(at, at + 22);
  let disk = e.readUInt16LE(4);
  let cdDisk = e.readUInt16LE(6);
  let onDisk = e.readUInt16LE(8);
  let entries = e.readUInt16LE(10);
  let cdSize = e.readUInt32LE(12);
  let cdOffset = e.readUInt32LE(16);
  let cdLimit = endPos;
  const locPos = endPos - 20;
  if (locPos >= 0 && zf.read(locPos, 4, 'the zip64 locator').readUInt32LE(0) === SIG_LOCATOR64) {
    const loc = zf.read(locPos, 20, 'the zip64 locator');
    if (loc.readUInt32LE(4) !== 0 || loc.readUInt32LE(16) > 1) throw zf.bad('it is split across several files');
    const pos = u64(zf, loc, 8, 'the zip64 end record offset');
    const e64 = zf.read(pos, 56, 'the zip64 end record');
    if (e64.readUInt32LE(0) !== SIG_END64) throw zf.bad('the zip64 locator points at no zip64 end record');
    if (pos + 56 > locPos) throw zf.bad('the zip64 end record overlaps its locator');
    disk = e64.readUInt32LE(16);
    cdDisk = e64.readUInt32LE(20);
    onDisk = u64(zf, e64, 24, 'the entry count');
    entries = u64(zf, e64, 32, 'the entry count');
    cdSize = u64(zf, e64, 40, 'the directory size');
    cdOffset = u64(zf, e64, 48, 'the directory offset');
    cdLimit = pos;
  }
  if (disk !== 0 || cdDisk !== 0 || onDisk !== entries) throw zf.bad('it is split across several files');
  if (cdOffset + cdSize > cdLimit) throw zf.bad('the central directory runs past its end record');
  if (cdSize < entries * 46) throw zf.bad(`a ${cdSize}-byte central directory cannot hold ${entries} entries`);
  return { entries, cdSize, cdOffset, cdLimit };
}

/** Reads the central directory in slices, so a large one is never in memory whole. */
class Cursor {
  private buf: Buffer = Buffer.alloc(0);
  private bufPos = 0;
  constructor(
    private readonly zf: ZipFile,
    private pos: number,
    private readonly end: number,
  ) {}

  take(n: number): Buffer {
    if (this.pos + n > this.end) throw this.zf.bad('an entry runs past the end of the central directory');
    const off = this.pos - this.bufPos;
    if (off < 0 || off + n > this.buf.length) {
      this.bufPos = this.pos;
      this.buf = this.zf.read(this.pos, Math.min(Math.max(n, 1 << 20), this.end - this.pos), 'the central directory');
    }
    const o = this.pos - this.bufPos;
    this.pos += n;
    return this.buf.subarray(o, o + n);
  }
}

/** A name's bytes, decoded by the rules in the module comment, as a latin1 string. */
function nameOf(raw: Buffer, flags: number, host: number, extra: Buffer): string {
  if (flags & 0x800) return raw.toString('latin1');
  const unicode = extraField(extra, 0x7075);
  if (unicode && unicode.length >= 5 && unicode[0] === 1 && unicode.readUInt32LE(1) === zlib.crc32(raw)) {
    return unicode.subarray(5).toString('latin1');
  }
  if (!OEM_HOSTS.has(host)) return raw.toString('latin1');
  let s = '';
  for (const b of raw) s += b < 0x80 ? String.fromCharCode(b === 0x5c ? 0x2f : b) : CP437_HIGH[b - 0x80]!;
  return Buffer.from(s, 'utf8').toString('latin1');
}

/** The body of the first extra field with this id, or null. */
function extraField(extra: Buffer, id: number): Buffer | null {
  for (let i = 0; i + 4 <= extra.length;) {
    const len = extra.readUInt16LE(i + 2);
    if (i + 4 + len > extra.length) return null;
    if (extra.readUInt16LE(i) === id) return extra.subarray(i + 4, i + 4 + len);
    i += 4 + len;
  }
  return null;
}

const S_IFMT = 0o170000;
const UNIX_TYPES: Record<number, TarEntry['type'] | 'socket'> = {
  0o100000: 'file',
  0o040000: 'dir',
  0o120000: 'symlink',
  0o020000: 'chardev',
  0o060000: 'blockdev',
  0o010000: 'fifo',
  0o140000: 'socket',
};

export interface ReadZipOptions {
  /** Called with the count from the end record, before the directory is read (it may throw). */
  onCount?(entries: number): void;
}

/**
 * The archive's entries in central directory order, every field checked.
 * A symlink's target is its data, which the caller reads (readStoredSmall).
 */
export function readZip(zf: ZipFile, opts: ReadZipOptions = {}): ZipEntry[] {
  const end = readEnd(zf);
  opts.onCount?.(end.entries);
  const cur = new Cursor(zf, end.cdOffset, end.cdOffset + end.cdSize);
  const entries: ZipEntry[] = [];
  for (let i = 0; i < end.entries; i++) {
    const h = cur.take(46);
    if (h.readUInt32LE(0) !== SIG_CENTRAL) throw zf.bad(`central directory entry ${i} has no signature`);
    const host = h.readUInt8(5);
    const flags = h.readUInt16LE(8);
    const method = h.readUInt16LE(10);
    const crc32 = h.readUInt32LE(16);
    let compressedSize = h.readUInt32LE(20);
    let size = h.readUInt32LE(24);
    const nameLen = h.readUInt16LE(28);
    const extraLen = h.readUInt16LE(30);
    const commentLen = h.readUInt16LE(32);
    let diskStart = h.readUInt16LE(34);
    const ext = h.readUInt32LE(38);
    let localOffset = h.readUInt32LE(42);
    const raw = Buffer.from(cur.take(nameLen));
    const extra = Buffer.from(cur.take(extraLen));
    cur.take(commentLen);
    const shown = JSON.stringify(raw.toString('utf8'));
    // Zip64: the 64-bit values, in this order, of the fields that hold all ones.
    const z64 = extraField(extra, 0x0001);
    let zo = 0;
    const wide = (v: number, what: string): number => {
      if (v !== 0xffffffff) return v;
      if (!z64 || zo + 8 > z64.length) throw zf.bad(`entry ${shown} has no zip64 ${what}`);
      zo += 8;
      return u64(zf, z64, zo - 8, `the ${what} of ${shown}`);
    };
    size = wide(size, 'size');
    compressedSize = wide(compressedSize, 'compressed size');
    localOffset = wide(localOffset, 'offset');
    if (diskStart === 0xffff && z64 && zo + 4 <= z64.length) diskStart = z64.readUInt32LE(zo);
    if (diskStart !== 0) throw zf.bad('it is split across several files');
    if (flags & 0x41 || flags & 0x2000) throw zf.bad(`entry ${shown} is encrypted`, { entry: raw.toString('utf8') });
    if (method !== 0 && method !== 8) {
      const name = METHODS[method] ? ` (${METHODS[method]})` : '';
      throw zf.bad(`entry ${shown} uses compression method ${method}${name}; Cairn reads stored and deflate`, {
        entry: raw.toString('utf8'),
        method,
      });
    }
    if (method === 0 && size !== compressedSize)
      throw zf.bad(`stored entry ${shown} declares ${size} bytes but holds ${compressedSize}`);
    if (method === 8 && size > compressedSize * DEFLATE_MAX_RATIO + 258)
      throw zf.bad(
        `entry ${shown} declares ${size} bytes from ${compressedSize} compressed, more than deflate can produce`,
      );
    const name = nameOf(raw, flags, host, extra);
    const unixMode = UNIX_HOSTS.has(host) ? ext >>> 16 : 0;
    let type = UNIX_TYPES[unixMode & S_IFMT] ?? 'file';
    // A trailing slash (or the MS-DOS directory attribute) makes a directory, whatever the mode says.
    if (name.endsWith('/') || (!UNIX_HOSTS.has(host) && ext & 0x10)) type = 'dir';
    if (type === 'socket') {
      throw new CairnError('E_UNSAFE_ARCHIVE', `archive entry ${shown} is a socket, which cannot enter the store`, {
        entry: raw.toString('utf8'),
      });
    }
    entries.push({
      path: name,
      type,
      linkpath: '',
      size: type === 'file' ? size : 0,
      mode: unixMode !== 0 ? unixMode & 0o7777 : 0o644,
      method,
      compressedSize,
      dataSize: size,
      crc32,
      rawName: raw,
      localOffset,
      dataOffset: 0,
    });
  }
  checkLocalHeaders(zf, entries, end.cdOffset);
  return entries;
}

/**
 * Reads every local header: it must name the same entry with the same
 * method, and the entries' data must not overlap one another or the
 * central directory, so no byte of the archive is unpacked twice.
 */
function checkLocalHeaders(zf: ZipFile, entries: ZipEntry[], cdOffset: number): void {
  for (const e of entries) {
    const h = zf.read(e.localOffset, 30, 'a local header');
    if (h.readUInt32LE(0) !== SIG_LOCAL) throw zf.bad(`the local header of ${show(e)} has no signature`);
    const nameLen = h.readUInt16LE(26);
    const extraLen = h.readUInt16LE(28);
    if (h.readUInt16LE(8) !== e.method) throw zf.bad(`the local header of ${show(e)} names another method`);
    // Two names for one entry would let a scanner and an extractor see different archives.
    if (!zf.read(e.localOffset + 30, nameLen, 'a local header').equals(e.rawName))
      throw zf.bad(`the local header of ${show(e)} names another file`);
    e.dataOffset = e.localOffset + 30 + nameLen + extraLen;
  }
  const byOffset = [...entries].sort((a, b) => a.localOffset - b.localOffset);
  for (let i = 0; i < byOffset.length; i++) {
    const e = byOffset[i]!;
    const next = i + 1 < byOffset.length ? byOffset[i + 1]!.localOffset : cdOffset;
    if (e.dataOffset + e.compressedSize > next) {
      throw zf.bad(`the data of ${show(e)} overlaps another entry or the central directory`, {
        entry: Buffer.from(e.path, 'latin1').toString('utf8'),
      });
    }
  }
}

const show = (e: ZipEntry): string => JSON.stringify(Buffer.from(e.path, 'latin1').toString('utf8'));
