/**
 * The pure core of ensembles: validation, dependency order and which
 * services a start or stop touches. No Docker, no I/O, so every rule here
 * is checked before anything starts.
 */
import { CairnError } from '../errors.js';
import { isStage } from '../stages/stage.js';
import { validateHealth } from './health-policy.js';
import { checkTemplate } from './interpolate.js';
import { checkSpecShape } from './spec-keys.js';
import type { EnsembleSpec, ServiceSpec } from './spec.js';

/** A hostname label (RFC 1123), lowercase so the name and the DNS name are the same string. */
const HOSTNAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const PORT_RE = /^[0-9]{1,5}(\/(tcp|udp))?$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

const invalid = (msg: string, details: Record<string, unknown> = {}): CairnError =>
  new CairnError('E_SERVICE_INVALID', msg, details);

/**
 * Refuses an ensemble with bad names, images, ports, env, unknown or
 * circular dependencies. Returns the services by name.
 */
export function validateEnsemble(e: EnsembleSpec): Map<string, ServiceSpec> {
  checkSpecShape(e);
  if (typeof e.name !== 'string' || !HOSTNAME_RE.test(e.name))
    throw invalid(`ensemble name ${JSON.stringify(e.name)} must be a lowercase hostname label (a-z, 0-9, -)`, {
      key: 'name',
    });
  const byName = new Map<string, ServiceSpec>();
  for (const s of e.services) {
    if (typeof s !== 'object' || s === null) throw invalid('a service must be an object');
    if (typeof s.name !== 'string' || !HOSTNAME_RE.test(s.name)) {
      throw invalid(
        `service name ${JSON.stringify(s.name)} is not a valid hostname: ` +
          `use 1-63 of a-z, 0-9 and -, not starting or ending with -`,
        { service: s.name, key: 'name' },
      );
    }
    if (byName.has(s.name)) throw invalid(`service ${s.name} is defined twice`, { service: s.name });
    byName.set(s.name, s);
    const sources = [s.image !== undefined, s.buildFromDirectory !== undefined].filter(Boolean).length;
    if (sources !== 1)
      throw invalid(`service ${s.name} needs exactly one of image and buildFromDirectory`, { service: s.name });
    if (s.image !== undefined && typeof s.image !== 'string' && !isStage(s.image))
      throw invalid(`service ${s.name}: image must be a tag or a stage`, { service: s.name, key: 'image' });
    if (typeof s.image === 'string' && !/^[A-Za-z0-9][A-Za-z0-9._/:@-]*$/.test(s.image))
      throw invalid(`service ${s.name}: ${JSON.stringify(s.image)} is not an image reference`, {
        service: s.name,
        key: 'image',
      });
    if (s.buildFromDirectory && typeof s.buildFromDirectory.directory !== 'string')
      throw invalid(`service ${s.name}: buildFromDirectory needs a directory`, {
        service: s.name,
        key: 'buildFromDirectory',
      });
    for (const [k, v] of Object.entries(s.env ?? {})) {
      if (!ENV_KEY_RE.test(k) || typeof v !== 'string')
        throw invalid(`service ${s.name}: env ${k} must be a variable name with a string value`, {
          service: s.name,
          key: 'env',
        });
      checkTemplate(v, `service ${s.name}: env ${k}`);
    }
    for (const [c, h] of Object.entries(s.ports ?? {})) {
      const cport = Number(c.split('/')[0]);
      if (!PORT_RE.test(c) || cport < 1 || cport > 65535 || !Number.isInteger(h) || h < 0 || h > 65535) {
        throw invalid(
          `service ${s.name}: port ${c} → ${h} must map a container port (1-65535, ` +
            `optionally /tcp or /udp) to a host port (0-65535, 0 = any)`,
          { service: s.name, key: 'ports' },
        );
      }
    }
    if (s.command !== undefined && (!Array.isArray(s.command) || s.command.some((a) => typeof a !== 'string')))
      throw invalid(`service ${s.name}: command must be an array of strings`, {
        service: s.name,
        key: 'command',
      });
    if (s.stopSignal !== undefined && !/^(SIG)?[A-Z0-9+-]+$/.test(s.stopSignal))
      throw invalid(`service ${s.name}: stopSignal ${JSON.stringify(s.stopSignal)} is not a signal name`, {
        service: s.name,
        key: 'stopSignal',
      });
    for (const hook of ['ping', 'postStartInit'] as const) {
      if (s[hook] !== undefined && typeof s[hook] !== 'function')
        throw invalid(`service ${s.name}: ${hook} must be a function`, { service: s.name, key: hook });
    }
    const at = s.pingAttemptTimeoutMs;
    if (at !== undefined && (typeof at !== 'number' || !Number.isFinite(at) || at <= 0))
      throw invalid(`service ${s.name}: pingAttemptTimeoutMs must be a number of milliseconds > 0`, {
        service: s.name,
      });
    validateHealth(s);
  }
  checkHostPorts(byName);
  for (const s of byName.values()) {
    for (const d of s.dependsOn ?? []) {
      if (!byName.has(d))
        throw invalid(`service ${s.name} depends on ${JSON.stringify(d)}, which is not defined`, {
          service: s.name,
          key: 'dependsOn',
          dependency: d,
        });
      if (d === s.name) throw invalid(`service ${s.name} depends on itself`, { service: s.name, key: 'dependsOn' });
    }
  }
  dependencyOrder(byName);
  return byName;
}

