import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CairnError } from '../errors.js';
import { checkName, type DRef, type RRef } from '../store/refs.js';
import { isMatcher, latest, custom, type Matcher, type MatcherFn } from './matchers.js';
import { checkResources, type Resources } from './builders/resources.js';

const STAGE = Symbol.for('cairn.stage');

/** The chosen realizations of one dependency, as a build function sees them. */
export interface Dep {
  readonly dref: DRef;
  /** Chosen RRefs, in the order the dependency's matcher ranked them. */
  readonly rrefs: readonly RRef[];
  /** Their `out/` directories, same order. */
  readonly paths: readonly string[];
  /** The first (best) one: what a one-realization matcher chose. */
  readonly path: string;
  /** `path` joined with a relative path inside it. */
  file(rel: string): string;
}

/** A config as the build function sees it: every stage reference replaced by its Dep. */
export type Resolved<T> =
  T extends Stage<any>
    ? Dep
    : T extends readonly (infer U)[]
      ? Resolved<U>[]
      : T extends object
        ? { [K in keyof T]: Resolved<T[K]> }
        : T;

export interface BuildLog {
  (message: string): void;
  /** Path of the log file, which ends up as the realization's build.log. */
  readonly file: string;
}

export interface ExecOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Data written to the child's stdin. */
  input?: string | Uint8Array;
  /**
   * The output (an index into `outs`) the program works on: its live output
   * (`realize -v`) is then prefixed `NAME[i]>`. By default it is the output
   * that the working directory or an argument lies in, if only one does.
   */
  output?: number;
}

export interface BuildContext<C> {
  readonly name: string;
  readonly dref: DRef;
  /** The config, with stage references resolved to their chosen realizations. */
  readonly config: Resolved<C>;
  /** The first output directory: where a one-output build writes. */
  readonly out: string;
  /** All `n` output directories; each becomes a realization of its own. */
  readonly outs: readonly string[];
  /**
   * The stage's file inputs (`files`), by declared path (`'train.py'`,
   * `'data'`, also as spelled, `'data/'`): the read-only store copies whose
   * content is in the DRef. Read these, never the originals.
   */
  readonly files: Readonly<Record<string, string>>;
  /** Scratch space on the store's filesystem, deleted after the build. */
  readonly tmp: string;
  /** Appends a line to the build log (and to the progress display when verbose). */
  readonly log: BuildLog;
  /**
   * Runs a program with its output captured in the build log (and shown live with `realize -v`);
   * rejects on a non-zero exit. It runs in a process group of its own, ended when cairn is interrupted.
   */
  exec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<{ stdout: string; stderr: string }>;
}

export type BuildFn<C> = (ctx: BuildContext<C>) => void | Promise<void>;

export interface StageSpec<C> {
  /** Becomes part of the DRef and of the store path: letters, digits, `. _ + -`. */
  name: string;
  /** JSON config. Stage objects anywhere inside it are dependencies. */
  config: C;
  build: BuildFn<C>;
  /** Chooses among realizations; default `latest()`. */
  matcher?: Matcher | MatcherFn;
  /** Relative paths every output must contain, checked before anything enters the store. */
  outputs?: readonly string[];
  /** Outputs per build, for non-deterministic builds (default 1). */
  n?: number;
  /**
   * Opt-out of code identity. By default the build function's source text
   * is part of the DRef, so editing it means a new derivation. With
   * `version`, the string stands in for the source: edits reuse existing
   * realizations until you change it.
   */
  version?: string;
  /**
   * File and directory inputs (`['train.py', 'data/']`), hashed by content
   * into the DRef: editing one rebuilds this stage and its dependants. The
   * build reads them from `ctx.files`, snapshots in the store. Relative
   * paths are relative to `dir`, else to the directory of the module that
   * calls stage() (the stage file).
   */
  files?: readonly string[];
  /** Base of relative `files`: a directory, or a file: URL such as `import.meta.url` (its directory is used). */
  dir?: string | URL;
  /** What a remote build job asks for (Slurm); not part of the DRef. */
  resources?: Resources;
}

