/**
 * The tar format, read and written by Cairn itself so that entry names stay
 * bytes from end to end: node-tar decodes names as UTF-8 (a name that is not
 * valid UTF-8 comes out with U+FFFD in it, and a different file is written).
 *
 * Pure: no I/O. The reader is a push parser (feed it chunks, it calls the
 * sink), so memory stays constant however large the entries are; the writer
 * turns one entry's metadata into header blocks.
 *
 * Read: ustar and GNU headers, GNU 'L'/'K' long names, pax 'x' headers
 * (path, linkpath, size; 'g' headers are read and ignored), base-256 numbers
 * (sizes of disk images beyond 8 GiB). Checksums are verified; an archive that
 * ends mid-entry or without its end-of-archive block is damaged.
 * Names are carried as latin1 strings: one char per byte, so they convert
 * back to the exact bytes with Buffer.from(name, 'latin1').
 */
import { CairnError } from '../errors.js';

export const BLOCK = 512;

export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo';

export interface TarEntry {
  /** The name's bytes, as a latin1 string (see the module comment). */
  path: string;
  type: EntryType;
  /** Link target bytes as latin1, for symlinks and hard links; '' otherwise. */
  linkpath: string;
  /** Bytes of data that follow (0 for everything but regular files). */
  size: number;
  mode: number;
}

export interface TarSink {
  /** An entry's header; may throw to stop reading. */
  entry(e: TarEntry): void;
  /** The next piece of the current entry's data (a view into the input: copy it to keep it). */
  data(chunk: Buffer): void;
  /** All of the current entry's data has been delivered. */
  entryEnd(): void;
}

/** Longest long-name or pax record body that is buffered in memory. */
const META_MAX = 1 << 20;

const bad = (why: string): CairnError => new CairnError('E_BAD_ARCHIVE', `not a readable tar archive: ${why}`);

/** A numeric header field: octal text, or base-256 when the top bit of its first byte is set. */
export function readNumber(field: Buffer): number {
  if (field[0]! & 0x80) {
    if (field[0] === 0xff) throw bad('negative base-256 number');
    let n = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) {
      n = n * 256 + field[i]!;
      if (n > Number.MAX_SAFE_INTEGER) throw bad('number too large');
    }
    return n;
  }
  const text = field
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw bad(`not an octal number: ${JSON.stringify(text)}`);
  const n = parseInt(text, 8);
  if (n > Number.MAX_SAFE_INTEGER) throw bad('number too large');
  return n;
}

/** Bytes up to the first NUL, as latin1. */
const cstr = (b: Buffer): string => {
  const z = b.indexOf(0);
  return (z < 0 ? b : b.subarray(0, z)).toString('latin1');
};

/** Sum of the header's bytes with its checksum field counted as spaces (unsigned, and signed as old tars did). */
function checksums(h: Buffer): [number, number] {
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    u += b;
    s += b >= 0x80 ? b - 256 : b;
  }
  return [u, s];
}

const TYPES: Record<string, EntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'chardev',
  '4': 'blockdev',
  '5': 'dir',
  '6': 'fifo',
};

/** Parses one pax extended header body into its key/value records (values as latin1 bytes). */
export function parsePax(body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < body.length) {
    if (body[i] === 0) break; // padding some writers leave
    const sp = body.indexOf(0x20, i);
    const len = sp < 0 ? NaN : Number(body.subarray(i, sp).toString('latin1'));
    if (!Number.isInteger(len) || len <= sp - i || i + len > body.length || body[i + len - 1] !== 0x0a) {
      throw bad('malformed pax header record');
    }
    const rec = body.subarray(sp + 1, i + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw bad('pax header record without "="');
    out.set(rec.subarray(0, eq).toString('latin1'), rec.subarray(eq + 1).toString('latin1'));
    i += len;
  }
  return out;
}

type State =
  | { at: 'header' }
  | { at: 'data'; left: number; pad: number }
  | { at: 'meta'; kind: 'L' | 'K' | 'x' | 'g'; left: number; pad: number; parts: Buffer[] }
  | { at: 'end' };

/** Streaming tar reader: write() chunks in any sizes, then end(). */
export class TarParser {
  private state: State = { at: 'header' };
  private partial: Buffer[] = [];
  private partialLen = 0;
  private longName: string | undefined;
  private longLink: string | undefined;
  private pax: Map<string, string> | undefined;
  /** Bytes consumed so far, for messages. */
  offset = 0;

  constructor(private readonly sink: TarSink) {}

