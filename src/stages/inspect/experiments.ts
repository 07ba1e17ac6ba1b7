/**
 * `cairn exp show`: one row per realization of each stage, with the config
 * parameters that tell the rows apart, their metrics, which ones are
 * chosen, their age and build time. The web view (`cairn ui`) shows the
 * same table, so this is its data source too.
 */
import type { Store } from '../../store/interface.js';
import type { DRef, RRef } from '../../store/refs.js';
import { differingKeys, flattenConfig, type Scalar } from './flatten.js';
import { inspect, isInspection, type InspectNode, type Inspection, type InspectTargets } from './inspection.js';
import { readMetrics, scoreMetric } from './metrics.js';

export interface ExpRow {
  rref: RRef;
  /** Its derivation (stages with several configs have rows of several DRefs). */
  dref: DRef;
  /** The whole config of its derivation, flattened (`paramKeys` says which tell rows apart). */
  params: Record<string, Scalar>;
  metrics: Record<string, number>;
  /** Chosen now (by the matcher, or as named; see Inspection). */
  chosen: boolean;
  /** Built from the inputs chosen now (a matcher's candidate); false ones are shown with `all` only. */
  current: boolean;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** How long the build that made it took (every output of one build shares it). */
  buildMs: number;
  /** Metric files that were there but not used, with why (too large, not a number). */
  skipped: string[];
}

export interface ExpStage {
  /** The first of `drefs`: the target's own derivation when the stage is a target. */
  dref: DRef;
  drefs: DRef[];
  name: string;
  /** Params whose values differ between rows, in config order. */
  paramKeys: string[];
  /** Every metric some row has; the matcher's score first. */
  metricKeys: string[];
  /** The metric the matcher scores by, when it reads one from a file. */
  scoreKey?: string;
  /** The matcher's name (or `given`, `newest`, `in use`: see Inspection). */
  chosenBy: string;
  target: boolean;
  rows: ExpRow[];
  /** Realizations left out: built from inputs that are not chosen now (shown with `all`). */
  hidden: number;
  /** Why nothing is chosen, when nothing is. */
  problem?: string;
}

export interface ExpTable {
  stages: ExpStage[];
}

export interface ExpOptions {
  /** Also realizations built from other inputs than those chosen now. */
  all?: boolean;
  /** Only the targets' stages, not their closure. */
  targetsOnly?: boolean;
  /** Order each stage's rows by this metric or param (default: oldest first); missing values go last. */
  sortBy?: string;
  /** With `sortBy`: largest first. */
  descending?: boolean;
}

/** A cell's value for sorting: the metric when the row has it, else the param. */
const sortValue = (r: ExpRow, key: string): Scalar | undefined => (key in r.metrics ? r.metrics[key] : r.params[key]);

/**
 * Rows ordered by `key` (numbers by value, before other values, which go
 * by their text); rows without it last, whatever the direction; equal ones
 * keep their order (oldest first). Pure.
 */
export function sortRows(rows: readonly ExpRow[], key: string, descending = false): ExpRow[] {
  const rank = (v: Scalar | undefined): number => (v === undefined ? 2 : typeof v === 'number' ? 0 : 1);
  return rows
    .map((r, i) => ({ r, i, v: sortValue(r, key) }))
    .sort((a, b) => {
      const ra = rank(a.v);
      const rb = rank(b.v);
      if (ra !== rb || ra === 2) return ra - rb || a.i - b.i;
      const c = ra === 0 ? (a.v as number) - (b.v as number) : String(a.v).localeCompare(String(b.v));
      return (descending ? -c : c) || a.i - b.i;
    })
    .map((x) => x.r);
}

/** `name@hash7`: how a dependency appears among params. */
export function refLabel(nodes: ReadonlyMap<DRef, InspectNode>, dref: string): string {
  const node = nodes.get(dref as DRef);
  const name = node?.name ?? dref.slice(dref.indexOf('-') + 1);
  return `${name}@${dref.slice(0, 7)}`;
}

/** Runs `fn` over `items` with at most `limit` at once, keeping the order of results. */
async function mapLimit<T, U>(items: readonly T[], limit: number, fn: (x: T) => Promise<U>): Promise<U[]> {
  const results = new Array<U>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export async function experimentTable(
  store: Store,
  targets: InspectTargets | Inspection,
  opts: ExpOptions = {},
): Promise<ExpTable> {
  const insp = isInspection(targets) ? targets : await inspect(store, targets);
  // Stages by name, in dependency order; a target's stage lists the target's DRef first.
  const groups = new Map<string, InspectNode[]>();
  for (const dref of insp.order) {
    const node = insp.nodes.get(dref)!;
    if (node.imports || (opts.targetsOnly && !node.target)) continue;
    const g = groups.get(node.name);
    if (!g) groups.set(node.name, [node]);
    else if (node.target && !g[0]!.target) g.unshift(node);
    else g.push(node);
  }
  const stages: ExpStage[] = [];
  for (const [name, nodes] of groups) {
    const rows: ExpRow[] = [];
    let hidden = 0;
    for (const node of nodes) {
      const params = flattenConfig(node.config, (d) => refLabel(insp.nodes, d));
      const infos = await store.realizationsOf(node.dref);
      const chosen = new Set(node.chosen);
      const ctxs = new Set(node.ctxs);
      const shown = infos.filter((i) => opts.all || ctxs.has(i.ctx) || chosen.has(i.rref));
      hidden += infos.length - shown.length;
      const made = await mapLimit(shown, 8, async (info): Promise<ExpRow> => {
        const [meta, metrics] = await Promise.all([
          store.meta(info.rref),
          readMetrics(store, info.rref, node.score, node.metricFiles),
        ]);
        return {
          rref: info.rref,
          dref: node.dref,
          params,
          metrics: metrics.values,
          chosen: chosen.has(info.rref),
          current: ctxs.has(info.ctx) || chosen.has(info.rref),
          createdAt: info.created,
          buildMs: meta.buildMs,
          skipped: metrics.skipped,
        };
      });
      // A loop, not push(...made): spreading 100,000 rows as arguments overflows the stack.
      for (const r of made) rows.push(r);
    }
    const first = nodes[0]!;
    const scoreKey = first.score ? scoreMetric(first.score) : undefined;
    const metricKeys: string[] = [];
    const seen = new Set<string>();
    if (scoreKey !== undefined && rows.some((r) => scoreKey in r.metrics)) {
      metricKeys.push(scoreKey);
      seen.add(scoreKey);
    }
    for (const r of rows) {
      for (const k of Object.keys(r.metrics)) {
        if (!seen.has(k)) {
          seen.add(k);
          metricKeys.push(k);
        }
      }
    }
    const problem = nodes.map((n) => n.problem).find((p) => p !== undefined);
    stages.push({
      dref: first.dref,
      drefs: nodes.map((n) => n.dref),
      name,
      // Rows of one derivation share one params object: compare each config once.
      paramKeys: differingKeys([...new Set(rows.map((r) => r.params))]),
      metricKeys,
      ...(scoreKey !== undefined ? { scoreKey } : {}),
      chosenBy: first.chosenBy,
      target: nodes.some((n) => n.target),
      rows: opts.sortBy === undefined ? rows : sortRows(rows, opts.sortBy, opts.descending),
      hidden,
      ...(problem !== undefined && nodes.every((n) => n.chosen.length === 0) ? { problem } : {}),
    });
  }
  return { stages };
}
