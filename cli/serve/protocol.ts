/**
 * The wire protocol between the `cairn` client (cli/client/cairn.c) and the
 * server (supervisor.ts), over a unix stream socket. Pure: framing, parsing
 * and the socket's path; no I/O.
 *
 * A frame is one type byte, a 4-byte big-endian payload length, then the
 * payload. The client sends one frame:
 *   Q  a command to run: NUL-terminated fields (see parseRequest)
 *   C  a control word: `status` or `stop` (used by `cairn server`)
 * then, while its command runs, any number of
 *   S  a signal the client received (SIGINT, SIGTERM or SIGHUP, by name):
 *      the worker gets it, as the Node CLI's process would
 * and the server answers with frames until the last one:
 *   O / E  bytes for the client's stdout / stderr
 *   X      the exit status, as decimal text (last frame)
 *   R      "run it yourself": nothing was done, the client runs the Node
 *          CLI instead; the payload says why (last frame)
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { commandIndex } from '../command-word.js';

export const REQUEST_MAGIC = 'cairn-request-1';
/** A request larger than this (argv plus environment) is refused. */
export const MAX_REQUEST_BYTES = 4 << 20;

export type FrameType = 'Q' | 'C' | 'S' | 'O' | 'E' | 'X' | 'R';

export function frame(type: FrameType, payload: Buffer | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** Splits complete frames off the front of a byte stream. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxPayload = MAX_REQUEST_BYTES) {}

  /** Adds bytes; returns the frames they complete. Throws on a frame over the limit. */
  push(chunk: Buffer): { type: string; payload: Buffer }[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: { type: string; payload: Buffer }[] = [];
    while (this.buf.length >= 5) {
      const len = this.buf.readUInt32BE(1);
      if (len > this.maxPayload) throw new Error(`frame of ${len} bytes exceeds the limit of ${this.maxPayload}`);
      if (this.buf.length < 5 + len) break;
      frames.push({ type: this.buf.toString('latin1', 0, 1), payload: this.buf.subarray(5, 5 + len) });
      this.buf = this.buf.subarray(5 + len);
    }
    return frames;
  }
}

/** What a client asks the server to run, as the client's own process would. */
export interface ClientRequest {
  /** The client's build of Cairn (dist/build-id); a server of another build does not serve it. */
  build: string;
  /**
   * The client's installation: the real path of its dist/ directory ('' from a client that does not say).
   * A server of another installation does not serve it, even of the same build.
   */
  install: string;
  cwd: string;
  umask: number;
  stdoutTty: boolean;
  stderrTty: boolean;
  /** Terminal width, 0 if unknown. */
  columns: number;
  /** The words after `cairn`. */
  args: string[];
  env: Record<string, string>;
}

/**
 * Payload of a Q frame: fields each ended by NUL, in this order: the magic
 * word, `BUILD-ID@INSTALL` (build id, then the client's dist/ directory),
 * cwd, umask (octal), stdout is a tty (0/1), stderr is a tty (0/1), columns,
 * argc, then argc words, then `NAME=value` environment entries up to the end.
 *
 * The installation rides in the build field so that a server from before it
 * was sent still reads the request: it sees another build and answers R.
 */
export function parseRequest(payload: Buffer): ClientRequest {
  const fields = payload.toString('utf8').split('\0');
  if (fields.pop() !== '') throw new Error('request does not end with NUL');
  const [magic, build, cwd, umask, outTty, errTty, columns, argc] = fields;
  if (magic !== REQUEST_MAGIC) throw new Error(`unknown request format ${JSON.stringify(magic)}`);
  // Every field is checked here, so that a malformed one is E_SERVER_PROTOCOL, not a failure in a worker.
  if (!/^(0|[1-9][0-9]{0,6})$/.test(argc ?? '') || fields.length < 8 + Number(argc)) {
    throw new Error('bad argument count');
  }
  const n = Number(argc);
  // Build ids are hex (or a word such as `none`); the installation path is everything after the first @.
  const at = build?.indexOf('@') ?? -1;
  const buildId = at < 0 ? build : build!.slice(0, at);
  const install = at < 0 ? '' : build!.slice(at + 1);
  if (!buildId) throw new Error('no build id');
  if (!cwd?.startsWith('/')) throw new Error('cwd is not absolute');
  if (!/^[0-7]{1,4}$/.test(umask ?? '')) throw new Error(`umask ${JSON.stringify(umask)} is not octal`);
  if (!/^[01]$/.test(outTty ?? '') || !/^[01]$/.test(errTty ?? '')) throw new Error('tty flags are not 0 or 1');
  if (!/^[0-9]{1,5}$/.test(columns ?? '')) throw new Error(`columns ${JSON.stringify(columns)} is not a number`);
  const env: Record<string, string> = {};
  for (const entry of fields.slice(8 + n)) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return {
    build: buildId,
    install,
    cwd,
    umask: parseInt(umask!, 8) & 0o777,
    stdoutTty: outTty === '1',
    stderrTty: errTty === '1',
    columns: Number(columns),
    args: fields.slice(8, 8 + n),
    env,
  };
}

