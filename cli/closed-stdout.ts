/**
 * `cairn ... | head`: once the reader has gone, a write to stdout fails with
 * EPIPE. Node ignores SIGPIPE, so without this the failed write surfaces as
 * an uncaught 'error' event and a stack trace. Cairn instead does what a
 * Unix tool killed by SIGPIPE does: it stops quietly with 141 (128 + 13),
 * which `set -o pipefail` scripts recognise. Exiting runs the realize
 * guard's 'exit' handler (src/stages/build-processes.ts), so builds'
 * programs are ended and temporary directories removed as on any exit.
 * A command that listens for stdout errors itself handles the EPIPE instead.
 */
import * as os from 'node:os';

export const CLOSED_STDOUT_STATUS = 128 + os.constants.signals.SIGPIPE;

export function exitQuietlyWhenStdoutCloses(stream: NodeJS.WriteStream = process.stdout): void {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    // A command with a handler of its own (`services logs -f`) ends its follow loop and the docker
    // processes it runs, and exits 0 as a follow ends: exiting here would orphan them.
    if (e.code === 'EPIPE' && stream.listenerCount('error') > 1) return;
    if (e.code === 'EPIPE') process.exit(CLOSED_STDOUT_STATUS);
    // Any other stdout failure (EIO, ENOSPC on a redirect) is a real error: keep Node's default report.
    throw e;
  });
}
