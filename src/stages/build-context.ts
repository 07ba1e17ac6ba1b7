import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { redactUrlsIn } from '../redact-url.js';
import type { DRef, RRef } from '../store/refs.js';
import type { LocalStore } from '../store/store.js';
import { BuildGroups } from './build-processes.js';
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

export function makeDep(store: LocalStore, dref: DRef, rrefs: readonly RRef[]): Dep {
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

/** Longest line echoed whole: a longer one (a progress bar without newlines, say) is echoed in pieces. */
const MAX_ECHO_LINE = 16 * 1024;

/** Splits a stream's chunks into lines for `echo`; `flush` echoes an unfinished last line. */
function lineSplitter(echo: (line: string) => void): { push(b: Buffer): void; flush(): void } {
  let rest = '';
  const decoder = new TextDecoder();
  return {
    push(b) {
      const lines = (rest + decoder.decode(b, { stream: true })).split('\n');
      rest = lines.pop()!;
      while (rest.length > MAX_ECHO_LINE) {
        echo(rest.slice(0, MAX_ECHO_LINE));
        rest = rest.slice(MAX_ECHO_LINE);
      }
      for (const l of lines) echo(l.endsWith('\r') ? l.slice(0, -1) : l);
    },
    flush() {
      rest += decoder.decode();
      if (rest !== '') echo(rest);
      rest = '';
    },
  };
}

export interface ExecLogging {
  /** The build log the program's output is appended to. */
  file: string;
  /** Receives the program's output live, line by line (stdout and stderr alike). */
  echo?: (line: string) => void;
  /** Where the program's process group is tracked (see build-processes.ts). */
  groups: BuildGroups;
}

/** Runs a child process whose stdout and stderr also go to the build log. */
export function execLogged(
  logging: ExecLogging,
  cmd: string,
  args: readonly string[] = [],
  opts: ExecOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const logFd = fs.openSync(logging.file, 'a');
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
    const shown = `$ ${redactUrlsIn([cmd, ...args].join(' '))}`;
    toLog(`${shown}\n`);
    logging.echo?.(shown);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    // Each stream is split on its own, so a line is never torn by the other stream's output.
    const lines = logging.echo ? [lineSplitter(logging.echo), lineSplitter(logging.echo)] : undefined;
    let settled = false;
    logging.groups.spawn(
      { cmd, args, cwd: opts.cwd, env: opts.env ?? process.env, input: opts.input },
      {
        started: () => {},
        stdout: (b) => {
          out.push(b);
          toLog(b);
          lines?.[0]!.push(b);
        },
        stderr: (b) => {
          err.push(b);
          toLog(b);
          lines?.[1]!.push(b);
        },
        error: (e) => {
          closeLog();
          if (settled) return;
          settled = true;
          reject(new CairnError('E_BUILD_FAILED', `cannot run ${cmd}: ${e.message}`, { cmd }, { cause: e }));
        },
        exit: () => {},
        close: (code, signal) => {
          closeLog();
          for (const l of lines ?? []) l.flush();
          if (settled) return;
          settled = true;
          const stdout = Buffer.concat(out).toString();
          const stderr = Buffer.concat(err).toString();
          if (code === 0) resolve({ stdout, stderr });
          else {
            const tail = stderr ? `: ${redactUrlsIn(stderr.trim().split('\n').slice(-3).join(' | '))}` : '';
            const msg = `${cmd} exited with ${signal ?? code}${tail}`;
            reject(new CairnError('E_BUILD_FAILED', msg, { cmd, code, signal }));
          }
        },
      },
    );
  });
}

const NO_FILES: Readonly<Record<string, string>> = Object.freeze({});

/**
 * `ctx.files`: each file input's store copy by its normalised path, and by
 * its declared spelling too (`data/` for `data`), not enumerable, so either
 * works and Object.keys lists each input once.
 */
export function inputPaths(
  files: readonly FileDep[],
  outPath: (dref: DRef) => string,
): Readonly<Record<string, string>> {
  if (files.length === 0) return NO_FILES;
  const out: Record<string, string> = {};
  for (const f of files) {
    const p = path.join(outPath(f.dref), f.entry);
    out[f.key] = p;
    if (f.declared !== f.key) Object.defineProperty(out, f.declared, { value: p, enumerable: false });
  }
  return Object.freeze(out);
}

/**
 * Which output a program works on, for the prefix of its live output when
 * a build has several: the one its working directory or an argument lies
 * in, if exactly one does.
 */
export function outputOf(
  outs: readonly string[],
  args: readonly string[],
  cwd: string | undefined,
): number | undefined {
  if (outs.length < 2) return undefined;
  const inside = (p: string, o: string): boolean => p === o || p.startsWith(o + path.sep);
  const hits = new Set<number>();
  for (const [i, o] of outs.entries()) {
    if ((cwd !== undefined && inside(path.resolve(cwd), o)) || args.some((a) => a.includes(o))) hits.add(i);
  }
  return hits.size === 1 ? [...hits][0] : undefined;
}

export function makeBuildContext(
  node: Derivation,
  config: unknown,
  outs: string[],
  scratch: () => string,
  log: BuildLog,
  live: { groups: BuildGroups; echo?: (line: string, output?: number) => void },
  files: Readonly<Record<string, string>> = NO_FILES,
  programsInTmp = false,
): BuildContext<unknown> {
  return Object.freeze({
    name: node.name,
    dref: node.dref,
    config: config as never,
    files,
    out: outs[0]!,
    outs,
    // Made on first use: most builds never need scratch space.
    get tmp() {
      return scratch();
    },
    log,
    exec: (cmd: string, args: readonly string[] = [], given: ExecOptions = {}) => {
      const opts = programsInTmp && given.cwd === undefined ? { ...given, cwd: scratch() } : given;
      const { echo } = live;
      const i = opts.output ?? outputOf(outs, args, opts.cwd);
      const logging = { file: log.file, groups: live.groups, echo: echo && ((line: string) => echo(line, i)) };
      const run = execLogged(logging, cmd, args, opts);
      // A build that does not await a program (it runs in the background) must
      // not crash cairn when the program is ended with the build: the
      // rejection still reaches whoever awaits it.
      run.catch(() => {});
      return run;
    },
  });
}
