import type { DrvFiles } from './drv-files.js';
import type { StoreIndex } from './index-db.js';
import type { LocalStore } from './store.js';

// LocalStore keeps its index and derivation files private; the modules of
// src/store that maintain them (gc, verify, sync, receive, roots, export)
// reach them through these two functions. Nothing outside src/store may
// import this module (eslint.config.js, no-restricted-imports).

export function storeIndex(store: LocalStore): StoreIndex {
  return store['index'];
}

export function drvFiles(store: LocalStore): DrvFiles {
  return store['drvs'];
}
