import * as os from 'node:os';
import { CairnError, isCairnError } from '../errors.js';
import {
  candidateKey,
  candidateOf,
  type Added,
  type Candidate,
  type Context,
  type TempRoots,
} from '../store/interface.js';
import { addOutLink } from '../store/roots.js';
import type { DRef, RRef } from '../store/refs.js';
import { contextHash, type LocalStore } from '../store/store.js';
import { makeDep, resolveConfig } from './build-context.js';
import { instantiate, preloadFileInputs, type Derivation, type Graph } from './instantiate.js';
import { runMatcher } from './matchers.js';
import { Semaphore, schedule } from './schedule.js';
import { isStage, type Stage } from './stage.js';
import { buildAndAdd } from './build.js';
import { inputPaths } from './build-context.js';
import { guardRealize } from './build-processes.js';
import { enterBreak, findBreak, pausedBuild, type BreakPoint } from './break-point.js';
import { Substitution } from './substitution.js';
import type { Substituter } from './substitute.js';
import type { BuildOutcome } from './build.js';
import type { BuilderPool, Placement } from './builders/pool.js';

export interface RealizeEvents {
  cached?(node: Derivation, rrefs: readonly RRef[]): void;
  start?(node: Derivation, why: 'missing' | 'forced'): void;
  wait?(node: Derivation, holder: string): void;
  /**
   * `rrefs`: what the matcher chose; `fresh`: the realizations these builds
   * made (which a matcher such as `best` may not choose).
   */
  built?(node: Derivation, rrefs: readonly RRef[], ms: number, fresh: readonly RRef[]): void;
  /** The matcher chose realizations a substituter had (`from`: their names); they are in the store now. */
  substituted?(node: Derivation, rrefs: readonly RRef[], from: readonly string[]): void;
  /** One line about trouble that did not fail the realize (a substituter that failed: one per substituter). */
  warning?(line: string): void;
  /**
   * A log() line, or a line a program run through exec printed (`output`:
   * the output it works on, when known and n > 1).
   */
  log?(node: Derivation, line: string, output?: number): void;
  failed?(node: Derivation, error: CairnError): void;
  /** With builders: where a build ran and why (after it succeeded there). */
  placed?(node: Derivation, placement: Placement): void;
}

export interface RealizeOptions {
  /** Builds run on its filesystem; matchers read candidates through the Store interface. */
  store: LocalStore;
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
  /**
   * Stores asked, when a stage's local candidates do not satisfy its
   * matcher, before building it (see substitution.ts). None: no cost at all.
   */
  substituters?: readonly Substituter[];
  /** How long a substituter's batch query may take (default 60 s). */
  substituterTimeoutMs?: number;
  /** Remote builders (ssh hosts, Slurm): builds go to their free slots; none: every build runs here. */
  builders?: BuilderPool;
  /**
   * Stop before this stage's build (forced, so there is one) and let
   * someone build it by hand (see break-point.ts, realizePaused).
   */
  breakAt?: BreakPoint;
  events?: RealizeEvents;
}

/** `substituted`: fetched from a substituter (with a dry run: would be). */
export type PlanAction = 'cached' | 'build' | 'force' | 'substituted';

export interface PlanEntry {
  dref: DRef;
  name: string;
  action: PlanAction;
  /** Chosen realizations (known for cached entries, and for all entries after a real run). */
  rrefs: RRef[];
  /** With builders, for a stage built in this run: where its (last) build ran and why. */
  where?: Placement;
}

