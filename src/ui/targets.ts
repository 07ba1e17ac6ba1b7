/**
 * What `cairn ui` shows: the arguments turned into derivations. A stage
 * file is instantiated (nothing is built), a DRef or RRef names its
 * derivation, a named gc root its realizations' derivations. With no
 * argument the view shows every derivation that has realizations, found
 * again on each refresh so that new ones appear.
 */
import * as fs from 'node:fs';
import { CairnError } from '../errors.js';
import { instantiate } from '../stages/instantiate.js';
import { loadStageFile } from '../stages/load.js';
import { storeUsage } from '../store/du.js';
import { parseRef, type DRef } from '../store/refs.js';
import { listRoots } from '../store/roots.js';
import type { LocalStore } from '../store/store.js';

export interface UiTargets {
  /** What the arguments were, for the page's title. */
  label: string;
  /** The derivations to show now (asked again on every refresh). */
  drefs(): DRef[];
}

const looksLikeFile = (arg: string): boolean => fs.existsSync(arg) || /\.(m?[tj]s|ya?ml)$/i.test(arg);

export async function resolveUiTargets(store: LocalStore, args: readonly string[]): Promise<UiTargets> {
  if (args.length === 0) {
    return { label: 'the whole store', drefs: () => storeUsage(store).byDrv.map((d) => d.dref as DRef) };
  }
  const fixed: DRef[] = [];
  for (const arg of args) {
    if (looksLikeFile(arg)) {
      const loaded = await loadStageFile(arg);
      fixed.push(...instantiate(loaded.targets).targets);
      continue;
    }
    const root = listRoots(store).roots.find((r) => r.kind === 'named' && r.name === arg);
    if (root) {
      for (const rref of root.rrefs) fixed.push(parseRef(rref).dref);
      continue;
    }
    let parsed;
    try {
      parsed = parseRef(arg);
    } catch (e) {
      throw new CairnError(
        'E_NO_SUCH_REF',
        `${arg} is neither a stage file, a DRef or RRef, nor a named root of ${store.root}`,
        { ref: arg },
        { cause: e },
      );
    }
    store.resolve(arg);
    fixed.push(parsed.dref);
  }
  const unique = [...new Set(fixed)];
  return { label: args.join(' '), drefs: () => unique };
}
