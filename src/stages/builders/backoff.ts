/**
 * When a remote builder that failed is tried again (pure: times are
 * passed in). A flaky host should come back, a dead one should stop
 * costing a failed attempt per build:
 *  - after a failure the builder is down for `baseMs`, doubled with each
 *    further consecutive failure, at most `maxMs`; once that has passed,
 *    the next ready build tries it again (the probe is a real build);
 *  - `maxFailures` consecutive failures and it is dropped for the run;
 *  - a success resets the count;
 *  - a result that does not verify (a tampered or corrupt tree, a bad
 *    signature) drops the builder at once: that is not a flaky host but
 *    one not to be trusted, and retrying it would only cost more refusals.
 * Attempts overlap (a builder runs several builds at once), so one outage
 * fails several of them: a failure (or success) of an attempt that started
 * before the last recorded failure is part of what is already known and
 * changes nothing. Otherwise a host with 4 slots that reboots once would
 * count 4 failures and be dropped.
 */

export interface BackoffPolicy {
  /** How long a builder stays down after its first failure. */
  baseMs: number;
  /** The longest it stays down (the doubling stops there). */
  maxMs: number;
  /** Consecutive failures after which it is dropped for the rest of the run. */
  maxFailures: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = { baseMs: 1000, maxMs: 30_000, maxFailures: 5 };

/** One failed attempt: whose fault, and the error it gave. */
export interface BuilderFailure {
  builder: string;
  code: string;
  message: string;
}

/** Codes of a result that did not verify on receipt: the builder is dropped for the run at once. */
const TRUST_FAULTS = new Set([
  'E_SYNC_HASH_MISMATCH',
  'E_CACHE_BAD_SIGNATURE',
  'E_CACHE_BAD_ENTRY',
  'E_CACHE_UNSIGNED',
  'E_CACHE_UNTRUSTED',
  'E_UNSAFE_ARCHIVE',
]);

export const isTrustFault = (code: string): boolean => TRUST_FAULTS.has(code);

export type Availability =
  | { state: 'up' }
  | { state: 'backoff'; until: number; failures: number; last: BuilderFailure }
  | { state: 'dropped'; failures: number; last: BuilderFailure };

interface State {
  /** Consecutive failures (reset by a success). */
  failures: number;
  /** When the last counted failure was recorded. */
  failedAt: number;
  downUntil: number;
  dropped: boolean;
  last?: BuilderFailure;
}

/** How long a builder with `failures` consecutive failures stays down. */
export function backoffMs(policy: BackoffPolicy, failures: number): number {
  if (failures <= 0) return 0;
  // 2 ** 30 and up would only overflow into the cap anyway.
  return Math.min(policy.maxMs, policy.baseMs * 2 ** Math.min(failures - 1, 30));
}

export class BuilderHealth {
  private readonly states = new Map<string, State>();

  constructor(
    names: Iterable<string>,
    private readonly policy: BackoffPolicy = DEFAULT_BACKOFF,
  ) {
    for (const n of names)
      this.states.set(n, { failures: 0, failedAt: -Infinity, downUntil: -Infinity, dropped: false });
  }

  /** An attempt on `failure.builder`, started at `startedAt`, failed by the builder's fault at `now`. */
  failed(failure: BuilderFailure, startedAt: number, now: number): Availability {
    const s = this.state(failure.builder);
    if (s.dropped) return this.availability(failure.builder, now);
    if (isTrustFault(failure.code)) {
      // Whenever the attempt started: what it sent is what counts.
      s.failures++;
      s.failedAt = now;
      s.last = failure;
      s.dropped = true;
      return this.availability(failure.builder, now);
    }
    if (startedAt < s.failedAt) return this.availability(failure.builder, now);
    s.failures++;
    s.failedAt = now;
    s.last = failure;
    if (s.failures >= this.policy.maxFailures) s.dropped = true;
    else s.downUntil = now + backoffMs(this.policy, s.failures);
    return this.availability(failure.builder, now);
  }

  /** An attempt on `builder`, started at `startedAt`, ran (whatever became of the build itself). */
  succeeded(builder: string, startedAt: number): void {
    const s = this.state(builder);
    if (s.dropped || startedAt < s.failedAt) return;
    s.failures = 0;
    s.downUntil = -Infinity;
  }

  availability(builder: string, now: number): Availability {
    const s = this.state(builder);
    if (s.dropped) return { state: 'dropped', failures: s.failures, last: s.last! };
    if (now < s.downUntil) return { state: 'backoff', until: s.downUntil, failures: s.failures, last: s.last! };
    return { state: 'up' };
  }

  /** The earliest time one of `builders` in backoff is up again (undefined: none is in backoff). */
  nextUp(builders: Iterable<string>, now: number): number | undefined {
    let next: number | undefined;
    for (const b of builders) {
      const a = this.availability(b, now);
      if (a.state === 'backoff' && (next === undefined || a.until < next)) next = a.until;
    }
    return next;
  }

  private state(builder: string): State {
    const s = this.states.get(builder);
    if (!s) throw new Error(`BuilderHealth: unknown builder ${builder}`);
    return s;
  }
}
