/**
 * The imperative shell of services: the docker calls for networks,
 * containers, images and logs. Names and labels are fixed here so that
 * start, stop, status and the tests' cleanup agree on them.
 */
import { CairnError } from '../errors.js';
import { docker, inspectOne } from '../backends/containers/docker.js';
import {
  LABEL_DEPS,
  LABEL_ENSEMBLE,
  LABEL_ONEOFF,
  LABEL_PROJECT,
  LABEL_PROJECT_DIR,
  LABEL_SERVICE,
  LABEL_SPEC,
  containerName,
  networkName,
} from './names.js';
import type { LabelledContainer } from './project.js';

// The names live in names.ts (one place for every command); re-exported for existing callers.
export { LABEL_DEPS, LABEL_ENSEMBLE, LABEL_ONEOFF, LABEL_SERVICE, LABEL_SPEC, containerName, networkName };

export interface ContainerInfo {
  id: string;
  running: boolean;
  /** created, running, exited, … */
  status: string;
  exitCode: number;
  specHash: string | undefined;
  /** The LABEL_DEPS label; undefined when absent or unreadable (containers made before it existed). */
  deps: Record<string, string> | undefined;
  image: string;
  ports: Record<string, string>;
  /** The engine's restart policy name: no, on-failure, unless-stopped, always. */
  restartPolicy: string;
  /** How often the engine restarted it by its policy. */
  restarts: number;
  startedAt: string;
}

interface RawInspect {
  Id: string;
  Image: string;
  RestartCount?: number;
  State: { Status: string; Running: boolean; ExitCode: number; StartedAt?: string };
  Config: { Labels: Record<string, string> | null };
  HostConfig?: { RestartPolicy?: { Name?: string } };
  NetworkSettings: { Ports: Record<string, { HostIp: string; HostPort: string }[] | null> | null };
}

export async function inspectContainer(name: string): Promise<ContainerInfo | undefined> {
  const r = await docker(['container', 'inspect', name], { check: false });
  if (r.exitCode !== 0) {
    if (/no such (container|object)/i.test(r.stderr)) return undefined;
    throw new CairnError('E_DOCKER', `docker container inspect ${name}: ${r.stderr.trim()}`);
  }
  const c = inspectOne<RawInspect>(r.stdout)!;
  const ports: Record<string, string> = {};
  for (const [k, v] of Object.entries(c.NetworkSettings.Ports ?? {}))
    if (v && v[0]) ports[k] = `${v[0].HostIp}:${v[0].HostPort}`;
  return {
    id: c.Id,
    running: c.State.Running,
    status: c.State.Status,
    exitCode: c.State.ExitCode,
    specHash: c.Config.Labels?.[LABEL_SPEC],
    deps: parseDeps(c.Config.Labels?.[LABEL_DEPS]),
    image: c.Image,
    ports,
    restartPolicy: c.HostConfig?.RestartPolicy?.Name || 'no',
    restarts: c.RestartCount ?? 0,
    startedAt: c.State.StartedAt ?? '',
  };
}

