import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError } from '../errors.js';
import { ownerAlive } from './fsutil.js';
import type { HeldLock, LockOptions } from './interface.js';

export type { HeldLock, LockOptions } from './interface.js';

/**
 * Where locks live: the index's `lock` table, with the owner's pid and
 * kernel start time. Kept to these few calls so this module needs no store.
 */
export interface LockTable {
  readonly owner: string;
  tryLock(
    key: string,
    owner: string,
    what: string,
    alive: (owner: string) => boolean,
  ): { taken: boolean; stale?: string; holder?: string };
  unlock(key: string, owner: string): void;
  /** Called after taking over a dead owner's lock: sweeps its temporary directories. */
  swept(): void;
}

// Locks are per process in the index; inside one process, callers of the
// same key queue on a promise chain so they never poll each other.
const local = new Map<string, Promise<void>>();

/**
 * Runs `fn` while holding the store-wide lock `key` (see `Store.withLock`).
 * A lock whose owner has died (kill -9, power loss) is taken over, and that
 * owner's temporary directories are swept.
 */
export async function withLock<T>(
  table: LockTable,
  key: string,
  what: string,
  fn: (held: HeldLock) => Promise<T>,
  opts: LockOptions = {},
): Promise<T> {
  const previous = local.get(key) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((r) => {
    release = r;
  });
  const chained = previous.then(() => mine);
  local.set(key, chained);
  await previous;
  try {
    await acquire(table, key, what, opts);
    const held: HeldLock = { key, owner: table.owner, released: false };
    try {
      return await fn(held);
    } finally {
      if (!held.released) table.unlock(key, table.owner);
    }
  } finally {
    release();
    if (local.get(key) === chained) local.delete(key);
  }
}

async function acquire(table: LockTable, key: string, what: string, opts: LockOptions): Promise<void> {
  const start = Date.now();
  let delay = 5;
  let told = false;
  for (;;) {
    const r = table.tryLock(key, table.owner, what, ownerAlive);
    if (r.taken) {
      if (r.stale) table.swept();
      return;
    }
    if (!told) {
      told = true;
      opts.onWait?.(r.holder!);
    }
    if (opts.timeoutMs !== undefined && Date.now() - start > opts.timeoutMs) {
      throw new CairnError(
        'E_LOCK_TIMEOUT',
        `gave up after ${opts.timeoutMs} ms waiting for ${what}, held by process ${r.holder}`,
        { key, holder: r.holder },
      );
    }
    // Jittered backoff keeps many waiters from polling in lockstep.
    await sleep(delay * (0.5 + Math.random()));
    delay = Math.min(delay * 2, 100);
  }
}
