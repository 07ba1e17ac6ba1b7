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

/** Combining marks: drawn over the character before them. */
const COMBINING = /^[\p{Mn}\p{Me}]$/u;
/** Zero-width code points besides combining marks: zero-width space and joiners, variation selectors. */
const ZERO_WIDTH: readonly [number, number][] = [
  [0x200b, 0x200d],
  [0xfe00, 0xfe0f],
];
/** Two columns wide on a terminal: East Asian wide and fullwidth characters, and the common emoji blocks. */
const WIDE: readonly [number, number][] = [
  [0x1100, 0x115f],
  [0x2e80, 0x303e],
  [0x3041, 0x33ff],
  [0x3400, 0x4dbf],
  [0x4e00, 0x9fff],
  [0xa000, 0xa4cf],
  [0xac00, 0xd7a3],
  [0xf900, 0xfaff],
  [0xfe30, 0xfe4f],
  [0xff00, 0xff60],
  [0xffe0, 0xffe6],
  [0x1f300, 0x1f64f],
  [0x1f900, 0x1f9ff],
  [0x20000, 0x3fffd],
];
const within = (cp: number, ranges: readonly [number, number][]): boolean =>
  ranges.some(([lo, hi]) => cp >= lo && cp <= hi);

/** Columns a character takes on a terminal (0, 1 or 2), as wcwidth says for the common cases. */
function charWidth(c: string): number {
  const cp = c.codePointAt(0)!;
  if (within(cp, ZERO_WIDTH) || COMBINING.test(c)) return 0;
  return within(cp, WIDE) ? 2 : 1;
}

/** Width on a terminal, in columns: what the table pads to. */
export function textWidth(s: string): number {
  // Plain ASCII, the usual case, needs no look at each character.
  if (/^[\x20-\x7e]*$/.test(s)) return s.length;
  let w = 0;
  for (const c of s) w += charWidth(c);
  return w;
}

/** At most `width` terminal columns, the last an ellipsis when cut. */
export function fit(s: string, width: number): string {
  if (textWidth(s) <= width) return s;
  let out = '';
  let w = 0;
  const room = Math.max(0, width - 1);
  for (const c of s) {
    const cw = charWidth(c);
    if (w + cw > room) break;
    out += c;
    w += cw;
  }
  return width >= 1 ? out + '…' : '';
}

/** A number as a short cell: `digits` significant digits (default 6), no exponent for ordinary magnitudes. */
export function formatNumber(v: number, digits = 6): string {
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e15)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

/**
 * The fewest significant digits (6 to 17) at which the different values of
 * a column still look different: two scores that differ in the 8th digit
 * must not print alike next to a mark saying one was chosen over the other.
 */
export function columnDigits(values: readonly number[]): number {
  const distinct = new Set(values).size;
  for (let d = 6; d < 17; d++) if (new Set(values.map((v) => formatNumber(v, d))).size === distinct) return d;
  return 17;
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
