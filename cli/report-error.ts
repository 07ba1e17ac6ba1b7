import { isCairnError } from '../src/errors.js';
import { cliMessage } from './library-errors.js';

/** Reports an error the way every `cairn` command does; returns the exit code. */
export function reportError(e: unknown): number {
  if (isCairnError(e)) {
    process.stderr.write(`cairn: error ${e.code}: ${cliMessage(e)}\n`);
    return e.code === 'E_USAGE' ? 2 : 1;
  }
  process.stderr.write(`cairn: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return 70;
}
