/**
 * Waiting for a service to answer its ping. Each attempt has its own
 * timeout and AbortSignal (a `fetch` sent before the port listens can hang
 * for minutes: it is aborted and the next attempt goes out), the whole wait
 * has the start timeout, and E_PING_TIMEOUT says how the last attempt went.
 * The container check (`alive`) is passed in, so this loop holds no docker
 * calls of its own.
 */
import { CairnError } from '../errors.js';

export const DEFAULT_PING_TIMEOUT_MS = 300_000;
export const DEFAULT_PING_ATTEMPT_TIMEOUT_MS = 5_000;
export const PING_INTERVAL_MS = 100;
const ABORT_GRACE_MS = 50;

export interface PingWait {
  service: string;
  /** One attempt: true when ready. `signal` aborts when the attempt's time is up (or the run is interrupted). */
  attempt: (signal: AbortSignal, deadlineMs: number) => Promise<boolean>;
  /** undefined while the container runs, else why it will never answer (exited, with its last output). */
  dead: () => Promise<string | undefined>;
  timeoutMs: number;
  attemptTimeoutMs: number;
  /** Aborted on Ctrl-C: the wait ends with E_INTERRUPTED. */
  interrupt?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

export const interrupted = (what: string): CairnError =>
  new CairnError('E_INTERRUPTED', `${what}: interrupted`, { service: what });

const describe = (e: unknown): string => (e as Error)?.message ?? String(e);

/**
 * Runs attempts every PING_INTERVAL_MS until one returns true. An attempt
 * that throws fails the service at once (a ping that cannot work should not
 * be retried for minutes), except when it throws because its own time ran
 * out: that is a timed-out attempt, and the next one follows.
 */
export async function waitForPing(w: PingWait): Promise<void> {
  const start = Date.now();
  const deadline = start + w.timeoutMs;
  let last = 'no attempt finished';
  let lastCheck = 0;
  for (let n = 1; ; n++) {
    if (w.interrupt?.aborted) throw interrupted(w.service);
    const attemptMs = Math.max(1, Math.min(w.attemptTimeoutMs, deadline - Date.now()));
    // The last attempt gets only what is left of the start timeout (often a few ms after the
    // interval's sleep): its "no answer" says nothing, so an earlier attempt's outcome is kept.
    const cutShort = attemptMs < w.attemptTimeoutMs && n > 1;
    const ac = new AbortController();
    const onInterrupt = (): void => ac.abort(interrupted(w.service));
    w.interrupt?.addEventListener('abort', onInterrupt, { once: true });
    const timer = setTimeout(
      () => ac.abort(new CairnError('E_PING_TIMEOUT', `ping attempt ${n} took over ${seconds(attemptMs)}`)),
      attemptMs,
    );
    let ok = false;
    try {
      ok = await Promise.race([
        w.attempt(ac.signal, Date.now() + attemptMs).then((v) => v === true),
        // A moment's grace after the abort, so a ping that reacts to its
        // signal (fetch's AbortError, a socket's ECONNRESET) reports its own error.
        new Promise<never>((_, reject) =>
          ac.signal.addEventListener('abort', () =>
            setTimeout(() => reject(ac.signal.reason as Error), ABORT_GRACE_MS),
          ),
        ),
      ]);
      if (!ok && w.interrupt?.aborted) throw interrupted(w.service);
      // false after its signal aborted: the attempt gave up because its time was up.
      if (ok) last = 'answered';
      else if (!ac.signal.aborted) last = `attempt ${n} returned false`;
      else if (!cutShort) last = noAnswer(n, attemptMs);
    } catch (e) {
      if (w.interrupt?.aborted) throw interrupted(w.service);
      if (!ac.signal.aborted) {
        throw new CairnError(
          'E_SERVICE_FAILED',
          `${w.service}: ping threw: ${describe(e)}`,
          { service: w.service },
          {
            cause: e,
          },
        );
      }
      if (!cutShort) last = noAnswer(n, attemptMs) + (e === ac.signal.reason ? '' : `: ${describe(e)}`);
    } finally {
      clearTimeout(timer);
      w.interrupt?.removeEventListener('abort', onInterrupt);
    }
    // A container that exited will never answer: say so now, with its
    // logs, instead of after the whole timeout.
    if (!ok || Date.now() - lastCheck > 1000) {
      lastCheck = Date.now();
      const why = await w.dead();
      if (why !== undefined) throw new CairnError('E_SERVICE_FAILED', `${w.service}: ${why}`, { service: w.service });
    }
    if (ok) return;
    if (Date.now() >= deadline) {
      throw new CairnError(
        'E_PING_TIMEOUT',
        `${w.service}: ping did not return true within ${seconds(w.timeoutMs)} (${n} attempts; last: ${last})`,
        { service: w.service, timeoutMs: w.timeoutMs, attempts: n, last },
      );
    }
    await sleep(Math.min(PING_INTERVAL_MS, Math.max(0, deadline - Date.now())), w.interrupt);
  }
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;
const noAnswer = (n: number, ms: number): string => `attempt ${n} got no answer within ${seconds(ms)}`;
