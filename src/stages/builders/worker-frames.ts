/**
 * The framing of the builder worker protocol (`cairn builder-worker`, see
 * worker-serve.ts and worker-client.ts): pure, no I/O. A frame is
 *
 *   u32 BE  header length H (1 .. MAX_HEADER_BYTES)
 *   u64 BE  payload length P (0 .. MAX_PAYLOAD_BYTES)
 *   H bytes a JSON object with a string `t`, the message type
 *   P bytes the payload (a tar: a closure or a derivation export)
 *
 * Only some message types carry a payload; every header is checked against
 * its type before its payload is accepted, so a hostile or confused peer is
 * refused (E_WORKER_PROTOCOL) before anything of its payload is written.
 * The first frame each way is `hello` with the protocol version
 * (E_WORKER_VERSION on a mismatch).
 */
import { CairnError } from '../../errors.js';
import { parseRef } from '../../store/refs.js';

export const WORKER_PROTOCOL_VERSION = 1;
/** Headers are small JSON (refs, a report): a larger one is garbage or an attack. */
export const MAX_HEADER_BYTES = 1 << 20;
/** Payloads are closures, which may hold large outputs, but not beyond 1 TiB. */
export const MAX_PAYLOAD_BYTES = 2 ** 40;
/** At most this many refs in one `have` (a closure of a million realizations is an attack). */
const MAX_REFS = 1_000_000;
const PREFIX_BYTES = 12;

/** Coordinator to worker. */
export type WorkerRequest =
  | { t: 'hello'; version: number }
  /** Which of these refs (RRefs, DRefs) does the worker's store have? */
  | { t: 'have'; refs: string[] }
  /** Take in this closure (payload: a closure tar, as `cairn export` writes). */
  | { t: 'closure' }
  /** Build `dref` from exactly `inputs` (payload: the derivation export, as `cairn export-drv` writes). */
  | { t: 'build'; dref: string; inputs: string[]; force?: boolean };

/** Worker to coordinator. */
export type WorkerReply =
  | { t: 'hello'; version: number; host: string }
  | { t: 'have'; have: string[] }
  | { t: 'received'; realizations: number }
  /** A line of the running build's log. */
  | { t: 'log'; line: string }
  /** The build's report (build-drv --json); payload: the closure tar of its realizations. */
  | { t: 'built'; report: unknown }
  | { t: 'error'; code: string; message: string };

const WITH_PAYLOAD = new Set(['closure', 'build', 'built']);

export const protocolError = (why: string): CairnError =>
  new CairnError('E_WORKER_PROTOCOL', `builder worker protocol: ${why}`);

/** The prefix and header of a frame; its payload (payloadBytes long) follows it on the wire. */
export function encodeFrame(header: WorkerRequest | WorkerReply, payloadBytes = 0): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  if (json.length > MAX_HEADER_BYTES) throw protocolError(`a ${header.t} header of ${json.length} bytes is too large`);
  const prefix = Buffer.alloc(PREFIX_BYTES);
  prefix.writeUInt32BE(json.length, 0);
  prefix.writeBigUInt64BE(BigInt(payloadBytes), 4);
  return Buffer.concat([prefix, json]);
}

export type FrameEvent =
  { kind: 'header'; header: unknown; payloadBytes: number } | { kind: 'payload'; chunk: Buffer } | { kind: 'end' };

/**
 * Turns bytes into frame events, incrementally: `push` each chunk as it
 * arrives, `finish` at end of input. A header is parsed as soon as it is
 * complete; payload bytes are passed through as they come (never held
 * whole). Any fault poisons the decoder: every later call throws the same.
 */
export class FrameDecoder {
  private buf = Buffer.alloc(0);
  private headerBytes = -1;
  private payloadLeft = -1;
  /** The payload length of the frame whose header is being read. */
  private nextPayload = 0;
  private failed: CairnError | undefined;

  push(chunk: Buffer): FrameEvent[] {
    if (this.failed) throw this.failed;
    try {
      return this.take(chunk);
    } catch (e) {
      this.failed = e as CairnError;
      throw e;
    }
  }

  /** At end of input: throws when it came in the middle of a frame. */
  finish(): void {
    if (this.failed) throw this.failed;
    if (this.payloadLeft > 0 || this.buf.length > 0 || this.headerBytes >= 0) {
      this.failed = protocolError('the stream ended in the middle of a frame (truncated)');
      throw this.failed;
    }
  }

  /** True between frames (nothing of a next frame seen yet). */
  get idle(): boolean {
    return this.payloadLeft <= 0 && this.headerBytes < 0 && this.buf.length === 0;
  }

