/**
 * Bundles a stage file into a code object (store/code-object.ts): the file,
 * its local imports and the pure-JS packages it uses, in one ES module that
 * imports only `cairn` (resolved, where it runs, to the running Cairn) and
 * Node's built-in modules.
 *
 * Identity is kept: every local module is given to esbuild as module-compile
 * serves it to Node (types stripped, `import.meta` replaced by a function
 * describing the original file), and the bundle carries an inline source
 * map with that text. Where the bundle runs, source maps are on, so a build
 * function's code identity is read from that text (function-source.ts), not
 * from esbuild's reprint of it: the same DRefs come out as on the user's
 * machine.
 *
 * Code that cannot travel is refused here, naming the file: a native addon
 * (a `.node` file, a package built with node-gyp). Uses of `import.meta`,
 * `__dirname` and `__filename`, and dynamic imports of computed names, are
 * recorded as notes: they work where the checkout exists at the same path
 * (a shared filesystem) and are errors naming the path where it does not.
 *
 * A bundle is made once per content: cached by the entry's path, and reused
 * while every file that went into it hashes the same.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { CODE_FORMAT, encodeCodeObject, type CodeNote, type CodeObject } from '../store/code-object.js';
import { compileForHook, defaultCacheDir, isModuleCode, type CompileEnv } from './module-compile.js';

/** Bumped when bundles are made differently, so cached ones from before are not reused. */
const BUNDLE_FORMAT = 'cairn-bundle-1';

export interface Bundle {
  /** The code object's canonical text, and its name. */
  text: string;
  hash: string;
  object: CodeObject;
}

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/** Packages that load a native addon at run time (through a helper, so no `.node` import is visible). */
const NATIVE_HELPERS = ['bindings', 'node-gyp-build', 'prebuild-install', 'node-pre-gyp', '@mapbox/node-pre-gyp'];

interface CachedBundle {
  format: string;
  /** Every file read to make it, with its content's sha256. */
  inputs: [string, string][];
  text: string;
}

const memo = new Map<string, Bundle>();

function compileEnv(): CompileEnv {
  return { cairnUrl: new URL('../index.js', import.meta.url).href, cacheDir: defaultCacheDir() };
}

function cacheFile(entry: string): string {
  return path.join(defaultCacheDir(), `bundle-${sha256(`${BUNDLE_FORMAT}\0${entry}`)}.json`);
}

function stillValid(c: CachedBundle): boolean {
  if (c.format !== BUNDLE_FORMAT) return false;
  for (const [file, hash] of c.inputs) {
    try {
      if (sha256(fs.readFileSync(file)) !== hash) return false;
    } catch {
      return false;
    }
  }
  return true;
}

function asBundle(text: string): Bundle {
  const object = JSON.parse(text) as CodeObject;
  const { hash } = encodeCodeObject(object);
  return { text, hash, object };
}

/**
 * The code object of a stage file: from this process's memo or the user's
 * bundle cache when no file that went into it changed, else made by
 * esbuild. E_CODE_NATIVE for a native addon, E_STAGE_FILE when esbuild
 * cannot bundle the file.
 */
export async function bundleStageFile(file: string): Promise<Bundle> {
  const entry = path.resolve(file);
  const known = memo.get(entry);
  const cached = cacheFile(entry);
  if (known) {
    // Checked again: a long-lived process (the server) sees edits.
    try {
      const c = JSON.parse(fs.readFileSync(cached, 'utf8')) as CachedBundle;
      if (c.text === known.text && stillValid(c)) return known;
    } catch {
      /* rebuilt below */
    }
  } else {
    try {
      const c = JSON.parse(fs.readFileSync(cached, 'utf8')) as CachedBundle;
      if (stillValid(c)) {
        const b = asBundle(c.text);
        memo.set(entry, b);
        return b;
      }
    } catch {
      /* not cached */
    }
  }
  const { text, inputs } = await makeBundle(entry);
  const b = asBundle(text);
  memo.set(entry, b);
  try {
    fs.mkdirSync(path.dirname(cached), { recursive: true });
    writeFileAtomic(cached, JSON.stringify({ format: BUNDLE_FORMAT, inputs, text } satisfies CachedBundle));
  } catch {
    /* the cache is an optimisation */
  }
  return b;
}

const LOCAL_CODE = /\.(ts|mts|js|mjs)$/;

/** The directory of the package a file inside node_modules belongs to, else undefined. */
function packageDirOf(file: string): string | undefined {
  const parts = file.split(path.sep);
  const i = parts.lastIndexOf('node_modules');
  if (i < 0 || i + 1 >= parts.length) return undefined;
  const scoped = parts[i + 1]!.startsWith('@');
  return parts.slice(0, i + (scoped ? 3 : 2)).join(path.sep);
}

/** Why the package in `dir` is a native addon, or null. */
function nativeReason(dir: string): string | null {
  if (fs.existsSync(path.join(dir, 'binding.gyp'))) return 'it is built with node-gyp (binding.gyp)';
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
      gypfile?: unknown;
      dependencies?: Record<string, unknown>;
    };
    if (pkg.gypfile === true) return 'it is built with node-gyp (gypfile)';
    const helper = NATIVE_HELPERS.find((h) => pkg.dependencies?.[h] !== undefined);
    if (helper) return `it loads a native addon through ${helper}`;
  } catch {
    /* no readable package.json: judged by its files */
  }
  return null;
}