export interface Stage<C = unknown> {
  readonly [STAGE]: true;
  readonly name: string;
  readonly config: C;
  // A method, not a function-typed property: methods are bivariant in their
  // parameter, so a Stage<{ x: number }> is usable where a Stage is expected.
  build(ctx: BuildContext<C>): void | Promise<void>;
  readonly matcher: Matcher;
  readonly outputs: readonly string[];
  readonly n: number;
  readonly version: string | undefined;
  /** Declared file inputs, resolved to absolute paths (hashed when the stage is instantiated). */
  readonly files: readonly FileInput[];
  /** What a remote build job asks for (Slurm); not part of the DRef. */
  readonly resources?: Readonly<Resources>;
}

export function isStage(x: unknown): x is Stage {
  return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[STAGE] === true;
}

function checkOutputs(name: string, outputs: readonly string[]): string[] {
  const seen = new Set<string>();
  for (const o of outputs) {
    const parts = typeof o === 'string' ? o.split('/') : [];
    if (
      parts.length === 0 ||
      o.startsWith('/') ||
      o.includes('\0') ||
      parts.some((p) => p === '..' || p === '' || p === '.') ||
      seen.has(o)
    ) {
      throw new CairnError(
        'E_DUPLICATE_OUTPUT',
        `stage ${name}: promised output ${JSON.stringify(o)} must be a unique ` +
          `relative path inside the output, without '.', '..' or empty parts`,
        { stage: name, output: o },
      );
    }
    seen.add(o);
  }
  return [...seen].sort();
}

// File inputs: declared here, with no I/O; hashed by instantiate() (see inputs/).

/** One declared file input of a stage, resolved to where it lives on this machine. */
export interface FileInput {
  /** The declared path, normalised (`./data/` -> `data`): its name in the identity and in `ctx.files`. */
  readonly key: string;
  /** The declared spelling, when it differs from `key` (`data/`): also accepted in `ctx.files`. */
  readonly declared: string;
  /** Absolute path on this machine: where it is read from, never part of the identity. */
  readonly path: string;
}

// Cairn's own source directory (src/ or dist/src/): frames in it are not the user's. As a URL, and as a path:
// frames of modules that CommonJS code require()d (tsx in a "type": "commonjs" project) are named by path.
const OWN_SOURCE = new URL('../', import.meta.url).href;
const OWN_SOURCE_PATH = fileURLToPath(OWN_SOURCE);

/**
 * The directory of the module that called stage(), from the call stack:
 * relative inputs are relative to the file that declares them, as paths in
 * a Nix expression are. Stage files loaded by the CLI keep their original
 * URL in stack traces (module-compile.ts appends a sourceURL; the module
 * hooks load them under it), so this is the stage file's directory with the
 * CLI, the server and a library script alike.
 */
