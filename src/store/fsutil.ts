import * as fs from 'node:fs';
import * as path from 'node:path';

export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}

/**
 * fsyncs many paths concurrently. On journaling filesystems concurrent
 * fsyncs share journal commits, so a realization costs about one commit
 * instead of one per file and directory. Only the fsync itself goes to
 * libuv's thread pool: opening and closing are a few microseconds inline,
 * while every trip to the pool costs two thread wake-ups, which on a VM
 * take longer than the open (about 250 µs a round trip on the benchmark
 * machine, see docs/benchmarks.md).
 */
export async function fsyncAll(paths: readonly string[], concurrency = 16): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const fd = fs.openSync(paths[next++]!, 'r');
      try {
        await new Promise<void>((resolve, reject) => fs.fsync(fd, (e) => (e ? reject(e) : resolve())));
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, paths.length) }, worker));
}

/**
 * Deletes a tree even when it is read-only. Directories must be writable to
 * unlink their entries, so write bits are restored on the way down; for a
 * read-only store tree this is the one place that ever adds them back.
 * Entries that vanish meanwhile (another process removing the same tree)
 * count as removed.
 */
export function removeTree(p: string): void {
  const gone = (e: unknown): boolean => (e as NodeJS.ErrnoException).code === 'ENOENT';
  let st: fs.Stats;
  try { st = fs.lstatSync(p); } catch (e) {
    if (gone(e)) return;
    throw e;
  }
  try {
    if (st.isDirectory()) {
      if ((st.mode & 0o200) === 0) fs.chmodSync(p, 0o700);
      for (const name of fs.readdirSync(p)) removeTree(path.join(p, name));
      fs.rmdirSync(p);
    } else {
      fs.unlinkSync(p);
    }
  } catch (e) {
    if (!gone(e)) throw e;
  }
}

/** Bytes used by a tree (apparent sizes of files, plus symlink targets). */
export function treeBytes(p: string): number {
  const st = fs.lstatSync(p);
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const name of fs.readdirSync(p)) total += treeBytes(path.join(p, name));
  return total;
}

/**
 * A process is named by its pid and its kernel start time, so a recycled
 * pid is never mistaken for the process that once held a lock.
 */
export function processStartTime(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses; fields after the
    // last ')' are space-separated, and starttime is field 22 overall.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

let selfOwner: string | undefined;
let tempCounter = 0;

/**
 * A fresh name for an entry of a store's `tmp/`: `owner` makes it unique
 * among processes and the counter within this one. (Random bytes cost
 * about 25 µs a call on the benchmark VM, and a build takes two names.)
 */
export function tempName(owner: string, label: string): string {
  return `${owner}-${label}-${(++tempCounter).toString(36)}`;
}

export function ownerId(): string {
  selfOwner ??= `${process.pid}.${processStartTime(process.pid) ?? '0'}`;
  return selfOwner;
}

export function ownerAlive(owner: string): boolean {
  const [pidText, start] = owner.split('.');
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return owner === ownerId();
  const actual = processStartTime(pid);
  if (actual !== null) return actual === start;
  if (fs.existsSync('/proc/self/stat')) return false;
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}
