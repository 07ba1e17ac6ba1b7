/**
 * Disk use as the index records it: bytes of realizations, summed by
 * derivation for the whole store, or for one reference and its closure.
 */
import { storeIndex } from './internals.js';
import type { RRef } from './refs.js';
import type { LocalStore } from './store.js';

export interface Usage {
  bytes: number;
  count: number;
}

export interface StoreUsage {
  /** One row per derivation with realizations, largest first. */
  byDrv: (Usage & { dref: string })[];
  total: Usage;
}

/** The whole store, by derivation. */
export function storeUsage(store: LocalStore): StoreUsage {
  const byDrv = new Map<string, Usage>();
  for (const row of storeIndex(store).all()) {
    const e = byDrv.get(row.dref) ?? { bytes: 0, count: 0 };
    e.bytes += row.bytes;
    e.count++;
    byDrv.set(row.dref, e);
  }
  const rows = [...byDrv].map(([dref, u]) => ({ dref, ...u })).sort((a, b) => b.bytes - a.bytes);
  const total = rows.reduce((t, r) => ({ bytes: t.bytes + r.bytes, count: t.count + r.count }), { bytes: 0, count: 0 });
  return { byDrv: rows, total };
}

/**
 * A DRef (all its realizations) or an RRef, and its closure: everything it
 * was built from. Throws E_NO_SUCH_REF (as Store.resolve) for an unknown ref.
 */
export function refUsage(store: LocalStore, ref: string): { own: Usage; closure: Usage } {
  const own = store.resolve(ref);
  return { own: usageOf(store, own), closure: usageOf(store, store.closureSync(own)) };
}

function usageOf(store: LocalStore, rrefs: readonly RRef[]): Usage {
  return { bytes: rrefs.reduce((a, r) => a + (storeIndex(store).get(r)?.bytes ?? 0), 0), count: rrefs.length };
}
