/**
 * The backoff of failed builders (src/stages/builders/backoff.ts, pure):
 * times are passed in, faults are injected, no host and no timer.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BuilderHealth, backoffMs, type BackoffPolicy } from '../src/stages/builders/backoff.js';

const policy: BackoffPolicy = { baseMs: 1000, maxMs: 5000, maxFailures: 5 };
const fault = (builder = 'ssh://b', code = 'E_SYNC_FAILED') => ({ builder, code, message: `${builder} refused` });

describe('builder backoff', () => {
  it('waits 1 s after a failure, doubling per consecutive failure, capped', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 40].map((n) => backoffMs(policy, n)),
      [0, 1000, 2000, 4000, 5000, 5000, 5000],
    );
  });

  it('a failed builder is down until its backoff ends, then up for the next build (the probe)', () => {
    const h = new BuilderHealth(['ssh://b', 'ssh://c'], policy);
    assert.deepEqual(h.availability('ssh://b', 0), { state: 'up' });
    const a = h.failed(fault(), 100, 200);
    assert.deepEqual(a, { state: 'backoff', until: 1200, failures: 1, last: fault() });
    assert.equal(h.availability('ssh://b', 1199).state, 'backoff');
    assert.equal(h.availability('ssh://c', 1199).state, 'up', 'the other builder is not affected');
    assert.deepEqual(h.availability('ssh://b', 1200), { state: 'up' });
    // The probe fails too: twice as long.
    assert.deepEqual(h.failed(fault(), 1200, 1300), { state: 'backoff', until: 3300, failures: 2, last: fault() });
    assert.equal(h.nextUp(['ssh://b', 'ssh://c'], 1300), 3300);
    assert.equal(h.nextUp(['ssh://c'], 1300), undefined);
    // It comes back: a build started after the last failure succeeds, and the count starts again.
    h.succeeded('ssh://b', 3300);
    assert.deepEqual(h.failed(fault(), 9000, 9100), { state: 'backoff', until: 10_100, failures: 1, last: fault() });
  });

  it('dropped for the run after maxFailures consecutive failures', () => {
    const h = new BuilderHealth(['ssh://b'], policy);
    let t = 0;
    for (let i = 1; i < 5; i++) {
      const a = h.failed(fault(), t, t + 10);
      assert.equal(a.state, 'backoff', `failure ${i}`);
      t = a.state === 'backoff' ? a.until : t;
    }
    const last = fault('ssh://b', 'E_BUILDER_FAILED');
    assert.deepEqual(h.failed(last, t, t + 10), { state: 'dropped', failures: 5, last });
    assert.equal(h.availability('ssh://b', t + 1e9).state, 'dropped');
    assert.equal(h.nextUp(['ssh://b'], t), undefined, 'a dropped builder never comes back');
    // A late success of an attempt started before does not bring it back either.
    h.succeeded('ssh://b', t + 20);
    assert.equal(h.availability('ssh://b', t + 1e9).state, 'dropped');
  });

  it('attempts that were already running when the builder failed count as the same outage', () => {
    const h = new BuilderHealth(['ssh://b'], policy);
    // Four builds started at 0..3; the host reboots: they all fail around 500.
    assert.equal(h.failed(fault(), 0, 500).state, 'backoff');
    for (const started of [1, 2, 3]) h.failed(fault(), started, 501 + started);
    assert.deepEqual(h.availability('ssh://b', 600), { state: 'backoff', until: 1500, failures: 1, last: fault() });
    // A build that started before the failure and succeeds says nothing about the host now.
    h.succeeded('ssh://b', 2);
    assert.equal(h.availability('ssh://b', 600).state, 'backoff');
    // The probe after the backoff succeeds: up, and the next failure is a first one again.
    h.succeeded('ssh://b', 1500);
    assert.equal(h.failed(fault(), 2000, 2100).state, 'backoff');
    assert.equal(h.availability('ssh://b', 3100).state, 'up', 'one failure: 1 s');
  });

  it('a result that does not verify drops the builder at once, even from an attempt already running', () => {
    for (const code of ['E_SYNC_HASH_MISMATCH', 'E_CACHE_BAD_SIGNATURE', 'E_UNSAFE_ARCHIVE']) {
      const h = new BuilderHealth(['ssh://b'], policy);
      assert.equal(h.failed(fault(), 10, 20).state, 'backoff');
      const tampered = fault('ssh://b', code);
      assert.deepEqual(h.failed(tampered, 0, 30), { state: 'dropped', failures: 2, last: tampered }, code);
      h.succeeded('ssh://b', 40);
      assert.equal(h.availability('ssh://b', 1e9).state, 'dropped', code);
    }
  });

  it('alternating failures and successes never drop a builder', () => {
    const h = new BuilderHealth(['ssh://b'], policy);
    let t = 0;
    for (let i = 0; i < 20; i++) {
      const a = h.failed(fault(), t, t + 1);
      assert.equal(a.state, 'backoff');
      t = a.state === 'backoff' ? a.until : t;
      h.succeeded('ssh://b', t);
    }
    assert.equal(h.availability('ssh://b', t).state, 'up');
  });
});
