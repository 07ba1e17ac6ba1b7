import type { DRef } from '../store/refs.js';
import type { Derivation, Graph } from './instantiate.js';

/** Bounds how many tasks run at once (builds, under -j). */
export class Semaphore {
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
 * Runs `visit` on every node once all its dependencies are done,
 * independent nodes concurrently. On the first failure no new node starts;
 * the ones already running finish (their results are stored and useful),
 * then the first error is raised.
 */
export function schedule(graph: Graph, visit: (node: Derivation) => Promise<void>): Promise<void> {
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
      // Passed on as the build threw it, Error or not.
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors
      if (failure !== undefined) reject(failure);
      else if (done === graph.order.length) resolve();
    };
    const start = (dref: DRef): void => {
      inFlight++;
      visit(graph.nodes.get(dref)!).then(
        () => {
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
        },
        (e: unknown) => {
          inFlight--;
          failure ??= e;
          finish();
        },
      );
    };
    for (const dref of graph.order) if (waitingOn.get(dref) === 0) start(dref);
    finish();
  });
}
