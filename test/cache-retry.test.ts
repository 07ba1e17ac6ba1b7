/**
 * The retry loop every cache backend runs its requests through (pure: a
 * fake clock, no network): full-jitter exponential backoff, one budget,
 * fatal errors not retried, E_CACHE_UNAVAILABLE at the end.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CairnError } from '../src/errors.js';
import { withRetries, type Verdict } from '../src/store/cache/retry.js';
import { classifyS3 } from '../src/store/cache/s3-blob.js';
import { isCode } from './helpers.js';

function fakeClock(random = 0.999): {
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  random: () => number;
  slept: number[];
} {
  let t = 0;
  const slept: number[] = [];
  return {
    now: () => t,
    sleep: async (ms) => {
      slept.push(ms);
      t += ms;
    },
    random: () => random,
    slept,
  };
}

const policy = { budgetMs: 10_000, baseDelayMs: 100, maxDelayMs: 2_000 };
const what = { url: 's3://b/p', op: 'get', key: 'k' };
const transient = (): Verdict => 'transient';

describe('withRetries', () => {
  it('returns the first success, after backing off below a doubling cap', async () => {
    const clock = fakeClock();
    let n = 0;
    const got = await withRetries(
      what,
      policy,
      transient,
      async () => {
        if (n++ < 4) throw new Error('503');
        return 'ok';
      },
      { clock },
    );
    assert.equal(got, 'ok');
    assert.deepEqual(clock.slept, [99, 199, 399, 799]);
  });

  it('never waits longer than maxDelayMs, and gives up before the budget is overrun', async () => {
    const clock = fakeClock();
    const err = await withRetries(what, policy, transient, () => Promise.reject(new Error('SlowDown')), { clock }).then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof CairnError && err.code === 'E_CACHE_UNAVAILABLE');
    assert.ok(clock.slept.every((ms) => ms < policy.maxDelayMs));
    assert.ok(clock.now() < policy.budgetMs, `slept ${clock.now()} ms in all`);
    assert.equal(err.details.attempts, clock.slept.length + 1);
    assert.match(err.message, /s3:\/\/b\/p: get k failed after \d+ attempt\(s\)/);
  });

  it('jitters: with a random draw of 0 it retries at once', async () => {
    const clock = fakeClock(0);
    let n = 0;
    await withRetries(
      what,
      policy,
      transient,
      async () => {
        if (n++ < 3) throw new Error('503');
      },
      { clock },
    );
    assert.deepEqual(clock.slept, [0, 0, 0]);
  });

  it('does not retry a fatal error, and passes CairnErrors through untouched', async () => {
    const clock = fakeClock();
    let n = 0;
    await assert.rejects(
      withRetries(
        what,
        policy,
        () => 'fatal',
        async () => {
          n++;
          throw new Error('AccessDenied');
        },
        { clock },
      ),
      isCode('E_CACHE_UNAVAILABLE'),
    );
    assert.equal(n, 1);
    const own = new CairnError('E_BAD_ARGUMENT', 'bad key');
    await assert.rejects(
      withRetries(what, policy, transient, () => Promise.reject(own), { clock }),
      (e) => e === own,
    );
  });

  it('stops when a sibling request of the same call has given up', async () => {
    const clock = fakeClock();
    const abort = new AbortController();
    let n = 0;
    await assert.rejects(
      withRetries(
        what,
        policy,
        transient,
        async () => {
          if (++n === 2) abort.abort();
          throw new Error('503');
        },
        { clock, signal: abort.signal },
      ),
      isCode('E_CACHE_UNAVAILABLE'),
    );
    assert.equal(n, 2);
  });
});

describe('classifyS3', () => {
  const s3err = (name: string, status?: number): Error =>
    Object.assign(new Error(name), { name, ...(status ? { $metadata: { httpStatusCode: status } } : {}) });

  it('retries throttling, 5xx, timeouts and connection errors; not 4xx or our own bugs', () => {
    assert.equal(classifyS3(s3err('SlowDown', 503)), 'transient');
    assert.equal(classifyS3(s3err('InternalError', 500)), 'transient');
    assert.equal(classifyS3(s3err('Whatever', 502)), 'transient');
    assert.equal(classifyS3(s3err('TooManyRequests', 429)), 'transient');
    assert.equal(classifyS3(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), 'transient');
    assert.equal(classifyS3(Object.assign(new Error('x'), { cause: { code: 'ECONNRESET' } })), 'transient');
    assert.equal(classifyS3(s3err('TimeoutError')), 'transient');
    assert.equal(classifyS3(s3err('AccessDenied', 403)), 'fatal');
    assert.equal(classifyS3(s3err('NoSuchBucket', 404)), 'fatal');
    assert.equal(classifyS3(s3err('InvalidRequest', 400)), 'fatal');
    assert.equal(classifyS3(new TypeError('x is not a function')), 'fatal');
  });
});
