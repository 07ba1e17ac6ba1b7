/**
 * The imperative shell around code-identity.ts: finds a build function's
 * original source (function-origin.ts) and normalizes it.
 */
import { canonicalAtOffset, canonicalFromText } from './code-identity.js';
import { functionOrigin } from './function-origin.js';

/** Canonical forms by source text: closures made in a loop share their text. */
const byText = new Map<string, string | undefined>();

function fromText(text: string): string | undefined {
  if (byText.has(text)) return byText.get(text);
  const c = canonicalFromText(text);
  if (byText.size >= 4096) byText.clear();
  byText.set(text, c);
  return c;
}

/**
 * What a build function's code identity hashes.
 *
 * Loaders that reprint code (tsx's esbuild) turn on Node's source-map
 * support so that stack traces point into the original file; then the
 * function is read from that original, found through the source map. Loaders
 * that only remove types (Node's type stripping, the CLI's sucrase) and
 * compiled JavaScript need no map: `toString()` is then the original minus
 * its types, which normalizes to the same form. Checking for source-map
 * support first keeps the inspector out of the CLI and the server entirely.
 * A function whose text cannot be read as one (native, bound) keeps its raw text.
 */
export function normalizedSource(fn: Function): string {
  const text = fn.toString();
  const own = fromText(text);
  const origin = process.sourceMapsEnabled ? functionOrigin(fn) : undefined;
  if (origin) {
    const c = canonicalAtOffset(origin.text, origin.fileName, origin.offset);
    // A source map that led elsewhere (another kind of function) is ignored.
    if (c !== undefined && (own === undefined || flags(c) === flags(own))) return c;
  }
  return own ?? `raw:${text}`;
}

/** The first element of a canonical form: arrow or function, async, generator. */
const flags = (c: string): string => (JSON.parse(c) as string[])[0]!;