export interface RealizeResult {
  targets: { dref: DRef; name: string; rrefs: RRef[] }[];
  /** Every stage's derivation, dependencies first, with what happened to it (file-input imports are in `inputs`). */
  plan: PlanEntry[];
  /** How many build function runs happened (imports not counted). */
  builds: number;
  /** Warning lines (also given to `events.warning`): substituters that failed and were left out. */
  warnings: string[];
  /** The derivations importing file inputs: `build` when the content was copied into the store, else `cached`. */
  inputs: PlanEntry[];
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
  await preloadFileInputs();
  const graph: Graph =
    isStage(targets) || Array.isArray(targets) ? instantiate(targets as Stage | Stage[]) : (targets as Graph);
  const { store } = opts;
  const events = opts.events ?? {};
  const limit = new Semaphore(Math.max(1, opts.jobs ?? os.availableParallelism()));
  if (opts.breakAt && opts.dryRun)
    throw new CairnError('E_BAD_ARGUMENT', 'a dry run builds nothing, so it cannot stop at a break point');
  const breakAt = opts.breakAt && { point: opts.breakAt, dref: findBreak(graph, opts.breakAt.stage).dref };
  const forced = (node: Derivation): boolean =>
    node.dref === breakAt?.dref ||
    opts.force === true ||
    (Array.isArray(opts.force) && (opts.force.includes(node.name) || opts.force.includes(node.dref)));

  let ahead: { stop(): void } | undefined;
  let tempRoots: TempRoots | undefined;
  if (!opts.dryRun) {
    store.sweepTemp();
    // Declared before the first query, so gc keeps every realization
    // this run may choose or build on (see store/gc.ts).
    tempRoots = await store.addTempRoots(graph.order, 'realize');
    // A derivation not in the index has no realization to choose: it will
    // be built, so its drv.json is written now, in the main thread's idle
    // moments, ahead of its build (as nix-instantiate writes .drv files
    // before building).
    ahead = store.writeAhead(graph.order.map((d) => graph.nodes.get(d)!));
  }
  const dirs = store.buildDirs();

  const chosen = new Map<DRef, RRef[]>();
  const placements = new Map<DRef, Placement>();
  const pool = opts.builders;
  const actions = new Map<DRef, PlanAction>();
  let builds = 0;
  const warnings: string[] = [];
  const warn = (line: string): void => {
    warnings.push(line);
    events.warning?.(line);
  };
  pool?.onWarning(warn);
  // File inputs are imported, never substituted: a local copy is cheaper than a download.
  const subs = opts.substituters ?? [];
  const substitutable = subs.length > 0 ? graph.order.filter((d) => !graph.nodes.get(d)!.imports) : [];
  const substitution =
    subs.length > 0 && substitutable.length > 0
      ? new Substitution(subs, substitutable, { warn, queryTimeoutMs: opts.substituterTimeoutMs })
      : undefined;
  const trySubstitute = (node: Derivation): Substitution | undefined => (node.imports ? undefined : substitution);
  const substituted = (node: Derivation, sel: RRef[], from: Iterable<{ name: string }>): RRef[] => {
    actions.set(node.dref, 'substituted');
    const names = [...from].map((s) => s.name);
    events.substituted?.(node, sel, names);
    return sel;
  };

  // The first look at every derivation uses one query for the whole graph,
  // made after the temp roots above; anything built since by another process
  // is found by the fresh query taken under the build lock.
  const snapshot = await store.candidatesOfAll(graph.order);
  const snapshotCandidates = (dref: DRef, ctx: string): Candidate[] => snapshot.get(candidateKey(dref, ctx)) ?? [];

  const contextOf = (node: Derivation): Context => {
    const context: Context = {};
    for (const dep of node.deps) context[dep] = [...chosen.get(dep)!].sort();
    return context;
  };

  // Builds whose realizations are published but not yet durable and indexed.
  const settling: Promise<void>[] = [];