export function callerDir(): string | undefined {
  const saved = Error.prepareStackTrace;
  const holder: { stack?: NodeJS.CallSite[] } = {};
  try {
    Error.prepareStackTrace = (_e, sites) => sites;
    Error.captureStackTrace(holder, callerDir);
    for (const site of holder.stack ?? []) {
      const name = site.getScriptNameOrSourceURL?.() ?? site.getFileName();
      if (!name || name.startsWith('node:')) continue;
      if (name.startsWith(OWN_SOURCE) || name.startsWith(OWN_SOURCE_PATH)) continue;
      const url = name.replace(/[?#].*$/, '');
      if (url.startsWith('file:')) return path.dirname(fileURLToPath(url));
      if (path.isAbsolute(url)) return path.dirname(url);
    }
  } catch {
    /* an unusual stack: fall back to the working directory */
  } finally {
    Error.prepareStackTrace = saved;
  }
  return undefined;
}

/** `dir` of a stage spec: a directory, or a file: URL (`import.meta.url` names the file, so its directory is used). */
function baseDir(stage: string, dir: unknown): string | undefined {
  if (dir === undefined) return undefined;
  let p: string;
  if (dir instanceof URL || (typeof dir === 'string' && dir.startsWith('file:'))) {
    p = fileURLToPath(dir);
    try {
      if (!fs.statSync(p).isDirectory()) p = path.dirname(p);
    } catch {
      p = path.dirname(p);
    }
    return p;
  }
  if (typeof dir !== 'string' || dir === '' || dir.includes('\0')) {
    throw new CairnError('E_BAD_STAGE_SPEC', `stage ${stage}: dir must be a directory path or a file: URL`, { stage });
  }
  return path.resolve(dir);
}

/**
 * Set once any stage of this process declares file inputs: only then is the
 * file-input code loaded. Global, like the stage brand, so a stage made by
 * another copy of Cairn (a stage file's `cairn` next to the library's) counts.
 */
const FILES_DECLARED = Symbol.for('cairn.fileInputsDeclared');
const flags = globalThis as { [FILES_DECLARED]?: true };

export function fileInputsDeclared(): boolean {
  return flags[FILES_DECLARED] === true;
}

/** Checks and resolves a stage's `files`, relative to `dir` or else to the declaring module's directory. */
export function declareFiles(
  stage: string,
  files: unknown,
  dir: unknown,
  caller: () => string | undefined,
): readonly FileInput[] {
  if (files === undefined) return [];
  if (!Array.isArray(files))
    throw new CairnError('E_BAD_STAGE_SPEC', `stage ${stage}: files must be a list of paths`, { stage });
  const base = baseDir(stage, dir) ?? (files.length > 0 ? caller() : undefined) ?? process.cwd();
  const seen = new Map<string, string>();
  const out: FileInput[] = [];
  for (const f of files) {
    if (typeof f !== 'string' || f === '' || f.includes('\0')) {
      throw new CairnError(
        'E_BAD_STAGE_SPEC',
        `stage ${stage}: file input ${JSON.stringify(f)} must be a non-empty path`,
        { stage, input: f },
      );
    }
    const key = path.posix.normalize(f).replace(/(.)\/+$/, '$1');
    if (seen.has(key)) {
      throw new CairnError(
        'E_BAD_STAGE_SPEC',
        `stage ${stage}: file inputs ${JSON.stringify(seen.get(key))} and ${JSON.stringify(f)} name the same path`,
        { stage, input: f },
      );
    }
    seen.set(key, f);
    out.push(Object.freeze({ key, declared: f, path: path.resolve(base, key) }));
  }
  if (out.length > 0) flags[FILES_DECLARED] = true;
  return Object.freeze(out);
}

/** Declares a stage. Nothing runs until it is realized. */
export function stage<C>(spec: StageSpec<C>): Stage<C> {
  if (typeof spec !== 'object' || spec === null) throw new CairnError('E_NOT_A_STAGE', 'stage() needs a spec object');
  const name = checkName(spec.name);
  if (typeof spec.build !== 'function')
    throw new CairnError('E_NOT_A_STAGE', `stage ${name}: build must be a function`, { stage: name });
  const n = spec.n ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > 10_000)
    throw new CairnError('E_BAD_STAGE_SPEC', `stage ${name}: n must be a whole number from 1 to 10000, not ${n}`, {
      stage: name,
    });
  if (spec.version !== undefined && typeof spec.version !== 'string')
    throw new CairnError('E_BAD_STAGE_SPEC', `stage ${name}: version must be a string`, { stage: name });
  const m = spec.matcher;
  const matcher = m === undefined ? latest() : isMatcher(m) ? m : typeof m === 'function' ? custom(m) : undefined;
  if (!matcher)
    throw new CairnError('E_BAD_STAGE_SPEC', `stage ${name}: matcher must be a matcher or a function`, { stage: name });
  return Object.freeze({
    [STAGE]: true as const,
    name,
    config: spec.config,
    build: spec.build,
    matcher,
    outputs: Object.freeze(checkOutputs(name, spec.outputs ?? [])),
    n,
    version: spec.version,
    files: declareFiles(name, spec.files, spec.dir, callerDir),
    resources: checkResources(name, spec.resources),
  });
}
