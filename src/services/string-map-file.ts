/**
 * A JSON object of strings in a file beside the ensemble (the context, the
 * init record): read whole, rewritten whole and atomically (temp file +
 * rename) on every change, so a crash never leaves half a file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';

/** The file's object ({} when there is no file); `what` names it in the E_SERVICE_INVALID of a malformed one. */
export function readStringMap(file: string, what: string): Record<string, string> {
  let raw: string;
  try {
    raw = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    v = undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string'))
    throw new CairnError('E_SERVICE_INVALID', `${what} ${file} must hold a JSON object of strings`, { file });
  // Rebuilt from entries: a "__proto__" key in the file stays a plain key.
  return Object.fromEntries(Object.entries(v as Record<string, string>));
}

export function writeStringMap(file: string, values: Record<string, string>): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomic(file, JSON.stringify(values, null, 2) + '\n');
}
