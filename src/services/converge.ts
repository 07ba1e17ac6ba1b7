/**
 * The pure core of `start`, `up` and `reload`: what to do with one service
 * given its container as found and its definition now. No docker calls.
 *
 * - `start` never replaces a running container (it notes a changed
 *   definition); a stopped one is restarted, or recreated if its spec changed.
 * - `up` converges: a container whose spec hash differs, or whose
 *   dependencies are no longer the containers it was created after, is
 *   recreated, running or not; the rest is started or left running.
 * - `reload` (and `alwaysStartNew`) always replace the container.
 *
 * In every mode a container whose start never finished (no init record:
 * the ping timed out, the init threw, the run was interrupted) gets its
 * ping and postStartInit again.
 */

export type Mode = 'start' | 'up' | 'reload';

/** A container as found (see engine.ts ContainerInfo), reduced to what decisions use. */
export interface Found {
  id: string;
  running: boolean;
  specHash: string | undefined;
  /** Dependency name → container id it was created after (the `cairn.deps` label); undefined for older containers. */
  deps: Record<string, string> | undefined;
}

export interface DecideInput {
  mode: Mode;
  found: Found | undefined;
  desiredHash: string;
  alwaysStartNew?: boolean;
  /** Whether the init record holds found.id (ping and postStartInit succeeded for this container). */
  initDone: boolean;
  /** Dependency name → its container id now (after it was started in this run). */
  depsNow: Record<string, string>;
}

export type Action = 'create' | 'recreate' | 'restart' | 'keep';

export interface Decision {
  action: Action;
  /** Run postStartInit after the ping (a new container, or one whose start never finished). */
  init: boolean;
  /** Why (shown in the report). */
  reason?: string;
}

/** Dependencies whose container is not the one this container was created after. */
export function replacedDependencies(found: Found, depsNow: Readonly<Record<string, string>>): string[] {
  if (found.deps === undefined) return [];
  return Object.keys(depsNow)
    .filter((d) => found.deps![d] !== depsNow[d])
    .sort();
}

export function decide(i: DecideInput): Decision {
  const f = i.found;
  if (f === undefined) return { action: 'create', init: true };
  if (i.mode === 'reload') return { action: 'recreate', init: true, reason: 'reload' };
  if (i.alwaysStartNew) return { action: 'recreate', init: true, reason: 'alwaysStartNew' };
  const changed = f.specHash !== i.desiredHash;
  if (i.mode === 'up') {
    const replaced = replacedDependencies(f, i.depsNow);
    const why = [
      ...(changed ? ['its definition changed'] : []),
      ...(replaced.length > 0 ? [`its dependency ${replaced.join(', ')} was recreated`] : []),
    ];
    if (why.length > 0) return { action: 'recreate', init: true, reason: why.join('; ') };
  } else if (changed) {
    if (!f.running) return { action: 'recreate', init: true, reason: 'its definition changed' };
    return {
      action: 'keep',
      init: !i.initDone,
      reason: 'its definition changed since it was created; `up` (or reload) recreates it',
    };
  }
  const pending = i.initDone ? undefined : 'its last start did not finish: ping and postStartInit again';
  return { action: f.running ? 'keep' : 'restart', init: !i.initDone, reason: pending };
}

export interface StaleInput {
  found: Found | undefined;
  /** undefined: the image is not built (or the env cannot be interpolated yet). */
  desiredHash: string | undefined;
  initDone: boolean;
  depsNow: Record<string, string>;
  /** Its dependencies that are stale themselves in a way `up` replaces (so `up` recreates this one too). */
  depsReplacedByUp?: readonly string[];
}

/** Why a service is stale against the file (empty: up to date). Pure, for `status`. */
export function staleness(i: StaleInput): string[] {
  const f = i.found;
  if (f === undefined) return ['no container'];
  const out: string[] = [];
  if (i.desiredHash === undefined) out.push('its image is not built');
  else if (f.specHash !== i.desiredHash) out.push('definition changed');
  const replaced = replacedDependencies(f, i.depsNow);
  if (replaced.length > 0) out.push(`dependency ${replaced.join(', ')} was recreated`);
  const pending = (i.depsReplacedByUp ?? []).filter((d) => !replaced.includes(d));
  if (pending.length > 0) out.push(`dependency ${pending.join(', ')} will be recreated`);
  if (!i.initDone) out.push('start not finished (postStartInit pending)');
  return out;
}

/**
 * Whether `up` gives this service a new container (so its dependants are recreated too): every
 * staleness reason but an unfinished start, which only pings and inits the same container again.
 */
export function replacedByUp(i: StaleInput): boolean {
  return staleness(i).some((r) => !r.startsWith('start not finished'));
}
