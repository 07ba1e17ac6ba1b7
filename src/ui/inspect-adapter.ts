/**
 * TEMPORARY: the shapes of h20-look's inspect core (experimentTable,
 * closureGraph), with a minimal implementation, until that branch is merged.
 */
import type { LocalStore } from '../store/store.js';
import type { DRef, RRef } from '../store/refs.js';

export interface ExpRow {
  rref: RRef;
  params: Record<string, string | number | boolean | null>;
  metrics: Record<string, number>;
  chosen: boolean;
  createdAt: number;
  buildMs: number;
}
export interface ExpStage {
  dref: DRef;
  name: string;
  paramKeys: string[];
  metricKeys: string[];
  rows: ExpRow[];
}
export interface ExpTable {
  stages: ExpStage[];
}
export interface GraphNode {
  id: string;
  kind: 'drv' | 'rz';
  name: string;
  chosen?: boolean;
}
export interface Graph {
  nodes: GraphNode[];
  edges: { from: string; to: string }[];
}

async function closureDrefs(
  store: LocalStore,
  targets: readonly DRef[],
): Promise<Map<DRef, { name: string; deps: DRef[] }>> {
  const out = new Map<DRef, { name: string; deps: DRef[] }>();
  const stack = [...targets];
  while (stack.length > 0) {
    const d = stack.pop()!;
    if (out.has(d)) continue;
    const text = await store.derivation(d);
    const drv = text ? (JSON.parse(text) as { name: string; deps: DRef[] }) : { name: d, deps: [] };
    out.set(d, { name: drv.name, deps: drv.deps });
    stack.push(...drv.deps);
  }
  return out;
}

async function chosenSet(store: LocalStore, drefs: Map<DRef, unknown>, targets: readonly DRef[]): Promise<Set<RRef>> {
  const chosen = new Set<RRef>();
  for (const d of drefs.keys()) {
    const rs = await store.realizationsOf(d);
    if (targets.includes(d) && rs.length > 0) chosen.add(rs[rs.length - 1]!.rref);
    for (const r of rs) {
      const meta = await store.meta(r.rref);
      for (const list of Object.values(meta.context)) for (const x of list) chosen.add(x);
    }
  }
  return chosen;
}

export async function experimentTable(store: LocalStore, targets: readonly DRef[]): Promise<ExpTable> {
  const drefs = await closureDrefs(store, targets);
  const chosen = await chosenSet(store, drefs, targets);
  const stages: ExpStage[] = [];
  for (const [dref, d] of drefs) {
    const rows: ExpRow[] = [];
    const metricKeys = new Set<string>();
    for (const r of await store.realizationsOf(dref)) {
      const meta = await store.meta(r.rref);
      const metrics: Record<string, number> = {};
      try {
        const v = Number((await store.readFile(r.rref, 'score.txt')).toString('utf8'));
        if (Number.isFinite(v)) metrics['score.txt'] = v;
      } catch {
        /* none */
      }
      for (const k of Object.keys(metrics)) metricKeys.add(k);
      rows.push({
        rref: r.rref,
        params: {},
        metrics,
        chosen: chosen.has(r.rref),
        createdAt: r.created,
        buildMs: meta.buildMs,
      });
    }
    stages.push({ dref, name: d.name, paramKeys: [], metricKeys: [...metricKeys], rows });
  }
  return { stages };
}

export async function closureGraph(store: LocalStore, targets: readonly DRef[]): Promise<Graph> {
  const drefs = await closureDrefs(store, targets);
  const chosen = await chosenSet(store, drefs, targets);
  const g: Graph = { nodes: [], edges: [] };
  for (const [dref, d] of drefs) {
    g.nodes.push({ id: dref, kind: 'drv', name: d.name });
    for (const dep of d.deps) g.edges.push({ from: dref, to: dep });
    for (const r of await store.realizationsOf(dref)) {
      if (!chosen.has(r.rref)) continue;
      g.nodes.push({ id: r.rref, kind: 'rz', name: d.name, chosen: true });
      g.edges.push({ from: r.rref, to: dref });
    }
  }
  return g;
}
