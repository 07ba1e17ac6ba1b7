import { CairnError } from '../errors.js';

/**
 * The score a `best()` matcher (and gc --keep-best) reads from an output
 * file: the whole text as a number, or, with `key`, a numeric field of the
 * JSON object it holds. Pure, so gc can score inside its transaction.
 */
export function parseScore(text: string, rref: string, file: string, key?: string): number {
  let value: unknown;
  try {
    value = key === undefined ? Number(text.trim()) : (JSON.parse(text) as Record<string, unknown>)[key];
  } catch {
    value = NaN;
  }
  if (typeof value !== 'number' || !Number.isFinite(value) || (key === undefined && text.trim() === '')) {
    throw new CairnError(
      'E_MATCH_INVALID',
      `best(): ${file}${key ? ` field ${key}` : ''} of ${rref} is not a finite number`,
      { rref, file },
    );
  }
  return value;
}
