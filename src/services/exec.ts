/**
 * `cairn services exec FILE SERVICE CMD...`: a command in a service's
 * running container, attached to this terminal, like `docker compose exec`:
 * stdin is always passed, a TTY is allocated only when asked for (the CLI
 * asks when its stdin is a terminal and -T was not given), and the
 * command's exit status is the result.
 */
import { CairnError } from '../errors.js';
import { runAttached } from './attached.js';
import { inspectContainer } from './engine.js';
import { selectServices } from './logs.js';
import type { Runner } from './runner.js';

export interface AttachOptions {
  /** Allocate a pseudo-TTY. */
  tty: boolean;
  /** Extra `KEY=VALUE` environment for the command. */
  env?: readonly string[];
  user?: string;
  workdir?: string;
}

/** `-e`, `-u`, `-w`: checked here, so a bad value is a clear error and not a docker one. */
export function attachArgs(o: AttachOptions): string[] {
  const args: string[] = [];
  for (const kv of o.env ?? []) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(kv))
      throw new CairnError('E_SERVICE_INVALID', `environment ${JSON.stringify(kv)} must be KEY=VALUE`, { env: kv });
    args.push('--env', kv);
  }
  if (o.user !== undefined) args.push('--user', o.user);
  if (o.workdir !== undefined) args.push('--workdir', o.workdir);
  return args;
}

/** Runs argv in the service's container; resolves to the exit status to pass on. */
export async function execInService(
  runner: Runner,
  service: string,
  argv: readonly string[],
  o: AttachOptions,
): Promise<number> {
  selectServices(runner, [service]);
  if (argv.length === 0) throw new CairnError('E_SERVICE_INVALID', `exec in ${service} needs a command`, { service });
  const extra = attachArgs(o);
  await runner.claim();
  const cname = runner.cname(service);
  const info = await inspectContainer(cname);
  if (!info?.running)
    throw new CairnError(
      'E_SERVICE_NOT_RUNNING',
      `${service} is not running (${info ? info.status : 'no container'}): start the ensemble first`,
      { service, state: info?.status ?? 'absent' },
    );
  const args = ['exec', '--interactive', ...(o.tty ? ['--tty'] : []), ...extra, cname, ...argv];
  // A signal sent to cairn alone goes on to the docker client, which ends; the command in the container
  // is the container's business (docker exec has no way to signal it).
  const r = await runAttached(args, { stdin: true, onSignal: (sig, child) => void child.kill(sig) });
  return r.exitCode;
}