  write(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      const st = this.state;
      if (st.at === 'end') return; // whatever follows the end marker (record padding) is ignored
      if (st.at === 'data' && st.left > 0) {
        const n = Math.min(st.left, chunk.length - i);
        this.sink.data(chunk.subarray(i, i + n));
        st.left -= n;
        i += n;
        this.offset += n;
        if (st.left === 0) {
          this.sink.entryEnd();
          if (st.pad === 0) this.state = { at: 'header' };
        }
        continue;
      }
      if ((st.at === 'data' || st.at === 'meta') && st.pad > 0 && (st.at === 'data' || st.left === 0)) {
        const n = Math.min(st.pad, chunk.length - i);
        st.pad -= n;
        i += n;
        this.offset += n;
        if (st.pad === 0) this.finishBody();
        continue;
      }
      if (st.at === 'meta' && st.left > 0) {
        const n = Math.min(st.left, chunk.length - i);
        st.parts.push(Buffer.from(chunk.subarray(i, i + n)));
        st.left -= n;
        i += n;
        this.offset += n;
        if (st.left === 0 && st.pad === 0) this.finishBody();
        continue;
      }
      // Collect a whole header block.
      const need = BLOCK - this.partialLen;
      const n = Math.min(need, chunk.length - i);
      this.partial.push(Buffer.from(chunk.subarray(i, i + n))); // copied: the stream may reuse its buffer
      this.partialLen += n;
      i += n;
      this.offset += n;
      if (this.partialLen === BLOCK) {
        const block = this.partial.length === 1 ? this.partial[0]! : Buffer.concat(this.partial);
        this.partial = [];
        this.partialLen = 0;
        this.header(block);
      }
    }
  }

  /** The input has ended: anything but a finished archive is damage. */
  /** Whether the end-of-archive marker has been read (what follows is ignored). */
  get ended(): boolean {
    return this.state.at === 'end';
  }

  /**
   * Consumes the rest of the current entry's data as if written, without
   * passing it to the sink: a reader that can seek (an uncompressed file)
   * and ignores data (the planning pass) reads headers only.
   */
  skipData(): void {
    const st = this.state;
    if (st.at !== 'data' || st.left === 0) return;
    this.offset += st.left;
    st.left = 0;
    this.sink.entryEnd();
    if (st.pad === 0) this.state = { at: 'header' };
  }

  end(): void {
    if (this.state.at !== 'end') {
      throw bad(
        this.state.at === 'header' && this.partialLen === 0
          ? 'the end-of-archive marker is missing (truncated?)'
          : `it ends in the middle of an entry at byte ${this.offset} (truncated?)`,
      );
    }
  }

  private finishBody(): void {
    const st = this.state;
    if (st.at === 'meta') {
      const body = Buffer.concat(st.parts);
      if (st.kind === 'L') this.longName = cstr(body);
      else if (st.kind === 'K') this.longLink = cstr(body);
      else if (st.kind === 'x') this.pax = new Map([...(this.pax ?? []), ...parsePax(body)]);
      else parsePax(body); // 'g': checked, not applied (global path or size makes no sense for us)
    }
    this.state = { at: 'header' };
  }

  private header(h: Buffer): void {
    if (h.every((b) => b === 0)) {
      if (this.longName !== undefined || this.longLink !== undefined || this.pax) {
        throw bad('a long-name or pax header ends the archive');
      }
      this.state = { at: 'end' };
      return;
    }
    const sum = readNumber(h.subarray(148, 156));
    const [u, s] = checksums(h);
    if (sum !== u && sum !== s) throw bad(`header checksum mismatch at byte ${this.offset - BLOCK}`);
    const flag = String.fromCharCode(h[156]!);
    const size = readNumber(h.subarray(124, 136));
    const pad = padding(size);
    if (flag === 'L' || flag === 'K' || flag === 'x' || flag === 'g') {
      if (size > META_MAX) throw bad(`a ${flag} header of ${size} bytes`);
      this.state = { at: 'meta', kind: flag, left: size, pad, parts: [] };
      if (size === 0) this.finishBody();
      return;
    }
    const type = TYPES[flag];
    if (type === undefined) throw bad(`unsupported entry type ${JSON.stringify(flag)} (sparse, multi-volume, ...)`);
    const magic = h.subarray(257, 263).toString('latin1');
    const prefix = magic === 'ustar\0' ? cstr(h.subarray(345, 500)) : ''; // GNU headers keep times there
    let p = cstr(h.subarray(0, 100));
    if (prefix !== '') p = `${prefix}/${p}`;
    let link = cstr(h.subarray(157, 257));
    let realSize = size;
    const pax = this.pax;
    if (this.longName !== undefined) p = this.longName;
    if (this.longLink !== undefined) link = this.longLink;
    if (pax?.has('path')) p = pax.get('path')!;
    if (pax?.has('linkpath')) link = pax.get('linkpath')!;
    if (pax?.has('size')) {
      const v = pax.get('size')!;
      if (!/^[0-9]+$/.test(v) || Number(v) > Number.MAX_SAFE_INTEGER) throw bad(`pax size ${JSON.stringify(v)}`);
      realSize = Number(v);
    }
    this.longName = this.longLink = this.pax = undefined;
    // Sparse files in pax form look like regular files whose data is a map: extracting them as such would be wrong.
    if (pax && [...pax.keys()].some((k) => k.startsWith('GNU.sparse.'))) {
      throw bad(`sparse entry ${JSON.stringify(p)} is not supported`);
    }
    if (flag === '\0' && p.endsWith('/')) {
      return this.begin({ path: p, type: 'dir', linkpath: '', size: 0, mode: 0o755 }, realSize);
    }
    const mode = readNumber(h.subarray(100, 108)) & 0o7777;
    // Only regular files carry data; anything else's size field is skipped over as tar does.
    const linkpath = type === 'symlink' || type === 'hardlink' ? link : '';
    this.begin({ path: p, type, linkpath, size: type === 'file' ? realSize : 0, mode }, realSize);
  }

  private begin(e: TarEntry, dataSize: number): void {
    this.sink.entry(e);
    const pad = padding(dataSize);
    if (e.type === 'file' && dataSize > 0) {
      this.state = { at: 'data', left: dataSize, pad };
      return;
    }
    this.sink.entryEnd();
    // Data of non-files (some writers give hard links a size) is skipped as padding.
    this.state = dataSize === 0 ? { at: 'header' } : { at: 'data', left: 0, pad: dataSize + pad };
  }
}

