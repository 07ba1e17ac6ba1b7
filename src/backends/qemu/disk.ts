/**
 * Writable copies of saved disk images. A saved state's disk is read-only
 * forever, so every resumed machine writes to a copy of its own:
 *
 * - `reflink`: an FICLONE copy (XFS with reflink=1, btrfs). Instant, shares
 *   extents, and the copy is a standalone image: no backing chain grows.
 * - `overlay`: a new qcow2 whose backing file is the saved image. Works on
 *   any filesystem; each saved step adds one link to the chain.
 * - `copy`: a full byte copy. Only for comparison (benchmarks).
 *
 * Backing files are recorded *relative* to the image inside the store, so a
 * store can be moved or synced to another host and its chains still resolve.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export type CloneMode = 'reflink' | 'overlay' | 'copy';

const reflinkByDir = new Map<string, boolean>();

/** Whether files in `dir` can be reflinked (tried once per directory and process). */
export function canReflink(dir: string): boolean {
  let ok = reflinkByDir.get(dir);
  if (ok !== undefined) return ok;
  const a = path.join(dir, `.reflink-probe-${process.pid}`);
  const b = `${a}-clone`;
  try {
    fs.writeFileSync(a, 'x');
    fs.copyFileSync(a, b, fs.constants.COPYFILE_FICLONE_FORCE);
    ok = true;
  } catch {
    ok = false;
  } finally {
    fs.rmSync(a, { force: true });
    fs.rmSync(b, { force: true });
  }
  reflinkByDir.set(dir, ok);
  return ok;
}

/** `auto`: reflink where the filesystem allows it, else an overlay. */
export function chooseCloneMode(requested: CloneMode | 'auto' | undefined, dir: string): CloneMode {
  if (requested && requested !== 'auto') return requested;
  return canReflink(dir) ? 'reflink' : 'overlay';
}

/** The backing file name stored in a qcow2 header, or null (read from the header, no process). */
export function qcow2Backing(file: string): string | null {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(20);
    fs.readSync(fd, h, 0, 20, 0);
    if (h.readUInt32BE(0) !== 0x514649fb) throw new Error(`${file} is not a qcow2 image`);
    const offset = Number(h.readBigUInt64BE(8));
    const size = h.readUInt32BE(16);
    if (offset === 0 || size === 0) return null;
    const name = Buffer.alloc(size);
    fs.readSync(fd, name, 0, size, offset);
    return name.toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** Rewrites the backing file name only (metadata; the data must already match). */
export async function rebaseUnsafe(file: string, backing: string): Promise<void> {
  await execFileP('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', file]);
}

/**
 * Makes `dst` a writable qcow2 whose contents are those of the saved image
 * `src`. Any backing file of the result is an absolute path, valid wherever
 * `dst` is; `storeRelative` turns it back into a relative one on save.
 */
export async function cloneDisk(src: string, dst: string, mode: CloneMode): Promise<void> {
  if (mode === 'overlay') {
    await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', path.resolve(src), dst]);
    return;
  }
  fs.copyFileSync(src, dst, mode === 'reflink' ? fs.constants.COPYFILE_FICLONE_FORCE : 0);
  fs.chmodSync(dst, 0o644);
  const backing = qcow2Backing(dst);
  if (backing && !path.isAbsolute(backing)) await rebaseUnsafe(dst, path.resolve(path.dirname(src), backing));
}

/**
 * Points a disk's absolute backing file (if any) at the same file, relative
 * to `finalDir`, the directory the image will live in.
 */
export async function makeBackingRelative(file: string, finalDir: string): Promise<void> {
  const backing = qcow2Backing(file);
  if (backing && path.isAbsolute(backing)) await rebaseUnsafe(file, path.relative(finalDir, backing));
}

/** Length of the backing chain below `file` (0 for a standalone image). */
export function chainLength(file: string): number {
  let n = 0;
  for (let f = file, b = qcow2Backing(f); b; b = qcow2Backing(f)) {
    f = path.resolve(path.dirname(f), b);
    n++;
  }
  return n;
}
