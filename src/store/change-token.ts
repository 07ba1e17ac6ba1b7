/**
 * A cheap token that changes when the store's realizations or derivations
 * change, for viewers that refresh when a realize finishes (`cairn ui`).
 *
 * SQLite's `data_version` changes whenever another connection commits, so
 * an unchanged value answers without touching a table. It also moves on
 * commits that change nothing a viewer shows (locks, temp roots), so then
 * the token is a fingerprint of the rows themselves: counts, the newest
 * creation time and sums. Reads only, in autocommit: no lock is held
 * between calls, and a realize running meanwhile never waits for it.
 */
import { storeIndex } from './internals.js';
import type { LocalStore } from './store.js';

interface Seen {
  dataVersion: number;
  token: string;
}

const seen = new WeakMap<LocalStore, Seen>();

export function storeChangeToken(store: LocalStore): string {
  const db = storeIndex(store).db;
  const dataVersion = db.pragma('data_version', { simple: true }) as number;
  const last = seen.get(store);
  if (last && last.dataVersion === dataVersion) return last.token;
  const rz = db
    .prepare<[], { n: number; newest: number; created: number; bytes: number }>(
      'SELECT count(*) AS n, coalesce(max(created), 0) AS newest, total(created) AS created, ' +
        'total(bytes) AS bytes FROM rz',
    )
    .get();
  const drv = db.prepare<[], { n: number }>('SELECT count(*) AS n FROM drv').get();
  const token = [rz?.n ?? 0, rz?.newest ?? 0, rz?.created ?? 0, rz?.bytes ?? 0, drv?.n ?? 0].join('-');
  seen.set(store, { dataVersion, token });
  return token;
}