  const resolveNode = async (node: Derivation): Promise<RRef[]> => {
    const m = node.stage.matcher;
    const unknown = (d: DRef): boolean => actions.get(d) !== 'cached' && actions.get(d) !== 'substituted';
    if (opts.dryRun && node.deps.some(unknown)) {
      actions.set(node.dref, forced(node) ? 'force' : 'build');
      return [];
    }
    const context = contextOf(node);
    const ctx = contextHash(context);
    const isForced = forced(node);
    if (!isForced) {
      const local = snapshotCandidates(node.dref, ctx);
      const sel = await runMatcher(m, local);
      if (sel) {
        actions.set(node.dref, 'cached');
        events.cached?.(node, sel);
        return sel;
      }
      // A dry run shows what the substituters would give, reading only their metadata and matcher files.
      const choice = opts.dryRun ? await trySubstitute(node)?.choose(m, node.dref, ctx, local) : undefined;
      if (choice) return substituted(node, choice.sel, choice.remote.keys());
    }
    actions.set(node.dref, isForced ? 'force' : 'build');
    if (opts.dryRun) return [];
    // The build lock is held until the new realizations are durable and
    // indexed, so processes waiting for it find them; this node's dependants
    // start as soon as the outputs are published (complete and readable), so
    // the durability round of one stage overlaps the build of the next.
    return new Promise<RRef[]>((resolve, reject) => {
      const task = store.withLock(
        `build:${node.dref}:${ctx}`,
        `building ${node.name}`,
        async (held) => {
          let have = await store.candidates(node.dref, ctx);
          if (!isForced) {
            // Another process may have built it while we waited for the lock.
            const sel = await runMatcher(m, have);
            if (sel) {
              actions.set(node.dref, 'cached');
              events.cached?.(node, sel);
              resolve(sel);
              return;
            }
            // Under the lock, so concurrent processes fetch a realization once.
            const sub = trySubstitute(node);
            const choice = await sub?.substitute(store, m, node.dref, ctx, have);
            // A substituter that failed part-way may have left some realizations: the build counts them.
            if (sub && !choice) have = await store.candidates(node.dref, ctx);
            if (choice) {
              if (choice.remote.size > 0) resolve(substituted(node, choice.sel, choice.remote.keys()));
              else {
                actions.set(node.dref, 'cached');
                events.cached?.(node, choice.sel);
                resolve(choice.sel);
              }
              return;
            }
          }
          // Forced or not, build as often as the matcher needs, and at least once.
          const runs = Math.max(1, Math.ceil((m.min - (isForced ? 0 : have.length)) / node.stage.n));
          events.start?.(node, isForced ? 'forced' : 'missing');
          // From when the first build got its slot: the wait for a slot is not build time.
          let t0: number | undefined;
          const begin = (): void => void (t0 ??= Date.now());
          const added: Added[] = [];
          // Realizations a remote builder made: received and indexed already.
          const remote: RRef[] = [];
          const durable: Promise<unknown>[] = [];
          try {
            for (let i = 0; i < runs; i++) {
              const config = resolveConfig(node.stage.config, (st) => {
                const dref = graph.drefOf.get(st as Stage)!;
                return makeDep(store, dref, chosen.get(dref)!);
              });
              const files = inputPaths(node.files, (dref) => store.outPath(chosen.get(dref)![0]!));
              // The last run's indexing releases the build lock (see AddOptions.release).
              const release = i === runs - 1 ? held : undefined;
              const here = (): Promise<BuildOutcome> =>
                limit.run(() => {
                  begin();
                  return buildAndAdd({
                    store,
                    node,
                    context,
                    config,
                    files,
                    keepFailed: opts.keepFailed,
                    release,
                    onLog: (line, i) => events.log?.(node, line, i),
                    dirs,
                    byHand:
                      i === 0 && node.dref === breakAt?.dref
                        ? (ctx) =>
                            enterBreak(
                              breakAt.point,
                              pausedBuild(node, ctx, context, (r) => store.outPath(r)),
                            )
                        : undefined,
                  });
                });
              if (pool && !node.imports && node.dref !== breakAt?.dref) {
                // File inputs are imported here, a break point's build is done by hand here; the rest may go out.
                const inputs = node.deps.flatMap((d) => chosen.get(d)!);
                const log = (line: string): void => events.log?.(node, line);
                const ran = await pool.run<BuildOutcome | RRef[]>(
                  node,
                  (b) => {
                    begin();
                    return b.build({ node, inputs, log, force: isForced });
                  },
                  here,
                );
                placements.set(node.dref, ran.placement);
                events.placed?.(node, ran.placement);
                if (Array.isArray(ran.value)) remote.push(...ran.value);
                else {
                  added.push(...ran.value.added);
                  durable.push(ran.value.durable);
                }
              } else {
                const run = await here();
                added.push(...run.added);
                durable.push(run.durable);
              }
              if (!node.imports) builds++;
            }
          } catch (e) {
            await Promise.allSettled(durable);
            throw e;
          }
          const recorded = Promise.all(durable);
          // Identical outputs merge: a build may add one RRef several times.
          const known = new Set(have.map((c) => c.rref));
          const fresh: Candidate[] = [];
          for (const a of added) {
            if (known.has(a.meta.rref)) continue;
            known.add(a.meta.rref);
            fresh.push(candidateOf(store, a.meta));
          }
          if (remote.length > 0) {
            const wanted = new Set(remote);
            for (const c of await store.candidates(node.dref, ctx)) {
              if (!wanted.has(c.rref) || known.has(c.rref)) continue;
              known.add(c.rref);
              fresh.push(c);
            }
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
            throw new CairnError(
              'E_MATCH_UNSATISFIED',
              `matcher ${m.name} of stage ${node.name} (${node.dref}) chose nothing after ${runs} build(s); ` +
                `${all.length} realization(s) exist. A matcher that needs ` +
                `k realizations wants a stage with n >= k or min = k`,
              { dref: node.dref, matcher: m.name, realizations: all.length },
            );
          }
          events.built?.(node, sel, Date.now() - (t0 ?? Date.now()), [
            ...new Set([...added.map((a) => a.meta.rref), ...remote]),
          ]);
          resolve(sel);
          await recorded;
        },
        { onWait: (holder) => events.wait?.(node, holder) },
      );
      settling.push(task);
      // After resolve() this is a no-op; such late errors surface from `settling`.
      task.catch(reject);
    });
  };

