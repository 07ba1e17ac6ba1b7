/**
 * Starting a build's programs. Node's spawn forks the whole Node process,
 * which costs 2-3 ms from a server worker, and a chain of builds that each
 * run a program pays it once per stage. So the first program a process
 * starts also starts `cairn-spawn` (cli/client/spawn.c), a small process
 * that starts programs with posix_spawn for it (about 0.7 ms) and relays
 * their output and exit status over its stdout (src/stages/spawn-frames.ts).
 *
 * A program runs the same either way: its own session and process group,
 * argv, env, working directory, umask, stdin input, stdout and stderr, exit
 * status, and the same errors (`spawn CMD ENOENT`). When the helper is not
 * built, cannot start or keeps dying, programs start with Node's spawn (only
 * slower). `CAIRN_SPAWN_HELPER=off` turns it off; a path names another binary.
 * If the helper dies, programs it was running fail with an error (their
 * process groups are still ended by their build) and the next program starts
 * a new helper. The helper exits when this process does (end of its stdin).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorName } from 'node:util';
import { encodeInput, encodeSpawn, FrameReader, SPAWN_PROTOCOL, type Frame } from './spawn-frames.js';

export interface ProgramSpec {
  cmd: string;
  args: readonly string[];
  cwd?: string;
  env: NodeJS.ProcessEnv;
  /** Written to the program's stdin, then closed; without it stdin is /dev/null. */
  input?: string | Uint8Array;
}

/** What happens to a program, in this order: started, output, exit, close; or error alone. */
export interface ProgramEvents {
  /** It started, as `pid` (also its process group's id). */
  started(pid: number): void;
  stdout(b: Buffer): void;
  stderr(b: Buffer): void;
  /** It could not start (or the helper running it died): nothing else follows. */
  error(e: Error): void;
  /** It exited; its output may still come. */
  exit(code: number | null, signal: NodeJS.Signals | null): void;
  /** It exited and its stdout and stderr ended. */
  close(code: number | null, signal: NodeJS.Signals | null): void;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Built beside the client (dist/bin); from the source tree (tsx), the build's copy. */
const CANDIDATES = [
  path.join(HERE, '..', '..', 'bin', 'cairn-spawn'),
  path.join(HERE, '..', '..', 'dist', 'bin', 'cairn-spawn'),
];
/** After this many helpers died, this process uses Node's spawn. */
const MAX_DEATHS = 3;
/** A helper that has not said hello by then is not one (a wrong binary): programs start with Node's spawn. */
const HELLO_TIMEOUT_MS = 10_000;

function helperBinary(): string | undefined {
  const env = process.env.CAIRN_SPAWN_HELPER;
  if (env !== undefined && env !== '') return env === 'off' ? undefined : env;
  return CANDIDATES.find((p) => fs.existsSync(p));
}

interface Running {
  spec: ProgramSpec;
  on: ProgramEvents;
  /** The spawn request (and input frames), until sent. */
  frames: Buffer[];
  started: boolean;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  open: number;
}

const SIGNAL_NAMES = new Map(Object.entries(os.constants.signals).map(([k, v]) => [v, k as NodeJS.Signals]));

class Helper {
  readonly proc: ChildProcess;
  private ready = false;
  private dead = false;
  private exitedWith: string | undefined;
  private nextId = 1;
  private readonly running = new Map<number, Running>();
  private readonly reader = new FrameReader();
  private readonly helloTimer: NodeJS.Timeout;

