/**
 * Where each build runs, when realize has builders (`--builders`): a ready
 * derivation takes a free slot of a remote builder that is up (or of
 * `local` when it is listed). A builder that fails (unreachable, killed, a
 * result that does not verify) is down for a while (backoff.ts: 1 s,
 * doubling, dropped for the run after 5 failures in a row) and the
 * derivation is built elsewhere; it never goes back to a builder that
 * failed it. When no remote builder is up for it, it is built locally in
 * one of the `-j` local slots, with one warning line for the whole run;
 * builds still waiting for a slot take a builder that comes back up. A
 * failure that belongs to the derivation (its build function threw, a
 * promise was broken) is not retried: it would fail anywhere.
 *
 * No I/O here: builders are given as objects that run a build.
 */
import { CairnError, isCairnError } from '../../errors.js';
import type { RRef } from '../../store/refs.js';
import type { Derivation } from '../instantiate.js';
import { BuilderHealth, DEFAULT_BACKOFF, type BackoffPolicy, type BuilderFailure } from './backoff.js';

/** One build attempt's request to a remote builder. */
export interface RemoteJob {
  node: Derivation;
  /** The chosen realizations of every dependency: the build's exact inputs. */
  inputs: readonly RRef[];
  /** A line for the build's log (progress of the transfer and the remote build). */
  log(line: string): void;
  /** Build even when the builder has realizations from these inputs that satisfy the matcher (`--force`). */
  force?: boolean;
}

export interface RemoteBuilder {
  /** Its spec's name, e.g. `ssh://root@10.0.0.2` or `slurm:gpu`. */
  readonly name: string;
  /** Builds it runs at once. */
  readonly slots: number;
  /**
   * Builds the derivation once with exactly `job.inputs` and returns its
   * realizations, already received into the local store through the
   * verified path. Throws a CairnError on failure.
   */
  build(job: RemoteJob): Promise<RRef[]>;
  /** Releases what the builder holds for the run (an ssh master connection). */
  close?(): Promise<void>;
}

/** A remote builder that was not up when a build fell back to local. */
export interface DownBuilder {
  builder: string;
  /** `backoff`: it is tried again later in the run; `dropped`: not in this run. */
  state: 'backoff' | 'dropped';
  /** Its consecutive failures so far. */
  failures: number;
  /** The code of its last failure. */
  code: string;
}

/** Why a build ran where it ran: what `--explain` prints and `--json` carries. */
export interface Placement {
  /** `local` or a builder's name. */
  builder: string;
  why: 'slot free' | 'fallback' | 'retry' | 'local only';
  /** Earlier attempts that failed, in order (for a fallback with none: the run's last failure of each builder). */
  failures: BuilderFailure[];
  /** With `fallback`: the remote builders that were down then (backing off or dropped). */
  down?: DownBuilder[];
}

/** Codes that mean the derivation itself failed: the same build fails on any builder. */
const DERIVATION_FAULTS = new Set([
  'E_BUILD_FAILED',
  'E_PROMISE_BROKEN',
  'E_UNSAFE_OUTPUT',
  'E_MATCH_UNSATISFIED',
  'E_INPUT_MISSING',
  // Code that cannot travel fails on every builder; building it here instead would hide that.
  'E_CODE_NATIVE',
  'E_CODE_NOT_PORTABLE',
  'E_CODE_MISMATCH',
]);

export function isDerivationFault(e: unknown): boolean {
  return isCairnError(e) && DERIVATION_FAULTS.has(e.code);
}

interface Slotted {
  name: string;
  free: number;
  /** Absent for the local slots. */
  remote?: RemoteBuilder;
}

export interface PoolOptions {
  /** `local` is one of the builders: it takes ready derivations too, `localSlots` at once. */
  local: boolean;
  /** Local builds at once (-j): as a listed builder, and for fallback builds. */
  localSlots: number;
  /** The one warning line (realize passes its own through `onWarning`). */
  warn?: (line: string) => void;
  backoff?: BackoffPolicy;
  /** The clock the backoff runs on (tests). */
  now?: () => number;
}

export class BuilderPool {
  private readonly remotes: Slotted[];
  private readonly localSlot: Slotted;
  private readonly health: BuilderHealth;
  private readonly now: () => number;
  private waiting: (() => void)[] = [];
  private warned = false;
  /** Builders whose failure a warning line has named (once each per run). */
  private readonly announced = new Set<string>();
  /** Every builder that failed in this run, with why (the warning line; --explain of later fallbacks). */
  private readonly failures = new Map<string, BuilderFailure>();

  constructor(
    remotes: readonly RemoteBuilder[],
    private readonly opts: PoolOptions,
  ) {
    this.remotes = remotes.map((r) => ({ name: r.name, free: r.slots, remote: r }));
    this.localSlot = { name: 'local', free: opts.localSlots };
    this.health = new BuilderHealth(
      remotes.map((r) => r.name),
      opts.backoff ?? DEFAULT_BACKOFF,
    );
    this.now = opts.now ?? Date.now;
  }

  /** Where the fallback warning goes (realize's warnings). */
  onWarning(warn: (line: string) => void): void {
    this.opts.warn = warn;
  }

  /** Ends the run for every builder (see RemoteBuilder.close). */
  async close(): Promise<void> {
    await Promise.all(this.remotes.map((s) => s.remote?.close?.() ?? Promise.resolve()));
  }

  get remoteNames(): string[] {
    return this.remotes.map((s) => s.name);
  }

