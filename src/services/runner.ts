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
import { readImageDescription, imageTag } from '../backends/containers/image.js';
import { realize } from '../stages/realize.js';
import type { Stage } from '../stages/stage.js';
import type { LocalStore } from '../store/store.js';
import { buildStepLines, resolveImages, type ImageJob } from './build-images.js';
import { FileContext } from './context.js';
import { decide, replacedByUp, staleness, type Decision, type Mode } from './converge.js';
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
import { dependencyOrder, selectForStart, selectForStop, selectForUp, validateEnsemble } from './graph.js';
import { InitRecord, initRecordFile } from './init-record.js';
import { interpolateEnv, specHash, type ContainerSpec } from './interpolate.js';
import {
  buildTag,
  containerName,
  contextFileIn,
  LABEL_DEPS,
  LABEL_ENSEMBLE,
  LABEL_PROJECT,
  LABEL_PROJECT_DIR,
  LABEL_SERVICE,
  LABEL_SPEC,
  networkName,
} from './names.js';
import { checkClaim, legacyNote, resolveProject, type Project } from './project.js';
import { DEFAULT_PING_ATTEMPT_TIMEOUT_MS, DEFAULT_PING_TIMEOUT_MS, interrupted, waitForPing } from './ping.js';
import type { EnsembleSpec, ServiceHandle, ServiceSpec } from './spec.js';
import { ensureVolumes, mountArg, parseVolumes, projectVolumes, removeVolumes, type Mount } from './volumes.js';

export { DEFAULT_PING_TIMEOUT_MS, DEFAULT_PING_ATTEMPT_TIMEOUT_MS };

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
  /** A status line replacing the previous one (a terminal's image build progress); see build-images.ts. */
  status?: (line: string) => void;
  /**
   * Aborted on Ctrl-C: no new step starts (image build, create, start,
   * ping attempt, init), docker calls already running finish (a build is
   * cancelled), hooks see `h.signal` aborted, and services not done report
   * `interrupted`. Whatever was left half-way is finished by the next start.
   */
  signal?: AbortSignal;
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
  | 'orphan-removed'
  | 'interrupted';

export interface ServiceReport {
  name: string;
  outcome: Outcome;
  detail?: string;
  error?: CairnError;
  ms?: number;
  /** The container id (services that are up). */
  container?: string;
}

/** The context file of a project (`project`: its name, see projectOf). */
export function contextFile(opts: Pick<RunnerOptions, 'file' | 'stateDir'>, project: string): string {
  return contextFileIn(opts.stateDir ?? path.join(path.dirname(path.resolve(opts.file)), '.cairn-services'), project);
}

/** The project an ensemble runs as with these options. */
export function projectOf(e: EnsembleSpec, opts: Pick<RunnerOptions, 'file' | 'project'>): Project {
  return resolveProject(opts.file, e.name, opts.project);
}

const failedOutcome = (o: Outcome): boolean => o === 'failed' || o === 'dependency-failed' || o === 'interrupted';

/**
 * Throws E_INTERRUPTED if any service was interrupted, else E_SERVICE_FAILED
 * summarizing the failures, if any. `brief`: name each failure by its code
 * only, for a caller that printed the reports already (the CLI), so an
 * error is shown once.
 */
export function checkReports(reports: readonly ServiceReport[], verb: string, opts: { brief?: boolean } = {}): void {
  const cut = reports.filter((r) => r.outcome === 'interrupted');
  if (cut.length > 0)
    throw new CairnError('E_INTERRUPTED', `${verb} interrupted; not finished: ${cut.map((r) => r.name).join(', ')}`, {
      interrupted: cut.map((r) => r.name),
    });
  const bad = reports.filter((r) => failedOutcome(r.outcome));
  if (bad.length === 0) return;
  const why = (r: ServiceReport): string =>
    r.error ? (opts.brief ? r.error.code : `${r.error.code}: ${r.error.message}`) : opts.brief ? r.outcome : r.detail!;
  const what = bad.map((r) => `${r.name} (${why(r)})`).join('; ');
  throw new CairnError('E_SERVICE_FAILED', `${bad.length} of ${reports.length} service(s) failed to ${verb}: ${what}`, {
    failed: bad.map((r) => r.name),
  });
}

interface ResolvedImage {
  ref: string;
  id: string;
}

