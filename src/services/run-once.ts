/**
 * `cairn services run [--rm] FILE SERVICE [CMD...]`: a one-off container
 * made from the service's own run spec (image, env interpolated from the
 * context, stop signal; whatever else the service's container gets, such as
 * volumes, comes through the same RunSpec) on the ensemble's network, so it
 * reaches the other services by name. It is labelled as a one-off of the
 * service (never with the service label, so nothing counts it as the
 * service), gets no network alias and publishes no ports. With --rm the
 * engine removes it when it exits, and an interrupt removes it at once.
 */
import { randomBytes } from 'node:crypto';
import { docker, requireDocker } from '../backends/containers/docker.js';
import { runAttached } from './attached.js';
import { ensureNetwork, LABEL_ONEOFF, LABEL_SERVICE, LABEL_SPEC, type RunSpec } from './engine.js';
import { attachArgs, type AttachOptions } from './exec.js';
import { selectServices } from './logs.js';
import { specHash } from './interpolate.js';
import { checkReports, type Runner } from './runner.js';

export interface RunOnceOptions extends AttachOptions {
  /** Remove the container when it exits (and on an interrupt). */
  rm: boolean;
  /** Start the service's dependencies first (default true, as compose does). */
  deps: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** Every service the given one needs, directly or not (not itself). */
export function dependencyClosure(
  byName: ReadonlyMap<string, { dependsOn?: readonly string[] }>,
  name: string,
): Set<string> {
  const seen = new Set<string>();
  const visit = (n: string): void => {
    for (const d of byName.get(n)?.dependsOn ?? []) {
      if (!seen.has(d)) {
        seen.add(d);
        visit(d);
      }
    }
  };
  visit(name);
  return seen;
}

/** The one-off's `docker run` arguments (after `run`), from the service's RunSpec. */
export function oneOffArgs(base: RunSpec, name: string, o: RunOnceOptions, argv: readonly string[]): string[] {
  const labels: Record<string, string> = { ...base.labels, [LABEL_ONEOFF]: base.hostname };
  delete labels[LABEL_SERVICE];
  delete labels[LABEL_SPEC];
  const args = ['--init', '--interactive', ...(o.tty ? ['--tty'] : []), ...(o.rm ? ['--rm'] : [])];
  args.push('--name', name, '--network', base.network);
  for (const [k, v] of Object.entries(labels)) args.push('--label', `${k}=${v}`);
  for (const [k, v] of Object.entries(base.env)) args.push('--env', `${k}=${v}`);
  // The service's volumes and bind mounts: a one-off sees the same data (compose's run does too).
  for (const m of base.mounts ?? []) args.push('--mount', m);
  if (base.stopSignal) args.push('--stop-signal', base.stopSignal);
  args.push(...attachArgs(o), base.image, ...(argv.length > 0 ? argv : (base.command ?? [])));
  return args;
}

/** Runs the one-off attached to this terminal; resolves to its exit status. */
export async function runOnce(
  runner: Runner,
  service: string,
  argv: readonly string[],
  o: RunOnceOptions,
): Promise<number> {
  selectServices(runner, [service]);
  const svc = runner.byName.get(service)!;
  await requireDocker();
  const needs = dependencyClosure(runner.byName, service);
  if (o.deps && needs.size > 0) {
    const exclude = [...runner.byName.keys()].filter((n) => !needs.has(n));
    checkReports(await runner.start(exclude), 'start');
  } else {
    await runner.claim();
    await ensureNetwork(runner.project.name, runner.labels);
  }
  const image = await runner.resolveImage(svc);
  const spec = await runner.containerSpec(svc, image.id);
  const base = runner.runSpec(svc, image.ref, spec, specHash(spec));
  const name = `${base.name}.run-${randomBytes(4).toString('hex')}`;
  let removing: Promise<unknown> | undefined;
  const remove = (): Promise<unknown> => docker(['rm', '--force', name], { check: false });
  let again: NodeJS.Timeout | undefined;
  const r = await runAttached(['run', ...oneOffArgs(base, name, o, argv)], {
    stdin: true,
    onSignal: () => {
      if (removing) return;
      // Removed (or, without --rm, killed) at once. A signal that came while the engine was still
      // creating the container finds nothing yet: try again until the client ends.
      const act = (): Promise<unknown> => (o.rm ? remove() : docker(['kill', name], { check: false }));
      removing = act();
      again = setInterval(() => void act(), 1000);
    },
  });
  clearInterval(again);
  if (removing) {
    await removing;
    if (o.rm) await remove();
  }
  if (r.exitCode === 125 && !removing)
    o.log?.(`${service}: the engine could not run the one-off (status 125 is docker's own failure)`);
  return r.exitCode;
}