/**
 * Two publications of one host port (and protocol) can never both bind:
 * the second container would fail after the first ones started. Port 0
 * (any free port) never conflicts.
 */
function checkHostPorts(byName: ReadonlyMap<string, ServiceSpec>): void {
  const seen = new Map<string, string>();
  for (const s of byName.values()) {
    for (const [c, h] of Object.entries(s.ports ?? {})) {
      if (h === 0) continue;
      const key = `${h}/${c.split('/')[1] ?? 'tcp'}`;
      const other = seen.get(key);
      if (other !== undefined)
        throw invalid(`host port ${key} is published twice: by ${other} and by ${s.name} ${c}`, {
          service: s.name,
          port: key,
        });
      seen.set(key, `${s.name} ${c}`);
    }
  }
}

/** Dependencies first; E_SERVICE_INVALID naming the cycle if there is one. Ties keep definition order. */
export function dependencyOrder(byName: ReadonlyMap<string, ServiceSpec>): string[] {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, trail: string[]): void => {
    const st = state.get(name);
    if (st === 'done') return;
    if (st === 'visiting') {
      const cycle = [...trail.slice(trail.indexOf(name)), name];
      throw invalid(`circular dependency: ${cycle.join(' → ')}`, { cycle });
    }
    state.set(name, 'visiting');
    for (const d of byName.get(name)?.dependsOn ?? []) visit(d, [...trail, name]);
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of byName.keys()) visit(name, []);
  return order;
}

/** Every service that depends on `name`, directly or not. */
export function dependantsOf(byName: ReadonlyMap<string, ServiceSpec>, name: string): Set<string> {
  const out = new Set<string>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const s of byName.values()) {
      if (out.has(s.name)) continue;
      if ((s.dependsOn ?? []).some((d) => d === name || out.has(d))) {
        out.add(s.name);
        grew = true;
      }
    }
  }
  return out;
}

function checkExcluded(byName: ReadonlyMap<string, ServiceSpec>, exclude: readonly string[]): Set<string> {
  for (const x of exclude) if (!byName.has(x)) throw invalid(`excluded service ${x}: no such service`, { service: x });
  return new Set(exclude);
}

/**
 * The services a start touches, in dependency order. Starting a service
 * while excluding one of its dependencies is refused: the dependency's
 * state is not known to be good.
 */
export function selectForStart(byName: ReadonlyMap<string, ServiceSpec>, exclude: readonly string[]): string[] {
  const ex = checkExcluded(byName, exclude);
  const order = dependencyOrder(byName).filter((n) => !ex.has(n));
  for (const n of order) {
    const missing = (byName.get(n)!.dependsOn ?? []).filter((d) => ex.has(d));
    if (missing.length > 0)
      throw invalid(
        `cannot start ${n} without its dependenc${missing.length > 1 ? 'ies' : 'y'}` +
          ` ${missing.join(', ')} (excluded); exclude ${n} too`,
        { service: n, missing },
      );
  }
  return order;
}

/**
 * The services an `up` touches, in dependency order: the named ones and
 * everything they depend on (all services when none is named).
 */
export function selectForUp(byName: ReadonlyMap<string, ServiceSpec>, services: readonly string[]): string[] {
  for (const x of services) if (!byName.has(x)) throw invalid(`no service ${x} in the ensemble`, { service: x });
  if (services.length === 0) return dependencyOrder(byName);
  const want = new Set<string>();
  const add = (n: string): void => {
    if (want.has(n)) return;
    want.add(n);
    for (const d of byName.get(n)!.dependsOn ?? []) add(d);
  };
  services.forEach(add);
  return dependencyOrder(byName).filter((n) => want.has(n));
}

/**
 * The services a stop touches, dependants first. Excluding a service whose
 * dependency would be stopped is refused: it would keep running without it;
 * a kept service that is not running (`running` does not hold it) needs
 * nothing, so excluding it is fine.
 */
export function selectForStop(
  byName: ReadonlyMap<string, ServiceSpec>,
  exclude: readonly string[],
  running?: ReadonlySet<string>,
): string[] {
  const ex = checkExcluded(byName, exclude);
  const order = dependencyOrder(byName)
    .filter((n) => !ex.has(n))
    .reverse();
  for (const kept of ex) {
    if (running !== undefined && !running.has(kept)) continue;
    const stopped = (byName.get(kept)!.dependsOn ?? []).filter((d) => !ex.has(d));
    if (stopped.length > 0)
      throw invalid(
        `cannot keep ${kept} running while stopping its dependenc` +
          `${stopped.length > 1 ? 'ies' : 'y'} ${stopped.join(', ')}; exclude those too`,
        { service: kept, stopped },
      );
  }
  return order;
}