function parseDeps(label: string | undefined): Record<string, string> | undefined {
  if (label === undefined) return undefined;
  try {
    const v = JSON.parse(label) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
    const entries = Object.entries(v as Record<string, unknown>);
    return entries.every(([, x]) => typeof x === 'string')
      ? (Object.fromEntries(entries) as Record<string, string>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** `labels` must hold the project's labels (cairn.ensemble, cairn.project). */
export async function ensureNetwork(project: string, labels: Record<string, string>): Promise<string> {
  const name = networkName(project);
  const r = await docker(['network', 'inspect', name], { check: false });
  if (r.exitCode === 0) return name;
  const args = ['network', 'create', '--driver', 'bridge'];
  for (const [k, v] of Object.entries(labels)) args.push('--label', `${k}=${v}`);
  const c = await docker([...args, name], { check: false });
  // Two starts racing: the other one created it.
  if (c.exitCode !== 0 && !/already exists/.test(c.stderr))
    throw new CairnError('E_DOCKER', `cannot create network ${name}: ${c.stderr.trim()}`);
  return name;
}

export async function removeNetwork(project: string): Promise<void> {
  await docker(['network', 'rm', networkName(project)], { check: false });
}

/** Every service container of the engine (any project), with Cairn's labels: one call. */
export async function listServiceContainers(): Promise<LabelledContainer[]> {
  const fmt = [LABEL_ENSEMBLE, LABEL_PROJECT, LABEL_PROJECT_DIR].map((l) => `{{.Label "${l}"}}`).join('\t');
  const r = await docker([
    'ps',
    '--all',
    '--no-trunc',
    '--filter',
    `label=${LABEL_ENSEMBLE}`,
    '--format',
    `{{.Names}}\t${fmt}`,
  ]);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [name = '', ensemble = '', project = '', dir = ''] = line.split('\t');
      return { name, ensemble, project, dir };
    });
}

export interface RunSpec {
  name: string;
  image: string;
  hostname: string;
  network: string;
  labels: Record<string, string>;
  env: Record<string, string>;
  ports: Record<string, number>;
  stopSignal: string | null;
  command: readonly string[] | null;
  /** The engine's restart policy (see health.ts engineRestartPolicy); absent: none. */
  restart?: string;
  /** `--mount` values (see volumes.ts mountArg). */
  mounts?: readonly string[];
}

export async function runContainer(spec: RunSpec): Promise<string> {
  // --init: tini as pid 1 forwards the stop signal and reaps zombies, so a
  // plain `sleep` or shell command stops at once instead of after the
  // 10 s grace period (a bare pid 1 ignores SIGTERM).
  const args = [
    'run',
    '--detach',
    '--init',
    '--name',
    spec.name,
    '--hostname',
    spec.hostname,
    '--network',
    spec.network,
    '--network-alias',
    spec.hostname,
  ];
  for (const [k, v] of Object.entries(spec.labels)) args.push('--label', `${k}=${v}`);
  for (const [k, v] of Object.entries(spec.env)) args.push('--env', `${k}=${v}`);
  // Published on loopback only: services are for this machine's tests and tools.
  for (const [c, h] of Object.entries(spec.ports)) args.push('--publish', `127.0.0.1:${h === 0 ? '' : h}:${c}`);
  for (const m of spec.mounts ?? []) args.push('--mount', m);
  if (spec.stopSignal) args.push('--stop-signal', spec.stopSignal);
  if (spec.restart) args.push('--restart', spec.restart);
  const r = await docker([...args, spec.image, ...(spec.command ?? [])]);
  return r.stdout.trim();
}

export async function startContainer(name: string): Promise<void> {
  await docker(['start', name]);
}

export async function stopContainer(name: string, timeoutS = 10): Promise<void> {
  await docker(['stop', '--time', String(timeoutS), name]);
}

export async function removeContainer(name: string): Promise<void> {
  const r = await docker(['rm', '--force', name], { check: false });
  if (r.exitCode !== 0 && !/no such container/i.test(r.stderr))
    throw new CairnError('E_DOCKER', `cannot remove ${name}: ${r.stderr.trim()}`);
}

/** Removes the one-off containers (`services run` without --rm, or left by a kill -9) of one service. */
export async function removeOneOffs(project: string, service: string): Promise<number> {
  const r = await docker([
    'ps',
    '--all',
    '--quiet',
    '--filter',
    `label=${LABEL_PROJECT}=${project}`,
    '--filter',
    `label=${LABEL_ONEOFF}=${service}`,
  ]);
  const ids = r.stdout.split('\n').filter(Boolean);
  if (ids.length > 0) await docker(['rm', '--force', ...ids], { check: false });
  return ids.length;
}

export async function containerLogs(name: string): Promise<string> {
  const r = await docker(['logs', name], { check: false });
  return r.stdout + r.stderr;
}

/** The host port bound for a container port (`5432` or `5432/udp`). */
export async function publishedPort(name: string, containerPort: number | string): Promise<number> {
  const key = String(containerPort).includes('/') ? String(containerPort) : `${containerPort}/tcp`;
  const info = await inspectContainer(name);
  const bound = info?.ports[key];
  if (!bound)
    throw new CairnError('E_SERVICE_FAILED', `${name} publishes no host port for ${key}`, {
      container: name,
      port: key,
    });
  return Number(bound.slice(bound.lastIndexOf(':') + 1));
}

/** The image id (sha256:…) a tag or id refers to; E_SERVICE_FAILED when the engine lacks it (nothing is pulled). */
export async function imageId(ref: string): Promise<string> {
  const r = await docker(['image', 'inspect', '--format', '{{.Id}}', ref], { check: false });
  if (r.exitCode !== 0)
    throw new CairnError(
      'E_SERVICE_FAILED',
      `image ${ref} is not in the engine, and Cairn pulls from no registry: build it as a stage, or load it first`,
      { image: ref },
    );
  return r.stdout.trim();
}

/**
 * `docker build` with the classic builder (no BuildKit, which the 20.10
 * engine's client here lacks as a plugin) and without pulling: the FROM
 * image must already be in the engine.
 */
export async function buildImage(opts: {
  directory: string;
  dockerfile: string;
  tag: string;
  buildArgs: Record<string, string>;
  labels: Record<string, string>;
  /** The build's output as it comes (progress). */
  onOutput?: (chunk: string) => void;
  signal?: AbortSignal;
}): Promise<string> {
  // --force-rm: the classic builder otherwise keeps the container of a
  // failed step, unlabelled, where no stop or down finds it.
  const args = ['build', '--force-rm', '--file', opts.dockerfile, '--tag', opts.tag];
  for (const [k, v] of Object.entries(opts.buildArgs)) args.push('--build-arg', `${k}=${v}`);
  for (const [k, v] of Object.entries(opts.labels)) args.push('--label', `${k}=${v}`);
  await docker([...args, opts.directory], {
    env: { DOCKER_BUILDKIT: '0' },
    onOutput: opts.onOutput,
    signal: opts.signal,
  });
  return imageId(opts.tag);
}
