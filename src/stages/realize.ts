import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError, isCairnError } from '../errors.js';
import { removeTree } from '../store/fsutil.js';
import { withLock } from '../store/locks.js';
import { addOutLink } from '../store/roots.js';
import type { DRef, RRef } from '../store/refs.js';
import type { RzRow } from '../store/index-db.js';
import { contextHash, creationTime, type Context, type Published, type RealizationMeta, type Store } from '../store/store.js';
import { walkTree, type TreeSummary } from '../store/tree.js';
import { makeBuildContext, makeDep, makeLog, resolveConfig } from './build-context.js';
import { instantiate, type Derivation, type Graph } from './instantiate.js';
import { runMatcher, type Candidate } from './matchers.js';
import { isStage, type Stage } from './stage.js';

export interface RealizeEvents {
  cached?(node: Derivation, rrefs: readonly RRef[]): void;
  start?(node: Derivation, why: 'missing' | 'forced'): void;
  wait?(node: Derivation, holder: string): void;
  built?(node: Derivation, rrefs: readonly RRef[], ms: number): void;
  log?(node: Derivation, line: string): void;
  failed?(node: Derivation, error: CairnError): void;
}

export interface RealizeOptions {
  store: Store;
  /** Builds running at once in this process (default: number of cores). */
  jobs?: number;
  /** Rebuild every stage (`true`) or the stages with these names or DRefs, even if the matcher is satisfied. */
  force?: boolean | readonly string[];
  /** Decide what would be built, build nothing, write nothing. */
  dryRun?: boolean;
  /** On failure, move the build directory to ROOT/failed/ instead of deleting it. */
  keepFailed?: boolean;
  /**
   * Make this path a symlink to the target's output, and an indirect gc
   * root (more targets: PATH-2, PATH-3, ...). Made before the run's
   * temporary roots are dropped, so gc can never collect the target between.
   */
  outLink?: string;
  events?: RealizeEvents;
}

export type PlanAction = 'cached' | 'build' | 'force';

export interface PlanEntry {
  dref: DRef;
  name: string;
  action: PlanAction;
  /** Chosen realizations (known for cached entries, and for all entries after a real run). */
  rrefs: RRef[];
}

export interface RealizeResult {
  targets: { dref: DRef; name: string; rrefs: RRef[] }[];
  /** Every derivation of the graph, dependencies first, with what happened to it. */
  plan: PlanEntry[];
  /** How many build function runs happened. */
  builds: number;
}

let realizeCalls = 0;

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

/**
 * Realizes the targets: for each derivation in dependency order, the
 * matcher chooses among the realizations that were built from exactly the
 * chosen inputs (its context); when it chooses none, the stage is built
 * under a store-wide lock, so concurrent processes build it once and the
 * others reuse the result. A fully cached run costs one indexed query and
 * one matcher call per derivation: O(stages + edges).
 */