  // While builds may run, SIGINT/SIGTERM/SIGHUP end their processes and temporary directories first.
  const unguard = opts.dryRun ? undefined : guardRealize(store.tempArea());
  try {
    await schedule(graph, async (node) => {
      try {
        chosen.set(node.dref, await resolveNode(node));
      } catch (e) {
        const err = isCairnError(e)
          ? e
          : new CairnError(
              'E_BUILD_FAILED',
              `stage ${node.name}: ${(e as Error)?.message ?? String(e)}`,
              { dref: node.dref },
              { cause: e },
            );
        events.failed?.(node, err);
        throw err;
      }
    });
    // Every build must be durable and indexed before realize returns.
    for (const r of await Promise.allSettled(settling)) if (r.status === 'rejected') throw r.reason;
    if (opts.outLink && !opts.dryRun) {
      graph.targets
        .flatMap((d) => chosen.get(d)!)
        .forEach((rref, i) => addOutLink(store, i === 0 ? opts.outLink! : `${opts.outLink}-${i + 1}`, rref));
    }
  } finally {
    ahead?.stop();
    dirs.close();
    await Promise.allSettled(settling);
    // Derivations written ahead whose build never came (a failure upstream).
    if (!opts.dryRun) await store.settleDerivations().catch(() => {});
    await tempRoots?.release();
    unguard?.();
  }

  const plan: PlanEntry[] = [];
  const inputs: PlanEntry[] = [];
  for (const dref of graph.order) {
    const node = graph.nodes.get(dref)!;
    (node.imports ? inputs : plan).push({
      dref,
      name: node.name,
      action: actions.get(dref)!,
      rrefs: chosen.get(dref) ?? [],
      ...(placements.has(dref) ? { where: placements.get(dref)! } : {}),
    });
  }
  return {
    targets: graph.targets.map((dref) => ({ dref, name: graph.nodes.get(dref)!.name, rrefs: chosen.get(dref) ?? [] })),
    plan,
    builds,
    warnings,
    inputs,
  };
}
