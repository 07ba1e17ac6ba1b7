import { PassThrough, type Readable } from 'node:stream';
import { CairnError } from '../../errors.js';

/** How hard a cache backend tries before it reports E_CACHE_UNAVAILABLE. */
export interface RetryPolicy {
  /** Total time for one call, first attempt to last, in ms (default 20 s). */
  budgetMs: number;
  /** The first backoff's upper bound, doubled each retry (default 100 ms). */
  baseDelayMs: number;
  /** No single backoff waits longer (default 5 s). */
  maxDelayMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { budgetMs: 20_000, baseDelayMs: 100, maxDelayMs: 5_000 };

/** Options every cache backend takes (tests shrink the budget and timeout). */
export interface BlobStoreOptions {
  retry?: Partial<RetryPolicy>;
  /** A request that sends or receives nothing for this long is abandoned and retried (default 30 s). */
  timeoutMs?: number;
  /** Requests in flight at once for has/delete and multipart parts (default 32). */
  concurrency?: number;
}

export function retryPolicy(opts: BlobStoreOptions | undefined): RetryPolicy {
  return { ...defaultRetryPolicy, ...opts?.retry };
}

/** What went wrong with one attempt: worth another try, or final. */
export type Verdict = 'transient' | 'fatal';

const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** Connection-level trouble (refused, reset, timed out, DNS): always worth another try. */
export function isNetworkError(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; x && typeof x === 'object' && depth < 5; depth++) {
    const code = (x as { code?: unknown }).code;
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
    const name = (x as { name?: unknown }).name;
    if (name === 'TimeoutError' || name === 'AbortError') return true;
    x = (x as { cause?: unknown }).cause;
  }
  return false;
}

/** HTTP statuses worth another try: throttling (429, S3's 503 SlowDown), timeouts and server errors. */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/**
 * Runs `attempt` until it succeeds, `classify` calls its error fatal, or
 * the next backoff would overrun the budget; then throws
 * E_CACHE_UNAVAILABLE naming the URL, the operation and the last error.
 * Backoff is "full jitter" (a uniform delay below an exponentially growing
 * cap), so many clients that were throttled together do not come back
 * together.
 */
export async function withRetries<T>(
  what: { url: string; op: string; key?: string },
  policy: RetryPolicy,
  classify: (e: unknown) => Verdict,
  attempt: () => Promise<T>,
  opts: RetryRun = {},
): Promise<T> {
  const clock = opts.clock ?? realClock;
  const start = opts.start ?? clock.now();
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (e instanceof CairnError) throw e;
      // A sibling request of the same call already gave up: so does this one.
      const verdict = opts.signal?.aborted ? 'fatal' : classify(e);
      const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** n);
      const delay = Math.floor(clock.random() * cap);
      const elapsed = clock.now() - start;
      if (verdict === 'fatal' || elapsed + delay >= policy.budgetMs) {
        const why = describe(e);
        const tail = verdict === 'fatal' ? '' : ` after ${n + 1} attempt(s) in ${elapsed} ms`;
        throw new CairnError(
          'E_CACHE_UNAVAILABLE',
          `cache ${what.url}: ${what.op}${what.key === undefined ? '' : ` ${what.key}`} failed${tail}: ${why}`,
          { url: what.url, op: what.op, key: what.key, attempts: n + 1, transient: verdict === 'transient' },
          { cause: e },
        );
      }
      await clock.sleep(delay);
      if (opts.signal?.aborted) {
        throw new CairnError('E_CACHE_UNAVAILABLE', `cache ${what.url}: ${what.op} abandoned: ${describe(e)}`, {
          url: what.url,
          op: what.op,
          key: what.key,
          attempts: n + 1,
        });
      }
    }
  }
}

export interface RetryRun {
  /** When the budget started: the start of the whole call when it makes many requests (has, multipart). */
  start?: number;
  /** Aborted when another request of the same call failed for good. */
  signal?: AbortSignal;
  /** For the unit tests only. */
  clock?: { now: () => number; sleep: (ms: number) => Promise<void>; random: () => number };
}

const realClock = {
  now: () => Date.now(),
  sleep: (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)),
  random: Math.random,
};

function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const status = (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const code = (e as { code?: unknown }).code;
  const parts = [
    e.name !== 'Error' ? e.name : '',
    typeof code === 'string' ? code : '',
    status ? `HTTP ${status}` : '',
  ];
  const head = parts.filter(Boolean).join(' ');
  return head ? `${head}: ${e.message}` : e.message;
}

/**
 * A response body handed to a reader. Once the headers are in, a body that
 * breaks off can no longer be retried: the reader sees the same code as for
 * any other cache trouble (E_CACHE_UNAVAILABLE), and closing the stream
 * closes the response.
 */
export function guardedBody(body: Readable, url: string, key: string): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  body.on('error', (e) => {
    const message = `cache ${url}: reading ${key} broke off: ${e.message}`;
    out.destroy(new CairnError('E_CACHE_UNAVAILABLE', message, { url, op: 'get', key }));
  });
  out.on('close', () => body.destroy());
  body.pipe(out);
  return out;
}
