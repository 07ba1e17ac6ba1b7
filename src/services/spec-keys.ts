/**
 * Strict ensemble specs: an unknown key (compose's `depends_on`, a typo)
 * or a field of the wrong type is E_SERVICE_INVALID naming the key and,
 * where one is close, the key that was meant. TypeScript checks this in an
 * editor; ensemble files run type-stripped, so the same rules are checked
 * here at load time. Pure.
 *
 * The key lists are typed as Record<keyof Spec, true>: a field added to
 * ServiceSpec and not listed here (or listed and not in ServiceSpec) fails
 * the type check, so the two cannot drift apart.
 */
import { CairnError } from '../errors.js';
import { closestWord } from '../did-you-mean.js';
import { isStage } from '../stages/stage.js';
import type { BuildFromDirectory, EnsembleSpec, ServiceSpec } from './spec.js';
import { parseVolumes } from './volumes.js';

const SERVICE_KEYS: Record<keyof ServiceSpec, true> = {
  name: true,
  image: true,
  buildFromDirectory: true,
  command: true,
  env: true,
  ports: true,
  volumes: true,
  dependsOn: true,
  stopSignal: true,
  alwaysStartNew: true,
  ping: true,
  pingAttemptTimeoutMs: true,
  postStartInit: true,
  restart: true,
  health: true,
};
const ENSEMBLE_KEYS: Record<keyof EnsembleSpec, true> = { name: true, services: true, labels: true };
const BUILD_KEYS: Record<keyof BuildFromDirectory, true> = { directory: true, dockerfile: true, baseImage: true };

/** docker-compose's names, and what Cairn calls the same thing (or why there is none). */
const COMPOSE: Readonly<Record<string, string>> = {
  depends_on: 'dependsOn',
  environment: 'env',
  env_file: 'env (read the file in the ensemble file)',
  build: 'buildFromDirectory',
  stop_signal: 'stopSignal',
  healthcheck: 'ping (readiness) and health (periodic pings)',
  entrypoint: 'command (the whole argv)',
  container_name: 'nothing: containers are named cairn.<project>.<service> (choose the project with -p)',
  hostname: 'name (the service name is the hostname)',
  networks: 'nothing: each project has one network, on which every service is reachable by its name',
  expose: 'nothing: services reach each other on the project network without it',
  pull_policy: 'nothing: Cairn never pulls',
};

/** Edit distance counting a swap of two neighbours as one edit (`evn` → `env`): optimal string alignment. */
/** compose's top-level keys, which an ensemble has no place for. */
const COMPOSE_TOP: Readonly<Record<string, string>> = {
  volumes: 'volumes on the services that mount them: named volumes need no top-level declaration',
  networks: 'nothing: each project has one network',
  version: 'nothing: an ensemble file has no format version',
};

/** The known key `key` was probably meant to be, or compose's equivalent; undefined if nothing is close. */
export function suggestKey(key: string, known: readonly string[], compose = COMPOSE): string | undefined {
  if (Object.hasOwn(compose, key)) return compose[key];
  const fold = (s: string): string => s.toLowerCase().replace(/[_-]/g, '');
  const same = known.find((k) => fold(k) === fold(key));
  if (same) return same;
  return closestWord(key, known);
}

