/**
 * Turns stage modules (TypeScript or JavaScript) into plain ES modules in a
 * content-addressed cache, so a stage file runs with no compile step and no
 * local install of Cairn, and a cached realize loads no transpiler and no
 * module hooks at all.
 *
 * Every module gets the same treatment, whichever way it is loaded:
 * types are stripped (sucrase), and `import.meta` is replaced by a hoisted
 * function that describes the *original* file, so `import.meta.url` keeps
 * pointing next to the source. Build functions therefore have the same
 * source text, and the same DRef, either way.
 *
 * Direct loading (no hooks) also rewrites import specifiers: `cairn` to the
 * running Cairn, local files to absolute URLs (local TypeScript files to
 * their own compiled copies). A module that imports an npm package by bare
 * name cannot be loaded from the cache directory, whose node_modules are not
 * the file's; for it, the caller falls back to module hooks.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeFileAtomic } from '../store/atomic-file.js';

export interface CompileEnv {
  /** URL that `import 'cairn'` should load. */
  cairnUrl: string;
  cacheDir: string;
}

/** The URL query parameter that keeps one load's modules apart from another's (see load.ts isolateModules). */
export const NAMESPACE_PARAM = 'cairn-ns';

export function defaultCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cairn', 'modules');
}

interface ImportSite {
  n?: string | undefined;
  t: number;
  s: number;
  e: number;
}
/** `esm`: the code has import, export or import.meta (see isModuleCode). */
interface Transformed {
  code: string;
  imports: ImportSite[];
  esm: boolean;
}

const require = createRequire(import.meta.url);
const TS = /\.(ts|mts)$/;
const BUILTINS = new Set(builtinModules);
let sucraseVersion: string | undefined;

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

function writeCache(file: string, text: string): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    writeFileAtomic(file, text);
  } catch {
    /* the cache is an optimisation: a read-only home still works, slower */
  }
}

/** Type-stripped code plus the positions of its imports and `import.meta`s, cached by content. */
async function transform(file: string, source: string, env: CompileEnv): Promise<Transformed> {
  const ts = TS.test(file);
  sucraseVersion ??= (require('sucrase/package.json') as { version: string }).version;
  const key = sha256(`cairn-module-2\0${ts ? `sucrase-${sucraseVersion}` : 'js'}\0${source}`);
  const cached = path.join(env.cacheDir, `t-${key}.json`);
  try {
    return JSON.parse(fs.readFileSync(cached, 'utf8')) as Transformed;
  } catch {
    /* not cached yet */
  }
  let code = source;
  if (ts) {
    const sucrase = require('sucrase') as typeof import('sucrase');
    code = sucrase.transform(source, { transforms: ['typescript'], disableESTransforms: true, filePath: file }).code;
  }
  const lexer = await import('es-module-lexer');
  await lexer.init;
  const [imports, , , esm] = lexer.parse(code, file);
  const result: Transformed = { code, imports: imports.map((i) => ({ n: i.n, t: i.t, s: i.s, e: i.e })), esm };
  writeCache(cached, JSON.stringify(result));
  return result;
}

/**
 * Whether a JavaScript file is an ES module by its own syntax. Stage files
 * are ES modules wherever they are: a project made by `npm init -y` is
 * CommonJS ("type": "commonjs"), and Node would refuse `import` in its `.js`
 * files. A `.js` file with no module syntax is CommonJS (a helper using
 * `module.exports`) and is left to Node, which loads it by its usual rules.
 */
export async function isModuleCode(file: string, env: CompileEnv): Promise<boolean> {
  try {
    return (await transform(file, fs.readFileSync(file, 'utf8'), env)).esm;
  } catch {
    return false; // unreadable or unparsable: Node reports it
  }
}

/** Replaces `[s, e)` ranges, last first so earlier offsets stay valid. */
function splice(code: string, edits: { s: number; e: number; text: string }[]): string {
  let out = code;
  for (const ed of [...edits].sort((a, b) => b.s - a.s)) out = out.slice(0, ed.s) + ed.text + out.slice(ed.e);
  return out;
}

const META_FN = '__cairn_import_meta';

function metaEdits(t: Transformed): { s: number; e: number; text: string }[] {
  return t.imports.filter((i) => i.t === 3).map((i) => ({ s: i.s, e: i.e, text: `${META_FN}()` }));
}

function metaFunction(file: string): string {
  const url = pathToFileURL(file).href;
  // A function declaration is hoisted with its body, so it may be appended
  // after the code (keeping line numbers) and still be callable from the top.
  return (
    `\nfunction ${META_FN}() { return { url: ${JSON.stringify(url)}, filename: ${JSON.stringify(file)}, ` +
    `dirname: ${JSON.stringify(path.dirname(file))}, resolve: (s) => new URL(s, ${JSON.stringify(url)}).href }; }\n`
  );
}

