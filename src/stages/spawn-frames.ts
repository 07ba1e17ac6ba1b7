/**
 * The frames Cairn and its spawn helper (cli/client/spawn.c) exchange over
 * the helper's stdin and stdout: a u32 body length, then the body: a type
 * byte, a u32 request id and the payload (integers little-endian). Pure:
 * encoding and splitting only.
 */

/** The helper's protocol version, in its hello frame. */
export const SPAWN_PROTOCOL = 1;
/** The helper refuses larger frames; a spawn request that would be larger runs through Node's spawn. */
export const MAX_FRAME = 64 << 20;
/** Input for a program's stdin travels in frames of at most this many bytes. */
export const INPUT_CHUNK = 1 << 20;

export interface SpawnRequest {
  cmd: string;
  /** argv[0] first. */
  argv: readonly string[];
  cwd: string;
  /** `KEY=value` entries. */
  env: readonly string[];
  umask: number;
  stdinPipe: boolean;
}

function frame(type: string, id: number, payload: Buffer): Buffer {
  const head = Buffer.allocUnsafe(9);
  head.writeUInt32LE(5 + payload.length, 0);
  head[4] = type.charCodeAt(0);
  head.writeUInt32LE(id, 5);
  return Buffer.concat([head, payload]);
}

/** A spawn request; undefined if a string holds a NUL byte or the frame would be too large (Node's spawn decides). */
export function encodeSpawn(id: number, r: SpawnRequest): Buffer | undefined {
  const strs = [r.cmd, r.cwd, ...r.argv, ...r.env];
  let size = 13;
  for (const s of strs) {
    if (s.includes('\0')) return undefined;
    size += Buffer.byteLength(s) + 1;
  }
  if (size + 5 > MAX_FRAME) return undefined;
  const p = Buffer.allocUnsafe(size);
  p[0] = r.stdinPipe ? 1 : 0;
  p.writeUInt32LE(r.umask, 1);
  p.writeUInt32LE(r.argv.length, 5);
  p.writeUInt32LE(r.env.length, 9);
  let off = 13;
  for (const s of strs) {
    off += p.write(s, off);
    p[off++] = 0;
  }
  return frame('S', id, p);
}

/** A program's stdin input as frames, ending with the empty end-of-input frame. */
export function encodeInput(id: number, input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += INPUT_CHUNK) out.push(frame('I', id, input.subarray(i, i + INPUT_CHUNK)));
  out.push(frame('I', id, Buffer.alloc(0)));
  return out;
}

export interface Frame {
  type: string;
  id: number;
  payload: Buffer;
}

/**
 * Splits the helper's output into frames. Payloads are views of the chunks
 * read (no copy), except for a frame split across chunks, whose pieces are
 * joined once it is whole (never once per chunk: a large frame arriving in
 * small pieces costs linear time).
 */
export class FrameReader {
  private pending: Buffer[] = [];
  private pendingLength = 0;
  /** Bytes the pending frame needs in all (header included), once its header is in. */
  private need = 4;

  /** The whole frames so far; throws on a malformed length (the helper is then not trusted further). */
  push(chunk: Buffer): Frame[] {
    this.pending.push(chunk);
    this.pendingLength += chunk.length;
    if (this.pendingLength < this.need) return [];
    const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingLength);
    const frames: Frame[] = [];
    let off = 0;
    this.need = 4;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32LE(off);
      if (len < 5 || len > MAX_FRAME) throw new Error(`bad frame length ${len}`);
      if (buf.length - off - 4 < len) {
        this.need = 4 + len;
        break;
      }
      const body = buf.subarray(off + 4, off + 4 + len);
      frames.push({ type: String.fromCharCode(body[0]!), id: body.readUInt32LE(1), payload: body.subarray(5) });
      off += 4 + len;
    }
    this.pending = off < buf.length ? [buf.subarray(off)] : [];
    this.pendingLength = buf.length - off;
    return frames;
  }
}
