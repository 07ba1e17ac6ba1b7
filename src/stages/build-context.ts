import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { redactUrlsIn } from '../redact-url.js';
import type { RRef } from '../store/refs.js';
import type { Store } from '../store/store.js';
import type { Derivation, FileDep } from './instantiate.js';
import { isStage, type BuildContext, type BuildLog, type Dep, type ExecOptions } from './stage.js';

/** Replaces every stage in a config with the Dep view of its chosen realizations. */
export function resolveConfig(config: unknown, depOf: (s: object) => Dep | undefined): unknown {
  const walk = (v: unknown): unknown => {
    if (typeof v !== 'object' || v === null) return v;
    if (isStage(v)) return depOf(v);
    if (Array.isArray(v)) return v.map(walk);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
  };
  return walk(config);
}

export function makeDep(store: Store, dref: string, rrefs: readonly RRef[]): Dep {
  const paths = rrefs.map((r) => store.outPath(r));
  return Object.freeze({
    dref,
    rrefs,
    paths,
    path: paths[0]!,
    file: (rel: string) => path.join(paths[0]!, rel),
  });
}

export function makeLog(file: string, echo?: (line: string) => void): BuildLog & { close(): void } {
  const fd = fs.openSync(file, 'a', 0o644);
  const log = ((message: string) => {
    const line = `${new Date().toISOString()} ${message}\n`;
    fs.writeSync(fd, line);
    echo?.(message);
  }) as BuildLog & { close(): void };
  Object.defineProperty(log, 'file', { value: file });
  Object.defineProperty(log, 'close', { value: () => fs.closeSync(fd) });
  return log;
}

/** Runs a child process whose stdout and stderr also go to the build log. */
export function execLogged(logFile: string, cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const logFd = fs.openSync(logFile, 'a');
    let logOpen = true;
    // 'error' and 'close' may both fire (a program that cannot start): the
    // log descriptor must be closed exactly once, or a later close could hit
    // a descriptor the number was reused for.
    const closeLog = (): void => {
      if (logOpen) fs.closeSync(logFd);
      logOpen = false;
    };
    const toLog = (b: Buffer | string): void => {
      if (!logOpen) return;
      if (typeof b === 'string') fs.writeSync(logFd, b);
      else fs.writeSync(logFd, b);
    };
    // Cairn's own lines mask URL secrets (e.g. a debootstrap mirror's
    // user:pass@); what the program itself prints goes to the log as it is.
    toLog(`$ ${redactUrlsIn([cmd, ...args].join(' '))}\n`);
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let settled = false;
    child.stdout!.on('data', (b: Buffer) => { out.push(b); toLog(b); });
    child.stderr!.on('data', (b: Buffer) => { err.push(b); toLog(b); });
    child.on('error', (e) => {
      closeLog();
      if (settled) return;
      settled = true;
      reject(new CairnError('E_BUILD_FAILED', `cannot run ${cmd}: ${e.message}`, { cmd }, { cause: e }));
    });
    child.on('close', (code, signal) => {
      closeLog();
      if (settled) return;
      settled = true;
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      if (code === 0) resolve({ stdout, stderr });
      else {
        const tail = stderr ? `: ${redactUrlsIn(stderr.trim().split('\n').slice(-3).join(' | '))}` : '';
        reject(new CairnError('E_BUILD_FAILED', `${cmd} exited with ${signal ?? code}${tail}`, { cmd, code, signal }));
      }
    });
    if (child.stdin) {
      // A child that exits without reading its input makes the write fail
      // with EPIPE; its exit status is what matters, not the pipe.
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input);
    }
  });
}

const NO_FILES: Readonly<Record<string, string>> = Object.freeze({});

/**
 * `ctx.files`: each file input's store copy by its normalised path, and by
 * its declared spelling too (`data/` for `data`), not enumerable, so either
 * works and Object.keys lists each input once.
 */
export function inputPaths(files: readonly FileDep[], outPath: (dref: string) => string): Readonly<Record<string, string>> {
  if (files.length === 0) return NO_FILES;
  const out: Record<string, string> = {};
  for (const f of files) {
    const p = path.join(outPath(f.dref), f.entry);
    out[f.key] = p;
    if (f.declared !== f.key) Object.defineProperty(out, f.declared, { value: p, enumerable: false });
  }
  return Object.freeze(out);
}

export function makeBuildContext(
  node: Derivation,
  config: unknown,
  outs: string[],
  scratch: () => string,
  log: BuildLog,
  files: Readonly<Record<string, string>> = NO_FILES,
): BuildContext<unknown> {
  return Object.freeze({
    name: node.name,
    dref: node.dref,
    config: config as never,
    files,
    out: outs[0]!,
    outs,
    // Made on first use: most builds never need scratch space.
    get tmp() { return scratch(); },
    log,
    exec: (cmd: string, args?: readonly string[], opts?: ExecOptions) => execLogged(log.file, cmd, args, opts),
  });
}
