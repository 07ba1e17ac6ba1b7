import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError } from '../errors.js';
import { ownerAlive } from './fsutil.js';
import type { Store } from './store.js';

export interface LockOptions {
  /** Give up after this many milliseconds (default: wait forever). */
  timeoutMs?: number;
  /** Called once if the lock is busy, with the holder's id, so callers can say they are waiting. */
  onWait?: (holder: string) => void;
}

/** A lock held by this process; `released` once another index write released it (see `Store.record`). */
export interface HeldLock {
  readonly key: string;
  readonly owner: string;
  released: boolean;
}

// Locks are per process in the index; inside one process, callers of the
// same key queue on a promise chain so they never poll each other.
const local = new Map<string, Promise<void>>();

/**
 * Runs `fn` while holding the store-wide lock `key`. The lock lives in the
 * index's `lock` table with the owner's pid and kernel start time; a lock
 * whose owner has died (kill -9, power loss) is taken over, and that owner's
 * temporary directories are swept.
 */
export async function withLock<T>(store: Store, key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const previous = local.get(key) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((r) => { release = r; });
  const chained = previous.then(() => mine);
  local.set(key, chained);
  await previous;
  try {
    await acquire(store, key, what, opts);
    const held: HeldLock = { key, owner: store.owner, released: false };
    try {
      return await fn(held);
    } finally {
      if (!held.released) store.index.unlock(key, store.owner);
    }
  } finally {
    release();
    if (local.get(key) === chained) local.delete(key);
  }
}

async function acquire(store: Store, key: string, what: string, opts: LockOptions): Promise<void> {
  const start = Date.now();
  let delay = 5;
  let told = false;
  for (;;) {
    const r = store.index.tryLock(key, store.owner, what, ownerAlive);
    if (r.taken) {
      if (r.stale) store.sweepTemp();
      return;
    }
    if (!told) {
      told = true;
      opts.onWait?.(r.holder!);
    }
    if (opts.timeoutMs !== undefined && Date.now() - start > opts.timeoutMs) {
      throw new CairnError('E_LOCK_TIMEOUT', `gave up after ${opts.timeoutMs} ms waiting for ${what}, held by process ${r.holder}`, { key, holder: r.holder });
    }
    // Jittered backoff keeps many waiters from polling in lockstep.
    await sleep(delay * (0.5 + Math.random()));
    delay = Math.min(delay * 2, 100);
  }
}
