/**
 * Replacing a file or a symlink atomically without trusting the directory:
 * the new content goes to a fresh name beside the destination, then is
 * renamed over it. The fresh name is random (not `*.tmp-PID`, which another
 * user can predict and plant a symlink at), and it is created with
 * O_CREAT|O_EXCL|O_NOFOLLOW, so an existing entry of that name, a symlink
 * above all, is never opened or followed: the open fails and another name
 * is tried. rename() replaces the destination's entry itself, never what a
 * symlink there points to.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ATTEMPTS = 8;

/** `DIR/.BASE.RANDOM.tmp`: hidden, beside the destination (same filesystem, so rename is atomic). */
export function freshNameBeside(dest: string): string {
  // The base is shortened so the name stays under NAME_MAX (255 bytes).
  const base = path.basename(dest).slice(0, 200);
  return path.join(path.dirname(dest), `.${base}.${randomBytes(12).toString('hex')}.tmp`);
}

/** Retries `create` with fresh names while the name is taken (EEXIST); returns the name it created. */
function createFresh(dest: string, create: (name: string) => void): string {
  for (let i = 0; ; i++) {
    const name = freshNameBeside(dest);
    try {
      create(name);
      return name;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || i + 1 >= ATTEMPTS) throw e;
    }
  }
}

export interface WriteOptions {
  /** Permission bits of the new file (default 0o666, less the umask). */
  mode?: number;
  /** fsync the data before the rename, for files that must survive a crash whole. */
  fsync?: boolean;
}

/** Replaces `dest` with `data`: readers see the old file or the new one, never half of one. */
export function writeFileAtomic(dest: string, data: string | Uint8Array, opts: WriteOptions = {}): void {
  writeAtomic(dest, (fd) => fs.writeFileSync(fd, data), opts);
}

/**
 * Replaces `dest` with what `write` writes to the descriptor it is given
 * (for content made piece by piece, such as an export's tar): the same
 * fresh name, rename and clean-up as writeFileAtomic.
 */
export function writeAtomic(dest: string, write: (fd: number) => void, opts: WriteOptions = {}): void {
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  let fd = -1;
  const tmp = createFresh(dest, (name) => {
    fd = fs.openSync(name, flags, opts.mode ?? 0o666);
  });
  try {
    try {
      write(fd);
      if (opts.fsync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, dest);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Makes `dest` a symlink to `target`, replacing an existing entry of that name (not what it points to). */
export function symlinkAtomic(target: string, dest: string): void {
  // symlink() itself never follows or overwrites: a taken name is EEXIST.
  const tmp = createFresh(dest, (name) => fs.symlinkSync(target, name));
  try {
    fs.renameSync(tmp, dest);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
