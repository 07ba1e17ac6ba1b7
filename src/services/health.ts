/**
 * Health after start-up. Two places run a service's ping after `start`:
 * - `status` pings every running service once, now (one attempt, with the
 *   service's health timeout), and shows `healthy` or `unhealthy: why`;
 * - `status --watch` is a foreground supervisor: it pings the services
 *   that declare `health` every intervalS, marks one unhealthy after
 *   `retries` failures in a row, and restarts it (`docker restart`) when its
 *   `restart` policy is on-failure or always. It also reports every state
 *   change and every restart the engine made by itself.
 * Pings are TypeScript functions, so the engine cannot run them; what the
 * engine does alone, with no cairn process, is its restart policy: a service
 * whose process dies comes back by itself.
 */
import { isCairnError } from '../errors.js';
import { docker, requireDocker } from '../backends/containers/docker.js';
import { inspectContainer, type ContainerInfo } from './engine.js';
import { dependencyOrder } from './graph.js';
import { healthSettings, nextHealth, type HealthState } from './health-policy.js';
import { pause } from './pause.js';
import type { Runner, ServiceStatus } from './runner.js';
import type { ServiceSpec } from './spec.js';

export type Health = 'healthy' | 'unhealthy';

export interface PingResult {
  ok: boolean;
  /** Why not. */
  detail?: string;
}

/** One ping, bounded by timeoutMs; never throws. */
export async function pingNow(runner: Runner, svc: ServiceSpec, timeoutMs: number): Promise<PingResult> {
  if (!svc.ping) return { ok: true };
  const full = runner.handle(svc, runner.cname(svc.name));
  // The ping's commands end with it: a hung service must not keep a `docker exec` (and this process) alive.
  const h = {
    ...full,
    exec: (cmd: string | readonly string[], o: { timeoutMs?: number; input?: string } = {}) =>
      full.exec(cmd, { ...o, timeoutMs: Math.min(o.timeoutMs ?? timeoutMs, timeoutMs) }),
  };
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<PingResult>((resolve) => {
    timer = setTimeout(
      () => resolve({ ok: false, detail: `no answer within ${(timeoutMs / 1000).toFixed(1)}s` }),
      timeoutMs,
    );
  });
  const answer = (async (): Promise<PingResult> => {
    try {
      return (await svc.ping!(h)) === true ? { ok: true } : { ok: false, detail: 'ping returned false' };
    } catch (e) {
      return { ok: false, detail: `ping threw: ${isCairnError(e) ? e.message : ((e as Error)?.message ?? String(e))}` };
    }
  })();
  try {
    return await Promise.race([answer, late]);
  } finally {
    clearTimeout(timer);
  }
}

export interface HealthStatus extends ServiceStatus {
  /** For running services that have a ping. */
  health?: Health;
  healthDetail?: string;
  /** The engine's restart policy and how often it restarted the container. */
  restartPolicy?: string;
  restarts?: number;
}

/** The status with each running service pinged once, now, all in parallel. */
export async function checkHealth(runner: Runner, status: readonly ServiceStatus[]): Promise<HealthStatus[]> {
  return Promise.all(
    status.map(async (s): Promise<HealthStatus> => {
      const svc = runner.byName.get(s.name)!;
      const info = s.state === 'absent' ? undefined : await inspectContainer(runner.cname(s.name));
      const out: HealthStatus = { ...s, restartPolicy: info?.restartPolicy, restarts: info?.restarts };
      if (!info?.running || !svc.ping) return out;
      const r = await pingNow(runner, svc, healthSettings(svc).timeoutMs);
      return { ...out, health: r.ok ? 'healthy' : 'unhealthy', healthDetail: r.detail };
    }),
  );
}

export interface WatchOptions {
  /** Ends the watch. */
  signal: AbortSignal;
  /** One line per event. */
  report: (service: string, event: string) => void;
  /** How often services without `health` are looked at (their state only); default 2 s. */
  pollMs?: number;
}

/** The supervisor loop of `status --watch`, until the signal. */
export async function watchHealth(runner: Runner, o: WatchOptions): Promise<void> {
  await requireDocker();
  await Promise.all(dependencyOrder(runner.byName).map((n) => watchOne(runner, runner.byName.get(n)!, o)));
}

const describeState = (i: ContainerInfo | undefined): string =>
  !i ? 'absent' : i.running ? 'running' : i.status === 'exited' ? `exited (status ${i.exitCode})` : i.status;

async function watchOne(runner: Runner, svc: ServiceSpec, o: WatchOptions): Promise<void> {
  const cname = runner.cname(svc.name);
  const settings = healthSettings(svc);
  const tick = svc.health ? settings.intervalMs : (o.pollMs ?? 2000);
  let state: HealthState = { failures: 0, healthy: true };
  let last: ContainerInfo | undefined;
  let first = true;
  while (!o.signal.aborted) {
    if (!first) await pause(tick, o.signal);
    if (o.signal.aborted) return;
    const info = await inspectContainer(cname);
    if (first || describeState(info) !== describeState(last) || info?.id !== last?.id) {
      if (!first || !info?.running) o.report(svc.name, describeState(info));
    }
    if (!first && info && last && info.id === last.id && info.restarts > last.restarts)
      o.report(svc.name, `restarted by the engine (policy ${info.restartPolicy}, restart ${info.restarts})`);
    first = false;
    last = info;
    if (!svc.health || !info?.running) continue;
    const r = await pingNow(runner, svc, settings.timeoutMs);
    if (o.signal.aborted) return;
    const next = nextHealth(state, r.ok, settings, svc.restart);
    state = next.state;
    if (next.action === 'recovered') o.report(svc.name, 'healthy again');
    if (next.action === 'unhealthy') o.report(svc.name, `unhealthy: ${r.detail}`);
    if (next.action === 'restart') {
      o.report(svc.name, `unhealthy: ${r.detail}; restarting it (policy ${svc.restart})`);
      // A hung service may ignore its stop signal: 5 s, then the engine kills it.
      const rs = await docker(['restart', '--time', '5', cname], { check: false });
      o.report(svc.name, rs.exitCode === 0 ? 'restarted' : `restart failed: ${rs.stderr.trim()}`);
      last = await inspectContainer(cname);
    }
  }
}
