/**
 * `cairn exp diff A B`: how two realizations or derivations differ, in
 * config (dotted keys: added, removed, changed) and in metrics (with
 * deltas). A DRef stands for its newest realization for metrics.
 */
import { CairnError } from '../../errors.js';
import type { Store } from '../../store/interface.js';
import { parseRef, type DRef, type RRef } from '../../store/refs.js';
import { flattenConfig, type Scalar } from './flatten.js';
import { declaredMetrics } from './inspection.js';
import { readMetrics } from './metrics.js';
import { formatNumber, printable } from './text.js';

export interface DiffSide {
  ref: string;
  dref: DRef;
  name: string;
  /** The realization whose metrics are compared (a DRef's newest); absent when it has none. */
  rref?: RRef;
}

export interface ConfigChange {
  key: string;
  a?: Scalar;
  b?: Scalar;
}

export interface MetricChange {
  key: string;
  a?: number;
  b?: number;
  /** b - a, when both have it. */
  delta?: number;
}

export interface ExpDiff {
  a: DiffSide;
  b: DiffSide;
  config: { added: ConfigChange[]; removed: ConfigChange[]; changed: ConfigChange[] };
  /** Every metric either side has, in order of first appearance. */
  metrics: MetricChange[];
}

interface Side extends DiffSide {
  params: Record<string, Scalar>;
  metrics: Record<string, number>;
}

async function readSide(store: Store, ref: string): Promise<Side> {
  const p = parseRef(ref);
  const text = await store.derivation(p.dref);
  if (text === undefined) throw new CairnError('E_NO_SUCH_REF', `${ref} is not in the store`, { ref });
  let drv: { code?: unknown; config?: unknown };
  try {
    drv = JSON.parse(text) as { code?: unknown; config?: unknown };
  } catch {
    throw new CairnError('E_STORE_IO', `the derivation ${p.dref} in the store is not readable JSON`, { ref });
  }
  let rref: RRef | undefined;
  if (p.kind === 'rz') {
    if (!(await store.info(p.rref))) throw new CairnError('E_NO_SUCH_REF', `${ref} is not in the store`, { ref });
    rref = p.rref;
  } else {
    const rs = await store.realizationsOf(p.dref);
    rref = rs[rs.length - 1]?.rref;
  }
  // A dependency shows as name@hash: two configs that use different datasets differ there.
  const params = flattenConfig(drv.config, (d) => `${d.slice(d.indexOf('-') + 1)}@${d.slice(0, 7)}`);
  // A cairn.yaml stage's declared metrics files count, as in exp show (a best() score file is not known here).
  const metrics = rref ? (await readMetrics(store, rref, undefined, declaredMetrics(drv).metricFiles)).values : {};
  return { ref, dref: p.dref, name: p.name, ...(rref ? { rref } : {}), params, metrics };
}

/** The difference of two flattened configs and two sets of metrics (pure). */
export function diffValues(
  pa: Record<string, Scalar>,
  pb: Record<string, Scalar>,
  ma: Record<string, number>,
  mb: Record<string, number>,
): Pick<ExpDiff, 'config' | 'metrics'> {
  const added: ConfigChange[] = [];
  const removed: ConfigChange[] = [];
  const changed: ConfigChange[] = [];
  for (const [key, a] of Object.entries(pa)) {
    if (!(key in pb)) removed.push({ key, a });
    else if (pb[key] !== a) changed.push({ key, a, b: pb[key] });
  }
  for (const [key, b] of Object.entries(pb)) if (!(key in pa)) added.push({ key, b });
  const metrics: MetricChange[] = [];
  for (const key of new Set([...Object.keys(ma), ...Object.keys(mb)])) {
    const a = ma[key];
    const b = mb[key];
    metrics.push({
      key,
      ...(a !== undefined ? { a } : {}),
      ...(b !== undefined ? { b } : {}),
      ...(a !== undefined && b !== undefined ? { delta: b - a } : {}),
    });
  }
  return { config: { added, removed, changed }, metrics };
}

export async function expDiff(store: Store, refA: string, refB: string): Promise<ExpDiff> {
  const [a, b] = await Promise.all([readSide(store, refA), readSide(store, refB)]);
  const side = ({ ref, dref, name, rref }: Side): DiffSide => ({ ref, dref, name, ...(rref ? { rref } : {}) });
  return { a: side(a), b: side(b), ...diffValues(a.params, b.params, a.metrics, b.metrics) };
}

const show = (v: Scalar | undefined): string =>
  v === undefined ? '-' : typeof v === 'number' ? formatNumber(v) : printable(JSON.stringify(v));

/** The diff as text: `a:`/`b:` lines, then config and metric lines in diff style (-, +, ~). */
export function formatExpDiff(d: ExpDiff): string {
  const lines = [
    `a: ${d.a.rref ?? d.a.dref}${d.a.rref && d.a.ref !== d.a.rref ? ` (newest of ${d.a.ref})` : ''}`,
    `b: ${d.b.rref ?? d.b.dref}${d.b.rref && d.b.ref !== d.b.rref ? ` (newest of ${d.b.ref})` : ''}`,
  ];
  const { added, removed, changed } = d.config;
  lines.push('', 'config:');
  if (added.length + removed.length + changed.length === 0) lines.push('  (the same)');
  for (const c of removed) lines.push(`- ${printable(c.key)} = ${show(c.a)}`);
  for (const c of added) lines.push(`+ ${printable(c.key)} = ${show(c.b)}`);
  for (const c of changed) lines.push(`~ ${printable(c.key)}: ${show(c.a)} -> ${show(c.b)}`);
  lines.push('', 'metrics:');
  if (d.metrics.length === 0) lines.push('  (none)');
  for (const m of d.metrics) {
    const delta = m.delta === undefined ? '' : ` (${m.delta >= 0 ? '+' : ''}${formatNumber(m.delta)})`;
    lines.push(`  ${printable(m.key)}: ${show(m.a)} -> ${show(m.b)}${delta}`);
  }
  return lines.join('\n') + '\n';
}