function refuseUnknown(
  obj: object,
  known: Readonly<Record<string, true>>,
  where: string,
  details: Record<string, unknown>,
  compose?: Readonly<Record<string, string>>,
): void {
  for (const key of Object.keys(obj)) {
    if (Object.hasOwn(known, key)) continue;
    const hint = suggestKey(key, Object.keys(known), compose);
    throw new CairnError(
      'E_SERVICE_INVALID',
      `${where}: unknown key ${JSON.stringify(key)}` +
        `${hint ? ` (did you mean ${hint}?)` : ''}; known keys: ${Object.keys(known).join(', ')}`,
      { ...details, key, ...(hint ? { hint } : {}) },
    );
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !isStage(v);

function wrongType(where: string, key: string, want: string, got: unknown, details: Record<string, unknown>): never {
  const what = got === null ? 'null' : Array.isArray(got) ? 'an array' : typeof got;
  throw new CairnError('E_SERVICE_INVALID', `${where}: ${key} must be ${want}, not ${what}`, { ...details, key });
}

const isStringRecord = (v: unknown): boolean => isRecord(v) && Object.values(v).every((x) => typeof x === 'string');
const isStringArray = (v: unknown): boolean => Array.isArray(v) && v.every((x) => typeof x === 'string');

/**
 * Unknown keys and wrong types in an ensemble and its services, in the
 * order they are written; the finer rules (names, ports, cycles) are
 * graph.ts's validateEnsemble, which calls this first.
 */
export function checkSpecShape(e: EnsembleSpec): void {
  if (!isRecord(e)) throw new CairnError('E_SERVICE_INVALID', 'an ensemble must be an object { name, services }');
  refuseUnknown(e, ENSEMBLE_KEYS, 'ensemble', {}, COMPOSE_TOP);
  if (typeof e.name !== 'string') wrongType('ensemble', 'name', 'a string', e.name, {});
  if (!Array.isArray(e.services)) wrongType('ensemble', 'services', 'an array of services', e.services, {});
  if (e.labels !== undefined && !isStringRecord(e.labels))
    wrongType('ensemble', 'labels', 'an object of strings', e.labels, {});
  e.services.forEach((s, index) => {
    if (!isRecord(s)) throw new CairnError('E_SERVICE_INVALID', `services[${index}] must be an object`, { index });
    const name = typeof s.name === 'string' ? s.name : undefined;
    const where = name ? `service ${name}` : `services[${index}]`;
    const d = { service: name, index };
    refuseUnknown(s, SERVICE_KEYS, where, d);
    if (typeof s.name !== 'string') wrongType(where, 'name', 'a string', s.name, d);
    const checks: [keyof ServiceSpec, string, (v: unknown) => boolean][] = [
      ['image', 'a tag or an image stage', (v) => typeof v === 'string' || isStage(v)],
      ['buildFromDirectory', 'an object { directory, dockerfile?, baseImage? }', isRecord],
      ['command', 'an array of strings', isStringArray],
      ['env', 'an object of strings', isStringRecord],
      ['ports', 'an object of container port → host port numbers', (v) => isRecord(v)],
      ['dependsOn', 'an array of service names', isStringArray],
      ['stopSignal', 'a signal name', (v) => typeof v === 'string'],
      ['alwaysStartNew', 'true or false', (v) => typeof v === 'boolean'],
      ['ping', 'a function', (v) => typeof v === 'function'],
      ['pingAttemptTimeoutMs', 'milliseconds > 0', (v) => typeof v === 'number' && Number.isFinite(v) && v > 0],
      ['postStartInit', 'a function', (v) => typeof v === 'function'],
      ['restart', 'no, on-failure or always', (v) => typeof v === 'string'],
      ['health', 'an object { intervalS?, timeoutS?, retries? }', isRecord],
    ];
    for (const [key, want, ok] of checks) {
      const v = s[key];
      if (v !== undefined && !ok(v)) wrongType(where, key, want, v, d);
    }
    const b = s.buildFromDirectory;
    if (isRecord(b)) {
      refuseUnknown(b, BUILD_KEYS, `${where}: buildFromDirectory`, d);
      if (typeof b.directory !== 'string') wrongType(where, 'directory', 'a path', b.directory, d);
      if (b.dockerfile !== undefined && typeof b.dockerfile !== 'string')
        wrongType(where, 'dockerfile', 'a path', b.dockerfile, d);
      if (b.baseImage !== undefined && typeof b.baseImage !== 'string' && !isStage(b.baseImage))
        wrongType(where, 'baseImage', 'a tag or an image stage', b.baseImage, d);
    }
    // Relative host paths are resolved later, against the ensemble file: only the shape matters here.
    parseVolumes(name ?? `services[${index}]`, s.volumes, '/');
  });
}