  private take(chunk: Buffer): FrameEvent[] {
    const events: FrameEvent[] = [];
    let data = this.buf.length > 0 ? Buffer.concat([this.buf, chunk]) : chunk;
    this.buf = Buffer.alloc(0);
    while (data.length > 0) {
      if (this.payloadLeft > 0) {
        const n = Math.min(this.payloadLeft, data.length);
        events.push({ kind: 'payload', chunk: data.subarray(0, n) });
        data = data.subarray(n);
        this.payloadLeft -= n;
        if (this.payloadLeft === 0) {
          this.payloadLeft = -1;
          events.push({ kind: 'end' });
        }
        continue;
      }
      if (this.headerBytes < 0) {
        if (data.length < PREFIX_BYTES) break;
        const h = data.readUInt32BE(0);
        const p = data.readBigUInt64BE(4);
        if (h === 0 || h > MAX_HEADER_BYTES)
          throw protocolError(`a header of ${h} bytes (at most ${MAX_HEADER_BYTES})`);
        if (p > BigInt(MAX_PAYLOAD_BYTES))
          throw protocolError(`a payload of ${p} bytes (at most ${MAX_PAYLOAD_BYTES})`);
        this.headerBytes = h;
        this.nextPayload = Number(p);
        data = data.subarray(PREFIX_BYTES);
      }
      if (data.length < this.headerBytes) break;
      let header: unknown;
      try {
        header = JSON.parse(data.subarray(0, this.headerBytes).toString('utf8'));
      } catch {
        throw protocolError('a frame header is not JSON');
      }
      data = data.subarray(this.headerBytes);
      this.headerBytes = -1;
      this.payloadLeft = this.nextPayload;
      events.push({ kind: 'header', header, payloadBytes: this.payloadLeft });
      if (this.payloadLeft === 0) {
        this.payloadLeft = -1;
        events.push({ kind: 'end' });
      }
    }
    this.buf = Buffer.from(data);
    return events;
  }
}

function typeOf(h: unknown, payloadBytes: number, known: ReadonlySet<string>): Record<string, unknown> {
  if (typeof h !== 'object' || h === null || Array.isArray(h)) throw protocolError('a frame header is not an object');
  const r = h as Record<string, unknown>;
  if (typeof r.t !== 'string' || !known.has(r.t))
    throw protocolError(`unknown message type ${JSON.stringify(r.t)?.slice(0, 40)}`);
  if (WITH_PAYLOAD.has(r.t) !== payloadBytes > 0)
    throw protocolError(`a ${r.t} message ${payloadBytes > 0 ? 'carries no payload' : 'needs a payload'}`);
  return r;
}

function stringList(v: unknown, what: string, check: (s: string) => boolean): string[] {
  if (!Array.isArray(v) || v.length > MAX_REFS) throw protocolError(`${what} is not a list of refs`);
  for (const s of v) if (typeof s !== 'string' || !check(s)) throw protocolError(`${what} holds a malformed ref`);
  return v as string[];
}

const refKind = (s: string): string | undefined => {
  try {
    return parseRef(s).kind;
  } catch {
    return undefined;
  }
};

function version(r: Record<string, unknown>): number {
  if (typeof r.version !== 'number' || !Number.isInteger(r.version)) throw protocolError('hello carries no version');
  return r.version;
}

const REQUESTS = new Set(['hello', 'have', 'closure', 'build']);
const REPLIES = new Set(['hello', 'have', 'received', 'log', 'built', 'error']);

/** A request header from the coordinator, checked (E_WORKER_PROTOCOL). */
export function parseRequest(h: unknown, payloadBytes: number): WorkerRequest {
  const r = typeOf(h, payloadBytes, REQUESTS);
  switch (r.t) {
    case 'hello':
      return { t: 'hello', version: version(r) };
    case 'have':
      return { t: 'have', refs: stringList(r.refs, 'have.refs', (s) => refKind(s) !== undefined) };
    case 'closure':
      return { t: 'closure' };
    default:
      if (typeof r.dref !== 'string' || refKind(r.dref) !== 'drv') throw protocolError('build names no DRef');
      if (r.force !== undefined && typeof r.force !== 'boolean') throw protocolError('build.force is not a boolean');
      return {
        t: 'build',
        dref: r.dref,
        inputs: stringList(r.inputs, 'build.inputs', (s) => refKind(s) === 'rz'),
        ...(r.force === true ? { force: true } : {}),
      };
  }
}

/** A reply header from the worker, checked (E_WORKER_PROTOCOL). Texts are cut to a sane length. */
export function parseReply(h: unknown, payloadBytes: number): WorkerReply {
  const r = typeOf(h, payloadBytes, REPLIES);
  const text = (v: unknown, max: number): string => (typeof v === 'string' ? v.slice(0, max) : '');
  switch (r.t) {
    case 'hello':
      return { t: 'hello', version: version(r), host: text(r.host, 200) };
    case 'have':
      return { t: 'have', have: stringList(r.have, 'have.have', (s) => refKind(s) !== undefined) };
    case 'received':
      return { t: 'received', realizations: typeof r.realizations === 'number' ? r.realizations : 0 };
    case 'log':
      return { t: 'log', line: text(r.line, 64 * 1024) };
    case 'built':
      return { t: 'built', report: r.report };
    default:
      if (typeof r.code !== 'string') throw protocolError('an error reply carries no code');
      return { t: 'error', code: r.code.slice(0, 64), message: text(r.message, 64 * 1024) };
  }
}

/** The version check both sides make on the other's hello. */
export function checkVersion(theirs: number, who: string): void {
  if (theirs !== WORKER_PROTOCOL_VERSION)
    throw new CairnError(
      'E_WORKER_VERSION',
      `${who} speaks builder worker protocol ${theirs}, this cairn ${WORKER_PROTOCOL_VERSION}: ` +
        'install the same Cairn version on both hosts',
      { theirs, ours: WORKER_PROTOCOL_VERSION },
    );
}
