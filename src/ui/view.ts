/**
 * The JSON the web view's page draws: the DAG with its dot layout, the
 * experiment table of every stage with its disk use, and, on demand, one
 * realization's details (files, build log, config). Everything is data:
 * the page renders it as text, never as markup.
 */
import { closureGraph, experimentTable, type ExpStage, type Graph } from './inspect-adapter.js';
import { layoutGraph, type LayoutResult } from './graph-layout.js';
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

let lastLayout: { key: string; result: LayoutResult } | undefined;

/** Runs dot only when the graph changed: a refresh for new realizations of the same stages reuses the layout. */
function layoutOnce(g: Graph): LayoutResult {
  const key = JSON.stringify([g.nodes.map((n) => [n.id, n.kind, n.name]), g.edges]);
  if (lastLayout?.key !== key) lastLayout = { key, result: layoutGraph(g) };
  return lastLayout.result;
}

export async function buildView(store: LocalStore, targets: UiTargets, token: string): Promise<UiView> {
  const drefs = targets.drefs();
  const [graph, table] = await Promise.all([closureGraph(store, drefs), experimentTable(store, drefs)]);
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
    graph: { ...graph, ...layoutOnce(graph) },
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
