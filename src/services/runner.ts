/**
 * start / stop / reload / status of an ensemble: the orchestration over the
 * pure core (graph.ts, interpolate.ts) and the docker calls (engine.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError, isCairnError } from '../errors.js';
import { requireDocker } from '../backends/containers/docker.js';
import { execArgv } from '../backends/containers/docker-machine.js';
import { ensureImage } from '../backends/containers/image.js';
import { realize } from '../stages/realize.js';
import type { Stage } from '../stages/stage.js';
import type { LocalStore } from '../store/store.js';
import { FileContext } from './context.js';
import {
  buildImage,
  containerLogs,
  ensureNetwork,
  imageId,
  inspectContainer,
  listServiceContainers,
  publishedPort,
  removeContainer,
  removeNetwork,
  removeOneOffs,
  runContainer,
  startContainer,
  stopContainer,
  type ContainerInfo,
  type RunSpec,
} from './engine.js';
import { engineRestartPolicy } from './health-policy.js';
import { syncRestartPolicy } from './restart-policy.js';
import { dependencyOrder, selectForStart, selectForStop, validateEnsemble } from './graph.js';
import { interpolateEnv, specHash, type ContainerSpec } from './interpolate.js';
import {
  buildTag,
  containerName,
  contextFileIn,
  LABEL_ENSEMBLE,
  LABEL_PROJECT,
  LABEL_PROJECT_DIR,
  LABEL_SERVICE,
  LABEL_SPEC,
  networkName,
} from './names.js';
import { checkClaim, legacyNote, resolveProject, type Project } from './project.js';
import type { EnsembleSpec, ServiceHandle, ServiceSpec } from './spec.js';
import { ensureVolumes, mountArg, parseVolumes, projectVolumes, removeVolumes, type Mount } from './volumes.js';

export const DEFAULT_PING_TIMEOUT_MS = 300_000;
const PING_INTERVAL_MS = 100;

export interface RunnerOptions {
  /** LocalStore that image stages are realized into. */
  store: LocalStore;
  /** The ensemble file: relative build directories and the default state dir are resolved against it. */
  file: string;
  /** Where the context file lives (default: `.cairn-services/` next to the ensemble file). */
  stateDir?: string;
  /** The project name (-p); default: derived from the file's directory and the ensemble name (project.ts). */
  project?: string;
  /** Ping timeout (default 300 s). */
  timeoutMs?: number;
  /** Progress lines (to stderr in the CLI). */
  log?: (line: string) => void;
}

export type Outcome =
  | 'created'
  | 'recreated'
  | 'restarted'
  | 'running'
  | 'reloaded'
  | 'failed'
  | 'dependency-failed'
  | 'stopped'
  | 'removed'
  | 'already-stopped'
  | 'absent'
  | 'orphan-removed';

export interface ServiceReport {
  name: string;
  outcome: Outcome;
  detail?: string;
  error?: CairnError;
  ms?: number;
}

/** The context file of a project (`project`: its name, see projectOf). */
export function contextFile(opts: Pick<RunnerOptions, 'file' | 'stateDir'>, project: string): string {
  return contextFileIn(opts.stateDir ?? path.join(path.dirname(path.resolve(opts.file)), '.cairn-services'), project);
}

/** The project an ensemble runs as with these options. */
export function projectOf(e: EnsembleSpec, opts: Pick<RunnerOptions, 'file' | 'project'>): Project {
  return resolveProject(opts.file, e.name, opts.project);
}

const failedOutcome = (o: Outcome): boolean => o === 'failed' || o === 'dependency-failed';

/** Throws E_SERVICE_FAILED summarizing the failures, if any. */
export function checkReports(reports: readonly ServiceReport[], verb: string): void {
  const bad = reports.filter((r) => failedOutcome(r.outcome));
  if (bad.length === 0) return;
  const what = bad.map((r) => `${r.name} (${r.error ? `${r.error.code}: ${r.error.message}` : r.detail})`).join('; ');
  throw new CairnError('E_SERVICE_FAILED', `${bad.length} of ${reports.length} service(s) failed to ${verb}: ${what}`, {
    failed: bad.map((r) => r.name),
  });
}

