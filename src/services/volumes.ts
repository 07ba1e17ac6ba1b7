/**
 * Volumes of a service: named volumes (kept by the engine, owned by the
 * project, surviving every container replacement until `down --volumes`)
 * and bind mounts of host paths. Parsing is pure; the docker calls are at
 * the end.
 *
 * Two spellings, both parsed to Mount:
 *   volumes: { data: '/var/lib/postgresql/15/main', './conf': { path: '/etc/app', readOnly: true } }
 *   volumes: ['data:/var/lib/postgresql/15/main', './conf:/etc/app:ro']     (compose's short syntax)
 * A source starting with `/` or `.` is a host path (relative: to the
 * ensemble file's directory); anything else names a volume of the project.
 */
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { docker } from '../backends/containers/docker.js';
import { LABEL_PROJECT, LABEL_VOLUME, volumeName } from './names.js';

export interface MountOptions {
  /** Absolute path in the container. */
  path: string;
  readOnly?: boolean;
}

/** Volume name or host path → container path (or `{ path, readOnly }`); or compose's `SRC:DST[:ro]` strings. */
export type VolumesSpec = Readonly<Record<string, string | MountOptions>> | readonly string[];

export interface Mount {
  kind: 'volume' | 'bind';
  /** The volume's short name (as written), or the absolute host path. */
  source: string;
  target: string;
  readOnly: boolean;
}

const VOLUME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
// --mount is a CSV list: a comma, quote or newline would end the field.
const UNSAFE_PATH = /[,"\n\r\0]/;

const invalid = (service: string, msg: string): CairnError =>
  new CairnError('E_SERVICE_INVALID', `service ${service}: ${msg}`, { service, key: 'volumes' });

const isHostPath = (s: string): boolean => s.startsWith('/') || s.startsWith('.');

function parseOne(service: string, source: string, target: unknown, baseDir: string): Mount {
  let dst: unknown = target;
  let readOnly = false;
  if (typeof target === 'object' && target !== null && !Array.isArray(target)) {
    const o = target as Record<string, unknown>;
    const extra = Object.keys(o).filter((k) => k !== 'path' && k !== 'readOnly');
    if (extra.length > 0)
      throw invalid(service, `volume ${source}: unknown option ${extra.join(', ')} (options: path, readOnly)`);
    if (o.readOnly !== undefined && typeof o.readOnly !== 'boolean')
      throw invalid(service, `volume ${source}: readOnly must be true or false`);
    dst = o.path;
    readOnly = o.readOnly === true;
  }
  if (typeof dst !== 'string' || !dst.startsWith('/') || dst === '/' || UNSAFE_PATH.test(dst) || dst.includes(':'))
    throw invalid(
      service,
      `volume ${source} needs an absolute container path other than / (no : , " or newline), ` +
        `not ${JSON.stringify(dst)}`,
    );
  const t = path.posix.normalize(dst).replace(/\/+$/, '');
  if (isHostPath(source)) {
    if (UNSAFE_PATH.test(source)) throw invalid(service, `host path ${JSON.stringify(source)} holds , " or a newline`);
    return { kind: 'bind', source: path.resolve(baseDir, source), target: t, readOnly };
  }
  if (!VOLUME_RE.test(source))
    throw invalid(
      service,
      `${JSON.stringify(source)} is neither a volume name (letters, digits, _ and -) ` +
        `nor a host path (starting with / or .)`,
    );
  return { kind: 'volume', source, target: t, readOnly };
}

/** compose's short syntax: `SRC:DST`, `SRC:DST:ro` or `SRC:DST:rw`. */
function parseShort(service: string, s: unknown, baseDir: string): Mount {
  if (typeof s !== 'string') throw invalid(service, `a volume in a list must be "SOURCE:PATH[:ro]", not ${typeof s}`);
  const parts = s.split(':');
  const mode = parts.length === 3 ? parts[2] : undefined;
  if (parts.length < 2 || parts.length > 3 || (mode !== undefined && mode !== 'ro' && mode !== 'rw'))
    throw invalid(service, `volume ${JSON.stringify(s)} must be "SOURCE:PATH", "SOURCE:PATH:ro" or "SOURCE:PATH:rw"`);
  return parseOne(service, parts[0]!, { path: parts[1], readOnly: mode === 'ro' }, baseDir);
}

/**
 * The mounts of a service, sorted by target; E_SERVICE_INVALID for a bad
 * name, a relative or duplicate container path. `baseDir` resolves relative
 * host paths (the ensemble file's directory).
 */
export function parseVolumes(service: string, spec: unknown, baseDir: string): Mount[] {
  if (spec === undefined) return [];
  let mounts: Mount[];
  if (Array.isArray(spec)) mounts = spec.map((s) => parseShort(service, s, baseDir));
  else if (typeof spec === 'object' && spec !== null)
    mounts = Object.entries(spec).map(([src, dst]) => parseOne(service, src, dst, baseDir));
  else throw invalid(service, 'volumes must be an object ({ name: "/path" }) or a list ("name:/path")');
  const seen = new Set<string>();
  for (const m of mounts) {
    if (seen.has(m.target)) throw invalid(service, `two volumes are mounted at ${m.target}`);
    seen.add(m.target);
  }
  return mounts.sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));
}

/** The `--mount` value of a mount (named volumes by their project-scoped engine name). */
export function mountArg(project: string, m: Mount): string {
  const src = m.kind === 'volume' ? volumeName(project, m.source) : m.source;
  return `type=${m.kind},source=${src},target=${m.target}${m.readOnly ? ',readonly' : ''}`;
}

/**
 * Creates the project's named volumes that the engine lacks, with the
 * project's labels (docker run would create them too, but unlabelled, and
 * `down --volumes` finds them by label). Creating an existing volume is a
 * no-op in the engine, so concurrent starts agree.
 */
export async function ensureVolumes(
  project: string,
  names: Iterable<string>,
  labels: Readonly<Record<string, string>>,
): Promise<void> {
  for (const v of new Set(names)) {
    const args = ['volume', 'create'];
    for (const [k, val] of Object.entries({ ...labels, [LABEL_PROJECT]: project, [LABEL_VOLUME]: v }))
      args.push('--label', `${k}=${val}`);
    await docker([...args, volumeName(project, v)]);
  }
}

/** Engine names of the project's volumes: those labelled with it, plus the declared names. */
export async function projectVolumes(project: string, declared: Iterable<string>): Promise<string[]> {
  const r = await docker(['volume', 'ls', '--quiet', '--filter', `label=${LABEL_PROJECT}=${project}`]);
  const names = new Set(r.stdout.split('\n').filter(Boolean));
  for (const d of declared) names.add(volumeName(project, d));
  return [...names].sort();
}

/** Removes volumes; an absent one is fine. Returns the names that existed and were removed. */
export async function removeVolumes(names: readonly string[]): Promise<string[]> {
  const removed: string[] = [];
  for (const n of names) {
    const r = await docker(['volume', 'rm', n], { check: false });
    if (r.exitCode === 0) removed.push(n);
    else if (!/no such volume/i.test(r.stderr))
      throw new CairnError('E_DOCKER', `cannot remove volume ${n}: ${r.stderr.trim()}`, { volume: n });
  }
  return removed;
}
