/**
 * Machine pipelines. `machine(base).apply(step, args)` describes a machine
 * state without running anything; every applied step is a stage whose
 * realization is the machine state after the step (the backend's files plus
 * `machine.json`). Realizing a chain resumes the newest cached state and
 * runs only the steps after it; a fully cached chain runs nothing.
 *
 * Identity: a step stage's config names its parent stage (so its
 * realizations are told apart by the parent realization they were built
 * from, through the context), the step's name, its code (the source of its
 * `run` function, or its `version`) and its canonical args.
 *
 * Validity: a state may carry an expiry time and the content hashes of host
 * files the step declared with `dependOnFile`. The state matcher skips
 * expired states and states whose files changed, so the step runs again;
 * dependants follow, because their parent realization changes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { CairnError } from '../errors.js';
import { canonicalJson, type Json } from '../store/canonical.js';
import { parseDuration } from '../duration.js';
import type { BackendSession, BackendState, MachineBackend, RunningMachine } from '../backends/machine.js';
import { removeTree } from '../store/fsutil.js';
import { checkName, type RRef } from '../store/refs.js';
import { custom, type Candidate, type Matcher } from './matchers.js';
import { realize, type RealizeOptions, type RealizeResult } from './realize.js';
import { instantiate } from './instantiate.js';
import { stage, type BuildContext, type Stage } from './stage.js';

/** machine.json: what the pipeline knows about a state. */
export interface MachineDescription {
  format: 1;
  backend: string;
  /** The backend's own fields (see each backend). */
  state: BackendState;
  /** Milliseconds since the epoch after which the state is not reused, or null. */
  expiresAt: number | null;
  /** Host files the state depends on, by absolute path, with their sha256 when it was built. */
  files: { path: string; sha256: string }[];
  /** The step that made this state (null for a base). */
  step: { name: string; args: Json } | null;
}

export const DESCRIPTION = 'machine.json';

/** Backends registered with registerBackend(), and the built-in ones once used. */
const backends = new Map<string, MachineBackend>();

/**
 * The built-in backends, loaded and registered on first use: importing Cairn
 * registers no backend and constructs no driver, and the QEMU-only paths never
 * load Docker's code.
 */
const builtinBackends = new Map<string, () => Promise<MachineBackend>>([
  ['qemu', async () => (await import('../backends/qemu/qemu-machine.js')).qemuBackend],
  ['docker', async () => new (await import('../backends/containers/docker-machine.js')).DockerBackend()],
  ['ssh', async () => new (await import('../backends/ssh/ssh-machine.js')).SshBackend()],
]);

/** Bases of machines that cannot be snapshotted (ssh hosts): see liveBase(). */
const liveBases = new WeakSet<Stage>();

/**
 * Marks a base as a live machine (an ssh host): it has no snapshots, so
 * every step applied to it is transient. The steps run on every realize()
 * and use(), in order, and none is saved: a saved step would claim the host
 * is still in the state the step left, which nothing can guarantee.
 */
export function liveBase<S extends Stage<any>>(base: S): S {
  liveBases.add(base);
  return base;
}

/**
 * Makes a backend available to resume states whose machine.json names its
 * kind. It replaces a built-in one of the same kind, used or not.
 */
export function registerBackend(b: MachineBackend): void {
  backends.set(b.kind, b);
}

/** The kinds registered so far (a built-in backend appears once it has been used). */
export function registeredBackends(): string[] {
  return [...backends.keys()].sort();
}

/**
 * The backend that resumes states of `kind` (from a machine.json, so any
 * string): the registered one, else the built-in one, loaded now.
 */
export async function machineBackend(kind: string): Promise<MachineBackend> {
  const registered = backends.get(kind);
  if (registered) return registered;
  const load = builtinBackends.get(kind);
  if (!load) {
    const known = [...new Set([...backends.keys(), ...builtinBackends.keys()])].sort().join(', ');
    throw new CairnError('E_MACHINE_INCOMPATIBLE', `no machine backend "${kind}" is registered (known: ${known})`, {
      backend: kind,
    });
  }
  const b = await load();
  // One registered while this one loaded wins, as it would have if registered before.
  if (!backends.has(kind)) backends.set(kind, b);
  return backends.get(kind)!;
}

