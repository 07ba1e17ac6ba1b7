import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';

/**
 * The modes the store creates things with, passed explicitly everywhere:
 * the umask can only take bits away, so a store made under `umask 000` is
 * as closed as one made under 022. Nothing in the store is ever writable by
 * group or others; realizations are sealed read-only on top of that.
 */
export const DIR_MODE = 0o755;
/** tmp/ entries, incoming/: builds in progress and unchecked trees are nobody else's business. */
export const PRIVATE_DIR_MODE = 0o700;
export const FILE_MODE = 0o644;

/** `mkdir -p` with the store's directory mode. */
export function makeDirs(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE });
}

const UID = process.geteuid?.() ?? 0;

/**
 * Why `st` (an lstat of a store entry) lets someone else change the store,
 * or null: another user owns it (root may own a store others use, as a
 * shared read-only store), or group or others may write to it. Group write
 * is refused too: a group member could swap realizations just the same.
 */
export function whyUnsafe(st: fs.Stats, uid = UID): string | null {
  if (st.uid !== uid && st.uid !== 0) return `owned by uid ${st.uid}, not by this user (uid ${uid}) or root`;
  if (st.isSymbolicLink()) return null;
  if ((st.mode & 0o022) === 0) return null;
  const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
  const who = [st.mode & 0o020 ? 'group' : '', st.mode & 0o002 ? 'others' : ''].filter(Boolean).join(' and ');
  return `mode ${mode} lets ${who} write`;
}

/** The entries of a store root that decide who can change it, and the type each must have. */
const KEY_ENTRIES: readonly { name: string; dir: boolean; optional: boolean }[] = [
  { name: 'd', dir: true, optional: false },
  { name: 'tmp', dir: true, optional: false },
  { name: 'index.sqlite', dir: false, optional: true },
  { name: 'index.sqlite-wal', dir: false, optional: true },
  { name: 'index.sqlite-shm', dir: false, optional: true },
];

/**
 * Refuses (E_STORE_UNSAFE) a store that another user can change: its root
 * or a key entry (d/, tmp/, the index and its WAL files) owned by someone
 * else or writable by group or others, or a key entry that is a symlink.
 * Runs on every open, so it is a handful of lstat calls and nothing more;
 * the entries below d/ are `store verify`'s business.
 */
export function checkStoreSafety(root: string): void {
  const problems: string[] = [];
  // The root itself may be reached through a symlink (CAIRN_STORE=~/link).
  const rootStat = fs.statSync(root);
  const why = whyUnsafe(rootStat);
  if (why) problems.push(`${root}: ${why}`);
  for (const e of KEY_ENTRIES) {
    const p = path.join(root, e.name);
    // No exception for a missing file: the WAL files are often absent, and this is the hot path.
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (st === undefined) {
      if (e.optional) continue;
      problems.push(`${p}: is missing`);
      continue;
    }
    if (e.dir ? !st.isDirectory() : !st.isFile()) {
      problems.push(`${p}: is not a ${e.dir ? 'directory' : 'regular file'}`);
      continue;
    }
    const w = whyUnsafe(st);
    if (w) problems.push(`${p}: ${w}`);
  }
  if (problems.length === 0) return;
  const q = shellQuote(root);
  throw new CairnError(
    'E_STORE_UNSAFE',
    `store ${root} can be changed by another user, so its realizations cannot be trusted:\n` +
      `  ${problems.join('\n  ')}\n` +
      `If no one else has written to it, fix it with: chown -R $(id -u) ${q} && ` +
      `chmod go-w ${q} ${q}/d ${q}/tmp ${q}/index.sqlite* && cairn --store ${q} store verify --repair`,
    { root, problems },
  );
}

function shellQuote(s: string): string {
  return /^[\w./+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Clears group and other write bits on a directory or regular file
 * without following a symlink (opened with O_NOFOLLOW, changed through the
 * descriptor, so a swap after the check changes nothing else).
 */
export function tightenMode(p: string | Buffer): void {
  const fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (st.isDirectory() || st.isFile()) fs.fchmodSync(fd, st.mode & 0o7755);
  } finally {
    fs.closeSync(fd);
  }
}