  constructor(
    bin: string,
    private readonly gone: (h: Helper, beforeReady: boolean) => void,
  ) {
    // Not detached: a terminal's SIGINT reaches it too, and it ignores it (cairn decides).
    this.proc = spawn(bin, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.proc.unref();
    const { stdin, stdout } = this.proc;
    (stdin as unknown as { unref?: () => void }).unref?.();
    this.idle();
    stdin!.on('error', () => this.die('its stdin failed'));
    stdout!.on('data', (b: Buffer) => this.data(b));
    stdout!.on('end', () => this.die(this.exitedWith ?? 'it exited'));
    this.proc.on('error', (e) => this.die(e.message));
    // Its exit may be seen before the last of its output (exit frames of programs that ended): it counts
    // as dead once its stdout has ended too.
    this.proc.on('exit', (code, sig) => {
      this.exitedWith = `it exited with ${sig ?? code}`;
      if (stdout!.readableEnded) this.die(this.exitedWith);
    });
    stdout!.on('close', () => this.die(this.exitedWith ?? 'its stdout closed'));
    this.helloTimer = setTimeout(() => this.fail('no hello'), HELLO_TIMEOUT_MS).unref();
  }

  /** It misbehaved: it is killed, and what it runs fails (or, before its hello, starts through Node's spawn). */
  private fail(why: string): void {
    this.proc.kill('SIGKILL');
    this.die(why);
  }

  /** Cairn may exit while nothing runs: the helper's pipe must not keep the event loop alive. */
  private idle(): void {
    (this.proc.stdout as unknown as { unref(): void }).unref();
  }

  start(spec: ProgramSpec & { cwd: string }, on: ProgramEvents): boolean {
    const umask = currentUmask();
    if (umask === undefined) return false;
    const id = this.nextId++;
    const req = encodeSpawn(id, {
      cmd: spec.cmd,
      argv: [spec.cmd, ...spec.args],
      cwd: spec.cwd,
      env: envEntries(spec.env),
      umask,
      stdinPipe: spec.input !== undefined,
    });
    if (req === undefined) return false;
    const frames = [req];
    if (spec.input !== undefined) frames.push(...encodeInput(id, Buffer.from(spec.input)));
    if (this.running.size === 0) (this.proc.stdout as unknown as { ref(): void }).ref();
    this.running.set(id, { spec, on, frames, started: false, open: 2 });
    if (this.ready) this.send(id);
    return true;
  }

  private send(id: number): void {
    const r = this.running.get(id)!;
    for (const f of r.frames) this.proc.stdin!.write(f);
    r.frames = [];
  }

  private data(b: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.reader.push(b);
    } catch (e) {
      this.fail((e as Error).message);
      return;
    }
    for (const f of frames) this.frame(f);
  }

  private frame({ type, id, payload }: Frame): void {
    if (this.dead) return;
    if (!this.ready) {
      const version = type === 'H' && payload.length === 4 ? payload.readUInt32LE(0) : undefined;
      if (version !== SPAWN_PROTOCOL) {
        this.fail(`${version === undefined ? 'no hello' : `protocol ${version}`}, not protocol ${SPAWN_PROTOCOL}`);
        return;
      }
      clearTimeout(this.helloTimer);
      this.ready = true;
      for (const k of this.running.keys()) this.send(k);
      return;
    }
    const r = this.running.get(id);
    if (r === undefined) return;
    switch (type) {
      case 'P':
        r.started = true;
        r.on.started(payload.readInt32LE(0));
        break;
      case 'E': {
        this.finish(id);
        r.on.error(spawnError(r.spec, payload.readInt32LE(0)));
        break;
      }
      case 'O':
      case 'R':
        if (payload.length === 0) r.open--;
        else if (type === 'O') r.on.stdout(payload);
        else r.on.stderr(payload);
        break;
      case 'X': {
        const code = payload.readInt32LE(0);
        r.exit = { code: code < 0 ? null : code, signal: SIGNAL_NAMES.get(payload.readInt32LE(4)) ?? null };
        r.on.exit(r.exit.code, r.exit.signal);
        break;
      }
    }
    if (r.exit !== undefined && r.open === 0 && this.running.has(id)) {
      this.finish(id);
      r.on.close(r.exit.code, r.exit.signal);
    }
  }

  private finish(id: number): void {
    this.running.delete(id);
    if (this.running.size === 0) this.idle();
  }

