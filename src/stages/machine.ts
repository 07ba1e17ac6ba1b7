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
import { CairnError, isCairnError } from '../errors.js';
import { canonicalJson, type Json } from '../store/canonical.js';
import { parseDuration } from '../duration.js';
import type {
  BackendSession,
  BackendState,
  MachineBackend,
  ResumeOptions,
  RunningMachine,
} from '../backends/machine.js';
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
]);

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

/**
 * The machine.json texts of states this process saved whose cap had already
 * run out when they were saved (a step that called `vm.expiration.cap(0)`,
 * or a cap shorter than publishing takes). The run that built such a state
 * still uses it once, instead of failing with E_MATCH_UNSATISFIED; no later
 * match reuses it.
 */
const expiredOnArrival = new Set<string>();

/** The newest state that has not expired and whose files are unchanged. */
export function freshState(): Matcher {
  return custom(
    async (cands: readonly Candidate[]) => {
      for (let i = cands.length - 1; i >= 0; i--) {
        const c = cands[i]!;
        const text = (await c.read(DESCRIPTION)).toString('utf8');
        const justSaved = expiredOnArrival.delete(text);
        if (justSaved || staleReason(parseDescription(text, c.rref)) === null) return [c.rref];
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
  /**
   * The step's default for `ApplyOptions.transient` (used when an application
   * gives neither `transient` nor `cache`): `'last'` for a test-like step that
   * should rerun whenever it ends the chain, as `script.run` does.
   */
  transient?: boolean | 'last';
}

export interface Step<A = Json> {
  readonly name: string;
  /** sha256 of the source of `run`, or the version. */
  readonly code: string;
  /** The step's own default for `transient` (see StepSpec). */
  readonly transient?: boolean | 'last';
  run(vm: StepMachine, args: A): void | Promise<void>;
}

export function step<A extends Json = Json>(spec: StepSpec<A>): Step<A> {
  checkName(spec?.name);
  if (typeof spec.run !== 'function')
    throw new CairnError('E_BAD_ARGUMENT', `step ${spec.name}: run must be a function`);
  if (spec.transient !== undefined && typeof spec.transient !== 'boolean' && spec.transient !== 'last')
    throw new CairnError('E_BAD_ARGUMENT', `step ${spec.name}: transient must be true, false or 'last'`);
  const code =
    spec.version !== undefined
      ? `version:${spec.version}`
      : createHash('sha256').update(spec.run.toString()).digest('hex');
  return Object.freeze({
    name: spec.name,
    code,
    run: spec.run,
    ...(spec.transient !== undefined ? { transient: spec.transient } : {}),
  });
}

export interface ApplyOptions {
  /**
   * `true`: the step runs on every realize()/use() on a throwaway copy of
   * the last saved state and its effects are thrown away: realizing gives
   * that saved state, and the next (saved) step builds on it, not on the
   * transient step's effects. `'last'`: transient only while it is the last
   * step; followed by another step, it is an ordinary saved step. `false`:
   * saved, whatever the step's own default. Default: the step's own
   * `transient`, unless `cache` is given (a cache cap asks for a saved state).
   */
  transient?: boolean | 'last';
  /**
   * Expiry cap for the state, as `vm.expiration.cap()` would set it, counted
   * from when the state is saved. `0` (or `'0s'`): never reuse. The step is
   * then never saved: it runs on every realize()/use(), and the steps after
   * it build on its effects in the same run (unsaved too, as their parent is).
   */
  cache?: string | number;
}

interface Pending {
  step: Step<any>;
  args: Json;
  opts: ApplyOptions;
  /** The resolved transient mode (from opts, else the step's default). */
  transient: boolean | 'last';
  /** `cache: 0`: never saved, yet the steps after it see its effects (so they are not saved either). */
  keeps: boolean;
}

/** Transient steps that run, in one throwaway session, on the saved state `on`. */
interface TransientGroup {
  on: Stage;
  steps: readonly Pending[];
}

/**
 * The step's transient mode for this application: explicit, else saved when
 * a cache cap above zero is given, else the step's default. A zero cap asks
 * for no reuse, so, as in fingertip, it leaves the default alone.
 */
export function transientMode(s: Pick<Step, 'transient'>, opts: ApplyOptions): boolean | 'last' {
  if (opts.transient !== undefined) return opts.transient;
  if (opts.cache !== undefined && toMs(opts.cache) > 0) return false;
  return s.transient ?? false;
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

const toMs = (d: string | number): number => {
  const ms = typeof d === 'number' ? d : parseDuration(d);
  if (!Number.isFinite(ms) || ms < 0)
    throw new CairnError('E_BAD_ARGUMENT', `a cache duration must be >= 0, not ${JSON.stringify(d)}`);
  return ms;
};

/** `cache: 0`: a state nobody may reuse is not worth saving. */
const neverReused = (opts: ApplyOptions): boolean => opts.cache !== undefined && toMs(opts.cache) === 0;

/** Per-run settings (port forwards) a base hands to every run of machines built on it. */
const runOptionsOf = new WeakMap<Stage, ResumeOptions>();

/** Attaches per-run settings to a base stage; they are not part of its identity. */
export function withRunOptions<S extends Stage<any>>(base: S, run: ResumeOptions): S {
  runOptionsOf.set(base, run);
  return base;
}

/** Logs a running machine's port forwards, so the user can find the host ports chosen for this run. */
export function logForwards(m: RunningMachine, log: (line: string) => void): void {
  for (const f of m.forwards ?? []) log(`forward ${f.proto} ${f.hostAddr}:${f.hostPort} -> guest port ${f.guestPort}`);
}

/**
 * A machine reference: the newest saved stage, the transient groups that
 * branch off earlier saved stages (they run, in chain order, on every
 * realize()/use(), and are thrown away), and the trailing transient steps
 * that branch off the newest saved stage (use()'s function runs at their
 * end, in the same session).
 */
export class Machine {
  private constructor(
    readonly saved: Stage,
    private readonly closed: readonly TransientGroup[],
    private readonly open: readonly Pending[],
    private readonly run: ResumeOptions,
  ) {}

  static of(base: Stage | Machine): Machine {
    return base instanceof Machine ? base : new Machine(base, [], [], runOptionsOf.get(base) ?? {});
  }

  /** A new machine: this one after `step`. Nothing runs. */
  apply<A extends Json>(s: Step<A>, args: A, opts: ApplyOptions = {}): Machine {
    if (typeof s?.run !== 'function' || typeof s.code !== 'string')
      throw new CairnError('E_BAD_ARGUMENT', 'apply() needs a step made with step()');
    if (opts.transient !== undefined && typeof opts.transient !== 'boolean' && opts.transient !== 'last')
      throw new CairnError('E_BAD_ARGUMENT', `apply(${s.name}): transient must be true, false or 'last'`);
    canonicalJson(args); // refuses non-JSON args now, not at realize time
    const keeps = neverReused(opts);
    const p: Pending = { step: s, args, opts, transient: keeps || transientMode(s, opts), keeps };
    // After a step that is never reused nothing can be saved: the later steps build on its unsaved effects.
    if (this.open.some((q) => q.keeps)) return new Machine(this.saved, this.closed, [...this.open, p], this.run);
    // Any step after a 'last' one makes it an ordinary saved step.
    let saved = this.saved;
    const closed = [...this.closed];
    let group: Pending[] = [];
    for (const q of this.open) {
      if (q.transient !== 'last') {
        group.push(q);
        continue;
      }
      if (group.length) closed.push({ on: saved, steps: group });
      group = [];
      saved = stepStage(saved, q, this.run);
    }
    if (p.transient && !keeps) return new Machine(saved, closed, [...group, p], this.run);
    // A saved step, or one never reused, builds on the saved state: what transient steps before it did is thrown away.
    if (group.length) closed.push({ on: saved, steps: group });
    if (keeps) return new Machine(saved, closed, [p], this.run);
    return new Machine(stepStage(saved, p, this.run), closed, [], this.run);
  }

  /** Steps that run on every realize()/use() and are never saved, in chain order. */
  get transientSteps(): readonly string[] {
    return [...this.closed.flatMap((g) => g.steps), ...this.open].map((p) => p.step.name);
  }

  /**
   * Realizes the saved part of the chain. Transient steps run (and are
   * thrown away) too, each group right after the state it branches off, so
   * their effects, such as a failing test, show before later steps build.
   */
  async realize(opts: MachineRunOptions): Promise<MachineState> {
    if (this.closed.length === 0 && this.open.length === 0) return this.realizeStage(this.saved, opts);
    return this.withRoots(opts, async () => {
      await this.runClosed(opts);
      const state = await this.realizeStage(this.saved, opts);
      if (this.open.length > 0) await this.withSession(opts, state, this.open, async () => undefined);
      return state;
    });
  }

  /** Starts the machine, runs `fn`, stops it and throws its changes away. */
  async use<T>(fn: (vm: RunningMachine) => T | Promise<T>, opts: UseOptions): Promise<T> {
    return this.withRoots(opts, async () => {
      await this.runClosed(opts);
      const state = await this.realizeStage(this.saved, opts);
      return await this.withSession(opts, state, this.open, fn);
    });
  }

  /** The states must outlive the runs: a resumed disk may read its backing chain. */
  private async withRoots<T>(opts: MachineRunOptions, fn: () => Promise<T>): Promise<T> {
    const roots = await opts.store.addTempRoots(instantiate(this.saved).order, 'machine-use');
    try {
      return await fn();
    } finally {
      await roots.release();
    }
  }

  private async runClosed(opts: MachineRunOptions): Promise<void> {
    for (const g of this.closed) {
      const state = await this.realizeStage(g.on, opts);
      await this.withSession(opts, state, g.steps, async () => undefined);
    }
  }

  private async realizeStage(s: Stage, opts: RealizeOptions): Promise<MachineState> {
    const result = await realize(s, opts);
    const rref = result.targets[0]!.rrefs[0]!;
    const dir = opts.store.outPath(rref);
    return { rref, dir, description: readDescription(dir), result };
  }

  private async withSession<T>(
    opts: MachineRunOptions,
    state: MachineState,
    steps: readonly Pending[],
    fn: (vm: RunningMachine) => T | Promise<T>,
  ): Promise<T> {
    const work = opts.store.makeTempDir('machine-use');
    let session: BackendSession | undefined;
    try {
      session = await resumeState(state.rref, state.dir, state.description, work, this.run);
      for (const p of steps) {
        const vm = stepMachine(session.machine, (line) => opts.stepLog?.(p.step.name, line), {
          capMs: null,
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

/** Resumes a saved state; a restore the backend refuses names the state. */
async function resumeState(
  rref: RRef,
  dir: string,
  d: MachineDescription,
  work: string,
  run: ResumeOptions,
): Promise<BackendSession> {
  const backend = await machineBackend(d.backend);
  try {
    return await backend.resume(dir, d.state, work, run);
  } catch (e) {
    if (!isCairnError(e, 'E_MACHINE_RESTORE')) throw e;
    throw new CairnError(
      'E_MACHINE_RESTORE',
      `cannot resume the machine state ${rref}: ${e.message}`,
      { ...e.details, rref },
      { cause: e },
    );
  }
}

export function machine(base: Stage | Machine): Machine {
  return Machine.of(base);
}

function stepMachine(
  m: RunningMachine,
  log: (s: string) => void,
  limits: { capMs: number | null; files: MachineDescription['files'] },
): StepMachine {
  return {
    backend: m.backend,
    exec: m.exec.bind(m),
    console: m.console,
    upload: m.upload.bind(m),
    download: m.download.bind(m),
    get forwards() {
      return m.forwards;
    },
    ...(m.forward ? { forward: m.forward.bind(m) } : {}),
    // One log line per output line, so every line carries the step's prefix.
    log: (message: string) => {
      for (const line of message.split('\n')) log(line);
    },
    expiration: {
      // Counted from the save, not from now: a cap shorter than the step itself must not expire it unborn.
      cap(d: string | number): void {
        const ms = toMs(d);
        limits.capMs = limits.capMs === null ? ms : Math.min(limits.capMs, ms);
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

const descriptionText = (d: MachineDescription): string => JSON.stringify(d, null, 2) + '\n';

/** Writes a state's description; the backend has already written its files to `out`. */
export function writeDescription(out: string, d: MachineDescription): void {
  fs.writeFileSync(path.join(out, DESCRIPTION), descriptionText(d));
}

/** A cap this short may run out while the state is published (hashed, fsynced) and before it is matched. */
const EXPIRY_SLACK_MS = 60_000;

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
  const limits = { capMs: null as number | null, files: [] as MachineDescription['files'] };
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
  const savedAt = Date.now();
  const own = limits.capMs === null ? null : savedAt + limits.capMs;
  const expiresAt = own === null ? inherited.expiresAt : Math.min(own, inherited.expiresAt ?? own);
  const description: MachineDescription = {
    format: 1,
    backend: state.backend,
    state,
    expiresAt,
    files: limits.files,
    step: stepInfo,
  };
  writeDescription(ctx.out, description);
  // Inherited too: a step on a parent that was expired on arrival is as well.
  if (expiresAt !== null && expiresAt <= savedAt + EXPIRY_SLACK_MS) expiredOnArrival.add(descriptionText(description));
}

function stepStage(parent: Stage, p: Pending, run: ResumeOptions): Stage<StepConfig> {
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
      const session = await resumeState(parent.rrefs[0]!, parent.path, d, ctx.tmp, run);
      ctx.log(`resumed ${parent.rrefs[0]} (${d.backend})`);
      logForwards(session.machine, ctx.log);
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
