/**
 * `cairn export` and `cairn import`: a closure as a plain tar file, for
 * hosts that cannot reach each other. The archive mirrors the store layout
 * (`d/<dref>/drv.json`, `d/<dref>/r/<rhash>/…`) plus `manifest.json`, the
 * same closure manifest sync gives `cairn store receive`. Import extracts it
 * into a temporary directory in the store and takes it in through the same
 * receive path as sync, all or nothing: one bad hash and nothing enters.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as Tar from 'tar';
import { CairnError } from '../errors.js';
import { removeTree } from './fsutil.js';
import { receiveClosure, type ReceiveReport } from './receive.js';
import type { RRef } from './refs.js';
import type { Store } from './store.js';
import { manifestPaths, parseManifest, planTransfer } from './sync-plan.js';
import { listClosure } from './sync.js';
import { extractTar } from '../stages/builtins/unpack.js';

export interface ExportReport { file: string; realizations: number; derivations: number; roots: RRef[] }

/** Writes the closure of `refs` to `file` (written beside it, then renamed, so no half tar is left). */
export async function exportClosure(store: Store, refs: readonly string[], file: string): Promise<ExportReport> {
  if (refs.length === 0) throw new CairnError('E_USAGE', 'export needs at least one DRef or RRef');
  const { roots, nodes } = listClosure(store, refs);
  const manifest = planTransfer(roots, nodes, () => false);
  const tar: typeof Tar = await import('tar'); // loaded only when exporting
  const scratch = store.makeTempDir('export');
  const dest = path.resolve(file);
  const partial = `${dest}.partial-${process.pid}`;
  try {
    fs.writeFileSync(path.join(scratch, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    // Manifest first, so a reader learns what to expect before the data.
    await tar.c({ file: partial, cwd: scratch, portable: true }, ['manifest.json']);
    await tar.r({ file: partial, cwd: store.root, portable: true }, manifestPaths(manifest));
    fs.renameSync(partial, dest);
  } catch (e) {
    fs.rmSync(partial, { force: true });
    if (e instanceof CairnError) throw e;
    throw new CairnError('E_STORE_IO', `cannot write ${file}: ${(e as Error).message}`, { file }, { cause: e });
  } finally {
    removeTree(scratch);
  }
  return { file: dest, realizations: manifest.rrefs.length, derivations: manifest.drvs.length, roots };
}

/**
 * Takes in the closure in `file`. Every hash is checked before anything
 * enters the store; a damaged or tampered archive is refused whole
 * (E_SYNC_HASH_MISMATCH, E_BAD_CLOSURE or E_BAD_ARCHIVE) and the store is
 * left as it was.
 */
export async function importClosure(store: Store, file: string): Promise<ReceiveReport> {
  if (!fs.existsSync(file)) throw new CairnError('E_USAGE', `${file} does not exist`, { file });
  const staging = store.makeTempDir('import');
  try {
    // extractTar checks every entry first (no absolute or .. paths, no
    // devices, no links leaving the archive) and extracts nothing if one is bad.
    await extractTar(path.resolve(file), 'tar', staging);
    let json: unknown;
    try {
      json = JSON.parse(fs.readFileSync(path.join(staging, 'manifest.json'), 'utf8'));
    } catch {
      throw new CairnError('E_BAD_CLOSURE', `${file} has no readable manifest.json; it was not written by cairn export`, { file });
    }
    return await receiveClosure(store, staging, parseManifest(json), { allOrNothing: true });
  } finally {
    removeTree(staging);
  }
}