/** One ensemble file's services; the daily commands (logs, exec, run, health) use its images, specs and handles. */
export class Runner {
  readonly byName: Map<string, ServiceSpec>;
  readonly context: FileContext;
  readonly labels: Record<string, string>;
  readonly project: Project;
  private readonly log: (line: string) => void;

  constructor(
    readonly e: EnsembleSpec,
    readonly opts: RunnerOptions,
  ) {
    this.byName = validateEnsemble(e);
    this.project = projectOf(e, opts);
    this.context = new FileContext(contextFile(opts, this.project.name));
    this.labels = {
      ...e.labels,
      [LABEL_ENSEMBLE]: e.name,
      [LABEL_PROJECT]: this.project.name,
      [LABEL_PROJECT_DIR]: this.project.dir,
    };
    this.log = opts.log ?? (() => {});
  }

  /** The container of a service in this project. */
  cname(service: string): string {
    return containerName(this.project.name, service);
  }

  /**
   * Checks that the project is this copy's (E_PROJECT_IN_USE otherwise) and
   * notes containers from before project names. One engine call.
   */
  async claim(): Promise<void> {
    await requireDocker();
    const { legacy } = checkClaim(this.project, await listServiceContainers());
    if (legacy.length > 0) this.log(legacyNote(this.project, legacy));
  }

  mounts(svc: ServiceSpec): Mount[] {
    return parseVolumes(svc.name, svc.volumes, path.dirname(path.resolve(this.opts.file)));
  }

  /**
   * Before anything starts: every bind-mounted host path exists (docker
   * would otherwise fail half-way, or create an empty directory in its
   * place), and the named volumes exist with the project's labels.
   */
  async prepareMounts(services: readonly string[]): Promise<void> {
    const volumes: string[] = [];
    for (const name of services) {
      for (const m of this.mounts(this.byName.get(name)!)) {
        if (m.kind === 'volume') volumes.push(m.source);
        else if (!fs.existsSync(m.source))
          throw new CairnError(
            'E_SERVICE_INVALID',
            `service ${name}: host path ${m.source} (mounted at ${m.target}) does not exist`,
            { service: name, key: 'volumes', path: m.source },
          );
      }
    }
    await ensureVolumes(this.project.name, volumes, this.labels);
  }

  /** A tag (checked to exist) or an image stage (realized, then imported if the engine lacks it). */
  private async imageRef(img: string | Stage): Promise<string> {
    if (typeof img === 'string') {
      await imageId(img);
      return img;
    }
    const r = await realize(img, { store: this.opts.store });
    return ensureImage(this.opts.store, r.targets[0]!.rrefs[0]!);
  }

  /** The image reference to run and its id (the id is what the spec hash covers). */
  async resolveImage(svc: ServiceSpec): Promise<{ ref: string; id: string }> {
    if (svc.buildFromDirectory) {
      const b = svc.buildFromDirectory;
      const dir = path.resolve(path.dirname(path.resolve(this.opts.file)), b.directory);
      const buildArgs: Record<string, string> = {};
      if (b.baseImage !== undefined) buildArgs.BASE_IMAGE = await this.imageRef(b.baseImage);
      const tag = buildTag(this.project.name, svc.name);
      this.log(`${svc.name}: docker build ${dir}`);
      const id = await buildImage({
        directory: dir,
        dockerfile: path.join(dir, b.dockerfile ?? 'Dockerfile'),
        tag,
        buildArgs,
        labels: this.labels,
      });
      return { ref: tag, id };
    }
    const ref = await this.imageRef(svc.image as string | Stage);
    return { ref, id: await imageId(ref) };
  }

  handle(svc: ServiceSpec, container: string): ServiceHandle {
    return {
      name: svc.name,
      container,
      exec: (cmd, o = {}) =>
        execArgv(container, typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd, {
          timeoutMs: o.timeoutMs ?? 60_000,
          input: o.input,
        }),
      logs: () => containerLogs(container),
      hostPort: (port) => publishedPort(container, port),
      hostAddress: '127.0.0.1',
      context: this.context,
    };
  }

