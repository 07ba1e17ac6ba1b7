/**
 * Service ensembles as TypeScript values: what a user writes in an
 * ensemble file. Pure data plus hooks; nothing here talks to Docker.
 */
import { CairnError } from '../errors.js';
import type { ExecResult } from '../backends/machine.js';
import { isStage, type Stage } from '../stages/stage.js';
import { callerLocation, LOCATION } from './spec-location.js';
import type { VolumesSpec } from './volumes.js';

/** The ensemble's global context: string values shared by all services, persisted between runs. */
export interface ServiceContext {
  get(key: string): string | undefined;
  /** Sets a value and writes the context file at once. */
  set(key: string, value: string): void;
  all(): Record<string, string>;
}

/** What hooks get: the running container of one service. */
export interface ServiceHandle {
  readonly name: string;
  /** The container id. */
  readonly container: string;
  /** Runs `sh -c CMD` (a string) or the argv (an array) in the container. Never throws on a non-zero exit. */
  exec(cmd: string | readonly string[], opts?: { timeoutMs?: number; input?: string }): Promise<ExecResult>;
  /** The container's output so far (stdout and stderr). */
  logs(): Promise<string>;
  /** The host port published for a container port (as bound; 0 in the spec means "any free port"). */
  hostPort(containerPort: number): Promise<number>;
  /** The host address published ports are bound to. */
  readonly hostAddress: string;
  readonly context: ServiceContext;
  /**
   * Aborted when the run is interrupted (Ctrl-C) and, in a ping, when this
   * attempt's time is up (`pingAttemptTimeoutMs`): pass it to `fetch` and
   * the like so a hung request ends. `exec` ends by the attempt's deadline
   * by itself.
   */
  readonly signal: AbortSignal;
}

export interface BuildFromDirectory {
  /** The build context directory (relative paths: to the ensemble file). */
  directory: string;
  /** Dockerfile path relative to `directory` (default `Dockerfile`). */
  dockerfile?: string;
  /**
   * An image passed as the build argument BASE_IMAGE (`ARG BASE_IMAGE` /
   * `FROM ${BASE_IMAGE}`): a tag the engine has, or an image stage. Builds
   * never pull, so the base must exist locally.
   */
  baseImage?: string | Stage;
}

export interface ServiceSpec {
  /** The service's name, container hostname and DNS name on the ensemble network: a lowercase hostname label. */
  name: string;
  /** An image tag the engine has, or a stage producing an image (see dockerImage). */
  image?: string | Stage;
  /** Build the image with `docker build` instead (no registry: the base must exist locally). */
  buildFromDirectory?: BuildFromDirectory;
  /** Command (argv) run in the container; default: the image's CMD. */
  command?: readonly string[];
  /** Environment; `{key}` is replaced by the context value `key` (`{{` and `}}` are literal braces). */
  env?: Record<string, string>;
  /** Container port → host port (0: any free port), published on 127.0.0.1. */
  ports?: Record<string, number>;
  /**
   * Named volumes of the project (kept until `down --volumes`) and host paths (bind mounts), e.g.
   * `{ data: '/var/lib/postgresql/15/main', './conf': { path: '/etc/app', readOnly: true } }`
   * or compose's `['data:/var/lib/postgresql/15/main', './conf:/etc/app:ro']`. See volumes.ts.
   */
  volumes?: VolumesSpec;
  /** Names of services that must be up (pinged) before this one starts. */
  dependsOn?: readonly string[];
  /** Signal `docker stop` sends (default: the image's, else SIGTERM). */
  stopSignal?: string;
  /** Always replace the container on start, even when a matching one exists. */
  alwaysStartNew?: boolean;
  /**
   * Readiness: called every 0.1 s until it returns true (or the start
   * timeout). Each attempt gets `pingAttemptTimeoutMs`, then `h.signal`
   * aborts and the next attempt goes out; any other throw fails the service.
   */
  ping?: (h: ServiceHandle) => boolean | Promise<boolean>;
  /** How long one ping attempt may take (default 5000 ms). */
  pingAttemptTimeoutMs?: number;
  /**
   * Runs after the ping, once per container: a start counts as finished
   * (and is recorded) only when it succeeded. After an interrupted start or
   * a throw, the next start or up runs it again, so make it idempotent.
   */
  postStartInit?: (h: ServiceHandle) => void | Promise<void>;
  /**
   * The engine's restart policy, so a service that dies comes back even when
   * no cairn process runs: `no` (default), `on-failure` (non-zero exit), or
   * `always` (any exit, except after `cairn services stop`).
   */
  restart?: RestartPolicy;
  /** Periodic pings after start-up, run by `cairn services status --watch` (see health.ts). */
  health?: HealthSpec;
}

export type RestartPolicy = 'no' | 'on-failure' | 'always';

export interface HealthSpec {
  /** Seconds between pings (default 10). */
  intervalS?: number;
  /** Seconds one ping may take before it counts as failed (default 5). */
  timeoutS?: number;
  /** Failed pings in a row that make the service unhealthy (default 3). */
  retries?: number;
}

export interface EnsembleSpec {
  /**
   * The ensemble's name; with the file's directory it makes the default project name (see project.ts),
   * which names the network `cairn.<project>`, the containers `cairn.<project>.<service>`, the
   * volumes `cairn.<project>.<volume>` and the context file `<project>.context.json`.
   */
  name: string;
  services: readonly ServiceSpec[];
  /** Extra labels for every container and the network (tests use them for cleanup). */
  labels?: Record<string, string>;
}

const ENSEMBLE = Symbol.for('cairn.ensemble');

export interface Ensemble extends EnsembleSpec {
  readonly [ENSEMBLE]: true;
}

export function isEnsemble(x: unknown): x is Ensemble {
  return typeof x === 'object' && x !== null && (x as Record<symbol, unknown>)[ENSEMBLE] === true;
}

/** Identity helper for type checking service specs in ensemble files. */
export function service(spec: ServiceSpec): ServiceSpec {
  const at = callerLocation();
  // The call site rides on a symbol key, so key checks and the spec hash never see it.
  if (!at || typeof spec !== 'object' || spec === null) return spec;
  return Object.assign({ ...spec }, { [LOCATION]: at });
}

/** Declares an ensemble; validated (names, dependencies, cycles) when it is started or stopped. */
export function ensemble(spec: EnsembleSpec): Ensemble {
  if (typeof spec !== 'object' || spec === null || !Array.isArray(spec.services)) {
    const at = callerLocation();
    throw new CairnError(
      'E_SERVICE_INVALID',
      `${at ? `${at.file}:${at.line}: ` : ''}ensemble() needs { name, services: [...] }`,
      at ? { ...at } : {},
    );
  }
  return Object.freeze({ ...spec, [ENSEMBLE]: true as const, [LOCATION]: callerLocation() });
}

export function imageIsStage(img: ServiceSpec['image']): img is Stage {
  return isStage(img);
}
