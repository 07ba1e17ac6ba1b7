/**
 * The pure core of service health: validating `restart` and `health`,
 * mapping the restart policy onto the engine's, and the state machine that
 * `status --watch` runs for each service after every ping. No I/O.
 */
import { CairnError } from '../errors.js';
import type { RestartPolicy, ServiceSpec } from './spec.js';

const POLICIES: readonly RestartPolicy[] = ['no', 'on-failure', 'always'];

export interface HealthSettings {
  intervalMs: number;
  timeoutMs: number;
  retries: number;
}

export const DEFAULT_HEALTH: HealthSettings = { intervalMs: 10_000, timeoutMs: 5_000, retries: 3 };

/** Refuses a bad `restart` or `health` (E_SERVICE_INVALID), before anything starts. */
export function validateHealth(s: ServiceSpec): void {
  const bad = (msg: string): CairnError => new CairnError('E_SERVICE_INVALID', `service ${s.name}: ${msg}`, {});
  if (s.restart !== undefined && !POLICIES.includes(s.restart))
    throw bad(`restart must be one of ${POLICIES.join(', ')}, not ${JSON.stringify(s.restart)}`);
  if (s.health === undefined) return;
  if (typeof s.health !== 'object' || s.health === null || Array.isArray(s.health))
    throw bad('health must be an object { intervalS, timeoutS, retries }');
  for (const [k, v] of Object.entries(s.health)) {
    if (!['intervalS', 'timeoutS', 'retries'].includes(k))
      throw bad(`health has no key ${JSON.stringify(k)} (it takes intervalS, timeoutS, retries)`);
    const ok =
      k === 'retries' ? Number.isInteger(v) && v >= 1 && v <= 1000 : typeof v === 'number' && v > 0 && v <= 86400;
    if (!ok) throw bad(`health.${k} must be ${k === 'retries' ? 'an integer from 1 to 1000' : 'seconds > 0'}`);
  }
  if (s.ping === undefined) throw bad('health needs a ping: the periodic checks run it');
}

export function healthSettings(s: ServiceSpec): HealthSettings {
  const h = s.health ?? {};
  return {
    intervalMs: h.intervalS !== undefined ? h.intervalS * 1000 : DEFAULT_HEALTH.intervalMs,
    timeoutMs: h.timeoutS !== undefined ? h.timeoutS * 1000 : DEFAULT_HEALTH.timeoutMs,
    retries: h.retries ?? DEFAULT_HEALTH.retries,
  };
}

/**
 * The engine's policy for ours. `always` is the engine's `unless-stopped`:
 * a service that `cairn services stop` stopped must stay stopped when the
 * engine itself restarts, which the engine's `always` would not honour.
 */
export function engineRestartPolicy(p: RestartPolicy | undefined): string {
  return p === 'always' ? 'unless-stopped' : (p ?? 'no');
}

export interface HealthState {
  /** Failed pings in a row. */
  failures: number;
  healthy: boolean;
}

export type HealthAction = 'none' | 'unhealthy' | 'recovered' | 'restart';

/**
 * One ping's result applied to a service's state. Unhealthy after `retries`
 * failures in a row; then, when the policy restarts failed services
 * (`on-failure`, `always`), the action is a restart and the count starts
 * again, so a restarted service has `retries` pings to come up.
 */
export function nextHealth(
  state: HealthState,
  ok: boolean,
  settings: Pick<HealthSettings, 'retries'>,
  policy: RestartPolicy | undefined,
): { state: HealthState; action: HealthAction } {
  if (ok) return { state: { failures: 0, healthy: true }, action: state.healthy ? 'none' : 'recovered' };
  const failures = state.failures + 1;
  if (failures < settings.retries) return { state: { failures, healthy: state.healthy }, action: 'none' };
  if (policy === 'on-failure' || policy === 'always')
    return { state: { failures: 0, healthy: false }, action: 'restart' };
  return { state: { failures, healthy: false }, action: state.healthy ? 'unhealthy' : 'none' };
}
