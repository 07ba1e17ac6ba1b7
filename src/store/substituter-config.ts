/**
 * The `substituters` of a store's configuration (`ROOT/config.json`):
 * the cache URLs `cairn realize` asks by default. Only that field is read
 * here; the file is read without following a link, and a store without
 * one has no substituters.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { withRegularFile } from './fsutil.js';

export function configuredSubstituters(root: string): string[] {
  const file = path.join(root, 'config.json');
  const bad = (why: string, cause?: unknown): CairnError =>
    new CairnError('E_STORE_CONFIG', `${file}: ${why}`, { file }, cause === undefined ? undefined : { cause });
  let text: string | null;
  try {
    text = withRegularFile(file, (fd) => fs.readFileSync(fd, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw bad(`cannot be read: ${(e as Error).message}`, e);
  }
  if (text === null) throw bad('is not a regular file');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad(`is not JSON: ${(e as Error).message}`, e);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad('must hold a JSON object');
  const list = (json as Record<string, unknown>).substituters;
  if (list === undefined) return [];
  if (!Array.isArray(list) || !list.every((v) => typeof v === 'string')) {
    throw bad('"substituters" must be a list of strings');
  }
  return [...list];
}
