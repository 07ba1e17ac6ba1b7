/**
 * The JSON the web view's page draws: the DAG with its dot layout, the
 * experiment table of every stage with its disk use, and, on demand, one
 * realization's details (files, build log, config). Everything is data:
 * the page renders it as text, never as markup.
 */
import { experimentTable, type ExpStage } from '../stages/inspect/experiments.js';
import { closureGraph, type Graph } from '../stages/inspect/graph.js';
import { inspect } from '../stages/inspect/inspection.js';
import { layoutGraph, type LayoutInput, type LayoutResult } from './graph-layout.js';
import type { UiTargets } from './targets.js';
import { refUsage, storeUsage, type Usage } from '../store/du.js';
import { displayPath } from '../store/fsutil.js';
import { outputTree } from '../store/realization-files.js';
import { parseRef, type RRef } from '../store/refs.js';
import type { LocalStore } from '../store/store.js';
import { CairnError } from '../errors.js';

export interface UiView {
  store: string;
  label: string;
  token: string;
  graph: Graph & LayoutResult;
  stages: (ExpStage & { usage: { own: Usage; closure: Usage } })[];
  disk: { total: Usage; byDrv: (Usage & { dref: string })[] };
}

/** Logs are shown from their end: the tail is what explains a result. */
export const LOG_TAIL_BYTES = 512 * 1024;
/** Files listed per realization at most. */
export const MAX_FILES = 2000;

/** Past this many realization nodes the DAG shows only the chosen ones: a drawing of thousands helps nobody. */
export const MAX_DRAWN_REALIZATIONS = 120;

/**
 * The graph as drawn: data flows left to right (a dependency's arrow points
 * at its dependant), and each derivation heads a column of its realizations,
 * the chosen ones first.
 */
export function drawing(g: Graph): LayoutInput {
  const chosenFirst = new Map<string, { chosen: string[]; other: string[] }>();
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  for (const e of g.edges) {
    if (e.kind !== 'rz') continue;
    const c = chosenFirst.get(e.from) ?? { chosen: [], other: [] };
    (byId.get(e.to)?.chosen ? c.chosen : c.other).push(e.to);
    chosenFirst.set(e.from, c);
  }
  return {
    nodes: g.nodes,
    edges: g.edges.filter((e) => e.kind === 'dep').map((e) => ({ from: e.to, to: e.from })),
    columns: g.nodes
      .filter((n) => n.kind === 'drv')
      .map((n) => [n.id, ...(chosenFirst.get(n.id)?.chosen ?? []), ...(chosenFirst.get(n.id)?.other ?? [])]),
  };
}

let lastLayout: { key: string; result: LayoutResult } | undefined;

/** Runs dot only when the graph changed: a refresh for an unchanged DAG reuses the layout. */
function layoutOnce(g: LayoutInput): LayoutResult {
  const key = JSON.stringify([g.nodes.map((n) => [n.id, n.kind, n.name]), g.edges, g.columns]);
  if (lastLayout?.key !== key) lastLayout = { key, result: layoutGraph(g) };
  return lastLayout.result;
}

export async function buildView(store: LocalStore, targets: UiTargets, token: string): Promise<UiView> {
  // One inspection (matchers run once) for both the DAG and the tables.
  const insp = await inspect(store, await targets.targets());
  let graph = await closureGraph(store, insp, { all: true });
  if (graph.nodes.filter((n) => n.kind === 'rz').length > MAX_DRAWN_REALIZATIONS) {
    graph = await closureGraph(store, insp);
  }
  const table = await experimentTable(store, insp);
  const usage = storeUsage(store);
  const stages = table.stages.map((s) => {
    let u: { own: Usage; closure: Usage };
    try {
      u = refUsage(store, s.dref);
    } catch {
      u = { own: { bytes: 0, count: 0 }, closure: { bytes: 0, count: 0 } };
    }
    return { ...s, usage: u };
  });
  return {
    store: store.root,
    label: targets.label,
    token,
    graph: { ...graph, ...layoutOnce(drawing(graph)) },
    stages,
    disk: { total: usage.total, byDrv: usage.byDrv },
  };
}

export interface UiRealization {
  rref: RRef;
  dref: string;
  name: string;
  created: number;
  buildMs: number;
  bytes: number;
  files: { path: string; type: string; size: number; target: string | null }[];
  filesTruncated: boolean;
  log: string;
  logBytes: number;
  logTruncated: boolean;
  /** The derivation's config, pretty-printed. */
  config: string;
}

/** One realization's details; E_BAD_REF / E_NO_SUCH_REF for a ref that is not one the store holds. */
export async function realizationView(store: LocalStore, ref: string): Promise<UiRealization> {
  const p = parseRef(ref);
  if (p.kind !== 'rz') throw new CairnError('E_BAD_REF', `${ref} is a DRef; a realization is needed`, { ref });
  const meta = await store.meta(p.rref);
  const log = await store.readLog(p.rref);
  const tree = outputTree(store, p.rref);
  const drv = await store.derivation(meta.dref);
  let config = '';
  if (drv !== undefined) {
    const parsed = JSON.parse(drv) as { config?: unknown };
    config = JSON.stringify(parsed.config ?? parsed, null, 2);
  }
  const tail = log.length > LOG_TAIL_BYTES ? log.subarray(log.length - LOG_TAIL_BYTES) : log;
  return {
    rref: p.rref,
    dref: meta.dref,
    name: meta.name,
    created: meta.created,
    buildMs: meta.buildMs,
    bytes: meta.bytes,
    files: tree.slice(0, MAX_FILES).map((e) => ({
      path: displayPath(e.path),
      type: e.type,
      size: e.size,
      target: e.target === null ? null : displayPath(e.target),
    })),
    filesTruncated: tree.length > MAX_FILES,
    // Not UTF-8 everywhere: undecodable bytes become U+FFFD, which the page shows as they are.
    log: tail.toString('utf8'),
    logBytes: log.length,
    logTruncated: tail.length < log.length,
    config,
  };
}
