/**
 * Runs an attached `docker exec` / `docker run` with this process's stdin,
 * stdout and stderr, and returns the exit status to pass on. SIGINT,
 * SIGTERM and SIGHUP sent to cairn alone (not to its terminal's process
 * group) still reach the command: `onSignal` decides what that means (exec
 * forwards it to the docker client, run removes its container).
 */
import * as os from 'node:os';
import { CairnError } from '../errors.js';
import { dockerProcess } from '../backends/containers/docker.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type ForwardedSignal = (typeof SIGNALS)[number];

export function runAttached(
  args: readonly string[],
  opts: { stdin: boolean; onSignal: (sig: ForwardedSignal, child: { kill(sig: NodeJS.Signals): boolean }) => void },
): Promise<{ exitCode: number; signal?: ForwardedSignal }> {
  return new Promise((resolve, reject) => {
    const child = dockerProcess(args, [opts.stdin ? 'inherit' : 'ignore', 'inherit', 'inherit']);
    let got: ForwardedSignal | undefined;
    const handlers = SIGNALS.map((sig) => {
      const h = (): void => {
        got ??= sig;
        opts.onSignal(sig, child);
      };
      process.on(sig, h);
      return [sig, h] as const;
    });
    const off = (): void => handlers.forEach(([sig, h]) => process.off(sig, h));
    child.on('error', (e) => {
      off();
      reject(new CairnError('E_DOCKER', `cannot run the docker client: ${e.message}`, {}, { cause: e }));
    });
    child.on('close', (code, sig) => {
      off();
      // Interrupted: the shell's convention, 128 + the signal cairn got, whatever the client's status was.
      const exitCode = got
        ? 128 + os.constants.signals[got]
        : (code ?? 128 + (sig ? (os.constants.signals[sig] ?? 9) : 0));
      resolve({ exitCode, signal: got });
    });
  });
}
