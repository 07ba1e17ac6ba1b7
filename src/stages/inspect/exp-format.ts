/**
 * The `exp show` table as text (fitted to a terminal's width when given)
 * and as CSV. Pure: the caller reads the table and the clock.
 */
import type { Scalar } from './flatten.js';
import type { ExpRow, ExpStage, ExpTable } from './experiments.js';
import { columnDigits, fit, formatAge, formatDuration, formatNumber, printable, textWidth } from './text.js';

/** The mark of a chosen realization. */
export const CHOSEN_MARK = '*';

const scalarText = (v: Scalar | undefined): string =>
  v === undefined ? '-' : typeof v === 'number' ? formatNumber(v) : v === null ? 'null' : printable(String(v));

/** The short form of an RRef in a table: the first 8 characters of its own hash. */
export const shortRRef = (rref: string): string => rref.slice(0, 8);

interface Column {
  header: string;
  cells: string[];
  right: boolean;
  /** Kept however narrow the terminal is. */
  fixed: boolean;
  /** Lower goes first when columns must be dropped. */
  keep: number;
}

function columnsOf(stage: ExpStage, now: number): Column[] {
  const rows = stage.rows;
  const col = (header: string, cell: (r: ExpRow) => string, o: Partial<Column> = {}): Column => ({
    header: printable(header),
    cells: rows.map(cell),
    right: o.right ?? false,
    fixed: o.fixed ?? false,
    keep: o.keep ?? 1,
  });
  const fixed = { fixed: true, keep: 9 };
  return [
    col('', (r) => (r.chosen ? CHOSEN_MARK : ''), fixed),
    col('rz', (r) => shortRRef(r.rref), fixed),
    // Configs can differ in code alone (no param tells them apart): then the DRef does.
    ...(stage.drefs.length > 1 ? [col('drv', (r) => r.dref.slice(0, 7), fixed)] : []),
    ...stage.paramKeys.map((k) => col(k, (r) => scalarText(r.params[k]))),
    // Metrics are dropped after params, later ones first, the matcher's score last.
    ...stage.metricKeys.map((k, i) => {
      const digits = columnDigits(rows.flatMap((r) => (r.metrics[k] === undefined ? [] : [r.metrics[k]])));
      const text = (r: ExpRow): string => (r.metrics[k] === undefined ? '-' : formatNumber(r.metrics[k], digits));
      return col(k, text, { right: true, keep: k === stage.scoreKey ? 5 : 3 - i / 1000 });
    }),
    col('age', (r) => formatAge(now - r.createdAt), { ...fixed, right: true }),
    col('build', (r) => formatDuration(r.buildMs), { ...fixed, right: true }),
  ];
}

const natural = (c: Column): number => c.cells.reduce((w, x) => Math.max(w, textWidth(x)), textWidth(c.header));

/**
 * Widths that fit `width` (two spaces between columns): first every
 * variable column is narrowed (cells get an ellipsis), no narrower than 6,
 * then the least useful columns are dropped: params before metrics, the
 * matcher's score last. Returns the columns kept, with their widths.
 */
function fitColumns(cols: readonly Column[], width: number | undefined): { col: Column; w: number }[] {
  let kept = cols.map((col) => ({ col, w: natural(col) }));
  if (width === undefined) return kept;
  const total = (): number => kept.reduce((s, k) => s + k.w, 0) + 2 * (kept.length - 1);
  for (let cap = Math.max(...kept.map((k) => k.w)); total() > width && cap > 6; cap--) {
    for (const k of kept) if (!k.col.fixed && k.w > cap) k.w = cap;
  }
  while (total() > width) {
    const candidates = kept.filter((k) => !k.col.fixed);
    if (candidates.length === 0) break;
    const drop = candidates.reduce((a, b) => (b.col.keep <= a.col.keep ? b : a));
    kept = kept.filter((k) => k !== drop);
  }
  return kept;
}

