/**
 * Where each build runs, when realize has builders (`--builders`): a ready
 * derivation takes a free slot of a remote builder (or of `local` when it
 * is listed); a builder that fails (unreachable, killed, a result that does
 * not verify) is left out for the rest of the run and the derivation is
 * built elsewhere; when no remote builder is left for it, it is built
 * locally, with one warning line for the whole run. A failure that belongs
 * to the derivation (its build function threw, a promise was broken) is
 * not retried: it would fail anywhere.
 *
 * No I/O here: builders are given as objects that run a build.
 */
import { CairnError, isCairnError } from '../../errors.js';
import type { RRef } from '../../store/refs.js';
import type { Derivation } from '../instantiate.js';

/** One build attempt's request to a remote builder. */
export interface RemoteJob {
  node: Derivation;
  /** The chosen realizations of every dependency: the build's exact inputs. */
  inputs: readonly RRef[];
  /** A line for the build's log (progress of the transfer and the remote build). */
  log(line: string): void;
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

/** Why a build ran where it ran: what `--explain` prints and `--json` carries. */
export interface Placement {
  /** `local` or a builder's name. */
  builder: string;
  why: 'slot free' | 'fallback' | 'retry' | 'local only';
  /** Earlier attempts that failed, in order. */
  failures: { builder: string; code: string; message: string }[];
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
  remote?: RemoteBuilder;
  dead: boolean;
}

export class BuilderPool {
  private readonly slots: Slotted[];
  private waiting: (() => void)[] = [];
  private warned = false;
  /** Every builder that failed in this run, with why (the warning line; --explain of later fallbacks). */
  private readonly failures = new Map<string, Placement['failures'][number]>();

  constructor(
    remotes: readonly RemoteBuilder[],
    private readonly opts: {
      /** `local` is one of the builders: it takes ready derivations too, `localSlots` at once. */
      local: boolean;
      localSlots: number;
      /** The one warning line (realize passes its own through `onWarning`). */
      warn?: (line: string) => void;
    },
  ) {
    this.slots = remotes.map((r) => ({ name: r.name, free: r.slots, remote: r, dead: false }));
    if (opts.local) this.slots.push({ name: 'local', free: opts.localSlots, dead: false });
  }

  /** Where the fallback warning goes (realize's warnings). */
  onWarning(warn: (line: string) => void): void {
    this.opts.warn = warn;
  }

  /** Ends the run for every builder (see RemoteBuilder.close). */
  async close(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.remote?.close?.() ?? Promise.resolve()));
  }

  get remoteNames(): string[] {
    return this.slots.filter((s) => s.remote).map((s) => s.name);
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
    const failures: Placement['failures'] = [];
    const tried = new Set<string>();
    for (;;) {
      const slot = await this.acquire(tried);
      if (slot === null) {
        // No remote builder is left for this derivation.
        if (!this.warned) {
          this.warned = true;
          const why = [...this.failures.values()].map((f) => `${f.builder}: ${f.code} ${firstLine(f.message)}`);
          this.opts.warn?.(`every remote builder failed (${why.join('; ')}); building locally`);
        }
        const value = await local();
        // Builders that failed earlier in the run count as this derivation's reason too.
        const why = failures.length > 0 ? failures : [...this.failures.values()];
        return { value, placement: { builder: 'local', why: 'fallback', failures: why } };
      }
      try {
        const value = slot.remote ? await remote(slot.remote) : await local();
        return { value, placement: { builder: slot.name, why: failures.length > 0 ? 'retry' : 'slot free', failures } };
      } catch (e) {
        if (!slot.remote || isDerivationFault(e) || !isCairnError(e)) throw e;
        // The builder failed, not the derivation: leave it out from now on, try elsewhere.
        tried.add(slot.name);
        slot.dead = true;
        const err: CairnError = e;
        const failure = { builder: slot.name, code: err.code, message: err.message };
        this.failures.set(slot.name, failure);
        failures.push(failure);
      } finally {
        this.release(slot);
      }
    }
  }

  /**
   * A free slot of a builder not yet tried for this derivation; waits while
   * such builders exist but are busy; null when none is left.
   */
  private async acquire(tried: ReadonlySet<string>): Promise<Slotted | null> {
    for (;;) {
      const eligible = this.slots.filter((s) => !s.dead && !tried.has(s.name));
      // Only `local` is left: that is the fallback, not a remote slot.
      if (eligible.length === 0 || (eligible.every((s) => !s.remote) && this.triedAnyRemote(tried))) return null;
      // The builder with the most free slots first, so load spreads over builders.
      let best: Slotted | undefined;
      for (const s of eligible) if (s.free > 0 && (!best || s.free > best.free)) best = s;
      if (best) {
        best.free--;
        return best;
      }
      await new Promise<void>((r) => this.waiting.push(r));
    }
  }

  private triedAnyRemote(tried: ReadonlySet<string>): boolean {
    return this.slots.some((s) => s.remote && (s.dead || tried.has(s.name)));
  }

  private release(s: Slotted): void {
    s.free++;
    // Wake everyone: a waiter may be waiting for a builder another one cannot use.
    for (const w of this.waiting.splice(0)) w();
  }
}

const firstLine = (s: string): string => s.split('\n')[0]!.slice(0, 200);