/** The inverse of parseRequest: what the C client sends (used by the tests). */
export function encodeRequest(r: ClientRequest): Buffer {
  const fields = [
    REQUEST_MAGIC,
    r.install ? `${r.build}@${r.install}` : r.build,
    r.cwd,
    r.umask.toString(8),
    r.stdoutTty ? '1' : '0',
    r.stderrTty ? '1' : '0',
    String(r.columns),
    String(r.args.length),
    ...r.args,
    ...Object.entries(r.env).map(([k, v]) => `${k}=${v}`),
  ];
  return frame('Q', fields.map((f) => f + '\0').join(''));
}

/**
 * An installation's key in socket names: FNV-1a (64 bits, hex) of the bytes
 * of its dist/ directory's real path. cli/client/cairn.c computes the same.
 * Not a security boundary (the server also compares the whole path); it
 * only keeps the servers of two installations apart.
 */
export function installId(distDir: Buffer): string {
  let h = 0xcbf29ce484222325n;
  for (const b of distDir) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16).padStart(16, '0');
}

/**
 * The server's socket: $CAIRN_SERVER_SOCKET, else $XDG_RUNTIME_DIR/cairn/server-ID.sock,
 * else $TMPDIR/cairn-UID/server-ID.sock, where ID is the installation's installId:
 * one server per user and installation. The C client computes the same path.
 */
export function serverSocketPath(id: string, env: NodeJS.ProcessEnv = process.env): string {
  if (env.CAIRN_SERVER_SOCKET) return env.CAIRN_SERVER_SOCKET;
  const dir = env.XDG_RUNTIME_DIR
    ? path.join(env.XDG_RUNTIME_DIR, 'cairn')
    : path.join(os.tmpdir(), `cairn-${process.getuid?.() ?? 0}`);
  return path.join(dir, `server-${id}.sock`);
}

/**
 * Commands a server worker runs. The others (shells, services, sync,
 * downloads) use the terminal, signals or long-lived resources of their own
 * process, so the client runs them as a Node process of their own.
 * `machine` is served unless it ends in `+ shell` (see ownProcessReason).
 */
export const SERVED_COMMANDS: ReadonlySet<string> = new Set([
  'realize',
  'instantiate',
  'lsref',
  'catref',
  'log',
  'du',
  // Read-only views of the store; \`ui\` is long-running and keeps a port, so it stays a process of its own.
  'exp',
  'graph',
  'rmref',
  'root',
  'hash',
  'help',
  'machine',
]);

/**
 * Why a command a worker runs must still run in a process of its own, or undefined. `machine ... + shell`
 * reads stdin (a script, or the terminal in raw mode for the console), and a worker's stdin is empty: it
 * stays with the Node CLI. Any other machine command is served (its steps run in the guest, their output
 * is relayed, signals are forwarded).
 */
export function ownProcessReason(args: readonly string[]): string | undefined {
  const at = commandIndex(args);
  if (args[at] !== 'machine') return undefined;
  // Every word after the command belongs to the steps; a step group starts after a '+', and
  // `transient` may come before its name (the CLI then refuses `transient shell`).
  const words = args.slice(at + 1);
  const shell = words.some(
    (w, i) => words[i - 1] === '+' && (w === 'shell' || (w === 'transient' && words[i + 1] === 'shell')),
  );
  return shell ? "'machine ... + shell' reads the client's stdin or terminal" : undefined;
}

/** Holds back a stream's tail until an end marker arrives: what a worker wrote before it, then whether it was seen. */
export class EndMarkerScanner {
  private held: Buffer = Buffer.alloc(0);

  constructor(private readonly marker: Buffer) {}

  /** Returns the bytes that are certainly output (not part of the marker) and whether the marker has ended them. */
  push(chunk: Buffer): { data: Buffer; ended: boolean } {
    const all = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    const at = all.indexOf(this.marker);
    if (at >= 0) {
      this.held = Buffer.alloc(0);
      return { data: all.subarray(0, at), ended: true };
    }
    // Keep the longest suffix that could still grow into the marker.
    let keep = Math.min(this.marker.length - 1, all.length);
    while (keep > 0 && !this.marker.subarray(0, keep).equals(all.subarray(all.length - keep))) keep--;
    this.held = Buffer.from(all.subarray(all.length - keep));
    return { data: all.subarray(0, all.length - keep), ended: false };
  }

  /** Whatever is held back (the stream ended without the marker). */
  flush(): Buffer {
    const rest = this.held;
    this.held = Buffer.alloc(0);
    return rest;
  }
}
