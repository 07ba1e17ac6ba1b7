/**
 * Code objects in a local store, and the pointers derivations keep to them:
 *
 *   ROOT/code/<hash>        a code object (code-object.ts), read-only, named by its hash
 *   ROOT/d/<dref>/code      `<hash>\n`: the code object that defines this derivation
 *
 * The pointer sits beside drv.json and is not part of it, so the DRef stays
 * what docs/design.md says it is: one derivation may be defined by several
 * bundles over time (the same build function in an edited stage file), and
 * any of them rebuilds it; the newest recorded wins. Code objects are
 * written like outputs: a fresh temporary file, fsynced, then linked into
 * place (link never replaces one that is there), and read without
 * following a symlink.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { encodeCodeObject, isCodeName, parseCodeObject, type CodeObject } from './code-object.js';
import { fsyncPath, tempName, withRegularFile } from './fsutil.js';
import { shortHash } from './hash.js';
import { makeDirs } from './permissions.js';

export const CODE_DIR = 'code';
export const CODE_POINTER = 'code';

export function codePath(root: string, hash: string): string {
  if (!isCodeName(hash)) throw new CairnError('E_CODE_CORRUPT', `${JSON.stringify(hash)} is not a code object name`);
  return path.join(root, CODE_DIR, hash);
}

/**
 * Adds a code object's text (checked first: its fields, canonical form and
 * size); returns its name. Adding one the store has intact is a no-op; a
 * damaged copy under its name is replaced, and a symlink, directory or
 * special file there is E_CODE_CORRUPT (never written through).
 */
export function addCodeText(root: string, owner: string, text: string): string {
  const hash = shortHash(text);
  parseCodeObject(text, hash);
  const dest = codePath(root, hash);
  const st = lstatOrUndefined(dest);
  if (st !== undefined && !st.isFile()) {
    // Never taken as the object (nor written through): whatever planted it is for verify to report.
    throw new CairnError('E_CODE_CORRUPT', `code object ${hash}: a ${kindOf(st)} is in its place in the store`, {
      hash,
    });
  }
  // A damaged copy (truncated, edited) is replaced by the good text below, never kept under the name.
  const intact = st !== undefined && st.size === Buffer.byteLength(text) && sameText(dest, text);
  if (intact) {
    // Added again: fresh for gc's grace period, so it is not collected before its derivations point to it.
    const now = new Date();
    fs.lutimesSync(dest, now, now);
    return hash;
  }
  makeDirs(path.join(root, CODE_DIR));
  const tmp = path.join(root, 'tmp', tempName(owner, 'code'));
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o444);
  try {
    fs.writeFileSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    if (st === undefined) fs.linkSync(tmp, dest);
    else fs.renameSync(tmp, dest);
    fsyncPath(path.dirname(dest));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return hash;
}

/** Whether the regular file at `p` (never followed if a link) holds exactly `text`. */
function sameText(p: string, text: string): boolean {
  try {
    return withRegularFile(p, (fd) => fs.readFileSync(fd))?.equals(Buffer.from(text)) === true;
  } catch {
    return false;
  }
}

function lstatOrUndefined(p: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch {
    return undefined;
  }
}
const kindOf = (st: fs.Stats): string =>
  st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'directory' : 'special file';

export function addCodeObject(root: string, owner: string, obj: CodeObject): string {
  return addCodeText(root, owner, encodeCodeObject(obj).text);
}

/** A code object's text, checked against its name; undefined if the store lacks it. */
export function readCodeText(root: string, hash: string): string | undefined {
  const file = codePath(root, hash);
  let bytes: Buffer | null;
  try {
    bytes = withRegularFile(file, (fd) => fs.readFileSync(fd));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  if (bytes === null)
    throw new CairnError('E_CODE_CORRUPT', `code object ${hash} is not a regular file (a symlink?)`, { hash });
  parseCodeObject(bytes, hash);
  return bytes.toString('utf8');
}

/** The code object a derivation directory points to, or undefined (none, or a pointer that is not a name). */
export function readCodePointer(drvDir: string): string | undefined {
  let text: Buffer | null;
  try {
    text = withRegularFile(path.join(drvDir, CODE_POINTER), (fd) => fs.readFileSync(fd));
  } catch {
    return undefined;
  }
  const hash = text?.toString('latin1').replace(/\n$/, '');
  return hash !== undefined && isCodeName(hash) ? hash : undefined;
}

/** Points a derivation directory (which must exist) at a code object; unchanged if it already does. */
export function writeCodePointer(drvDir: string, hash: string, fsync = true): void {
  if (!isCodeName(hash)) throw new CairnError('E_CODE_CORRUPT', `${JSON.stringify(hash)} is not a code object name`);
  if (readCodePointer(drvDir) === hash) return;
  writeFileAtomic(path.join(drvDir, CODE_POINTER), `${hash}\n`, { mode: 0o444, fsync });
}

/** Every code object's name in the store (entries that are not names are verify's to report). */
export function listCode(root: string): string[] {
  try {
    return fs.readdirSync(path.join(root, CODE_DIR)).filter(isCodeName);
  } catch {
    return [];
  }
}

/**
 * A code object added or re-added within this long is never collected: a
 * realize or import adds the object first and points its derivations at
 * it a moment later, outside gc's transaction.
 */
export const CODE_GRACE_MS = 10 * 60 * 1000;

/**
 * Deletes (or with `dryRun` lists) the code objects no derivation in
 * `drvDirs` points to, except those younger than CODE_GRACE_MS; returns
 * their names and bytes.
 */
export function collectCode(
  root: string,
  drvDirs: Iterable<string>,
  dryRun: boolean,
  now = Date.now(),
): { code: string[]; bytes: number } {
  const live = new Set<string>();
  for (const dir of drvDirs) {
    const h = readCodePointer(dir);
    if (h !== undefined) live.add(h);
  }
  const dead: string[] = [];
  let bytes = 0;
  for (const hash of listCode(root)) {
    if (live.has(hash)) continue;
    const file = codePath(root, hash);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(file);
    } catch {
      continue;
    }
    if (!st.isFile() || now - st.mtimeMs < CODE_GRACE_MS) continue;
    if (!dryRun) fs.rmSync(file, { force: true });
    dead.push(hash);
    bytes += st.size;
  }
  return { code: dead.sort(), bytes };
}
