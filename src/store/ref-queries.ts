/**
 * What the store holds for a reference, as callers outside the store ask
 * it: the realizations of a DRef with their sizes, every realization, and
 * the rule that a DRef stands for its newest realization where one is needed.
 */
import { storeIndex } from './internals.js';
import { CairnError } from '../errors.js';
import type { DRef, RRef } from './refs.js';
import type { LocalStore } from './store.js';

export interface RealizationRecord {
  rref: RRef;
  dref: DRef;
  /** Creation time, ms since the epoch. */
  created: number;
  /** Bytes of the output's files. */
  bytes: number;
}

const record = (r: RealizationRecord): RealizationRecord => ({
  rref: r.rref,
  dref: r.dref,
  created: r.created,
  bytes: r.bytes,
});

/**
 * The realizations a DRef or RRef names, oldest first, as recorded in the
 * index. Throws E_NO_SUCH_REF (as Store.resolve) for a ref the store lacks;
 * an RRef whose files exist but whose index row is missing is left out.
 */
export function realizationRecords(store: LocalStore, ref: string): RealizationRecord[] {
  return store.resolve(ref).flatMap((rref) => {
    const row = storeIndex(store).get(rref);
    return row ? [record(row)] : [];
  });
}

/** Every realization in the store, oldest first. */
export function allRealizations(store: LocalStore): RealizationRecord[] {
  return storeIndex(store).all().map(record);
}

/**
 * The one realization a ref stands for: an RRef itself, a DRef its newest
 * realization (the last created; ties broken by RRef, as the index orders
 * them). `of` is how many the DRef has, so a caller can say that it chose.
 * Throws E_NO_SUCH_REF for an unknown ref or a DRef with no realizations.
 */
export function newestRealization(store: LocalStore, ref: string): { rref: RRef; of: number } {
  const rrefs = store.resolve(ref);
  const newest = rrefs[rrefs.length - 1];
  if (newest === undefined) throw new CairnError('E_NO_SUCH_REF', `${ref} has no realizations`, { ref });
  return { rref: newest, of: rrefs.length };
}