export async function realize(targets: Stage | readonly Stage[] | Graph, opts: RealizeOptions): Promise<RealizeResult> {
  const tempRootOwner = `${opts.store.owner}#${++realizeCalls}`;
  const graph: Graph = isStage(targets) || Array.isArray(targets) ? instantiate(targets as Stage | Stage[]) : (targets as Graph);
  const { store } = opts;
  const events = opts.events ?? {};
  const limit = new Semaphore(Math.max(1, opts.jobs ?? os.availableParallelism()));
  const forced = (node: Derivation): boolean =>
    opts.force === true || (Array.isArray(opts.force) && (opts.force.includes(node.name) || opts.force.includes(node.dref)));

  if (!opts.dryRun) {
    store.sweepTemp();
    // Declared before the first index query, so gc keeps every realization
    // this run may choose or build on (see store/gc.ts).
    store.index.addTempRoots(tempRootOwner, graph.order);
  }

  const chosen = new Map<DRef, RRef[]>();
  const actions = new Map<DRef, PlanAction>();
  let builds = 0;

  // The first look at every derivation uses one query for the whole graph,
  // made after the temp roots above; anything built since by another process
  // is found by the fresh query taken under the build lock.
  const snapshot = store.index.candidatesByContext(graph.order);
  const toCandidate = (r: RzRow): Candidate => ({ rref: r.rref, dref: r.dref, created: r.created, path: store.outPath(r.rref) });
  const candidatesOf = (dref: DRef, ctx: string): Candidate[] => store.index.candidates(dref, ctx).map(toCandidate);
  const snapshotCandidates = (dref: DRef, ctx: string): Candidate[] => (snapshot.get(`${dref} ${ctx}`) ?? []).map(toCandidate);

  const contextOf = (node: Derivation): Context => {
    const context: Context = {};
    for (const dep of node.deps) context[dep] = [...chosen.get(dep)!].sort();
    return context;
  };

  /**
   * Runs the build function once and publishes its outputs, appending them
   * to `published` as it goes (so a caller can still record the ones that
   * made it if a later output fails). Recording is left to the caller.
   */
  const buildOnce = async (node: Derivation, context: Context, published: Published[]): Promise<void> => {
    const s = node.stage;
    const dir = store.makeTempDir(`build-${node.name}`);
    // Each output is built directly inside its staging directory, so
    // publishing it is a single rename; with one output, the build
    // directory is itself the staging directory.
    const staging = s.n === 1 ? [dir] : Array.from({ length: s.n }, (_, i) => path.join(dir, `rz-${i}`));
    const outs = staging.map((d) => path.join(d, 'out'));
    if (s.n > 1) for (const d of staging) fs.mkdirSync(d);
    for (const d of outs) fs.mkdirSync(d);
    let scratch: string | undefined;
    // The log is written straight into the first realization; the others get copies.
    const logFile = path.join(staging[0]!, 'build.log');
    const started = Date.now();
    let ok = false;
    try {
      const log = makeLog(logFile, (line) => events.log?.(node, line));
      try {
        const config = resolveConfig(s.config, (st) => {
          const dref = graph.drefOf.get(st as Stage)!;
          return makeDep(store, dref, chosen.get(dref)!);
        });
        log(`building ${node.dref} with ${s.n} output(s)`);
        await s.build(makeBuildContext(node, config, outs, () => (scratch ??= store.makeTempDir(`work-${node.name}`)), log));
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        log(`build failed: ${msg}`);
        throw new CairnError('E_BUILD_FAILED', `stage ${node.name} (${node.dref}) failed: ${msg}`, { dref: node.dref, stage: node.name }, { cause: e });
      } finally {
        log.close();
      }
      // Every output must keep every promise before any of them is stored.
      for (const [i, out] of outs.entries()) {
        const missing = s.outputs.filter((o) => !fs.existsSync(path.join(out, o)) && !isLink(path.join(out, o)));
        if (missing.length > 0) {
          throw new CairnError('E_PROMISE_BROKEN', `stage ${node.name} (${node.dref}) output ${i} lacks promised ${missing.join(', ')}`, { dref: node.dref, missing });
        }
      }
      // Failures from here on are the store's (a full disk, say), not the build's.
      await asStoreError(async () => {
        const summaries: TreeSummary[] = [];
        for (const out of outs) summaries.push(await walkTree(out, { seal: true }));
        const buildMs = Date.now() - started;
        const drvSync = store.ensureDrv(node.dref, node.name, node.drvJson, dir);
        fs.chmodSync(logFile, 0o444);
        const logs = staging.map((rz) => path.join(rz, 'build.log'));
        for (const l of logs.slice(1)) fs.copyFileSync(logFile, l);
        // The log is not fsynced: it is not hashed, and a log cut short by a
        // crash is harmless, unlike an output.
        for (const [i, rz] of staging.entries()) {
          const sum = summaries[i]!;
          published.push(await store.publish(rz, {
            dref: node.dref, name: node.name, context, tree: sum.treeHash,
            bytes: sum.bytes, files: sum.files, created: creationTime(), buildMs,
          }, [...sum.toSync, ...(i === 0 ? drvSync : [])]));
        }
      });
      ok = true;
    } catch (e) {
      if (opts.keepFailed && !ok) {
        const kept = path.join(store.root, 'failed', `${node.name}-${new Date().toISOString().replace(/[:.]/g, '')}-${path.basename(dir).slice(-6)}`);
        fs.mkdirSync(path.dirname(kept), { recursive: true });
        fs.renameSync(dir, kept);
        if (isCairnError(e)) e.details.kept = kept;
        if (e instanceof Error) e.message += ` (build directory kept at ${kept})`;
      }
      throw e;
    } finally {
      removeTree(dir);
      if (scratch) removeTree(scratch);
    }
  };

  // Builds whose realizations are published but not yet durable and indexed.
  const settling: Promise<void>[] = [];

  const resolveNode = async (node: Derivation): Promise<RRef[]> => {
    const m = node.stage.matcher;
    if (opts.dryRun && node.deps.some((d) => actions.get(d) !== 'cached')) {
      actions.set(node.dref, forced(node) ? 'force' : 'build');
      return [];
    }
    const context = contextOf(node);
    const ctx = contextHash(context);
    const isForced = forced(node);
    if (!isForced) {
      const sel = await runMatcher(m, snapshotCandidates(node.dref, ctx));
      if (sel) {
        actions.set(node.dref, 'cached');
        events.cached?.(node, sel);
        return sel;
      }
    }
    actions.set(node.dref, isForced ? 'force' : 'build');
    if (opts.dryRun) return [];
    // The build lock is held until the new realizations are durable and
    // indexed, so processes waiting for it find them; this node's dependants
    // start as soon as the outputs are published (complete and readable), so
    // the durability round of one stage overlaps the build of the next.
    return new Promise<RRef[]>((resolve, reject) => {
      const task = withLock(store, `build:${node.dref}:${ctx}`, `building ${node.name}`, async () => {
        const have = candidatesOf(node.dref, ctx);
        if (!isForced) {
          // Another process may have built it while we waited for the lock.
          const sel = await runMatcher(m, have);
          if (sel) {
            actions.set(node.dref, 'cached');
            events.cached?.(node, sel);
            resolve(sel);
            return;
          }
        }
        // Forced or not, build as often as the matcher needs, and at least once.
        const runs = Math.max(1, Math.ceil((m.min - (isForced ? 0 : have.length)) / node.stage.n));
        events.start?.(node, isForced ? 'forced' : 'missing');
        const t0 = Date.now();
        const published: Published[] = [];
        try {
          for (let i = 0; i < runs; i++) {
            await limit.run(() => buildOnce(node, context, published));
            builds++;
          }
        } catch (e) {
          await store.record(published).catch(() => {});
          throw e;
        }
        const recorded = store.record(published);
        // Identical outputs merge: a build may publish one RRef several times.
        const known = new Set(have.map((c) => c.rref));
        const fresh: Candidate[] = [];
        for (const p of published) {
          if (known.has(p.meta.rref)) continue;
          known.add(p.meta.rref);
          fresh.push(metaCandidate(store, p.meta));
        }
        const all = [...have, ...fresh].sort((a, b) => a.created - b.created || (a.rref < b.rref ? -1 : 1));
        let sel: RRef[] | null;
        try {
          sel = await runMatcher(m, all);
        } catch (e) {
          await recorded;
          throw e;
        }
        if (!sel) {
          await recorded;
          throw new CairnError('E_MATCH_UNSATISFIED',
            `matcher ${m.name} of stage ${node.name} (${node.dref}) chose nothing after ${runs} build(s); ${all.length} realization(s) exist. A matcher that needs k realizations wants a stage with n >= k or min = k`,
            { dref: node.dref, matcher: m.name, realizations: all.length });
        }
        events.built?.(node, sel, Date.now() - t0);
        resolve(sel);
        await recorded;
      }, { onWait: (holder) => events.wait?.(node, holder) });
      settling.push(task);
      // After resolve() this is a no-op; such late errors surface from `settling`.
      task.catch(reject);
    });
  };

  try {
    await schedule(graph, async (node) => {
      try {
        chosen.set(node.dref, await resolveNode(node));
      } catch (e) {
        const err = isCairnError(e) ? e : new CairnError('E_BUILD_FAILED', `stage ${node.name}: ${(e as Error)?.message ?? String(e)}`, { dref: node.dref }, { cause: e });
        events.failed?.(node, err);
        throw err;
      }
    });
    // Every build must be durable and indexed before realize returns.
    for (const r of await Promise.allSettled(settling)) if (r.status === 'rejected') throw r.reason;
    if (opts.outLink && !opts.dryRun) {
      graph.targets.flatMap((d) => chosen.get(d)!).forEach((rref, i) => addOutLink(store, i === 0 ? opts.outLink! : `${opts.outLink}-${i + 1}`, rref));
    }
  } finally {
    await Promise.allSettled(settling);
    if (!opts.dryRun) store.index.dropTempRoots(tempRootOwner);
  }

  const plan = graph.order.map((dref) => ({
    dref, name: graph.nodes.get(dref)!.name, action: actions.get(dref)!, rrefs: chosen.get(dref) ?? [],
  }));
  return {
    targets: graph.targets.map((dref) => ({ dref, name: graph.nodes.get(dref)!.name, rrefs: chosen.get(dref) ?? [] })),
    plan,
    builds,
  };
}

