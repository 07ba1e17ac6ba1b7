/**
 * Moving a derivation (drv.json and its code object) to a builder's store:
 * an export this side writes and `cairn IMPORT_ARGS` reads on stdin there,
 * verifying it (the drv hashes to its DRef, the code object to its name).
 */
import { CairnError } from '../../errors.js';
import type { DRef } from '../../store/refs.js';
import type { LocalStore } from '../../store/store.js';

/** The cairn arguments that import a derivation export from stdin. */
export const IMPORT_ARGS: readonly string[] = ['drv', 'import', '-'];

export async function derivationBundle(store: LocalStore, dref: DRef): Promise<Buffer> {
  void store;
  throw new CairnError('E_BUILDER_FAILED', `cannot export derivation ${dref} yet`);
}

export async function sendDerivation(
  store: LocalStore,
  dref: DRef,
  run: (args: readonly string[], stdin: Buffer) => Promise<unknown>,
): Promise<void> {
  await run(IMPORT_ARGS, await derivationBundle(store, dref));
}