const asCairnError = (name: string, e: unknown): CairnError =>
  isCairnError(e)
    ? e
    : new CairnError(
        'E_SERVICE_FAILED',
        `${name}: ${(e as Error)?.message ?? String(e)}`,
        { service: name },
        { cause: e },
      );

const OUTCOME: Record<Decision['action'], Outcome> = {
  create: 'created',
  recreate: 'recreated',
  restart: 'restarted',
  keep: 'running',
};

/** One ensemble file's services; the daily commands (logs, exec, run, health) use its images, specs and handles. */
export class Runner {
  readonly byName: Map<string, ServiceSpec>;
  readonly context: FileContext;
  readonly inits: InitRecord;
  readonly labels: Record<string, string>;
  readonly project: Project;
  private readonly log: (line: string) => void;
  private readonly interrupt: AbortSignal;

  constructor(
    readonly e: EnsembleSpec,
    readonly opts: RunnerOptions,
  ) {
    this.byName = validateEnsemble(e);
    this.project = projectOf(e, opts);
    const file = contextFile(opts, this.project.name);
    this.context = new FileContext(file);
    this.inits = new InitRecord(initRecordFile(file));
    this.labels = {
      ...e.labels,
      [LABEL_ENSEMBLE]: e.name,
      [LABEL_PROJECT]: this.project.name,
      [LABEL_PROJECT_DIR]: this.project.dir,
    };
    this.log = opts.log ?? (() => {});
    this.interrupt = opts.signal ?? new AbortController().signal;
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

  /** Called before each step that changes something: after Ctrl-C, nothing new starts. */
  private checkpoint(name: string): void {
    if (this.interrupt.aborted) throw interrupted(name);
  }

  /** A tag (checked to exist) or an image stage (realized, then imported if the engine lacks it). */
  private async imageRef(img: string | Stage, step: (line: string) => void = () => {}): Promise<string> {
    if (typeof img === 'string') {
      await imageId(img);
      return img;
    }
    const r = await realize(img, {
      store: this.opts.store,
      events: {
        start: (node) => step(`stage ${node.name}: building`),
        built: (node, _r, ms) => step(`stage ${node.name}: built in ${(ms / 1000).toFixed(1)}s`),
      },
    });
    this.checkpoint(img.name);
    return ensureImage(this.opts.store, r.targets[0]!.rrefs[0]!);
  }

  private buildTag(svc: ServiceSpec): string {
    return buildTag(this.project.name, svc.name);
  }

  /** The image reference to run and its id (the id is what the spec hash covers). */
  async resolveImage(svc: ServiceSpec, step: (line: string) => void = () => {}): Promise<ResolvedImage> {
    this.checkpoint(svc.name);
    if (svc.buildFromDirectory) {
      const b = svc.buildFromDirectory;
      const dir = path.resolve(path.dirname(path.resolve(this.opts.file)), b.directory);
      const buildArgs: Record<string, string> = {};
      if (b.baseImage !== undefined) buildArgs.BASE_IMAGE = await this.imageRef(b.baseImage, step);
      this.checkpoint(svc.name);
      const tag = this.buildTag(svc);
      step(`docker build ${dir}`);
      const id = await buildImage({
        directory: dir,
        dockerfile: path.join(dir, b.dockerfile ?? 'Dockerfile'),
        tag,
        buildArgs,
        labels: this.labels,
        onOutput: buildStepLines(step),
        signal: this.interrupt,
      }).catch((e: unknown) => {
        throw this.interrupt.aborted ? interrupted(svc.name) : e;
      });
      return { ref: tag, id };
    }
    const ref = await this.imageRef(svc.image as string | Stage, step);
    return { ref, id: await imageId(ref) };
  }

  /**
   * The image phase: every image of `names` at once, before any container
   * starts. Services with the same tag or the same stage share a job.
   */
  async prepareImages(names: readonly string[]): Promise<Map<string, ResolvedImage | Error>> {
    const jobs = new Map<unknown, ImageJob<ResolvedImage>>();
    for (const name of names) {
      const svc = this.byName.get(name)!;
      const key = svc.buildFromDirectory ? `build:${name}` : svc.image!;
      const job = jobs.get(key);
      if (job) {
        job.services.push(name);
        continue;
      }
      const what = svc.buildFromDirectory
        ? `docker build ${svc.buildFromDirectory.directory}`
        : typeof svc.image === 'string'
          ? svc.image
          : `stage ${svc.image!.name}`;
      jobs.set(key, { services: [name], what, run: (step) => this.resolveImage(svc, step) });
    }
    return resolveImages([...jobs.values()], { log: this.log, status: this.opts.status });
  }

  /**
   * The handle hooks get. `signal` aborts on Ctrl-C, and for a ping also when
   * the attempt's time is up; `exec` then ends by that deadline too.
   */
  handle(svc: ServiceSpec, container: string, signal: AbortSignal = this.interrupt, deadline?: number): ServiceHandle {
    return {
      name: svc.name,
      container,
      signal,
      exec: (cmd, o = {}) =>
        execArgv(container, typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd, {
          timeoutMs: Math.max(
            1,
            Math.min(o.timeoutMs ?? 60_000, deadline === undefined ? Infinity : deadline - Date.now()),
          ),
          input: o.input,
        }),
      logs: () => containerLogs(container),
      hostPort: (port) => publishedPort(container, port),
      hostAddress: '127.0.0.1',
      context: this.context,
    };
  }

  /**
   * How a service's container is run: `create` runs it, one-offs (run-once.ts) derive theirs from it.
   * `deps` (dependency → container id) becomes the LABEL_DEPS label of a service container.
   */
  runSpec(svc: ServiceSpec, image: string, spec: ContainerSpec, hash: string, deps?: Record<string, string>): RunSpec {
    return {
      name: this.cname(svc.name),
      image,
      hostname: svc.name,
      network: spec.network,
      labels: {
        ...this.labels,
        [LABEL_SERVICE]: svc.name,
        [LABEL_SPEC]: hash,
        ...(deps ? { [LABEL_DEPS]: JSON.stringify(deps) } : {}),
      },
      env: spec.env,
      ports: spec.ports,
      stopSignal: spec.stopSignal,
      command: spec.command,
      mounts: this.mounts(svc).map((m) => mountArg(this.project.name, m)),
      restart: engineRestartPolicy(svc.restart),
    };
  }

  async create(
    svc: ServiceSpec,
    image: string,
    spec: ContainerSpec,
    hash: string,
    deps: Record<string, string>,
  ): Promise<string> {
    return runContainer(this.runSpec(svc, image, spec, hash, deps));
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

  /** Pings until true (see ping.ts); a throwing ping, an exited container or the timeout fails the service. */
  async waitReady(svc: ServiceSpec, cname: string): Promise<void> {
    await waitForPing({
      service: svc.name,
      timeoutMs: this.opts.timeoutMs ?? DEFAULT_PING_TIMEOUT_MS,
      attemptTimeoutMs: svc.pingAttemptTimeoutMs ?? DEFAULT_PING_ATTEMPT_TIMEOUT_MS,
      interrupt: this.interrupt,
      attempt: async (signal, deadline) =>
        svc.ping ? (await svc.ping(this.handle(svc, cname, signal, deadline))) === true : true,
      dead: async () => {
        const info = await inspectContainer(cname);
        if (info?.running) return undefined;
        const logs = (await containerLogs(cname)).trim().split('\n').slice(-5).join(' | ');
        const how = info ? `exited with code ${info.exitCode}` : 'disappeared';
        return `container ${how}${logs ? `; last output: ${logs}` : ''}`;
      },
    });
  }

  /**
   * One service, its dependencies up (`depsNow`: their container ids). The
   * decision is converge.ts's; the start counts as finished, and is
   * recorded, only once the ping answered and postStartInit succeeded.
   */
  async startOne(
    svc: ServiceSpec,
    mode: Mode,
    image: ResolvedImage,
    depsNow: Record<string, string>,
  ): Promise<ServiceReport> {
    const t0 = performance.now();
    const cname = this.cname(svc.name);
    const spec = await this.containerSpec(svc, image.id);
    const hash = specHash(spec);
    const found = await inspectContainer(cname);
    const d = decide({
      mode,
      found,
      desiredHash: hash,
      alwaysStartNew: svc.alwaysStartNew,
      initDone: found !== undefined && this.inits.done(svc.name, found.id),
      depsNow,
    });
    this.checkpoint(svc.name);
    let id = found?.id;
    if (d.action === 'recreate') {
      this.log(`${svc.name}: ${d.reason}; recreating the container`);
      this.inits.forget(svc.name);
      await removeContainer(cname);
    }
    if (d.action === 'create' || d.action === 'recreate') {
      this.checkpoint(svc.name);
      this.log(`${svc.name}: creating a container of ${image.ref}`);
      id = await this.create(svc, image.ref, spec, hash, depsNow);
    } else {
      // The policy is not part of the spec hash: changing it updates the container in place.
      await syncRestartPolicy(cname, svc.restart, found!.restartPolicy);
      if (d.action === 'restart') {
        this.log(`${svc.name}: starting the stopped container`);
        await startContainer(cname);
      }
    }
    await this.waitReady(svc, cname);
    if (d.init) {
      this.checkpoint(svc.name);
      if (svc.postStartInit) {
        this.log(`${svc.name}: postStartInit`);
        try {
          await svc.postStartInit(this.handle(svc, cname));
        } catch (e) {
          if (this.interrupt.aborted) throw interrupted(svc.name);
          throw new CairnError(
            'E_SERVICE_FAILED',
            `${svc.name}: postStartInit threw: ${(e as Error)?.message ?? String(e)}`,
            { service: svc.name },
            { cause: e },
          );
        }
        this.checkpoint(svc.name);
      }
      this.inits.mark(svc.name, id!);
    }
    const outcome = d.action === 'recreate' && mode === 'reload' ? 'reloaded' : OUTCOME[d.action];
    const ms = performance.now() - t0;
    this.log(`${svc.name}: ${outcome}, ready in ${(ms / 1000).toFixed(1)}s`);
    const detail = d.action === 'recreate' && mode !== 'reload' ? `${d.reason}` : d.reason;
    return { name: svc.name, outcome, detail, ms, container: id };
  }

  /**
   * Images first (all at once), then each service once all its
   * dependencies are up; independent services start in parallel.
   */
  async run(order: readonly string[], mode: Mode): Promise<ServiceReport[]> {
    await this.claim();
    await this.prepareMounts(order);
    this.checkpoint(this.e.name);
    await ensureNetwork(this.project.name, this.labels);
    const images = await this.prepareImages(order);
    const started = new Map<string, Promise<ServiceReport>>();
    for (const name of order) {
      const svc = this.byName.get(name)!;
      started.set(
        name,
        (async (): Promise<ServiceReport> => {
          const deps = await Promise.all((svc.dependsOn ?? []).map((d) => started.get(d)!));
          const failed = deps.filter((r) => failedOutcome(r.outcome)).map((r) => r.name);
          if (failed.length > 0) {
            const cut = this.interrupt.aborted;
            return {
              name,
              outcome: cut ? 'interrupted' : 'dependency-failed',
              detail: `not started: dependency ${failed.join(', ')} ${cut ? 'interrupted' : 'failed'}`,
            };
          }
          try {
            const image = images.get(name)!;
            if (image instanceof Error) throw image;
            const depsNow = Object.fromEntries(deps.map((r) => [r.name, r.container!]));
            return await this.startOne(svc, mode, image, depsNow);
          } catch (e) {
            const err = asCairnError(name, e);
            if (err.code === 'E_INTERRUPTED' || this.interrupt.aborted)
              return { name, outcome: 'interrupted', error: err };
            this.log(`${name}: failed`);
            return { name, outcome: 'failed', error: err };
          }
        })(),
      );
    }
    return Promise.all(order.map((n) => started.get(n)!));
  }

  start(exclude: readonly string[]): Promise<ServiceReport[]> {
    return this.run(selectForStart(this.byName, exclude), 'start');
  }

  up(services: readonly string[]): Promise<ServiceReport[]> {
    return this.run(selectForUp(this.byName, services), 'up');
  }

  /** Stops dependants before their dependencies, one at a time. */
  async stop(exclude: readonly string[], remove: boolean): Promise<ServiceReport[]> {
    await this.claim();
    // Whether each service runs now: keeping an exited service while its
    // dependency stops breaks nothing (selectForStop).
    const infos = new Map<string, ContainerInfo | undefined>();
    for (const name of this.byName.keys()) infos.set(name, await inspectContainer(this.cname(name)));
    const running = new Set([...infos].filter(([, i]) => i?.running).map(([n]) => n));
    const order = selectForStop(this.byName, exclude, running);
    const reports: ServiceReport[] = [];
    for (const name of order) {
      const cname = this.cname(name);
      // One-offs of a removed service go with it (they are never counted as the service).
      if (remove) await removeOneOffs(this.project.name, name);
      const info = infos.get(name);
      if (!info) {
        reports.push({ name, outcome: 'absent' });
        continue;
      }
      if (info.running) {
        this.log(`${name}: stopping`);
        await stopContainer(cname);
      }
      if (remove) {
        this.inits.forget(name);
        await removeContainer(cname);
      }
      reports.push({ name, outcome: remove ? 'removed' : info.running ? 'stopped' : 'already-stopped' });
    }
    // With every container gone, the network and the context go too: new
    // containers get their postStartInit again, which sets the context anew.
    if (remove && exclude.length === 0) {
      await removeNetwork(this.project.name);
      this.context.remove();
      this.inits.remove();
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
    const depsNow: Record<string, string> = {};
    for (const d of svc.dependsOn ?? []) {
      const info = await inspectContainer(this.cname(d));
      if (!info?.running)
        throw new CairnError(
          'E_SERVICE_FAILED',
          `cannot reload ${name}: its dependency ${d} is not running (start the ensemble first)`,
          { service: name, dependency: d },
        );
      depsNow[d] = info.id;
    }
    await this.prepareMounts([name]);
    await ensureNetwork(this.project.name, this.labels);
    try {
      return await this.startOne(
        svc,
        'reload',
        await this.resolveImage(svc, (l) => this.log(`${name}: ${l}`)),
        depsNow,
      );
    } catch (e) {
      const err = asCairnError(name, e);
      return { name, outcome: err.code === 'E_INTERRUPTED' ? 'interrupted' : 'failed', error: err };
    }
  }

  /**
   * The image id a service would run now, without building anything: a
   * tag's id, the last `docker build` of the directory, or an image stage
   * only if it is realized already and the engine has it (else undefined).
   */
  private async currentImageId(svc: ServiceSpec): Promise<string | undefined> {
    try {
      if (svc.buildFromDirectory) return await imageId(this.buildTag(svc));
      if (typeof svc.image === 'string') return await imageId(svc.image);
      const r = await realize(svc.image!, { store: this.opts.store, dryRun: true });
      const rref = r.targets[0]?.rrefs[0];
      if (rref === undefined || !this.opts.store.has(rref)) return undefined;
      const dir = this.opts.store.outPath(rref);
      const desc = readImageDescription(dir);
      return await imageId(desc.format === 'docker-save' ? desc.imageId : imageTag(dir, desc.name));
    } catch {
      return undefined;
    }
  }

  async status(): Promise<ServiceStatus[]> {
    await this.claim();
    const out: ServiceStatus[] = [];
    const ids = new Map<string, string>();
    // Services `up` would replace: their dependants are stale too, as `up` recreates them as well.
    const replaced = new Set<string>();
    for (const name of dependencyOrder(this.byName)) {
      const svc = this.byName.get(name)!;
      const info = await inspectContainer(this.cname(name));
      if (info) ids.set(name, info.id);
      const image = await this.currentImageId(svc);
      let desiredHash: string | undefined;
      try {
        desiredHash = image === undefined ? undefined : specHash(await this.containerSpec(svc, image));
      } catch {
        desiredHash = undefined; // the context lacks a key its env uses: it was never started
      }
      const staleInput = {
        found: info,
        desiredHash,
        initDone: info !== undefined && this.inits.done(name, info.id),
        depsNow: Object.fromEntries((svc.dependsOn ?? []).map((d) => [d, ids.get(d) ?? ''])),
        depsReplacedByUp: (svc.dependsOn ?? []).filter((d) => replaced.has(d)),
      };
      const stale = staleness(staleInput);
      if (replacedByUp(staleInput)) replaced.add(name);
      out.push({
        name,
        state: info?.status ?? 'absent',
        container: info?.id.slice(0, 12),
        ports: info?.ports ?? {},
        dependsOn: [...(svc.dependsOn ?? [])],
        stale: stale.length > 0,
        staleReasons: stale,
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
  /** Whether `up` would change something: the container differs from the file, or its start never finished. */
  stale: boolean;
  staleReasons: string[];
}

export async function startEnsemble(
  e: EnsembleSpec,
  opts: RunnerOptions & { exclude?: readonly string[] },
): Promise<ServiceReport[]> {
  return new Runner(e, opts).start(opts.exclude ?? []);
}

/** Converges the services (all, or these and their dependencies) to the file: see converge.ts. */
export async function upEnsemble(
  e: EnsembleSpec,
  opts: RunnerOptions & { services?: readonly string[] },
): Promise<ServiceReport[]> {
  return new Runner(e, opts).up(opts.services ?? []);
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