  private die(why: string): void {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.helloTimer);
    this.proc.stdout!.destroy();
    this.proc.stdin!.destroy();
    const was = [...this.running.values()];
    this.running.clear();
    this.gone(this, !this.ready);
    for (const r of was) {
      if (!this.ready) {
        // It never started anything: these run through Node's spawn instead.
        nodeStart(r.spec, r.on);
        continue;
      }
      r.on.error(new Error(`the spawn helper died (${why})`));
    }
  }
}

function envEntries(env: NodeJS.ProcessEnv): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out.push(`${k}=${v}`);
  return out;
}

/**
 * This process's umask, which a server worker changes for each client.
 * Read from /proc: process.umask() reads it by setting it to 0 for a
 * moment, and a file another thread creates then would get mode 0666.
 */
function currentUmask(): number | undefined {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(fs.readFileSync('/proc/self/status', 'latin1'));
    if (m) return parseInt(m[1]!, 8);
  } catch {
    /* no /proc: Node's spawn starts the program */
  }
  return undefined;
}

/** The error Node's spawn gives for a program that cannot start. */
function spawnError(spec: ProgramSpec, errno: number): Error {
  let code: string;
  try {
    code = getSystemErrorName(-errno);
  } catch {
    code = `Unknown system error ${errno}`;
  }
  return Object.assign(new Error(`spawn ${spec.cmd} ${code}`), {
    errno: -errno,
    code,
    syscall: `spawn ${spec.cmd}`,
    path: spec.cmd,
    spawnargs: [...spec.args],
  });
}

let helper: Helper | undefined;
let deaths = 0;
let off = false;

/** Starts a program through the helper, or Node's spawn if there is none. */
export function startProgram(spec: ProgramSpec, on: ProgramEvents): void {
  if (!off && helper === undefined) {
    const bin = helperBinary();
    if (bin === undefined) off = true;
    else
      helper = new Helper(bin, (h, beforeReady) => {
        if (helper === h) helper = undefined;
        // A helper that never said hello (missing, not executable, another version) is not tried again.
        if (beforeReady || ++deaths >= MAX_DEATHS) off = true;
      });
  }
  const cwd = resolveCwd(spec.cwd);
  if (helper !== undefined && cwd !== undefined && spec.cmd !== '' && helper.start({ ...spec, cwd }, on)) return;
  nodeStart(spec, on);
}

/** An absolute working directory (the helper's own may differ from this process's); undefined if unknown. */
function resolveCwd(cwd: string | undefined): string | undefined {
  try {
    return path.resolve(cwd ?? process.cwd());
  } catch {
    return undefined; // this process's directory was removed: Node's spawn reports that its way
  }
}

/** The running helper's pid, if there is one: cairn's interrupt handler leaves it to exit by itself. */
export function spawnHelperPid(): number | undefined {
  return helper?.proc.pid;
}

/** Node's spawn, with the same events. */
export function nodeStart(spec: ProgramSpec, on: ProgramEvents): void {
  let child: ChildProcess;
  try {
    child = spawn(spec.cmd, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      detached: true,
      stdio: [spec.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
  } catch (e) {
    on.error(e as Error);
    return;
  }
  let failed = false;
  if (child.pid !== undefined) on.started(child.pid);
  child.stdout!.on('data', (b: Buffer) => on.stdout(b));
  child.stderr!.on('data', (b: Buffer) => on.stderr(b));
  child.on('error', (e) => {
    if (failed) return;
    failed = true;
    on.error(e);
  });
  child.once('exit', (code, signal) => on.exit(code, signal));
  child.on('close', (code, signal) => {
    if (!failed) on.close(code, signal);
  });
  if (child.stdin) {
    // A child that exits without reading its input makes the write fail
    // with EPIPE; its exit status is what matters, not the pipe.
    child.stdin.on('error', () => {});
    child.stdin.end(spec.input);
  }
}
