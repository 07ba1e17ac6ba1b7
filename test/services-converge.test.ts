/**
 * The pure core of `up` and of recovery: what converge.ts decides for one
 * service (create, recreate, restart, keep; init again or not), why status
 * calls a service stale, the `up` selection, stop exclusions of exited
 * services, duplicate host ports, the init record, the ping loop's
 * per-attempt timeout and the image phase's progress. No Docker.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildStepLines, resolveImages } from '../src/services/build-images.js';
import { decide, replacedByUp, staleness, type DecideInput, type Found } from '../src/services/converge.js';
import { selectForStop, selectForUp, validateEnsemble } from '../src/services/graph.js';
import { InitRecord, initRecordFile } from '../src/services/init-record.js';
import { waitForPing } from '../src/services/ping.js';
import type { ServiceSpec } from '../src/services/spec.js';
import { CairnError } from '../src/errors.js';
import { isCode, tempDir } from './helpers.js';

const svc = (name: string, dependsOn: string[] = [], extra: Partial<ServiceSpec> = {}): ServiceSpec => ({
  name,
  image: 'debian:x',
  dependsOn,
  ...extra,
});
const ens = (...services: ServiceSpec[]) => ({ name: 'life', services });

const found = (extra: Partial<Found> = {}): Found => ({
  id: 'c1',
  running: true,
  specHash: 'h1',
  deps: { db: 'd1' },
  ...extra,
});
const input = (extra: Partial<DecideInput> = {}): DecideInput => ({
  mode: 'up',
  found: found(),
  desiredHash: 'h1',
  initDone: true,
  depsNow: { db: 'd1' },
  ...extra,
});

describe('decide (converge.ts)', () => {
  it('up: creates what is missing, keeps what matches, restarts what is stopped', () => {
    assert.deepEqual(decide(input({ found: undefined })), { action: 'create', init: true });
    assert.deepEqual(decide(input()), { action: 'keep', init: false, reason: undefined });
    assert.deepEqual(decide(input({ found: found({ running: false }) })), {
      action: 'restart',
      init: false,
      reason: undefined,
    });
  });

  it('up: recreates a changed spec, running or not, and a service whose dependency was recreated', () => {
    for (const running of [true, false]) {
      const d = decide(input({ found: found({ running }), desiredHash: 'h2' }));
      assert.equal(d.action, 'recreate');
      assert.equal(d.init, true);
    }
    const dep = decide(input({ depsNow: { db: 'd2' } }));
    assert.equal(dep.action, 'recreate');
    assert.match(dep.reason!, /dependency db was recreated/);
    assert.equal(
      decide(input({ desiredHash: 'h2', depsNow: { db: 'd2' } })).reason,
      'its definition changed; its dependency db was recreated',
    );
    // A container made before the deps label existed is not recreated for lack of it.
    assert.equal(decide(input({ found: found({ deps: undefined }), depsNow: { db: 'd2' } })).action, 'keep');
  });

  it('start: never replaces a running container; a stopped changed one is recreated; no dependency cascade', () => {
    const running = decide(input({ mode: 'start', desiredHash: 'h2' }));
    assert.equal(running.action, 'keep');
    assert.match(running.reason!, /definition changed/);
    assert.equal(
      decide(input({ mode: 'start', found: found({ running: false }), desiredHash: 'h2' })).action,
      'recreate',
    );
    assert.equal(decide(input({ mode: 'start', depsNow: { db: 'd2' } })).action, 'keep');
  });

  it('a container whose start never finished gets its init again, in every mode', () => {
    for (const mode of ['start', 'up'] as const) {
      for (const running of [true, false]) {
        const d = decide(input({ mode, initDone: false, found: found({ running }) }));
        assert.equal(d.init, true, `${mode} running=${running}`);
        assert.equal(d.action, running ? 'keep' : 'restart');
        assert.match(d.reason!, /did not finish/);
      }
    }
  });

  it('reload and alwaysStartNew always replace the container', () => {
    assert.equal(decide(input({ mode: 'reload' })).action, 'recreate');
    assert.equal(decide(input({ mode: 'start', alwaysStartNew: true })).action, 'recreate');
    assert.equal(decide(input({ mode: 'reload', found: undefined })).action, 'create');
  });
});

describe('staleness (status)', () => {
  it('names every reason, and nothing for an up-to-date container', () => {
    const base = { found: found(), desiredHash: 'h1', initDone: true, depsNow: { db: 'd1' } };
    assert.deepEqual(staleness(base), []);
    assert.deepEqual(staleness({ ...base, found: undefined }), ['no container']);
    assert.deepEqual(staleness({ ...base, desiredHash: 'h2' }), ['definition changed']);
    assert.deepEqual(staleness({ ...base, desiredHash: undefined }), ['its image is not built']);
    assert.deepEqual(staleness({ ...base, depsNow: { db: 'd2' }, initDone: false }), [
      'dependency db was recreated',
      'start not finished (postStartInit pending)',
    ]);
    // A dependency that up replaces (definition changed, no container, ...) makes this one stale too.
    assert.deepEqual(staleness({ ...base, depsReplacedByUp: ['db'] }), ['dependency db will be recreated']);
    assert.equal(replacedByUp({ ...base, depsReplacedByUp: ['db'] }), true);
    assert.equal(replacedByUp({ ...base, initDone: false }), false, 'an unfinished start keeps its container');
  });
});

describe('selections', () => {
  const m = validateEnsemble(ens(svc('db'), svc('cache'), svc('app', ['db']), svc('worker', ['app', 'cache'])));

  it('up SERVICE selects it and everything it depends on, in dependency order', () => {
    assert.deepEqual(selectForUp(m, []), ['db', 'cache', 'app', 'worker']);
    assert.deepEqual(selectForUp(m, ['app']), ['db', 'app']);
    assert.deepEqual(selectForUp(m, ['worker']), ['db', 'cache', 'app', 'worker']);
    assert.throws(() => selectForUp(m, ['nope']), isCode('E_SERVICE_INVALID'));
  });

  it('stop may keep (exclude) a service that is not running while its dependencies stop', () => {
    assert.throws(() => selectForStop(m, ['worker'], new Set(['db', 'cache', 'app', 'worker'])), /cannot keep worker/);
    assert.deepEqual(selectForStop(m, ['worker'], new Set(['db', 'cache', 'app'])), ['app', 'cache', 'db']);
    assert.throws(() => selectForStop(m, ['worker']), isCode('E_SERVICE_INVALID'));
  });
});

describe('host ports', () => {
  it('refuses one host port published twice (per protocol), before anything starts', () => {
    const two = ens(svc('a', [], { ports: { '80': 18080 } }), svc('b', [], { ports: { '8080': 18080 } }));
    assert.throws(
      () => validateEnsemble(two),
      (e: unknown) => {
        assert.ok(e instanceof CairnError && e.code === 'E_SERVICE_INVALID');
        assert.match(e.message, /host port 18080\/tcp is published twice: by a 80 and by b 8080/);
        return true;
      },
    );
    const inOne = ens(svc('a', [], { ports: { '80': 18080, '81/tcp': 18080 } }));
    assert.throws(() => validateEnsemble(inOne), isCode('E_SERVICE_INVALID'));
    // Different protocols, and "any free port" (0), never conflict.
    validateEnsemble(ens(svc('a', [], { ports: { '53/udp': 18053, '53': 18053 } })));
    validateEnsemble(ens(svc('a', [], { ports: { '80': 0 } }), svc('b', [], { ports: { '80': 0 } })));
  });

  it('refuses a pingAttemptTimeoutMs that is not a positive number', () => {
    for (const bad of [0, -1, Number.NaN, '5' as unknown as number])
      assert.throws(() => validateEnsemble(ens(svc('a', [], { pingAttemptTimeoutMs: bad }))), /pingAttemptTimeoutMs/);
  });
});

describe('InitRecord', () => {
  it('records a finished start per container id, beside the context file, and survives a reopen', () => {
    const t = tempDir('life-inits');
    try {
      const file = initRecordFile(path.join(t.dir, 'st', 'life.context.json'));
      assert.equal(file, path.join(t.dir, 'st', 'life.inits.json'));
      const r = new InitRecord(file);
      assert.equal(r.done('db', 'c1'), false);
      r.mark('db', 'c1');
      r.mark('__proto__', 'c9');
      const again = new InitRecord(file);
      assert.equal(again.done('db', 'c1'), true);
      assert.equal(again.done('db', 'c2'), false, 'a replaced container is not started');
      assert.equal(again.done('__proto__', 'c9'), true);
      assert.equal(again.done('constructor', '[object Object]'), false);
      again.forget('db');
      assert.equal(new InitRecord(file).done('db', 'c1'), false);
      fs.writeFileSync(file, '[1]');
      assert.throws(() => new InitRecord(file), isCode('E_SERVICE_INVALID'));
      again.remove();
      assert.equal(fs.existsSync(file), false);
    } finally {
      t.cleanup();
    }
  });
});

describe('waitForPing', () => {
  const alive = async (): Promise<undefined> => undefined;

  it('aborts a hung attempt at its own timeout and sends the next one', async () => {
    const signals: AbortSignal[] = [];
    await waitForPing({
      service: 'web',
      timeoutMs: 60_000,
      attemptTimeoutMs: 50,
      dead: alive,
      attempt: (signal) => {
        signals.push(signal);
        // The first attempt never answers (a fetch before the port listens); the second does.
        return signals.length === 1 ? new Promise<boolean>(() => {}) : Promise.resolve(true);
      },
    });
    assert.equal(signals.length, 2);
    assert.equal(signals[0]!.aborted, true, 'the hung attempt saw its signal abort');
    assert.equal(signals[1]!.aborted, false);
  });

  it('an attempt that throws because its signal aborted is a timed-out attempt, not a failure', async () => {
    let n = 0;
    await waitForPing({
      service: 'web',
      timeoutMs: 60_000,
      attemptTimeoutMs: 30,
      dead: alive,
      attempt: (signal) =>
        ++n === 1
          ? new Promise<boolean>((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))))
          : Promise.resolve(true),
    });
    assert.equal(n, 2);
  });

  it('E_PING_TIMEOUT tells how the last attempt went', async () => {
    await assert.rejects(
      waitForPing({
        service: 'web',
        timeoutMs: 200,
        attemptTimeoutMs: 40,
        dead: alive,
        attempt: (signal) =>
          new Promise<boolean>((_, reject) =>
            signal.addEventListener('abort', () => reject(new Error('connect ECONNRESET 127.0.0.1:18080'))),
          ),
      }),
      (e: unknown) => {
        assert.ok(e instanceof CairnError && e.code === 'E_PING_TIMEOUT', String(e));
        assert.match(e.message, /web: ping did not return true within 0\.2s \(\d+ attempts; last: attempt \d+ got no/);
        assert.match(e.message, /ECONNRESET 127\.0\.0\.1:18080/);
        return true;
      },
    );
    await assert.rejects(
      waitForPing({ service: 'web', timeoutMs: 150, attemptTimeoutMs: 1000, dead: alive, attempt: async () => false }),
      /last: attempt \d+ returned false/,
    );
  });

  it('E_PING_TIMEOUT keeps the last full attempt, not the sliver the start timeout left', async () => {
    // Each attempt answers false after 60 ms; after the interval's sleep the start timeout has (almost)
    // nothing left, so the final attempt is cut off at once. Its "no answer within 0.0s" said nothing.
    const slowFalse = () => new Promise<boolean>((r) => setTimeout(() => r(false), 60));
    await assert.rejects(
      waitForPing({ service: 'web', timeoutMs: 150, attemptTimeoutMs: 1000, dead: alive, attempt: slowFalse }),
      (e: unknown) => {
        assert.ok(e instanceof CairnError && e.code === 'E_PING_TIMEOUT', String(e));
        assert.match(e.message, /last: attempt \d+ returned false\)$/);
        return true;
      },
    );
  });

  it('an attempt that returns false because its signal aborted counts as no answer', async () => {
    await assert.rejects(
      waitForPing({
        service: 'web',
        timeoutMs: 150,
        attemptTimeoutMs: 40,
        dead: alive,
        attempt: (signal) => new Promise<boolean>((r) => signal.addEventListener('abort', () => r(false))),
      }),
      /last: attempt \d+ got no answer within/,
    );
  });

  it('a throwing ping fails at once; an exited container too; Ctrl-C interrupts', async () => {
    await assert.rejects(
      waitForPing({
        service: 'web',
        timeoutMs: 60_000,
        attemptTimeoutMs: 1000,
        dead: alive,
        attempt: () => Promise.reject(new Error('bad password')),
      }),
      (e: unknown) =>
        e instanceof CairnError && e.code === 'E_SERVICE_FAILED' && /ping threw: bad password/.test(e.message),
    );
    await assert.rejects(
      waitForPing({
        service: 'web',
        timeoutMs: 60_000,
        attemptTimeoutMs: 1000,
        dead: async () => 'container exited with code 3',
        attempt: async () => false,
      }),
      /web: container exited with code 3/,
    );
    const ac = new AbortController();
    const seen: AbortSignal[] = [];
    const p = waitForPing({
      service: 'web',
      timeoutMs: 60_000,
      attemptTimeoutMs: 60_000,
      dead: alive,
      interrupt: ac.signal,
      attempt: (signal) => {
        seen.push(signal);
        setImmediate(() => ac.abort());
        return new Promise<boolean>(() => {});
      },
    });
    await assert.rejects(p, isCode('E_INTERRUPTED'));
    assert.equal(seen[0]!.aborted, true, 'the running attempt saw the interrupt');
  });
});

describe('image phase', () => {
  it('runs every job at once, shares results between services, reports failures per service', async () => {
    const lines: string[] = [];
    let running = 0;
    let most = 0;
    const job = (services: string[], fail = false) => ({
      services,
      what: services.join('+'),
      run: async (step: (l: string) => void) => {
        running++;
        most = Math.max(most, running);
        step('Step 1/2 : FROM base');
        await new Promise((r) => setTimeout(r, 20));
        running--;
        if (fail) throw new Error('no base image');
        return services[0]!;
      },
    });
    const r = await resolveImages([job(['db', 'app']), job(['web']), job(['bad'], true)], {
      log: (l) => lines.push(l),
    });
    assert.equal(most, 3, 'all image jobs run in parallel');
    assert.equal(r.get('db'), 'db');
    assert.equal(r.get('app'), 'db');
    assert.equal(r.get('web'), 'web');
    assert.match(String(r.get('bad')), /no base image/);
    assert.ok(lines.includes('db,app: Step 1/2 : FROM base'), lines.join('\n'));
  });

  it('buildStepLines passes whole Step lines only, across chunks', () => {
    const got: string[] = [];
    const feed = buildStepLines((l) => got.push(l));
    feed('Sending build context\nStep 1/3 : FR');
    feed('OM x\n ---> abc\nStep 2/3 : RUN true\n');
    assert.deepEqual(got, ['Step 1/3 : FROM x', 'Step 2/3 : RUN true']);
  });
});
