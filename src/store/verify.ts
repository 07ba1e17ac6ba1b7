import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { shortHash } from './hash.js';
import { makeRRef, parseRef, type DRef, type RRef } from './refs.js';
import type { Store } from './store.js';

export type ProblemKind =
  /** Content, metadata or name no longer match their hashes. */
  | 'modified'
  /** The index lists it, the files do not have it. */
  | 'missing'
  /** The files have it, the index does not list it (e.g. after rsync). */
  | 'extra'
  /** Content matches, but write bits are set. */
  | 'writable';

export interface Problem { ref: RRef | DRef; kind: ProblemKind; detail: string }

export interface VerifyReport {
  checked: number;
  problems: Problem[];
  /** Corrupt realizations taken out of the index (and, with repair, moved to ROOT/quarantine/). */
  quarantined: RRef[];
  repaired: boolean;
}

function onDiskRealizations(store: Store): RRef[] {
  const out: RRef[] = [];
  const dRoot = path.join(store.root, 'd');
  for (const dref of fs.readdirSync(dRoot)) {
    let hashes: string[] = [];
    try { hashes = fs.readdirSync(path.join(dRoot, dref, 'r')); } catch { continue; }
    for (const h of hashes) out.push(makeRRef(h, dref));
  }
  return out;
}

/** Re-hashes one realization against its name; returns what is wrong, or null. */
async function checkRealization(store: Store, rref: RRef): Promise<Problem | null> {
  let isRealization = false;
  try { isRealization = parseRef(rref).kind === 'rz'; } catch { /* junk in d/<dref>/r/ */ }
  if (!isRealization) return { ref: rref, kind: 'modified', detail: 'directory name is not a realization hash' };
  const problem = await store.inspect(rref);
  return problem && { ref: rref, ...problem };
}

/**
 * Checks realizations against their hashes and the index against the files.
 * The files are the truth: corrupt realizations are always removed from the
 * index at once, so no build is ever given one. With `repair`, corrupt ones
 * are also moved to ROOT/quarantine/, write bits are cleared again, and the
 * index is rebuilt from the files (which fixes missing and extra entries).
 */
export async function verifyStore(store: Store, opts: { repair?: boolean; refs?: string[] } = {}): Promise<VerifyReport> {
  const problems: Problem[] = [];
  let targets: RRef[];
  const indexed = new Set(store.index.all().map((r) => r.rref));
  if (opts.refs && opts.refs.length > 0) {
    targets = opts.refs.flatMap((ref) => {
      const p = parseRef(ref);
      if (p.kind === 'rz') return [p.rref];
      const fromIndex = store.index.realizationsOf(p.dref).map((r) => r.rref);
      let fromDisk: RRef[] = [];
      try { fromDisk = fs.readdirSync(path.join(store.drvDir(p.dref), 'r')).map((h) => makeRRef(h, p.dref)); } catch { /* none */ }
      if (fromIndex.length === 0 && fromDisk.length === 0) throw new CairnError('E_NO_SUCH_REF', `${ref} is not in the store`, { ref });
      return [...new Set([...fromIndex, ...fromDisk])];
    });
  } else {
    targets = [...new Set([...onDiskRealizations(store), ...indexed])];
  }
  const quarantined: RRef[] = [];
  const writable: RRef[] = [];
  for (const rref of targets) {
    const exists = fs.existsSync(store.rzDir(rref));
    if (!exists) {
      if (indexed.has(rref)) problems.push({ ref: rref, kind: 'missing', detail: 'in the index, not on disk' });
      else throw new CairnError('E_NO_SUCH_REF', `${rref} is not in the store`, { ref: rref });
      continue;
    }
    if (!indexed.has(rref)) problems.push({ ref: rref, kind: 'extra', detail: 'on disk, not in the index' });
    const problem = await checkRealization(store, rref);
    if (!problem) continue;
    problems.push(problem);
    if (problem.kind === 'writable') writable.push(rref);
    else {
      store.index.removeRealization(rref);
      quarantined.push(rref);
    }
  }
  const badDrvs = !opts.refs || opts.refs.length === 0 ? checkDerivations(store) : [];
  problems.push(...badDrvs);
  if (opts.repair) {
    for (const rref of quarantined) store.quarantine(store.rzDir(rref), rref);
    for (const rref of writable) await store.reseal(rref);
    // A derivation with a missing or corrupt drv.json: with no realizations
    // it is removed; otherwise its drv.json is moved aside and the next
    // realize of its stage writes it again.
    for (const p of badDrvs) {
      const dir = store.drvDir(p.ref);
      let realizations: string[] = [];
      try { realizations = fs.readdirSync(path.join(dir, 'r')); } catch { /* none */ }
      const to = path.join(store.root, 'quarantine', `${p.ref}-drv-${Date.now()}`);
      fs.mkdirSync(path.dirname(to), { recursive: true });
      if (realizations.length === 0) fs.renameSync(dir, to);
      else if (fs.existsSync(path.join(dir, 'drv.json'))) fs.renameSync(path.join(dir, 'drv.json'), `${to}.json`);
    }
    store.rebuildIndex();
  }
  return { checked: targets.length, problems, quarantined, repaired: !!opts.repair };
}

/** A derivation's drv.json must hash to its DRef. */
function checkDerivations(store: Store): Problem[] {
  const problems: Problem[] = [];
  for (const dref of fs.readdirSync(path.join(store.root, 'd'))) {
    let text: string;
    try { text = fs.readFileSync(path.join(store.drvDir(dref), 'drv.json'), 'utf8'); } catch {
      problems.push({ ref: dref, kind: 'modified', detail: 'drv.json is missing' });
      continue;
    }
    if (`${shortHash(text.replace(/\n$/, ''))}-${parseRef(dref).name}` !== dref) {
      problems.push({ ref: dref, kind: 'modified', detail: 'drv.json does not hash to the DRef' });
    }
  }
  return problems;
}
