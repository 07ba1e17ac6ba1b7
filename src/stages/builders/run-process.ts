/** Runs a process (srun, ssh) with bytes on its stdin; collects its output. */
import { spawn } from 'node:child_process';
import { CairnError } from '../../errors.js';

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runWithInput(cmd: string, args: readonly string[], input: Buffer): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        new CairnError(
          'E_BUILDER_FAILED',
          e.code === 'ENOENT' ? `${cmd} is not installed (or not on PATH)` : `cannot run ${cmd}: ${e.message}`,
          { cmd },
        ),
      ),
    );
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // The other side may exit before reading all of its input (an error).
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
