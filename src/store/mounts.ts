/**
 * Mounts left under a store's temporary directories by builds (a chroot's
 * /proc, a tmpfs, a bind mount), found in /proc/self/mountinfo and undone
 * before anything there is deleted.
 *
 * removeTree alone refuses to enter a directory on another device, but a
 * bind mount of a directory from the same filesystem has the same st_dev:
 * deleting through it would delete what it shows. So every deletion of a
 * build's directory asks the kernel's mount table first. Only the rare
 * caller with something to delete pays for it (one read of mountinfo).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { CairnError } from '../errors.js';
import { displayPath, removeTree, type FsPath } from './fsutil.js';

const MOUNTINFO = '/proc/self/mountinfo';
const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

/**
 * Mount points in mountinfo text (field 5 of each line), as bytes: the
 * kernel writes space, tab, newline and backslash as `\ooo`, every other
 * byte as it is, so a name need not be UTF-8.
 */
export function parseMountPoints(text: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf(0x0a, start);
    if (end < 0) end = text.length;
    const line = text.subarray(start, end);
    start = end + 1;
    let field = 0;
    let from = 0;
    for (let i = 0; i <= line.length && field < 5; i++) {
      if (i < line.length && line[i] !== 0x20) continue;
      if (field === 4) out.push(unescapeOctal(line.subarray(from, i)));
      field++;
      from = i + 1;
    }
  }
  return out;
}

function unescapeOctal(b: Buffer): Buffer {
  if (!b.includes(0x5c)) return Buffer.from(b);
  const bytes: number[] = [];
  for (let i = 0; i < b.length; i++) {
    const oct = b[i] === 0x5c && i + 3 < b.length ? b.subarray(i + 1, i + 4).toString('latin1') : '';
    if (/^[0-7]{3}$/.test(oct)) {
      bytes.push(parseInt(oct, 8));
      i += 3;
    } else bytes.push(b[i]!);
  }
  return Buffer.from(bytes);
}

/** The mount points among `points` at or below `dir` (both real paths), deepest first. */
export function mountPointsBelow(points: readonly Buffer[], dir: Buffer): Buffer[] {
  const d = dir.length > 1 && dir[dir.length - 1] === 0x2f ? dir.subarray(0, -1) : dir;
  const below = points.filter(
    (p) => p.equals(d) || (p.length > d.length && p[d.length] === 0x2f && p.subarray(0, d.length).equals(d)),
  );
  const depth = (p: Buffer): number => p.filter((c) => c === 0x2f).length;
  return below.sort((a, b) => depth(b) - depth(a) || b.length - a.length);
}

/** The mount points at or below `dir` now, deepest first; none where there is no /proc. */
export function mountsBelow(dir: FsPath): Buffer[] {
  let text: Buffer;
  let real: Buffer;
  try {
    text = fs.readFileSync(MOUNTINFO);
    real = fs.realpathSync(dir, { encoding: 'buffer' });
  } catch {
    return [];
  }
  return mountPointsBelow(parseMountPoints(text), real);
}

/**
 * Detaches (`umount -l`) every mount at or below `dir`, deepest first.
 * Each is opened without following a final link and unmounted through
 * its descriptor (`/proc/self/fd/N`), so a name that is not UTF-8 works
 * and a link planted where the mount was is never followed. Mounts stacked
 * on one point are peeled in a few rounds. Returns the mount points that
 * are still there (not root, say): the caller must not delete through them.
 */
export function unmountBelow(dir: FsPath): Buffer[] {
  let left = mountsBelow(dir);
  for (let round = 0; round < 4 && left.length > 0; round++) {
    const fds: number[] = [];
    try {
      for (const p of left) {
        try {
          fds.push(fs.openSync(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK));
        } catch {
          /* gone meanwhile, a link, or a dead FUSE mount: reported below if it stays */
        }
      }
      if (fds.length === 0) break;
      spawnSync('umount', ['-l', '-c', ...fds.map((_, i) => `/proc/self/fd/${i + 3}`)], {
        stdio: ['ignore', 'ignore', 'ignore', ...fds],
      });
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    left = mountsBelow(dir);
  }
  return left;
}

/**
 * Whether a mount could be at or below `dir`: it has a subdirectory (a
 * mount over a directory is where deleting could go through), or it lies
 * on another device than its parent. Reading mountinfo costs about 0.3 ms
 * on the benchmark VM, far more than these two syscalls, and most build
 * directories left to remove (an n > 1 build's emptied staging parent, a
 * failed small build) hold no directory at all. (A bind mount from the
 * same filesystem straight onto `dir`, holding no directory, is not seen:
 * only its files would be deleted, which the build could have done itself.)
 */
function mayHoldMounts(dir: FsPath): boolean {
  let ents: fs.Dirent<Buffer>[];
  try {
    ents = fs.readdirSync(dir, { withFileTypes: true, encoding: 'buffer' });
  } catch {
    return true;
  }
  if (ents.some((e) => e.isDirectory())) return true;
  const b = Buffer.from(dir as string);
  const slash = b.lastIndexOf(0x2f);
  try {
    return fs.lstatSync(b).dev !== fs.statSync(slash <= 0 ? '/' : b.subarray(0, slash)).dev;
  } catch {
    return true;
  }
}

/**
 * Removes a temporary tree that a build may have mounted things in: its
 * mounts are detached first; one that stays makes this fail with
 * E_MOUNT_IN_TREE before anything is deleted.
 */
export function removeBuildTree(dir: FsPath): void {
  if (!mayHoldMounts(dir)) {
    removeTree(dir);
    return;
  }
  const stuck = unmountBelow(dir);
  if (stuck.length > 0) {
    const shown = displayPath(stuck[0]!);
    throw new CairnError(
      'E_MOUNT_IN_TREE',
      `${shown} is a mount point that could not be unmounted; the tree holding it is left alone`,
      { path: shown, mounts: stuck.length },
    );
  }
  removeTree(dir);
}
