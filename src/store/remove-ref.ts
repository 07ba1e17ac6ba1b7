/**
 * Removing what a ref names: an RRef is one realization; a DRef is every
 * realization of the derivation and then the derivation itself.
 */
import { parseRef, type RRef } from './refs.js';
import type { LocalStore } from './store.js';

/**
 * Removes what `ref` names; returns the realizations removed and whether a
 * derivation went too. Refuses (as Store.remove) a realization that others
 * were built from unless `force`; a DRef's realizations removed before that
 * refusal stay removed. E_NO_SUCH_REF for a ref the store lacks.
 */
export function removeRef(
  store: LocalStore,
  ref: string,
  opts: { force?: boolean } = {},
): { rrefs: RRef[]; drv: boolean } {
  const p = parseRef(ref);
  const rrefs = store.resolve(ref);
  for (const r of rrefs) store.remove(r, opts);
  if (p.kind === 'drv') store.removeDrv(p.dref);
  return { rrefs, drv: p.kind === 'drv' };
}
