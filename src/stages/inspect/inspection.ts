/**
 * What inspection starts from: the closure of some targets, each derivation
 * with its config and the realizations chosen for it now, found without
 * building or writing anything.
 *
 * - From a stage file's graph (instantiate), each matcher chooses among the
 *   realizations built from the inputs chosen below it, as a realize would.
 * - From DRefs and RRefs (no matchers at hand), an RRef is chosen as given,
 *   a DRef stands for its newest realization (as elsewhere in the CLI), and
 *   what those were built from (their context) is what is chosen below them.
 */
import { CairnError } from '../../errors.js';
import { candidateKey, type Store } from '../../store/interface.js';
import { asDRef, parseRef, type DRef, type RRef } from '../../store/refs.js';
import { contextHash } from '../../store/store.js';
import type { Graph as StageGraph } from '../instantiate.js';
import { runMatcher, type ScoreSource } from '../matchers.js';
import { PIPELINE_VERSION } from '../pipeline/load-yaml.js';

export interface InspectNode {
  dref: DRef;
  name: string;
  /** Dependencies (config references and file-input imports), sorted. */
  deps: readonly DRef[];
  /** The config as drv.json holds it: a dependency is `{"$ref": DRef}`. */
  config: unknown;
  /** A derivation that imports a file input into the store (not an experiment). */
  imports: boolean;
  target: boolean;
  /** The realizations chosen now, best first; empty when none is (see `problem`). */
  chosen: RRef[];
  /** Who chose: the matcher's name, `given` (an RRef named), `newest` (a DRef named) or `in use` (by a dependant). */
  chosenBy: string;
  /**
   * The contexts (hashes of chosen inputs) that make a realization current:
   * built from what is chosen below it now. Empty when none is known.
   */
  ctxs: readonly string[];
  /** Where the matcher reads its score, for a `best({ file })` stage. */
  score?: ScoreSource;
  /** The metrics files a cairn.yaml stage declares (relative to its output). */
  metricFiles?: readonly string[];
  /** Why nothing is chosen: a matcher that failed, inputs not realized, no realization. */
  problem?: string;
}

export interface Inspection {
  targets: DRef[];
  nodes: Map<DRef, InspectNode>;
  /** Dependencies before dependants. */
  order: DRef[];
}

/** A stage file's instantiated graph, or DRefs and RRefs in the store. */
export type InspectTargets = StageGraph | readonly string[];

/**
 * The `metrics` a cairn.yaml stage declares, read from its drv.json: such a
 * stage's code identity is the pipeline version, and its config lists them.
 */
export function declaredMetrics(drv: { code?: unknown; config?: unknown }): { metricFiles?: string[] } {
  const code = drv.code as { version?: unknown } | undefined;
  const metrics = (drv.config as { metrics?: unknown } | undefined)?.metrics;
  if (code?.version !== PIPELINE_VERSION || !Array.isArray(metrics)) return {};
  return { metricFiles: metrics.filter((m): m is string => typeof m === 'string') };
}

const isStageGraph = (t: InspectTargets): t is StageGraph => !Array.isArray(t);

/** An Inspection already read (not a stage graph, not refs): callers that have one skip reading it again. */
export const isInspection = (t: InspectTargets | Inspection): t is Inspection => !Array.isArray(t) && !('drefOf' in t);

export async function inspect(store: Store, targets: InspectTargets): Promise<Inspection> {
  return isStageGraph(targets) ? fromGraph(store, targets) : fromRefs(store, targets);
}

async function fromGraph(store: Store, graph: StageGraph): Promise<Inspection> {
  const all = await store.candidatesOfAll(graph.order);
  const nodes = new Map<DRef, InspectNode>();
  const targets = new Set(graph.targets);
  for (const dref of graph.order) {
    const d = graph.nodes.get(dref)!;
    const m = d.stage.matcher;
    const drv = JSON.parse(d.drvJson) as { code?: unknown; config: unknown };
    const node: InspectNode = {
      dref,
      name: d.name,
      deps: d.deps,
      config: drv.config,
      ...declaredMetrics(drv),
      imports: d.imports !== undefined,
      target: targets.has(dref),
      chosen: [],
      chosenBy: m.name,
      ctxs: [],
      ...(m.score ? { score: m.score } : {}),
    };
    nodes.set(dref, node);
    const missing = d.deps.filter((dep) => nodes.get(dep)!.chosen.length === 0);
    if (missing.length > 0) {
      node.problem = `not realized: ${missing.map((x) => nodes.get(x)!.name).join(', ')}`;
      continue;
    }
    const context: Record<DRef, RRef[]> = {};
    for (const dep of d.deps) context[dep] = [...nodes.get(dep)!.chosen].sort();
    const ctx = contextHash(context);
    node.ctxs = [ctx];
    try {
      node.chosen = (await runMatcher(m, all.get(candidateKey(dref, ctx)) ?? [])) ?? [];
      if (node.chosen.length === 0) node.problem = 'not realized';
    } catch (e) {
      // A hostile score file makes best() throw: the table still shows the stage.
      node.problem = `${m.name} failed: ${(e as Error).message}`;
    }
  }
  return { targets: [...graph.targets], nodes, order: [...graph.order] };
}

