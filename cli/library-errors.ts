/**
 * Where the CLI meets the library's errors. Library messages name no CLI
 * flags (a library caller has none), so the CLI adds the flag that helps
 * when it prints an error; and flag values the CLI parses with a library
 * function are usage errors (E_USAGE, exit 2) on the command line.
 */
import { parseDuration } from '../src/duration.js';
import { CairnError, isCairnError } from '../src/errors.js';

/** The command-line remedy for a library error, if a flag is one. */
export function flagHint(e: CairnError): string | undefined {
  switch (e.code) {
    case 'E_REF_IN_USE':
      return Array.isArray(e.details.users) ? 'pass --force to remove it anyway' : undefined;
    case 'E_OUT_LINK_NOT_SYMLINK':
      return 'give --out-link a path that is free or a symlink';
    case 'E_NO_TARGET':
      return e.details.available !== undefined ? 'pick one with --stage' : undefined;
    case 'E_BAD_COMMAND':
      return 'see --ssh';
    case 'E_SYNC_FAILED':
      return e.details.notFound !== undefined ? 'name the remote cairn with --remote-cairn' : undefined;
    default:
      return undefined;
  }
}

/** The message the CLI prints for a library error: with its flag hint, once. */
export function cliMessage(e: CairnError): string {
  const hint = flagHint(e);
  return hint === undefined || e.message.includes(hint) ? e.message : `${e.message} (${hint})`;
}

/** parseDuration for a flag's value: a bad one is a wrong command line. */
export function durationFlag(flag: string): (text: string) => number {
  return (text) => {
    try {
      return parseDuration(text);
    } catch (e) {
      if (!isCairnError(e, 'E_BAD_ARGUMENT')) throw e;
      throw new CairnError('E_USAGE', `${flag}: ${e.message}`, { flag, value: text });
    }
  };
}
