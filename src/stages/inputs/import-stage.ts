import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { only } from '../matchers.js';
import { stage, type Stage } from '../stage.js';
import { isName } from '../../store/refs.js';
import type { FileInput } from '../stage.js';
import { InputHasher, type InputDigest } from './input-hash.js';

/** The config (and so the identity) of an imported input: its name and content, not where it came from. */
export interface ImportConfig {
  file: string;
  kind: 'file' | 'dir';
  /** file: sha256 of the content; dir: cairn-input-1 tree hash. */
  hash: string;
  /** file: owner-executable. */
  exec?: boolean;
}

/** The name of an input inside its store object: the basename, as on disk. */
export function entryName(abs: string): string {
  return path.basename(abs) || 'root';
}

/** A stage name for an input's import derivation: its basename in the portable alphabet. */
export function importName(entry: string): string {
  let n = entry
    .replace(/[^A-Za-z0-9._+-]/g, '_')
    .replace(/\.\./g, '_.')
    .slice(0, 100);
  if (!/^[A-Za-z0-9_]/.test(n)) n = `_${n}`.slice(0, 100);
  if (!isName(n)) n = `_${n}`.slice(0, 100);
  return isName(n) ? n : 'input';
}

const SLASH = Buffer.from('/');
const join = (dir: Buffer, name: Buffer): Buffer => Buffer.concat([dir, SLASH, name]);

/**
 * Copies a tree without following symlinks inside it, names as bytes. Files
 * are cloned where the filesystem can (reflink: no data copied, and the
 * copy does not change when the original is edited later) and copied
 * otherwise; never hard-linked, since sealing makes the copy read-only.
 */
function copyTree(from: Buffer, to: Buffer): void {
  fs.mkdirSync(to, { mode: 0o755 });
  for (const name of fs.readdirSync(from, { encoding: 'buffer' })) {
    const src = join(from, name);
    const dst = join(to, name);
    const st = fs.lstatSync(src);
    if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(src, { encoding: 'buffer' }), dst);
    else if (st.isDirectory()) copyTree(src, dst);
    // Anything else (a file swapped in since hashing included) is caught
    // by the hash check of the copy, or by sealing.
    else fs.copyFileSync(src, dst, fs.constants.COPYFILE_FICLONE);
  }
}

/**
 * The derivation that snapshots one file input into the store, as Nix
 * imports a path: fixed-output, so its DRef depends on the entry name and
 * the content only, and content imported once (from any checkout, by any
 * stage) is never copied again. The build copies the input into `out/` and
 * hashes the copy: if it differs from what was hashed when the graph was
 * instantiated, the input changed during the run, and the build refuses
 * with E_INPUT_CHANGED rather than let a stage see bytes its identity does
 * not describe. (Sealing then hashes the copy once more for the store.)
 */
export function importStage(input: FileInput, digest: InputDigest): Stage<ImportConfig> {
  const file = digest.entry ?? entryName(input.path);
  const config: ImportConfig =
    digest.kind === 'file'
      ? { file, kind: 'file', hash: digest.hash, exec: digest.exec }
      : { file, kind: 'dir', hash: digest.hash };
  return stage({
    name: importName(file),
    config,
    outputs: [file],
    matcher: only(),
    version: 'cairn-input-1',
    build: ({ config: c, out, log }) => {
      const target = path.join(out, c.file);
      try {
        if (c.kind === 'file') fs.copyFileSync(input.path, target, fs.constants.COPYFILE_FICLONE);
        else copyTree(Buffer.from(input.path), Buffer.from(target));
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') {
          throw new CairnError(
            'E_INPUT_CHANGED',
            `file input ${input.key} disappeared during the run (${err.message})`,
            { input: input.key },
          );
        }
        throw e;
      }
      const got = new InputHasher().digest(target, input.key);
      if (got.kind !== c.kind || got.hash !== c.hash || (c.kind === 'file' && got.exec !== c.exec)) {
        throw new CairnError(
          'E_INPUT_CHANGED',
          `file input ${input.key} changed during the run: it was hashed as ${c.hash}` +
            `, but the copy taken for the build is ${got.hash}; run again`,
          { input: input.key, expected: c.hash, actual: got.hash },
        );
      }
      log(`imported ${input.path} (${got.files} file(s), ${got.bytes} bytes)`);
    },
  });
}
