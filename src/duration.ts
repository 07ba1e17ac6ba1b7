import { CairnError } from './errors.js';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `30d`, `12h`, `90m`, `45s`, `2w` (or combinations like `1d12h`) to milliseconds; a bare `0` is zero. */
export function parseDuration(text: string): number {
  // Zero needs no unit: `--cache=0` is what a user types for "never reuse".
  if (text === '0') return 0;
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)([smhdw])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) {
    throw new CairnError(
      'E_BAD_ARGUMENT',
      `${JSON.stringify(text)} is not a duration; use e.g. 30d, 12h, 90m, 45s, 2w`,
    );
  }
  return parts.reduce((ms, p) => ms + Number(p[1]) * UNITS[p[2]!]!, 0);
}
