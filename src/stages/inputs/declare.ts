import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CairnError } from '../../errors.js';
import { isName } from '../../store/refs.js';

/** One declared file input of a stage, resolved to where it lives on this machine. */
export interface FileInput {
  /** The declared path, normalised (`./data/` -> `data`): its name in the identity and in `ctx.files`. */
  readonly key: string;
  /** The declared spelling, when it differs from `key` (`data/`): also accepted in `ctx.files`. */
  readonly declared: string;
  /** Absolute path on this machine: where it is read from, never part of the identity. */
  readonly path: string;
}

// Cairn's own source directory (src/ or dist/src/): frames in it are not the user's.
const OWN_SOURCE = new URL('../../', import.meta.url).href;

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
      if (!name || name.startsWith(OWN_SOURCE) || name.startsWith('node:')) continue;
      const url = name.replace(/[?#].*$/, '');
      if (url.startsWith('file:')) return path.dirname(fileURLToPath(url));
      if (path.isAbsolute(url)) return path.dirname(url);
    }
  } catch { /* an unusual stack: fall back to the working directory */ } finally {
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
    try { if (!fs.statSync(p).isDirectory()) p = path.dirname(p); } catch { p = path.dirname(p); }
    return p;
  }
  if (typeof dir !== 'string' || dir === '' || dir.includes('\0')) {
    throw new CairnError('E_USAGE', `stage ${stage}: dir must be a directory path or a file: URL`, { stage });
  }
  return path.resolve(dir);
}

/** Checks and resolves a stage's `files`, relative to `dir` or else to the declaring module's directory. */
export function declareFiles(stage: string, files: unknown, dir: unknown, caller: () => string | undefined): readonly FileInput[] {
  if (files === undefined) return [];
  if (!Array.isArray(files)) throw new CairnError('E_USAGE', `stage ${stage}: files must be a list of paths`, { stage });
  const base = baseDir(stage, dir) ?? (files.length > 0 ? caller() : undefined) ?? process.cwd();
  const seen = new Map<string, string>();
  const out: FileInput[] = [];
  for (const f of files) {
    if (typeof f !== 'string' || f === '' || f.includes('\0')) {
      throw new CairnError('E_USAGE', `stage ${stage}: file input ${JSON.stringify(f)} must be a non-empty path`, { stage, input: f });
    }
    const key = path.posix.normalize(f).replace(/(.)\/+$/, '$1');
    if (seen.has(key)) {
      throw new CairnError('E_USAGE', `stage ${stage}: file inputs ${JSON.stringify(seen.get(key))} and ${JSON.stringify(f)} name the same path`,
        { stage, input: f });
    }
    seen.set(key, f);
    out.push(Object.freeze({ key, declared: f, path: path.resolve(base, key) }));
  }
  return Object.freeze(out);
}

/** The name of an input inside its store object: the basename, as on disk. */
export function entryName(abs: string): string {
  return path.basename(abs) || 'root';
}

/** A stage name for an input's import derivation: its basename in the portable alphabet. */
export function importName(entry: string): string {
  let n = entry.replace(/[^A-Za-z0-9._+-]/g, '_').replace(/\.\./g, '_.').slice(0, 100);
  if (!/^[A-Za-z0-9_]/.test(n)) n = `_${n}`.slice(0, 100);
  if (!isName(n)) n = `_${n}`.slice(0, 100);
  return isName(n) ? n : 'input';
}
