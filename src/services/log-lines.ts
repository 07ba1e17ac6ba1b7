/**
 * The pure core of `cairn services logs`: cutting byte streams into whole
 * lines, the engine's timestamps, and compose-style prefixes. No I/O.
 */

/**
 * Cuts a byte stream into whole lines (without their newline). Bytes are
 * kept until their line ends, so a line is never printed in pieces and a
 * UTF-8 character split between two chunks is decoded whole.
 */
export class LineSplitter {
  private rest: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): string[] {
    const buf = this.rest.length > 0 ? Buffer.concat([this.rest, chunk]) : chunk;
    const lines: string[] = [];
    let start = 0;
    for (let nl = buf.indexOf(10, start); nl >= 0; nl = buf.indexOf(10, start)) {
      lines.push(buf.toString('utf8', start, nl > start && buf[nl - 1] === 13 ? nl - 1 : nl));
      start = nl + 1;
    }
    this.rest = Buffer.from(buf.subarray(start));
    return lines;
  }

  /** What is left when the stream ends: a last line without a newline, if any. */
  end(): string[] {
    const last = this.rest.length > 0 ? [this.rest.toString('utf8')] : [];
    this.rest = Buffer.alloc(0);
    return last;
  }
}

/** `2026-12-06T03:09:00.123456789Z message` (docker logs --timestamps) → the two parts. */
export function splitTimestamp(line: string): { ts: string; text: string } {
  const sp = line.indexOf(' ');
  const ts = sp < 0 ? line : line.slice(0, sp);
  if (!/^\d{4}-\d\d-\d\dT/.test(ts)) return { ts: '', text: line };
  return { ts, text: sp < 0 ? '' : line.slice(sp + 1) };
}

/**
 * A key that sorts like the time: the engine prints RFC 3339 with trailing
 * zeros of the fraction cut (`.5Z` < `.123456789Z` as text, not as time),
 * so the fraction is padded to nanoseconds.
 */
export function timestampKey(ts: string): string {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(ts);
  return m ? `${m[1]}.${(m[2] ?? '').padEnd(9, '0')}` : ts;
}

export interface TimedLine {
  key: string;
  service: string;
  text: string;
}

/** Merges per-service histories by time; lines of equal time keep their service's order. */
export function mergeByTime(lines: readonly TimedLine[]): TimedLine[] {
  return lines
    .map((l, i) => ({ l, i }))
    .sort((a, b) => (a.l.key < b.l.key ? -1 : a.l.key > b.l.key ? 1 : a.i - b.i))
    .map((x) => x.l);
}

// compose's palette: cyan, yellow, green, magenta, blue, then their bright variants.
const COLOURS = [36, 33, 32, 35, 34, 96, 93, 92, 95, 94];

/** Colour only on a terminal, and never with NO_COLOR set (https://no-color.org). */
export function useColour(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv): boolean {
  return stream.isTTY === true && !env.NO_COLOR && env.TERM !== 'dumb';
}

/** `name  | ` with the names padded to the longest, as compose aligns them; coloured per service. */
export function prefixer(services: readonly string[], colour: boolean): (service: string) => string {
  const width = Math.max(0, ...services.map((s) => s.length));
  const made = new Map<string, string>();
  services.forEach((s, i) => {
    const plain = `${s.padEnd(width)} | `;
    made.set(s, colour ? `\x1b[${COLOURS[i % COLOURS.length]}m${plain}\x1b[0m` : plain);
  });
  return (s) => made.get(s) ?? `${s} | `;
}

/**
 * The values `docker logs --since` takes: a duration (`10m`, `1h30m`,
 * `90s`), a Unix time (`1700000000[.5]`) or an RFC 3339 date or time.
 * Checked here so a typo is a usage error, not a docker failure.
 */
export function isSinceValue(v: string): boolean {
  return (
    /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(v) ||
    /^\d+(\.\d{1,9})?$/.test(v) ||
    (/^\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d{1,9})?)?(Z|[+-]\d\d:\d\d)?)?$/.test(v) && !Number.isNaN(Date.parse(v)))
  );
}
