import { CairnError } from '../errors.js';
import { canonicalJson, type Json } from '../store/canonical.js';
import { shortHash } from '../store/hash.js';
import type { DRef } from '../store/refs.js';
import { isStage, type Stage } from './stage.js';
import { codeHash } from './function-source.js';

/** One node of the instantiated graph: a stage with its identity fixed. */
export interface Derivation {
  readonly dref: DRef;
  readonly name: string;
  readonly stage: Stage;
  /** Canonical JSON whose hash is the DRef; written to the store as drv.json. */
  readonly drvJson: string;
  /** DRefs this derivation's config references, sorted, each once. */
  readonly deps: readonly DRef[];
}

export interface Graph {
  readonly targets: readonly DRef[];
  readonly nodes: ReadonlyMap<DRef, Derivation>;
  /** Every DRef, dependencies before dependants. */
  readonly order: readonly DRef[];
  /** The DRef of every stage object in the graph (several objects may share one). */
  readonly drefOf: ReadonlyMap<Stage, DRef>;
}

/** Bumped if the derivation format changes, so old DRefs are never reused for new meanings. */
const DRV_FORMAT = 'cairn-drv-1';

const codeHashes = new WeakMap<Function, string>();

/**
 * The build function's identity: the hash of its normalized original source
 * (code-identity.ts), so that every way of loading the same file (the CLI's
 * sucrase, tsx's esbuild, Node's type stripping, tsc output) and every
 * comment, reformatting or CRLF copy gives the same DRef. Functions it calls
 * are not covered (they are not visible from here); for those, bump the
 * stage's `version` or fold their source into the config.
 */
function codeIdentity(s: Stage): Json {
  if (s.version !== undefined) return { version: s.version };
  let h = codeHashes.get(s.build);
  if (h === undefined) {
    h = codeHash(s.build);
    codeHashes.set(s.build, h);
  }
  return { source: h };
}

/** The stages a config references directly (not through other stages). */
function referencedStages(config: unknown): Stage[] {
  const found: Stage[] = [];
  const seen = new Set<object>();
  const stack: unknown[] = [config];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v !== 'object' || v === null || seen.has(v)) continue;
    seen.add(v);
    if (isStage(v)) { found.push(v); continue; }
    if (Array.isArray(v)) stack.push(...v);
    else if (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null) stack.push(...Object.values(v));
  }
  return found;
}

/**
 * Instantiates stages into a pure in-memory graph: no I/O, no builds. The
 * traversal is iterative so a 10,000-stage chain cannot overflow the stack,
 * and each stage is visited once, so the cost is O(stages + edges + config size).
 */
export function instantiate(targets: Stage | readonly Stage[]): Graph {
  const list = isStage(targets) ? [targets] : [...targets];
  for (const t of list) {
    if (!isStage(t)) throw new CairnError('E_NOT_A_STAGE', `instantiate() was given ${typeof t}, not a stage`);
  }
  const drefOf = new Map<Stage, DRef>();
  const visiting = new Set<Stage>();
  const nodes = new Map<DRef, Derivation>();
  const order: DRef[] = [];

  for (const root of list) {
    if (drefOf.has(root)) continue;
    const stack: { stage: Stage; deps: Stage[]; next: number }[] = [];
    const enter = (s: Stage): void => {
      visiting.add(s);
      stack.push({ stage: s, deps: referencedStages(s.config), next: 0 });
    };
    enter(root);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (top.next < top.deps.length) {
        const dep = top.deps[top.next++]!;
        if (drefOf.has(dep)) continue;
        if (visiting.has(dep)) {
          const from = stack.findIndex((f) => f.stage === dep);
          const cycle = [...stack.slice(from).map((f) => f.stage.name), dep.name];
          throw new CairnError('E_CYCLE', `stage graph has a cycle: ${cycle.join(' -> ')}`, { cycle });
        }
        enter(dep);
        continue;
      }
      stack.pop();
      visiting.delete(top.stage);
      const s = top.stage;
      const deps = new Set<DRef>();
      const config = canonicalJson(s.config, (v) => {
        if (!isStage(v)) return undefined;
        const d = drefOf.get(v)!;
        deps.add(d);
        return { $ref: d };
      }, `stage ${s.name}: config`);
      const sortedDeps = [...deps].sort();
      const drvJson = `{"code":${canonicalJson(codeIdentity(s))},"config":${config},"deps":${canonicalJson(sortedDeps)},"format":"${DRV_FORMAT}","name":${JSON.stringify(s.name)},"outputs":${canonicalJson(s.outputs)}}`;
      const dref = `${shortHash(drvJson)}-${s.name}`;
      drefOf.set(s, dref);
      if (!nodes.has(dref)) {
        nodes.set(dref, { dref, name: s.name, stage: s, drvJson, deps: sortedDeps });
        order.push(dref);
      }
    }
  }
  return { targets: list.map((t) => drefOf.get(t)!), nodes, order, drefOf };
}