/** Runs store work, turning plain I/O errors (ENOSPC, EIO, ...) into E_STORE_IO. */
async function asStoreError<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CairnError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new CairnError('E_STORE_IO', `storing the build's outputs failed: ${err?.message ?? String(e)}`, { errno: err?.code }, { cause: e });
  }
}

function metaCandidate(store: Store, meta: RealizationMeta): Candidate {
  return { rref: meta.rref, dref: meta.dref, created: meta.created, path: store.outPath(meta.rref) };
}

function isLink(p: string): boolean {
  try { return fs.lstatSync(p).isSymbolicLink(); } catch { return false; }
}

/**
 * Runs `visit` on every node once all its dependencies are done,
 * independent nodes concurrently. On the first failure no new node starts;
 * the ones already running finish (their results are stored and useful),
 * then the first error is raised.
 */
function schedule(graph: Graph, visit: (node: Derivation) => Promise<void>): Promise<void> {
  const waitingOn = new Map<DRef, number>();
  const dependants = new Map<DRef, DRef[]>();
  for (const dref of graph.order) {
    const node = graph.nodes.get(dref)!;
    waitingOn.set(dref, node.deps.length);
    for (const dep of node.deps) {
      let list = dependants.get(dep);
      if (!list) dependants.set(dep, (list = []));
      list.push(dref);
    }
  }
  return new Promise((resolve, reject) => {
    let inFlight = 0;
    let done = 0;
    let failure: unknown;
    const finish = (): void => {
      if (inFlight > 0) return;
      if (failure !== undefined) reject(failure);
      else if (done === graph.order.length) resolve();
    };
    const start = (dref: DRef): void => {
      inFlight++;
      visit(graph.nodes.get(dref)!).then(() => {
        inFlight--;
        done++;
        if (failure === undefined) {
          for (const next of dependants.get(dref) ?? []) {
            const left = waitingOn.get(next)! - 1;
            waitingOn.set(next, left);
            if (left === 0) start(next);
          }
        }
        finish();
      }, (e: unknown) => {
        inFlight--;
        failure ??= e;
        finish();
      });
    };
    for (const dref of graph.order) if (waitingOn.get(dref) === 0) start(dref);
    finish();
  });
}