  /** How a service's container is run: `create` runs it, one-offs (run-once.ts) derive theirs from it. */
  runSpec(svc: ServiceSpec, image: string, spec: ContainerSpec, hash: string): RunSpec {
    return {
      name: this.cname(svc.name),
      image,
      hostname: svc.name,
      network: spec.network,
      labels: { ...this.labels, [LABEL_SERVICE]: svc.name, [LABEL_SPEC]: hash },
      env: spec.env,
      ports: spec.ports,
      stopSignal: spec.stopSignal,
      command: spec.command,
      mounts: this.mounts(svc).map((m) => mountArg(this.project.name, m)),
      restart: engineRestartPolicy(svc.restart),
    };
  }

  async create(svc: ServiceSpec, image: string, spec: ContainerSpec, hash: string): Promise<void> {
    await runContainer(this.runSpec(svc, image, spec, hash));
  }

  async containerSpec(svc: ServiceSpec, id: string): Promise<ContainerSpec> {
    const mounts = this.mounts(svc);
    return {
      ...(mounts.length > 0 ? { mounts } : {}),
      imageId: id,
      command: svc.command ? [...svc.command] : null,
      env: interpolateEnv(svc.env, this.context.all(), svc.name),
      ports: Object.fromEntries(Object.entries(svc.ports ?? {}).map(([c, h]) => [c.includes('/') ? c : `${c}/tcp`, h])),
      stopSignal: svc.stopSignal ?? null,
      network: networkName(this.project.name),
      hostname: svc.name,
    };
  }

  /** Pings every 0.1 s until true; a throwing ping, an exited container or the timeout fails the service. */
  async waitReady(svc: ServiceSpec, cname: string): Promise<void> {
    const timeoutMs = this.opts.timeoutMs ?? DEFAULT_PING_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const h = this.handle(svc, cname);
    let lastCheck = 0;
    for (;;) {
      const left = deadline - Date.now();
      let ok: boolean;
      try {
        ok = svc.ping ? (await withTimeout(Promise.resolve(svc.ping(h)), Math.max(left, 1))) === true : true;
      } catch (e) {
        if (isCairnError(e, 'E_PING_TIMEOUT')) throw pingTimeout(svc.name, timeoutMs);
        throw new CairnError(
          'E_SERVICE_FAILED',
          `${svc.name}: ping threw: ${(e as Error)?.message ?? String(e)}`,
          { service: svc.name },
          { cause: e },
        );
      }
      // A container that exited will never answer: say so now, with its
      // logs, instead of after the whole timeout.
      if (!ok || Date.now() - lastCheck > 1000) {
        lastCheck = Date.now();
        const info = await inspectContainer(cname);
        if (!info?.running) {
          const logs = (await containerLogs(cname)).trim().split('\n').slice(-5).join(' | ');
          throw new CairnError(
            'E_SERVICE_FAILED',
            `${svc.name}: container ` +
              `${info ? `exited with code ${info.exitCode}` : 'disappeared'}${logs ? `; last output: ${logs}` : ''}`,
            { service: svc.name },
          );
        }
      }
      if (ok) return;
      if (Date.now() >= deadline) throw pingTimeout(svc.name, timeoutMs);
      await sleep(PING_INTERVAL_MS);
    }
  }

