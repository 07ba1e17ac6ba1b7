/**
 * What `cairn ui` shows, from its arguments: stage files (instantiated,
 * nothing built; their matchers choose, as a realize would), or DRefs,
 * RRefs and named gc roots of the store (what they were built from is what
 * is chosen below them). With no argument, the whole store: every
 * derivation with realizations that no other one was built from, found
 * again on each refresh so that new pipelines appear.
 */
import * as fs from 'node:fs';
import { CairnError } from '../errors.js';
import { instantiate } from '../stages/instantiate.js';
import type { InspectTargets } from '../stages/inspect/inspection.js';
import { loadStageFile } from '../stages/load.js';
import { storeUsage } from '../store/du.js';
import { isRef, type DRef } from '../store/refs.js';
import { listRoots } from '../store/roots.js';
import type { LocalStore } from '../store/store.js';

export interface UiTargets {
  /** What the arguments were, for the page's header. */
  label: string;
  /** The targets now (asked again on every refresh). */
  targets(): Promise<InspectTargets>;
}

/** The derivations with realizations that none of the others depends on: the ends of the store's pipelines. */
export async function storeTops(store: LocalStore): Promise<DRef[]> {
  const drefs = storeUsage(store).byDrv.map((d) => d.dref as DRef);
  const used = new Set<string>();
  for (const dref of drefs) {
    const text = await store.derivation(dref);
    if (text === undefined) continue;
    try {
      for (const dep of (JSON.parse(text) as { deps?: unknown }).deps as unknown[]) used.add(String(dep));
    } catch {
      // An unreadable drv.json names no dependencies; the inspection reports it when it reads it.
    }
  }
  return drefs.filter((d) => !used.has(d)).sort();
}

export async function resolveUiTargets(
  store: LocalStore,
  args: readonly string[],
  stages: readonly string[] = [],
): Promise<UiTargets> {
  if (args.length === 0) {
    if (stages.length > 0) throw new CairnError('E_BAD_ARGUMENT', 'stages can be selected in stage files only');
    return { label: `the whole store`, targets: () => storeTops(store) };
  }
  const roots = listRoots(store).roots.filter((r) => r.kind === 'named');
  const files: string[] = [];
  const refs: string[] = [];
  for (const arg of args) {
    const root = roots.find((r) => r.name === arg);
    if (fs.existsSync(arg) || (!isRef(arg) && !root)) files.push(arg);
    else if (root) refs.push(...root.rrefs);
    else refs.push(arg);
  }
  if (files.length > 0 && refs.length > 0) {
    throw new CairnError('E_BAD_ARGUMENT', `give stage files, or refs and named roots, not both: ${args.join(' ')}`);
  }
  const label = args.join(' ');
  if (refs.length > 0) {
    if (stages.length > 0) throw new CairnError('E_BAD_ARGUMENT', 'stages can be selected in stage files only');
    for (const ref of refs) store.resolve(ref);
    return { label, targets: async () => refs };
  }
  const selected = [];
  for (const file of files) selected.push(...(await loadStageFile(file, stages)).targets);
  const graph = instantiate(selected);
  return { label, targets: async () => graph };
}
