import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Whether a store has been made at `root` (its layout marker `store.json`,
 * written by Store.open, exists), asked without opening it: opening creates
 * a store, and a question (a dry run, sync plumbing) must not.
 */
export function storeExistsAt(root: string): boolean {
  return fs.existsSync(path.join(root, 'store.json'));
}