export function readDescription(stateDir: string): MachineDescription {
  let text: string;
  try {
    text = fs.readFileSync(path.join(stateDir, DESCRIPTION), 'utf8');
  } catch (e) {
    throw new CairnError('E_MACHINE_STATE', `${stateDir} is not a machine state: ${(e as Error).message}`, {
      dir: stateDir,
    });
  }
  return parseDescription(text, stateDir);
}

/** A machine description from its JSON text; `where` names it in errors. */
export function parseDescription(text: string, where: string): MachineDescription {
  let d: MachineDescription;
  try {
    d = JSON.parse(text) as MachineDescription;
  } catch (e) {
    throw new CairnError('E_MACHINE_STATE', `${where} is not a machine state: ${(e as Error).message}`, { dir: where });
  }
  if (d.format !== 1 || typeof d.backend !== 'string' || typeof d.state !== 'object' || !Array.isArray(d.files)) {
    throw new CairnError('E_MACHINE_STATE', `${where}/${DESCRIPTION} is not a machine description (format 1)`, {
      dir: where,
    });
  }
  return d;
}

const fileSha256 = (file: string): string | null => {
  try {
    return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch {
    return null;
  }
};

/** The sha256 of a host file a step depends on; E_NO_SUCH_PATH when it cannot be read. */
export function requireFileSha256(file: string, what: string): string {
  const sha256 = fileSha256(file);
  if (sha256 === null) throw new CairnError('E_NO_SUCH_PATH', `${what}: cannot read ${file}`, { path: file });
  return sha256;
}

/** Why a saved state may not be reused now, or null when it may. */
export function staleReason(d: MachineDescription, now = Date.now()): string | null {
  if (d.expiresAt !== null && d.expiresAt <= now) return `expired at ${new Date(d.expiresAt).toISOString()}`;
  for (const f of d.files) if (fileSha256(f.path) !== f.sha256) return `${f.path} changed`;
  return null;
}

/** The newest state that has not expired and whose files are unchanged. */
export function freshState(): Matcher {
  return custom(
    async (cands: readonly Candidate[]) => {
      for (let i = cands.length - 1; i >= 0; i--) {
        const c = cands[i]!;
        if (staleReason(parseDescription((await c.read(DESCRIPTION)).toString('utf8'), c.rref)) === null)
          return [c.rref];
      }
      return null;
    },
    { name: 'fresh-state' },
  );
}

/** What a step's `run` gets: the running machine, plus ways to limit the state's reuse. */
export interface StepMachine extends RunningMachine {
  readonly expiration: {
    /** The state this step saves is reused for at most this long ('1h', '30m', or ms). */
    cap(d: string | number): void;
  };
  /** Makes the state depend on a host file's content: if it changes, the step runs again. */
  dependOnFile(file: string): void;
  /** Appends a line to the step's build log. */
  log(message: string): void;
}

export interface StepSpec<A> {
  /** The step's stage name: letters, digits, `. _ + -`. */
  name: string;
  run(vm: StepMachine, args: A): void | Promise<void>;
  /** Stands in for the source of `run` in the identity (see stage()'s `version`). */
  version?: string;
}

export interface Step<A = Json> {
  readonly name: string;
  /** sha256 of the source of `run`, or the version. */
  readonly code: string;
  run(vm: StepMachine, args: A): void | Promise<void>;
}

export function step<A extends Json = Json>(spec: StepSpec<A>): Step<A> {
  checkName(spec?.name);
  if (typeof spec.run !== 'function')
    throw new CairnError('E_BAD_ARGUMENT', `step ${spec.name}: run must be a function`);
  const code =
    spec.version !== undefined
      ? `version:${spec.version}`
      : createHash('sha256').update(spec.run.toString()).digest('hex');
  return Object.freeze({ name: spec.name, code, run: spec.run });
}

export interface ApplyOptions {
  /**
   * `true`: the step's result is never saved; realizing gives the parent's
   * state, and any later step builds on an unsaved state, so it is not
   * saved either. `'last'`: transient only while it is the last step.
   */
  transient?: boolean | 'last';
  /** Expiry cap for the state, as `vm.expiration.cap()` would set it. */
  cache?: string | number;
}

interface Pending {
  step: Step<any>;
  args: Json;
  opts: ApplyOptions;
}

interface StepConfig {
  parent: Stage;
  step: string;
  code: string;
  args: Json;
  cache: number | null;
}

export interface MachineState {
  rref: RRef;
  /** The state's out/ directory. */
  dir: string;
  description: MachineDescription;
  result: RealizeResult;
}

export interface MachineRunOptions extends RealizeOptions {
  /** Log lines of transient steps, which run outside any build (saved steps log through `events.log`). */
  stepLog?(step: string, line: string): void;
}

export interface UseOptions extends Omit<MachineRunOptions, 'outLink'> {}

const toMs = (d: string | number): number => (typeof d === 'number' ? d : parseDuration(d));

/**
 * A machine reference: the newest stage that is saved, plus steps that
 * run only when the machine is used (transient ones).
 */
export class Machine {
  private constructor(
    readonly saved: Stage,
    private readonly pending: readonly Pending[],
  ) {}

  static of(base: Stage | Machine): Machine {
    return base instanceof Machine ? base : new Machine(base, []);
  }

  /** A new machine: this one after `step`. Nothing runs. */
  apply<A extends Json>(s: Step<A>, args: A, opts: ApplyOptions = {}): Machine {
    if (typeof s?.run !== 'function' || typeof s.code !== 'string')
      throw new CairnError('E_BAD_ARGUMENT', 'apply() needs a step made with step()');
    canonicalJson(args); // refuses non-JSON args now, not at realize time
    if (liveBases.has(this.saved)) return this.applyLive(s, args, opts);
    // A 'last' step followed by another one is an ordinary step after all.
    const before =
      this.pending.length === 1 && this.pending[0]!.opts.transient === 'last'
        ? new Machine(stepStage(this.saved, this.pending[0]!), [])
        : this;
    const p: Pending = { step: s, args, opts };
    if (opts.transient || before.pending.length > 0) return new Machine(before.saved, [...before.pending, p]);
    return new Machine(stepStage(before.saved, p), []);
  }

  /** On a live base every step is transient; a cache cap would promise a reuse that never happens. */
  private applyLive<A extends Json>(s: Step<A>, args: A, opts: ApplyOptions): Machine {
    if (opts.cache !== undefined)
      throw new CairnError(
        'E_BAD_ARGUMENT',
        `step ${s.name}: a cache cap does not apply on a live host (ssh): it has no snapshots, so its steps always run`,
        { step: s.name },
      );
    return new Machine(this.saved, [...this.pending, { step: s, args, opts: { ...opts, transient: true } }]);
  }

  /** Steps that run on every use and are never saved. */
  get transientSteps(): readonly string[] {
    return this.pending.map((p) => p.step.name);
  }

  /**
   * Realizes the saved part of the chain. Transient steps run (and are
   * thrown away) too, so their effects, such as a failing test, show.
   */
  async realize(opts: MachineRunOptions): Promise<MachineState> {
    const state = await this.realizeSaved(opts);
    if (this.pending.length > 0) await this.withSession(opts, state, async () => undefined);
    return state;
  }

  /** Starts the machine, runs `fn`, stops it and throws its changes away. */
  async use<T>(fn: (vm: RunningMachine) => T | Promise<T>, opts: UseOptions): Promise<T> {
    // The state must outlive the run: a resumed disk may read its backing chain.
    const roots = await opts.store.addTempRoots(instantiate(this.saved).order, 'machine-use');
    try {
      const state = await this.realizeSaved(opts);
      return await this.withSession(opts, state, fn);
    } finally {
      await roots.release();
    }
  }

  private async realizeSaved(opts: RealizeOptions): Promise<MachineState> {
    const result = await realize(this.saved, opts);
    const rref = result.targets[0]!.rrefs[0]!;
    const dir = opts.store.outPath(rref);
    return { rref, dir, description: readDescription(dir), result };
  }

  private async withSession<T>(
    opts: MachineRunOptions,
    state: MachineState,
    fn: (vm: RunningMachine) => T | Promise<T>,
  ): Promise<T> {
    const work = opts.store.makeTempDir('machine-use');
    let session: BackendSession | undefined;
    try {
      const backend = await machineBackend(state.description.backend);
      session = await backend.resume(state.dir, state.description.state, work);
      for (const p of this.pending) {
        const vm = stepMachine(session.machine, (line) => opts.stepLog?.(p.step.name, line), {
          expiresAt: null,
          files: [],
        });
        await p.step.run(vm, p.args);
      }
      return await fn(session.machine);
    } finally {
      await session?.discard();
      removeTree(work);
    }
  }
}

export function machine(base: Stage | Machine): Machine {
  return Machine.of(base);
}

function stepMachine(
  m: RunningMachine,
  log: (s: string) => void,
  limits: { expiresAt: number | null; files: MachineDescription['files'] },
): StepMachine {
  return {
    backend: m.backend,
    exec: m.exec.bind(m),
    console: m.console,
    upload: m.upload.bind(m),
    download: m.download.bind(m),
    // One log line per output line, so every line carries the step's prefix.
    log: (message: string) => {
      for (const line of message.split('\n')) log(line);
    },
    expiration: {
      cap(d: string | number): void {
        const at = Date.now() + toMs(d);
        limits.expiresAt = limits.expiresAt === null ? at : Math.min(limits.expiresAt, at);
      },
    },
    dependOnFile(file: string): void {
      const abs = path.resolve(file);
      const sha256 = requireFileSha256(abs, 'dependOnFile');
      if (!limits.files.some((f) => f.path === abs)) limits.files.push({ path: abs, sha256 });
    },
  };
}

/**
 * Where the realization being built will live, for relative references:
 * any path at the same depth works, since only the last-but-one component
 * (the realization hash) is unknown until the output is hashed.
 */
export function finalOutDir(storeOutPath: string, dref: string): string {
  // ROOT/d/<dref>/r/<rhash>/out -> ROOT/d
  const dDir = path.resolve(storeOutPath, '..', '..', '..', '..');
  return path.join(dDir, dref, 'r', 'pending', 'out');
}

/** Writes a state's description; the backend has already written its files to `out`. */
export function writeDescription(out: string, d: MachineDescription): void {
  fs.writeFileSync(path.join(out, DESCRIPTION), JSON.stringify(d, null, 2) + '\n');
}

/**
 * Runs a session to completion for a build: `body` drives the machine, then
 * the state is saved into the build's output, or the machine is thrown
 * away if anything failed.
 */
export async function saveSession(
  ctx: BuildContext<unknown>,
  session: BackendSession,
  finalDir: string,
  inherited: { expiresAt: number | null },
  stepInfo: MachineDescription['step'],
  body: (vm: StepMachine) => Promise<void>,
  cap: number | null = null,
): Promise<void> {
  const limits = { expiresAt: inherited.expiresAt, files: [] as MachineDescription['files'] };
  const vm = stepMachine(session.machine, ctx.log, limits);
  if (cap !== null) vm.expiration.cap(cap);
  let state: BackendState;
  try {
    await body(vm);
    state = await session.save(ctx.out, finalDir);
  } catch (e) {
    await session.discard();
    throw e;
  }
  writeDescription(ctx.out, {
    format: 1,
    backend: state.backend,
    state,
    expiresAt: limits.expiresAt,
    files: limits.files,
    step: stepInfo,
  });
}

function stepStage(parent: Stage, p: Pending): Stage<StepConfig> {
  const cache = p.opts.cache === undefined ? null : toMs(p.opts.cache);
  return stage<StepConfig>({
    name: p.step.name,
    config: { parent, step: p.step.name, code: p.step.code, args: p.args, cache },
    matcher: freshState(),
    outputs: [DESCRIPTION],
    // The step's own code is in the config; this build is the same for every step.
    version: 'cairn-machine-step-1',
    async build(ctx) {
      const parent = ctx.config.parent;
      const d = readDescription(parent.path);
      const session = await (await machineBackend(d.backend)).resume(parent.path, d.state, ctx.tmp);
      ctx.log(`resumed ${parent.rrefs[0]} (${d.backend})`);
      await saveSession(
        ctx,
        session,
        finalOutDir(parent.path, ctx.dref),
        { expiresAt: d.expiresAt },
        { name: p.step.name, args: p.args },
        async (vm) => {
          await p.step.run(vm, p.args);
        },
        cache,
      );
    },
  });
}
