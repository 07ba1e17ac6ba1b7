/**
 * The imperative shell around code-identity.ts: finds a build function's
 * original source (function-origin.ts), normalizes it and hashes it.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { canonicalAtOffset, canonicalFromText, canonicalModule } from './code-identity.js';
import { functionOrigin } from './function-origin.js';
import { defaultCacheDir } from './module-compile.js';

/**
 * Bumped whenever code-identity.ts normalizes differently, so that cached
 * identities (below) from an older normalization are not used.
 */
const NORMALIZATION = 'cairn-code-2';

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');
const require = createRequire(import.meta.url);

/** Identities by source text in this process: closures made in a loop share their text. */
const byText = new Map<string, string>();
let cacheDir: string | undefined;

/**
 * The identity of a source text as `toString()` gives it. A pure function of
 * the text (and of the normalization and its parser), so it is also cached
 * on disk next to the compiled modules: a cached `cairn realize` then loads
 * no parser at all, as it loads no transpiler.
 */
function hashOfText(text: string): string {
  let h = byText.get(text);
  if (h !== undefined) return h;
  cacheDir ??= path.join(defaultCacheDir(), `code-${NORMALIZATION}-sucrase-${sucraseVersion()}`);
  const file = path.join(cacheDir, sha256(text));
  try {
    h = fs.readFileSync(file, 'utf8');
    if (!/^[0-9a-f]{64}$/.test(h)) h = undefined;
  } catch {
    /* not cached yet */
  }
  if (h === undefined) {
    const c = canonicalFromText(text);
    h = sha256(c ?? `raw:${text}`);
    writeCache(file, h);
  }
  if (byText.size >= 4096) byText.clear();
  byText.set(text, h);
  return h;
}

/**
 * The sha256 of a whole module's canonical code (`canonicalModule`), or
 * undefined when it does not parse; cached on disk like hashOfText, so a
 * cached `cairn machine` run with a user step module loads no parser.
 */
export function moduleCodeHash(text: string, fileName: string): string | undefined {
  const kind = /\.[cm]?tsx?$/.test(fileName) ? 'ts' : 'js';
  const jsx = /\.[jt]sx$/.test(fileName) ? 'x' : '';
  cacheDir ??= path.join(defaultCacheDir(), `code-${NORMALIZATION}-sucrase-${sucraseVersion()}`);
  const file = path.join(cacheDir, sha256(`module\0${kind}${jsx}\0${text}`));
  try {
    const h = fs.readFileSync(file, 'utf8');
    if (/^[0-9a-f]{64}$/.test(h) || h === 'unparsable') return h === 'unparsable' ? undefined : h;
  } catch {
    /* not cached yet */
  }
  const c = canonicalModule(text, fileName);
  const h = c === undefined ? undefined : sha256(c);
  writeCache(file, h ?? 'unparsable');
  return h;
}

function sucraseVersion(): string {
  return (require('sucrase/package.json') as { version: string }).version;
}

function writeCache(file: string, text: string): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } catch {
    /* the cache is an optimisation: a read-only home still works, slower */
  }
}

/**
 * The hash a build function's code identity is: of its normalized source.
 *
 * Loaders that reprint code (tsx's esbuild) turn on Node's source-map
 * support so that stack traces point into the original file; then the
 * function is read from that original, found through the source map. Loaders
 * that only remove types (Node's type stripping, the CLI's sucrase) and
 * compiled JavaScript need no map: `toString()` is then the original minus
 * its types, which normalizes to the same form. Checking for source-map
 * support first keeps the inspector out of the CLI and the server entirely.
 * A function whose text cannot be read as one (native, bound) is hashed by
 * its raw text.
 */
export function codeHash(fn: (...args: never) => unknown): string {
  const text = fn.toString();
  const origin = process.sourceMapsEnabled ? functionOrigin(fn) : undefined;
  if (origin) {
    const c = canonicalAtOffset(origin.text, origin.fileName, origin.offset);
    // A source map that led elsewhere (another kind of function) is ignored.
    if (c !== undefined && [undefined, flags(c)].includes(flagsOfText(text))) return sha256(c);
  }
  return hashOfText(text);
}

/** The first element of a canonical form: arrow or function, async, generator. */
const flags = (c: string): string => (JSON.parse(c) as string[])[0]!;

const flagsByText = new Map<string, string | undefined>();

function flagsOfText(text: string): string | undefined {
  if (flagsByText.has(text)) return flagsByText.get(text);
  const c = canonicalFromText(text);
  const f = c === undefined ? undefined : flags(c);
  if (flagsByText.size >= 4096) flagsByText.clear();
  flagsByText.set(text, f);
  return f;
}