interface DrvJson {
  name: string;
  code?: unknown;
  config: unknown;
  deps: DRef[];
}

function parseDrv(dref: DRef, text: string): DrvJson {
  try {
    const j = JSON.parse(text) as Partial<DrvJson>;
    if (typeof j.name === 'string' && Array.isArray(j.deps) && j.deps.every((x) => typeof x === 'string')) {
      return { name: j.name, code: j.code, config: j.config, deps: j.deps.map((x) => asDRef(x)) };
    }
  } catch {
    // fall through
  }
  throw new CairnError('E_STORE_IO', `the derivation ${dref} in the store is not readable JSON`, { dref });
}

async function fromRefs(store: Store, refs: readonly string[]): Promise<Inspection> {
  const given = new Map<DRef, RRef[]>();
  const targets: DRef[] = [];
  for (const ref of refs) {
    const p = parseRef(ref);
    if (p.kind === 'rz' && !(await store.info(p.rref))) {
      throw new CairnError('E_NO_SUCH_REF', `${ref} is not in the store`, { ref });
    }
    if (!targets.includes(p.dref)) targets.push(p.dref);
    if (p.kind === 'rz') given.set(p.dref, [...(given.get(p.dref) ?? []), p.rref]);
  }
  // Every derivation of the closure, read from its drv.json; then dependencies first.
  const drvs = new Map<DRef, DrvJson>();
  const queue = [...targets];
  while (queue.length > 0) {
    const dref = queue.pop()!;
    if (drvs.has(dref)) continue;
    const text = await store.derivation(dref);
    if (text === undefined) throw new CairnError('E_NO_SUCH_REF', `${dref} is not in the store`, { ref: dref });
    const d = parseDrv(dref, text);
    drvs.set(dref, d);
    for (const dep of d.deps) if (!drvs.has(dep)) queue.push(dep);
  }
  const order = topoOrder(targets, (d) => drvs.get(d)!.deps);
  const nodes = new Map<DRef, InspectNode>();
  for (const dref of order) {
    const d = drvs.get(dref)!;
    nodes.set(dref, {
      dref,
      name: d.name,
      deps: d.deps,
      config: d.config,
      ...declaredMetrics(d),
      imports: false,
      target: targets.includes(dref),
      chosen: [],
      chosenBy: 'in use',
      ctxs: [],
    });
  }
  for (const dref of targets) {
    const node = nodes.get(dref)!;
    const named = given.get(dref);
    if (named) {
      node.chosen = named;
      node.chosenBy = 'given';
      continue;
    }
    const rs = await store.realizationsOf(dref);
    node.chosenBy = 'newest';
    if (rs.length > 0) node.chosen = [rs[rs.length - 1]!.rref];
  }
  // Dependants first: what a chosen realization was built from is chosen below it.
  const chosenSets = new Map<DRef, Set<RRef>>();
  const chosenOf = (n: InspectNode): Set<RRef> => {
    let set = chosenSets.get(n.dref);
    if (!set) chosenSets.set(n.dref, (set = new Set(n.chosen)));
    return set;
  };
  for (const dref of [...order].reverse()) {
    const node = nodes.get(dref)!;
    const ctxs = new Set<string>();
    for (const rref of node.chosen) {
      const meta = await store.meta(rref);
      ctxs.add(meta.ctx);
      for (const [dep, used] of Object.entries(meta.context) as [DRef, RRef[]][]) {
        const below = nodes.get(dep);
        if (!below) continue;
        const have = chosenOf(below);
        for (const r of used) {
          if (!have.has(r)) {
            have.add(r);
            below.chosen.push(r);
          }
        }
      }
    }
    node.ctxs = [...ctxs];
    if (node.chosen.length === 0) node.problem = 'not realized';
  }
  return { targets, nodes, order };
}

/** Dependencies before dependants, iteratively (a 10,000-stage chain must not overflow the stack). */
function topoOrder(roots: readonly DRef[], depsOf: (d: DRef) => readonly DRef[]): DRef[] {
  const order: DRef[] = [];
  const done = new Set<DRef>();
  for (const root of roots) {
    if (done.has(root)) continue;
    const stack: { d: DRef; next: number }[] = [{ d: root, next: 0 }];
    const onStack = new Set<DRef>([root]);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const deps = depsOf(top.d);
      if (top.next < deps.length) {
        const dep = deps[top.next++]!;
        // A store's derivations cannot form a cycle (a DRef hashes its deps); a damaged one is not followed round.
        if (!done.has(dep) && !onStack.has(dep)) {
          onStack.add(dep);
          stack.push({ d: dep, next: 0 });
        }
        continue;
      }
      stack.pop();
      onStack.delete(top.d);
      done.add(top.d);
      order.push(top.d);
    }
  }
  return order;
}
