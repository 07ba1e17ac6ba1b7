/**
 * Keeps stdout for one writer: from now on what anything else in this
 * process writes to process.stdout (a stage file's or a build function's
 * console.log) goes to stderr, and only the returned `write` reaches
 * stdout. Used where stdout carries results (`realize --json`) or a
 * protocol (`cairn builder-worker`'s frames).
 */
export function divertStdout(): {
  write: (chunk: string | Buffer, done?: (e?: Error | null) => void) => boolean;
  restore: () => void;
} {
  const stdout = process.stdout;
  const own = stdout.write;
  const write = own.bind(stdout) as (chunk: string | Buffer, done?: (e?: Error | null) => void) => boolean;
  stdout.write = ((...w: Parameters<typeof own>) => process.stderr.write(...w)) as typeof own;
  return {
    write,
    restore: () => void (stdout.write = own),
  };
}