  async startOne(svc: ServiceSpec, mode: 'start' | 'reload'): Promise<ServiceReport> {
    const t0 = performance.now();
    const cname = this.cname(svc.name);
    const image = await this.resolveImage(svc);
    const spec = await this.containerSpec(svc, image.id);
    const hash = specHash(spec);
    let existing: ContainerInfo | undefined = await inspectContainer(cname);
    let outcome: Outcome;
    let detail: string | undefined;
    if (existing && (svc.alwaysStartNew || mode === 'reload')) {
      await removeContainer(cname);
      existing = undefined;
      outcome = mode === 'reload' ? 'reloaded' : 'recreated';
    } else if (existing?.running) {
      outcome = 'running';
      if (existing.specHash !== hash)
        detail = 'its definition changed since it was created; stop and start it (or reload it) to apply';
    } else if (existing && existing.specHash === hash) {
      this.log(`${svc.name}: starting the stopped container`);
      await startContainer(cname);
      outcome = 'restarted';
    } else if (existing) {
      this.log(`${svc.name}: definition changed since the container was created; recreating it`);
      await removeContainer(cname);
      existing = undefined;
      outcome = 'recreated';
    } else {
      outcome = 'created';
    }
    const isNew = existing === undefined;
    if (isNew) {
      this.log(`${svc.name}: creating a container of ${image.ref}`);
      await this.create(svc, image.ref, spec, hash);
    } else {
      // The policy is not part of the spec hash: changing it updates the container in place.
      await syncRestartPolicy(cname, svc.restart, existing!.restartPolicy);
    }
    await this.waitReady(svc, cname);
    if (isNew && svc.postStartInit) {
      this.log(`${svc.name}: postStartInit`);
      try {
        await svc.postStartInit(this.handle(svc, cname));
      } catch (e) {
        throw new CairnError(
          'E_SERVICE_FAILED',
          `${svc.name}: postStartInit threw: ${(e as Error)?.message ?? String(e)}`,
          { service: svc.name },
          { cause: e },
        );
      }
    }
    const ms = performance.now() - t0;
    this.log(`${svc.name}: ${outcome}, ready in ${(ms / 1000).toFixed(1)}s`);
    return { name: svc.name, outcome, detail, ms };
  }

  /** Starts each service once all its dependencies are up; independent services start in parallel. */
  async start(exclude: readonly string[]): Promise<ServiceReport[]> {
    const order = selectForStart(this.byName, exclude);
    await this.claim();
    await this.prepareMounts(order);
    await ensureNetwork(this.project.name, this.labels);
    const started = new Map<string, Promise<ServiceReport>>();
    for (const name of order) {
      const svc = this.byName.get(name)!;
      started.set(
        name,
        (async (): Promise<ServiceReport> => {
          const deps = await Promise.all((svc.dependsOn ?? []).map((d) => started.get(d)!));
          const failed = deps.filter((r) => failedOutcome(r.outcome)).map((r) => r.name);
          if (failed.length > 0)
            return {
              name,
              outcome: 'dependency-failed',
              detail: `not started: dependency ${failed.join(', ')} failed`,
            };
          try {
            return await this.startOne(svc, 'start');
          } catch (e) {
            const err = isCairnError(e)
              ? e
              : new CairnError(
                  'E_SERVICE_FAILED',
                  `${name}: ${(e as Error)?.message ?? String(e)}`,
                  { service: name },
                  { cause: e },
                );
            this.log(`${name}: failed: ${err.code}: ${err.message}`);
            return { name, outcome: 'failed', error: err };
          }
        })(),
      );
    }
    return Promise.all(order.map((n) => started.get(n)!));
  }

  /** Stops dependants before their dependencies, one at a time. */
  async stop(exclude: readonly string[], remove: boolean): Promise<ServiceReport[]> {
    const order = selectForStop(this.byName, exclude);
    await this.claim();
    const reports: ServiceReport[] = [];
    for (const name of order) {
      const cname = this.cname(name);
      // One-offs of a removed service go with it (they are never counted as the service).
      if (remove) await removeOneOffs(this.project.name, name);
      const info = await inspectContainer(cname);
      if (!info) {
        reports.push({ name, outcome: 'absent' });
        continue;
      }
      if (info.running) {
        this.log(`${name}: stopping`);
        await stopContainer(cname);
      }
      if (remove) await removeContainer(cname);
      reports.push({ name, outcome: remove ? 'removed' : info.running ? 'stopped' : 'already-stopped' });
    }
    // With every container gone, the network and the context go too: new
    // containers get their postStartInit again, which sets the context anew.
    if (remove && exclude.length === 0) {
      await removeNetwork(this.project.name);
      this.context.remove();
    }
    return reports;
  }

