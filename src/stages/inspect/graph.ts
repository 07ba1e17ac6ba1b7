/**
 * `cairn graph`: the closure of some targets as a graph of derivations and
 * the realizations in use, and `--why`: only the paths from the targets to
 * one of its nodes (as `nix why-depends`). Pure once the Inspection is read;
 * the formats are in graph-format.ts.
 */
import { CairnError } from '../../errors.js';
import type { Store } from '../../store/interface.js';
import { parseRef, type RRef } from '../../store/refs.js';
import { inspect, isInspection, type Inspection, type InspectTargets } from './inspection.js';

export interface GraphNode {
  /** The DRef or RRef. */
  id: string;
  kind: 'drv' | 'rz';
  /** The stage name. */
  name: string;
  /** A realization chosen now (every `rz` node is, unless `all` added it). */
  chosen?: boolean;
  /** For a derivation: who chose its realizations (matcher name, `given`, `newest`, `in use`). */
  chosenBy?: string;
  /** A derivation named as a target. */
  target?: boolean;
  /** A derivation that imports a file input. */
  imports?: boolean;
  /** Why a derivation has no chosen realization. */
  problem?: string;
}

/** `dep`: a derivation uses another; `rz`: a derivation's realization. */
export interface GraphEdge {
  from: string;
  to: string;
  kind: 'dep' | 'rz';
}

export interface Graph {
  nodes: GraphNode[];
  edges: GraphEdge[];
  /** The target derivations' ids. */
  roots: string[];
}

export interface GraphOptions {
  /** Also the realizations that are not chosen (of the current inputs only). */
  all?: boolean;
}

export async function closureGraph(
  store: Store,
  targets: InspectTargets | Inspection,
  opts: GraphOptions = {},
): Promise<Graph> {
  const insp = isInspection(targets) ? targets : await inspect(store, targets);
  const nodes: GraphNode[] = [];
  const edges: GraphEdge[] = [];
  // Dependants first, so a drawing or a list starts at the targets.
  for (const dref of [...insp.order].reverse()) {
    const n = insp.nodes.get(dref)!;
    nodes.push({
      id: dref,
      kind: 'drv',
      name: n.name,
      chosenBy: n.chosenBy,
      ...(n.target ? { target: true } : {}),
      ...(n.imports ? { imports: true } : {}),
      ...(n.problem !== undefined ? { problem: n.problem } : {}),
    });
    for (const dep of n.deps) edges.push({ from: dref, to: dep, kind: 'dep' });
    const rz: RRef[] = [...n.chosen];
    const chosen = new Set(n.chosen);
    if (opts.all && n.ctxs.length > 0) {
      const ctxs = new Set(n.ctxs);
      for (const info of await store.realizationsOf(dref)) {
        if (ctxs.has(info.ctx) && !chosen.has(info.rref)) rz.push(info.rref);
      }
    }
    for (const r of rz) {
      nodes.push({ id: r, kind: 'rz', name: n.name, chosen: chosen.has(r) });
      edges.push({ from: dref, to: r, kind: 'rz' });
    }
  }
  return { nodes, edges, roots: [...insp.targets] };
}

/**
 * The part of `g` on some path from a root to `to` (a DRef or RRef of the
 * graph): what `nix why-depends` shows. E_NOT_IN_CLOSURE when the targets do
 * not depend on it (a realization that is not in use is not in the graph).
 */
export function whyGraph(g: Graph, to: string): Graph {
  parseRef(to);
  if (!g.nodes.some((n) => n.id === to)) {
    throw new CairnError('E_NOT_IN_CLOSURE', `${to} is not in the closure of ${g.roots.join(', ')} (not used by it)`, {
      ref: to,
    });
  }
  const out = new Map<string, string[]>();
  const into = new Map<string, string[]>();
  const add = (m: Map<string, string[]>, k: string, v: string): void => {
    const list = m.get(k);
    if (list) list.push(v);
    else m.set(k, [v]);
  };
  for (const e of g.edges) {
    add(out, e.from, e.to);
    add(into, e.to, e.from);
  }
  const reach = (start: readonly string[], next: Map<string, string[]>): Set<string> => {
    const seen = new Set<string>(start);
    const stack = [...start];
    while (stack.length > 0)
      for (const m of next.get(stack.pop()!) ?? []) if (!seen.has(m) && seen.add(m)) stack.push(m);
    return seen;
  };
  const fromRoots = reach(g.roots, out);
  const toTarget = reach([to], into);
  const keep = (id: string): boolean => fromRoots.has(id) && toTarget.has(id);
  return {
    nodes: g.nodes.filter((n) => keep(n.id)),
    edges: g.edges.filter((e) => keep(e.from) && keep(e.to)),
    roots: g.roots.filter(keep),
  };
}