/** The code a module hook serves for `file`: the common treatment, specifiers untouched. */
export async function compileForHook(file: string, env: CompileEnv): Promise<string> {
  const t = await transform(file, fs.readFileSync(file, 'utf8'), env);
  return splice(t.code, metaEdits(t)) + metaFunction(file);
}

/** Finds a local module the way TypeScript's NodeNext resolution does: `./x.js` may be `./x.ts`. */
function resolveLocal(fromDir: string, spec: string): string | null {
  const base = spec.startsWith('file:') ? new URL(spec).pathname : path.resolve(fromDir, spec);
  const tries = [base];
  if (base.endsWith('.js')) tries.push(base.slice(0, -3) + '.ts');
  else if (base.endsWith('.mjs')) tries.push(base.slice(0, -4) + '.mts');
  else if (!path.extname(base))
    tries.push(base + '.ts', base + '.js', path.join(base, 'index.ts'), path.join(base, 'index.js'));
  for (const t of tries) {
    try {
      if (fs.statSync(t).isFile()) return t;
    } catch {
      /* next */
    }
  }
  return null;
}

/**
 * `file` and every local file it imports, transitively (static imports,
 * re-exports and `import()` of a string), as absolute paths in a stable
 * order: what a module's own code depends on besides packages. A specifier
 * that does not resolve is left out (Node refuses it when it loads).
 */
export async function localModuleFiles(file: string, env: CompileEnv): Promise<string[]> {
  const seen = new Set<string>();
  const visit = async (f: string): Promise<void> => {
    if (seen.has(f)) return;
    seen.add(f);
    if (!TS.test(f) && !/\.[cm]?js$/.test(f)) return; // a JSON or other data file: its bytes only
    let t: Transformed;
    try {
      t = await transform(f, fs.readFileSync(f, 'utf8'), env);
    } catch {
      return; // unreadable or unparsable: its bytes still count
    }
    for (const imp of t.imports) {
      const spec = imp.n;
      if (imp.t === 3 || spec === undefined) continue;
      if (!(spec.startsWith('./') || spec.startsWith('../') || spec.startsWith('/') || spec.startsWith('file:')))
        continue;
      const local = resolveLocal(path.dirname(f), spec);
      if (local !== null) await visit(local);
    }
  };
  await visit(path.resolve(file));
  return [...seen].sort();
}

/**
 * Compiles `file` and its local imports into the cache for direct import.
 * Returns the URL to import, or null when a hook is needed (a bare package
 * import, an unresolvable local import, or an import cycle among local files).
 */
export async function compileForImport(
  file: string,
  env: CompileEnv,
  visiting = new Set<string>(),
): Promise<string | null> {
  if (visiting.has(file)) return null;
  visiting.add(file);
  try {
    const source = fs.readFileSync(file, 'utf8');
    const t = await transform(file, source, env);
    if (!t.esm && !TS.test(file)) return pathToFileURL(file).href; // CommonJS: see isModuleCode
    const edits = metaEdits(t);
    for (const imp of t.imports) {
      if (imp.t === 3 || imp.n === undefined) continue;
      const spec = imp.n;
      let target: string;
      if (spec === 'cairn') target = env.cairnUrl;
      else if (spec.startsWith('node:') || BUILTINS.has(spec)) continue;
      else if (spec.startsWith('./') || spec.startsWith('../') || spec.startsWith('/') || spec.startsWith('file:')) {
        const local = resolveLocal(path.dirname(file), spec);
        if (local === null) return null;
        if (TS.test(local) || /\.m?js$/.test(local)) {
          const url = await compileForImport(local, env, visiting);
          if (url === null) return null;
          target = url;
        } else {
          target = pathToFileURL(local).href;
        }
      } else {
        return null;
      }
      // Dynamic imports' ranges include the quotes; static ones do not.
      edits.push({ s: imp.s, e: imp.e, text: imp.t === 2 ? JSON.stringify(target) : target });
    }
    const code = splice(t.code, edits) + metaFunction(file) + `//# sourceURL=${pathToFileURL(file).href}\n`;
    const out = path.join(env.cacheDir, `m-${sha256(code)}.mjs`);
    if (!fs.existsSync(out)) writeCache(out, code);
    return fs.existsSync(out) ? pathToFileURL(out).href : null;
  } finally {
    visiting.delete(file);
  }
}
