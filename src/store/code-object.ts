/**
 * The format of a stage code object: a stage file bundled with its local
 * imports and pure-JS packages into one ES module (see
 * stages/code-bundle.ts), so that a host with no checkout can load the
 * stages again and build a derivation (`cairn build-drv`). Pure: parsing and
 * checking only; the files are code-files.ts's.
 *
 * A code object is canonical JSON named by its short hash (`shortHash` of
 * the text, like a DRef's hash), so a copy from anywhere is checked by
 * hashing it again.
 */
import { CairnError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { HASH_PATTERN, shortHash } from './hash.js';

export const CODE_FORMAT = 'cairn-code-1';
/** Larger bundles are refused: a stage file with its packages is kilobytes to a few megabytes. */
export const CODE_MAX_BYTES = 64 * 1024 * 1024;
const CODE_NAME = new RegExp(`^${HASH_PATTERN}$`);

/** Something a bundle does that may keep it from running elsewhere: checked again where it runs. */
export interface CodeNote {
  /** The module (as the bundle names it, relative to the entry's directory). */
  file: string;
  /** `import.meta`, `__dirname`, `__filename`, or `dynamic-import`. */
  what: 'import.meta' | '__dirname' | '__filename' | 'dynamic-import';
}

export interface CodeObject {
  format: typeof CODE_FORMAT;
  /** The stage file's absolute path where it was bundled: where `import.meta.url` of its modules points. */
  entry: string;
  /** The ES module: imports only `cairn` and Node's built-in modules. */
  bundle: string;
  /** The esbuild that made it, for reports. */
  bundler: string;
  notes: CodeNote[];
}

/** A code object's text, and its name. */
export function encodeCodeObject(obj: CodeObject): { text: string; hash: string } {
  const text = canonicalJson(obj);
  return { text, hash: shortHash(text) };
}

export function isCodeName(s: string): boolean {
  return CODE_NAME.test(s);
}

/**
 * Parses a code object's bytes, checking that they hash to `hash` (when
 * given) and have the fields this Cairn runs: E_CODE_CORRUPT otherwise.
 */
export function parseCodeObject(bytes: Buffer | string, hash?: string): CodeObject {
  const bad = (why: string): CairnError =>
    new CairnError('E_CODE_CORRUPT', `code object ${hash ?? ''}: ${why}`.replace('  ', ' '), { hash, why });
  const size = typeof bytes === 'string' ? Buffer.byteLength(bytes) : bytes.length;
  if (size > CODE_MAX_BYTES) throw bad(`${size} bytes, more than the ${CODE_MAX_BYTES} allowed`);
  const text = typeof bytes === 'string' ? bytes : bytes.toString('utf8');
  if (hash !== undefined && shortHash(text) !== hash) throw bad('does not hash to its name');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw bad('is not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('is not a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.format !== CODE_FORMAT) throw bad(`has format ${JSON.stringify(o.format)}, not ${CODE_FORMAT}`);
  if (typeof o.entry !== 'string' || !o.entry.startsWith('/')) throw bad('has no absolute entry path');
  if (typeof o.bundle !== 'string') throw bad('has no bundle');
  if (typeof o.bundler !== 'string') throw bad('does not name its bundler');
  if (!Array.isArray(o.notes)) throw bad('has no notes list');
  const whats = new Set(['import.meta', '__dirname', '__filename', 'dynamic-import']);
  for (const n of o.notes as unknown[]) {
    const note = n as Record<string, unknown> | null;
    if (typeof note?.file !== 'string' || !whats.has(note.what as string)) throw bad('has a malformed note');
  }
  // Canonical: the same object always has the same name.
  if (canonicalJson(raw) !== text) throw bad('is not canonical JSON');
  return raw as CodeObject;
}