  /**
   * Runs one build of `node` on a builder: `remote(b)` on a remote one,
   * `local()` here. Resolves with its value and where it ran.
   */
  async run<T>(
    node: Derivation,
    remote: (b: RemoteBuilder) => Promise<T>,
    local: () => Promise<T>,
  ): Promise<{ value: T; placement: Placement }> {
    const failures: BuilderFailure[] = [];
    const tried = new Set<string>();
    for (;;) {
      const got = await this.acquire(tried);
      const { slot } = got;
      if (!slot.remote) {
        try {
          if (got.fallback) return await this.fallback(local, failures, got.down);
          return { value: await local(), placement: { builder: 'local', why: 'slot free', failures } };
        } finally {
          this.release(slot);
        }
      }
      const startedAt = this.now();
      try {
        const value = await remote(slot.remote);
        this.health.succeeded(slot.name, startedAt);
        this.announce(failures);
        return { value, placement: { builder: slot.name, why: failures.length > 0 ? 'retry' : 'slot free', failures } };
      } catch (e) {
        if (!isCairnError(e)) throw e;
        if (isDerivationFault(e)) {
          // The builder did its job: the build itself failed.
          this.health.succeeded(slot.name, startedAt);
          throw e;
        }
        // The builder failed, not the derivation: down for a while, and this derivation goes elsewhere.
        tried.add(slot.name);
        const err: CairnError = e;
        const failure = { builder: slot.name, code: err.code, message: err.message };
        this.health.failed(failure, startedAt, this.now());
        this.failures.set(slot.name, failure);
        failures.push(failure);
      } finally {
        this.release(slot);
      }
    }
  }

  /**
   * One warning line per builder whose failure sent a build to another
   * builder, said once that build succeeded there. Not before: when every
   * builder fails, the fallback's single line names them all instead.
   */
  private announce(failures: readonly BuilderFailure[]): void {
    for (const f of failures) {
      if (this.announced.has(f.builder)) continue;
      this.announced.add(f.builder);
      const a = this.health.availability(f.builder, this.now());
      const then = a.state === 'dropped' ? 'dropped for this run' : 'retried after a backoff';
      this.opts.warn?.(
        `builder ${f.builder} failed (${f.code} ${firstLine(f.message)}); its builds go elsewhere, ${then}`,
      );
    }
  }

  /** A build here because no remote builder is up for it: one warning line per run. */
  private async fallback<T>(
    local: () => Promise<T>,
    failures: BuilderFailure[],
    down: DownBuilder[],
  ): Promise<{ value: T; placement: Placement }> {
    if (!this.warned) {
      this.warned = true;
      for (const f of this.failures.keys()) this.announced.add(f);
      const why = [...this.failures.values()].map((f) => `${f.builder}: ${f.code} ${firstLine(f.message)}`);
      this.opts.warn?.(`every remote builder failed (${why.join('; ')}); building locally while they are down`);
    }
    const value = await local();
    // Builders that failed earlier in the run count as this derivation's reason too.
    const why = failures.length > 0 ? failures : [...this.failures.values()];
    return { value, placement: { builder: 'local', why: 'fallback', failures: why, down } };
  }

  /**
   * A free slot for a derivation that already failed on `tried`: of a
   * remote builder that is up, or of `local` when it is listed; a local
   * slot as the fallback when no remote builder is up for it. Waits while
   * the slots it may take are busy, and wakes when a builder in backoff
   * comes back.
   */
  private async acquire(
    tried: ReadonlySet<string>,
  ): Promise<{ slot: Slotted; fallback: false } | { slot: Slotted; fallback: true; down: DownBuilder[] }> {
    for (;;) {
      const now = this.now();
      const candidates = this.remotes.filter((s) => !tried.has(s.name));
      const up = candidates.filter((s) => this.health.availability(s.name, now).state === 'up');
      if (up.length > 0) {
        // The builder with the most free slots first, so load spreads over builders.
        let best: Slotted | undefined;
        for (const s of this.opts.local ? [...up, this.localSlot] : up)
          if (s.free > 0 && (!best || s.free > best.free)) best = s;
        if (best) {
          best.free--;
          return { slot: best, fallback: false };
        }
      } else if (this.localSlot.free > 0) {
        this.localSlot.free--;
        return { slot: this.localSlot, fallback: true, down: this.downList(now) };
      }
      await this.wait(
        this.health.nextUp(
          candidates.map((s) => s.name),
          now,
        ),
      );
    }
  }

  /** The remote builders not up at `now` (those that failed this build included, for --explain). */
  private downList(now: number): DownBuilder[] {
    const down: DownBuilder[] = [];
    for (const s of this.remotes) {
      const a = this.health.availability(s.name, now);
      if (a.state !== 'up') down.push({ builder: s.name, state: a.state, failures: a.failures, code: a.last.code });
    }
    return down;
  }

  /** Until a slot is released, or (when `until` is given) a builder's backoff ends. */
  private async wait(until: number | undefined): Promise<void> {
    await new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const wake = (): void => {
        if (timer) clearTimeout(timer);
        resolve();
      };
      this.waiting.push(wake);
      if (until !== undefined) timer = setTimeout(wake, Math.max(0, until - this.now()) + 1);
    });
  }

  private release(s: Slotted): void {
    s.free++;
    // Wake everyone: a waiter may be waiting for a builder another one cannot use.
    for (const w of this.waiting.splice(0)) w();
  }
}

const firstLine = (s: string): string => s.split('\n')[0]!.slice(0, 200);
