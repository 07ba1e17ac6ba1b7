/**
 * The Store conformance harness for LocalStore: a fresh store in a
 * temporary directory per test, staged outputs in the store's own `tmp/`
 * (so `add` moves them into place by rename, as a build does), gc by
 * `collectGarbage`, file modes from the filesystem. Child processes open
 * the same store with `openForChild`.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { collectGarbage } from '../src/store/gc.js';
import { LocalStore } from '../src/store/store.js';
import type { RRef } from '../src/store/refs.js';
import type { ChildStore, StoreHarness, StoreUnderTest } from './store-conformance.js';

export async function openForChild(root: string): Promise<ChildStore> {
  const store = LocalStore.open(root);
  return { store, stage: async () => store.makeTempDir('conformance-stage') };
}

export const localHarness: StoreHarness = {
  async create(): Promise<StoreUnderTest> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-conformance-store-'));
    const root = path.join(dir, 'store');
    const store = LocalStore.open(root);
    return {
      store,
      open: async () => LocalStore.open(root),
      stage: async () => store.makeTempDir('conformance-stage'),
      child: { module: fileURLToPath(import.meta.url), arg: root },
      gc: async () => (await collectGarbage(store)).realizations,
      fileMode: async (rref: RRef, rel: string) => fs.lstatSync(path.join(store.outPath(rref), rel)).mode,
      dispose: async () => {
        store.close();
        // Sealed realizations are read-only: give write bits back so the directory can go.
        spawnSync('chmod', ['-R', 'u+w', dir]);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