// ---------------------------------------------------------------------------
// Writing

function octal(n: number, width: number): Buffer {
  const s = n.toString(8).padStart(width - 1, '0');
  if (s.length > width - 1) throw new Error(`tar: ${n} does not fit in ${width} octal digits`);
  return Buffer.from(`${s}\0`, 'latin1');
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body]);
}

const isUtf8 = (b: Buffer): boolean => Buffer.from(b.toString('utf8'), 'utf8').equals(b);

function ustarHeader(name: Buffer, flag: string, size: number, mode: number, link: Buffer): Buffer {
  const h = Buffer.alloc(BLOCK);
  name.copy(h, 0, 0, Math.min(name.length, 100));
  octal(mode, 8).copy(h, 100);
  octal(0, 8).copy(h, 108); // uid
  octal(0, 8).copy(h, 116); // gid
  octal(size, 12).copy(h, 124);
  octal(0, 12).copy(h, 136); // mtime: 0, so an export is a function of its contents
  h.write(flag, 156, 'latin1');
  link.copy(h, 157, 0, Math.min(link.length, 100));
  h.write('ustar\x0000', 257, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  Buffer.from(`${sum.toString(8).padStart(6, '0')}\0 `, 'latin1').copy(h, 148);
  return h;
}

/**
 * The header block(s) for one entry: a pax 'x' header first when the name or
 * link does not fit (or is not UTF-8: then hdrcharset=BINARY says so), or the
 * size exceeds the 8 GiB an octal field holds. Data and padding follow.
 */
export function entryHeader(e: {
  path: Buffer;
  type: 'file' | 'dir' | 'symlink';
  size?: number;
  mode: number;
  linkpath?: Buffer;
}): Buffer {
  const flag = { file: '0', dir: '5', symlink: '2' }[e.type];
  const size = e.type === 'file' ? (e.size ?? 0) : 0;
  const link = e.linkpath ?? Buffer.alloc(0);
  const slashed = e.type === 'dir' && e.path[e.path.length - 1] !== 0x2f;
  const name = slashed ? Buffer.concat([e.path, Buffer.from('/')]) : e.path;
  const records: Buffer[] = [];
  if (!isUtf8(name) || !isUtf8(link)) records.push(paxRecord('hdrcharset', Buffer.from('BINARY')));
  if (name.length > 100) records.push(paxRecord('path', name));
  if (link.length > 100) records.push(paxRecord('linkpath', link));
  if (size > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(size))));
  const main = ustarHeader(name, flag, size > 0o77777777777 ? 0 : size, e.mode, link);
  if (records.length === 0) return main;
  const body = Buffer.concat(records);
  const x = ustarHeader(Buffer.from('PaxHeader'), 'x', body.length, 0o644, Buffer.alloc(0));
  return Buffer.concat([x, body, Buffer.alloc(padding(body.length)), main]);
}

/** Zero bytes that bring `size` bytes of data to a whole block. */
export const padding = (size: number): number => (BLOCK - (size % BLOCK)) % BLOCK;

/** The end-of-archive marker: two zero blocks. */
export const END = Buffer.alloc(2 * BLOCK);
