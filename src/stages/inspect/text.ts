/** Text helpers shared by the inspection formats. Pure. */

/**
 * Control characters, line and paragraph separators and bidirectional
 * overrides, which a terminal would obey rather than show.
 */
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** `s` safe to print on a terminal: what it would obey is shown as `\uXXXX`. */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** At most `width` characters (code points), the last an ellipsis when cut. */
export function fit(s: string, width: number): string {
  const cps = Array.from(s);
  if (cps.length <= width) return s;
  return width <= 1 ? cps.slice(0, width).join('') : cps.slice(0, width - 1).join('') + '…';
}

/** Width in code points (what the table pads to). */
export const textWidth = (s: string): number => Array.from(s).length;

/** A number as a short cell: up to 6 significant digits, no exponent for ordinary magnitudes. */
export function formatNumber(v: number): string {
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e15)) return v.toExponential(4);
  return String(Number(v.toPrecision(6)));
}

/** `3s`, `5m`, `2h`, `4d`: how long ago. */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** `0.03s`, `12.4s`, `3m05s`. */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}
