/**
 * Substituters and push targets: the stores a realize may take realizations
 * from instead of building them (`--substituter`), and the store it hands
 * what it made to afterwards (`--push-to`). A substituter is any Store (a
 * team's binary cache, another local store) plus a way to copy a closure
 * out of it into the local store through a verified receive path; realize
 * never trusts what a substituter says until that path has checked it.
 */
import type { Store } from '../store/interface.js';
import type { RRef } from '../store/refs.js';
import type { LocalStore } from '../store/store.js';

export interface Substituter {
  /** How messages name it: a URL with its secrets redacted, or a directory. */
  readonly name: string;
  /** What realize asks for candidates; matchers read remote candidates' files through it. */
  readonly store: Store;
  /**
   * Copies these realizations and their closures into `into`, through a path
   * that checks every hash (and, for a cache, every signature) and refuses
   * the lot on one failure. Resolves once they are in `into`'s index.
   */
  fetch(into: LocalStore, rrefs: readonly RRef[]): Promise<void>;
}

/**
 * Another local store as a substituter (tests, library users). Copies go
 * through a tar and `importClosure`, so a tampered realization in `other`
 * is refused exactly as a tampered archive would be.
 */
export function localSubstituter(other: LocalStore, name: string = other.location): Substituter {
  return {
    name,
    store: other,
    fetch: async (into, rrefs) => {
      await (
        await closureCopier()
      )(other, into, rrefs);
    },
  };
}

/** Where `--push-to` sends what a realize made. */
export interface PushTarget {
  readonly name: string;
  /** Copies the closures of `rrefs` out of `from`, skipping what the target has. */
  push(from: LocalStore, rrefs: readonly RRef[]): Promise<void>;
}

/** Another local store as a push target (tests, library users). */
export function localPushTarget(other: LocalStore, name: string = other.location): PushTarget {
  return {
    name,
    push: async (from, rrefs) => {
      await (
        await closureCopier()
      )(from, other, rrefs);
    },
  };
}

/** The part of a `RealizeResult` a push needs. */
export interface RealizedTargets {
  targets: readonly { rrefs: readonly RRef[] }[];
}

/**
 * What `--push-to` uploads after a realize: the targets' chosen
 * realizations with their closures, so a teammate realizing the same
 * targets finds every stage in the cache. Realizations a matcher built but
 * did not choose (the losing models of best()) are not pushed: no realize
 * of these targets needs them. Returns the roots it pushed.
 */
export function pushRoots(result: RealizedTargets): RRef[] {
  return [...new Set(result.targets.flatMap((t) => t.rrefs))];
}

/** Pushes `pushRoots(result)` from `store` to `target` (nothing for an empty result). */
export async function pushAfterRealize(
  store: LocalStore,
  result: RealizedTargets,
  target: PushTarget,
): Promise<RRef[]> {
  const roots = pushRoots(result);
  if (roots.length > 0) await target.push(store, roots);
  return roots;
}

// Loaded on first use: the archive and receive code would otherwise load with every realize (and every CLI start).
async function closureCopier(): Promise<typeof import('../store/export.js').copyClosure> {
  return (await import('../store/export.js')).copyClosure;
}
