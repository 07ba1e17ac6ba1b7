/** `cairn cache ls`: the realizations a cache holds, as their entries say (signatures named, not checked). */
import { CairnError } from '../../errors.js';
import { parseRef, type RRef } from '../refs.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, listRRefs, mapLimit, readInfo } from './entries.js';
import { entryKey, parseEntry } from './format.js';

export interface CacheListing {
  rref: RRef;
  created?: number;
  bytes?: number;
  files?: number;
  /** Names of the keys that signed the entry. */
  keys?: string[];
  /** Why the entry is unusable, when it is malformed. */
  problem?: string;
}

export async function listCache(blob: BlobStore, dref?: string): Promise<CacheListing[]> {
  await readInfo(blob);
  const d = dref === undefined ? undefined : parseRef(dref);
  if (d !== undefined && d.kind !== 'drv')
    throw new CairnError('E_BAD_REF', `${dref} is an RRef; cache ls takes a DRef`);
  const rrefs = await listRRefs(blob, d?.dref);
  const bodies = await mapLimit(rrefs, PARALLEL, (r) => blob.get(entryKey(r)));
  const rows = rrefs.map((rref, i): CacheListing => {
    try {
      const e = parseEntry(bodies[i]?.toString('utf8') ?? '', entryKey(rref));
      const keys = e.signatures.map((s) => s.slice(0, Math.max(0, s.indexOf(':'))));
      return { rref, created: e.created, bytes: e.bytes, files: e.files, keys };
    } catch (err) {
      return { rref, problem: (err as Error).message };
    }
  });
  // Oldest first, as candidates are ordered.
  return rows.sort((a, b) => (a.created ?? 0) - (b.created ?? 0) || (a.rref < b.rref ? -1 : 1));
}