async function makeBundle(entry: string): Promise<{ text: string; inputs: [string, string][] }> {
  const esbuild = await import('esbuild');
  const env = compileEnv();
  const inputs = new Map<string, string>();
  const notes: CodeNote[] = [];
  const nativeOf = new Map<string, string | null>();
  const baseDir = path.dirname(entry);
  const rel = (f: string): string => path.relative(baseDir, f) || path.basename(f);
  const native = (what: string, why: string, details: Record<string, unknown>): CairnError =>
    new CairnError(
      'E_CODE_NATIVE',
      `stage file ${entry} uses ${what}: ${why}, and native code cannot travel with the stage's code ` +
        `(build it where it is installed, or run it as a program through ctx.exec)`,
      { file: entry, ...details },
    );
  const lexer = await import('es-module-lexer');
  await lexer.init;

  const plugin: import('esbuild').Plugin = {
    name: 'cairn-stage-code',
    setup(build) {
      build.onResolve({ filter: /^cairn(\/.*)?$/ }, (a) => ({ path: a.path, external: true }));
      build.onResolve({ filter: /\.node$/ }, (a) => {
        throw native(`the native addon ${a.path} (imported by ${rel(a.importer)})`, 'a .node file', {
          addon: a.path,
        });
      });
      build.onLoad({ filter: /.*/ }, async (a) => {
        const file = a.path;
        if (file.endsWith('.node')) throw native(`the native addon ${file}`, 'a .node file', { addon: file });
        const bytes = fs.readFileSync(file);
        inputs.set(file, sha256(bytes));
        const pkg = packageDirOf(file);
        if (pkg !== undefined) {
          if (!nativeOf.has(pkg)) nativeOf.set(pkg, nativeReason(pkg));
          const why = nativeOf.get(pkg);
          if (why) throw native(`the package ${path.basename(pkg)} (${pkg})`, why, { package: pkg });
          return { contents: bytes, loader: loaderOf(file), resolveDir: path.dirname(file) };
        }
        if (!LOCAL_CODE.test(file) || !(file.endsWith('.ts') || (await isModuleCode(file, env))))
          return { contents: bytes, loader: loaderOf(file), resolveDir: path.dirname(file) };
        // A local module: served as Node gets it (see the header), its uses of the checkout noted.
        const source = bytes.toString('utf8');
        const code = await compileForHook(file, env);
        if (/\bimport\s*\.\s*meta\b/.test(source)) notes.push({ file: rel(file), what: 'import.meta' });
        if (/\b__dirname\b/.test(source)) notes.push({ file: rel(file), what: '__dirname' });
        if (/\b__filename\b/.test(source)) notes.push({ file: rel(file), what: '__filename' });
        try {
          const [imports] = lexer.parse(code, file);
          if (imports.some((i) => i.d >= 0 && i.n === undefined))
            notes.push({ file: rel(file), what: 'dynamic-import' });
        } catch {
          /* esbuild reports what does not parse */
        }
        return { contents: code, loader: 'js', resolveDir: path.dirname(file) };
      });
    },
  };

  let result: import('esbuild').BuildResult & { outputFiles: import('esbuild').OutputFile[] };
  try {
    result = await esbuild.build({
      entryPoints: [entry],
      absWorkingDir: baseDir,
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      sourcemap: 'inline',
      sourcesContent: true,
      logLevel: 'silent',
      // CommonJS packages inside an ES module call require() for Node's own modules.
      banner: {
        js:
          "import { createRequire as __cairnCreateRequire } from 'node:module'; " +
          'const require = __cairnCreateRequire(import.meta.url);',
      },
      plugins: [plugin],
    });
  } catch (e) {
    const errors = (e as { errors?: { text: string; detail?: unknown; location?: { file: string; line: number } }[] })
      .errors;
    const inner = errors?.map((x) => x.detail).find((d) => d instanceof CairnError);
    if (inner) throw inner;
    const first = errors?.[0];
    const where = first?.location ? ` (${first.location.file}:${first.location.line})` : '';
    throw new CairnError(
      'E_STAGE_FILE',
      `stage file ${entry} could not be bundled: ${first?.text ?? (e as Error).message}${where}`,
      { file: entry },
      { cause: e },
    );
  }
  const out = result.outputFiles[0];
  if (!out) throw new CairnError('E_STAGE_FILE', `stage file ${entry}: esbuild produced no bundle`, { file: entry });
  const object: CodeObject = {
    format: CODE_FORMAT,
    entry,
    bundle: out.text,
    bundler: `esbuild-${esbuild.version}`,
    notes: dedupe(notes),
  };
  return { text: encodeCodeObject(object).text, inputs: [...inputs].sort((a, b) => (a[0] < b[0] ? -1 : 1)) };
}

function dedupe(notes: CodeNote[]): CodeNote[] {
  const seen = new Set<string>();
  return notes
    .filter((n) => {
      const k = `${n.file}\0${n.what}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    })
    .sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.what < b.what ? -1 : 1));
}

function loaderOf(file: string): import('esbuild').Loader {
  if (/\.[cm]?tsx?$/.test(file)) return file.endsWith('x') ? 'tsx' : 'ts';
  if (file.endsWith('.json')) return 'json';
  if (file.endsWith('.jsx')) return 'jsx';
  if (/\.[cm]?js$/.test(file)) return 'js';
  return 'text';
}