  /**
   * `down`: stops and removes every container of the project (dependants
   * first, then containers of services no longer in the file), its network
   * and its context; with `volumes`, its named volumes too.
   */
  async down(volumes: boolean): Promise<{ reports: ServiceReport[]; volumes: string[] }> {
    const reports = await this.stop([], true);
    const orphans = (await listServiceContainers()).filter(
      (c) => c.project === this.project.name && !reports.some((r) => this.cname(r.name) === c.name),
    );
    for (const o of orphans) {
      this.log(`${o.name}: removing (its service is no longer in the file)`);
      await removeContainer(o.name);
      reports.push({ name: o.name, outcome: 'orphan-removed' });
    }
    // The network outlives a container removed after stop() tried: try again.
    if (orphans.length > 0) await removeNetwork(this.project.name);
    if (!volumes) return { reports, volumes: [] };
    const declared = [...this.byName.values()].flatMap((s) =>
      this.mounts(s).flatMap((m) => (m.kind === 'volume' ? [m.source] : [])),
    );
    return { reports, volumes: await removeVolumes(await projectVolumes(this.project.name, declared)) };
  }

  async reload(name: string): Promise<ServiceReport> {
    const svc = this.byName.get(name);
    if (!svc)
      throw new CairnError('E_SERVICE_INVALID', `no service ${name} in ensemble ${this.e.name}`, { service: name });
    await this.claim();
    for (const d of svc.dependsOn ?? []) {
      const info = await inspectContainer(this.cname(d));
      if (!info?.running)
        throw new CairnError(
          'E_SERVICE_FAILED',
          `cannot reload ${name}: its dependency ${d} is not running (start the ensemble first)`,
          { service: name, dependency: d },
        );
    }
    await this.prepareMounts([name]);
    await ensureNetwork(this.project.name, this.labels);
    try {
      return await this.startOne(svc, 'reload');
    } catch (e) {
      const err = isCairnError(e)
        ? e
        : new CairnError('E_SERVICE_FAILED', `${name}: ${(e as Error)?.message ?? String(e)}`, { service: name });
      return { name, outcome: 'failed', error: err };
    }
  }

  async status(): Promise<ServiceStatus[]> {
    await this.claim();
    const out: ServiceStatus[] = [];
    for (const name of dependencyOrder(this.byName)) {
      const info = await inspectContainer(this.cname(name));
      out.push({
        name,
        state: info?.status ?? 'absent',
        container: info?.id.slice(0, 12),
        ports: info?.ports ?? {},
        dependsOn: [...(this.byName.get(name)!.dependsOn ?? [])],
      });
    }
    return out;
  }
}

export interface ServiceStatus {
  name: string;
  /** running, exited, created, … or absent (no container). */
  state: string;
  container: string | undefined;
  ports: Record<string, string>;
  dependsOn: string[];
}

const pingTimeout = (name: string, ms: number): CairnError =>
  new CairnError('E_PING_TIMEOUT', `${name}: ping did not return true within ${(ms / 1000).toFixed(1)}s`, {
    service: name,
    timeoutMs: ms,
  });

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CairnError('E_PING_TIMEOUT', 'ping timed out')), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function startEnsemble(
  e: EnsembleSpec,
  opts: RunnerOptions & { exclude?: readonly string[] },
): Promise<ServiceReport[]> {
  return new Runner(e, opts).start(opts.exclude ?? []);
}

export async function stopEnsemble(
  e: EnsembleSpec,
  opts: RunnerOptions & { exclude?: readonly string[]; remove?: boolean },
): Promise<ServiceReport[]> {
  return new Runner(e, opts).stop(opts.exclude ?? [], !!opts.remove);
}

export async function downEnsemble(
  e: EnsembleSpec,
  opts: RunnerOptions & { volumes?: boolean },
): Promise<{ reports: ServiceReport[]; volumes: string[] }> {
  return new Runner(e, opts).down(!!opts.volumes);
}

export async function reloadService(e: EnsembleSpec, name: string, opts: RunnerOptions): Promise<ServiceReport> {
  return new Runner(e, opts).reload(name);
}

export async function ensembleStatus(e: EnsembleSpec, opts: RunnerOptions): Promise<ServiceStatus[]> {
  return new Runner(e, opts).status();
}
