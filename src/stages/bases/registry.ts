/** The machine bases known by name (`cairn machine NAME`). */
import { CairnError } from '../../errors.js';
import type { Stage } from '../stage.js';
import type { BaseOptions } from './booted-state.js';
import { debian } from './debian.js';
import { tiny } from './tiny.js';

/** The bases `cairn machine NAME` knows. */
export const MACHINE_BASES = new Map<string, (opts: BaseOptions) => Stage>([
  ['tiny', tiny],
  ['debian', debian],
]);

export function machineBase(name: string, opts: BaseOptions = {}): Stage {
  const make = MACHINE_BASES.get(name);
  if (!make)
    throw new CairnError(
      'E_UNKNOWN_BASE',
      `no machine base ${JSON.stringify(name)} (known: ${[...MACHINE_BASES.keys()].join(', ')})`,
      { base: name },
    );
  return make(opts);
}