function stageHeading(stage: ExpStage): string {
  const n = stage.rows.length;
  const chosen = stage.rows.filter((r) => r.chosen).length;
  const parts = [
    `${stage.name}${stage.target ? ' (target)' : ''}`,
    `${n} realization${n === 1 ? '' : 's'}`,
    chosen > 0 ? `${chosen} chosen by ${stage.chosenBy}` : `none chosen${stage.problem ? `: ${stage.problem}` : ''}`,
  ];
  if (stage.drefs.length === 1) parts.push(stage.dref);
  else parts.push(`${stage.drefs.length} configs`);
  if (stage.hidden > 0) parts.push(`${stage.hidden} more built from other inputs not shown`);
  return printable(parts.join(' · '));
}

/**
 * The table as text: a heading per stage, then its rows. With `width` (a
 * terminal's), every line fits it; without, nothing is cut.
 */
export function formatExpTable(table: ExpTable, opts: { now: number; width?: number }): string {
  const lines: string[] = [];
  for (const stage of table.stages) {
    if (lines.length > 0) lines.push('');
    lines.push(opts.width === undefined ? stageHeading(stage) : fit(stageHeading(stage), opts.width));
    if (stage.rows.length === 0) continue;
    const cols = columnsOf(stage, opts.now);
    const kept = fitColumns(cols, opts.width);
    const cell = (text: string, w: number, right: boolean): string => {
      const t = fit(text, w);
      const pad = ' '.repeat(w - textWidth(t));
      return right ? pad + t : t + pad;
    };
    const line = (texts: string[]): string => {
      const s = texts.join('  ').trimEnd();
      return opts.width === undefined ? s : fit(s, opts.width);
    };
    lines.push(line(kept.map((k) => cell(k.col.header, k.w, k.col.right))));
    stage.rows.forEach((_, i) => lines.push(line(kept.map((k) => cell(k.col.cells[i]!, k.w, k.col.right)))));
    const dropped = cols.length - kept.length;
    if (dropped > 0)
      lines.push(
        fit(
          `(${dropped} more column${dropped === 1 ? '' : 's'}: a wider terminal, JSON or CSV show them)`,
          opts.width!,
        ),
      );
  }
  return lines.join('\n') + (lines.length > 0 ? '\n' : '');
}

/**
 * One CSV field (RFC 4180): quoted when it holds a quote, comma, or line
 * break. A text field that a spreadsheet would run as a formula (starting
 * with = + - @, tab or CR) gets a leading apostrophe; numbers are left alone.
 */
export function csvField(v: Scalar | undefined): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Every stage's rows in one CSV: fixed columns, then `params.KEY` and `metrics.KEY` (the union over stages). */
export function formatExpCsv(table: ExpTable): string {
  const params: string[] = [];
  const metrics: string[] = [];
  for (const s of table.stages) {
    for (const k of s.paramKeys) if (!params.includes(k)) params.push(k);
    for (const k of s.metricKeys) if (!metrics.includes(k)) metrics.push(k);
  }
  const header = [
    'stage',
    'dref',
    'rref',
    'chosen',
    'current',
    'created',
    'build_ms',
    ...params.map((k) => `params.${k}`),
    ...metrics.map((k) => `metrics.${k}`),
  ];
  const rowOf = (s: ExpStage, r: ExpRow): Scalar[] => [
    s.name,
    r.dref,
    r.rref,
    r.chosen,
    r.current,
    new Date(r.createdAt).toISOString(),
    r.buildMs,
    ...params.map((k) => (s.paramKeys.includes(k) ? (r.params[k] ?? null) : null)),
    ...metrics.map((k) => r.metrics[k] ?? null),
  ];
  const lines = [header.map(csvField).join(',')];
  for (const s of table.stages) for (const r of s.rows) lines.push(rowOf(s, r).map(csvField).join(','));
  return lines.join('\r\n') + '\r\n';
}
