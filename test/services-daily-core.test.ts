/**
 * The pure core of the daily service commands: whole lines out of byte
 * streams, time-ordered merging, compose-style prefixes and colours,
 * --since values, the health state machine, restart policies, one-off
 * container arguments and dependency closures.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  isSinceValue,
  LineSplitter,
  mergeByTime,
  prefixer,
  splitTimestamp,
  timestampKey,
  useColour,
} from '../src/services/log-lines.js';
import { engineRestartPolicy, nextHealth, validateHealth, type HealthState } from '../src/services/health-policy.js';
import { validateEnsemble } from '../src/services/graph.js';
import { dependencyClosure, oneOffArgs } from '../src/services/run-once.js';
import type { RunSpec } from '../src/services/engine.js';
import type { ServiceSpec } from '../src/services/spec.js';
import { isCode } from './helpers.js';

describe('log lines', () => {
  it('never cuts a line or a UTF-8 character, across chunks; CRLF and a last line without newline', () => {
    const s = new LineSplitter();
    const euro = Buffer.from('€'); // 3 bytes
    assert.deepEqual(s.push(Buffer.from('par')), []);
    assert.deepEqual(s.push(Buffer.concat([Buffer.from('tial '), euro.subarray(0, 1)])), []);
    assert.deepEqual(s.push(Buffer.concat([euro.subarray(1), Buffer.from('\r\nb\n\nc')])), ['partial €', 'b', '']);
    assert.deepEqual(s.end(), ['c']);
    assert.deepEqual(s.end(), []);
  });

  it('orders engine timestamps as times, though the engine cuts trailing zeros', () => {
    const a = '2026-12-06T03:09:00.12345Z'; // .123450000: the earlier time
    const b = '2026-12-06T03:09:00.123456789Z';
    assert.ok(a > b, 'as text the earlier time sorts last');
    assert.ok(timestampKey(a) < timestampKey(b));
    assert.deepEqual(splitTimestamp(`${b} hello world`), { ts: b, text: 'hello world' });
    assert.deepEqual(splitTimestamp('no stamp'), { ts: '', text: 'no stamp' });
    const merged = mergeByTime([
      { key: timestampKey(b), service: 'db', text: 'late' },
      { key: timestampKey(a), service: 'app', text: 'early' },
      { key: timestampKey(a), service: 'app', text: 'early too' },
    ]);
    assert.deepEqual(
      merged.map((l) => l.text),
      ['early', 'early too', 'late'],
    );
  });

  it('aligns prefixes like compose; colours only on a terminal without NO_COLOR', () => {
    const plain = prefixer(['db', 'worker'], false);
    assert.equal(plain('db'), 'db     | ');
    assert.equal(plain('worker'), 'worker | ');
    const coloured = prefixer(['db', 'worker'], true);
    assert.equal(coloured('db'), '\x1b[36mdb     | \x1b[0m');
    assert.notEqual(coloured('worker'), coloured('db').replace('db    ', 'worker'));
    assert.equal(useColour({ isTTY: true }, {}), true);
    assert.equal(useColour({ isTTY: false }, {}), false);
    assert.equal(useColour({}, {}), false);
    assert.equal(useColour({ isTTY: true }, { NO_COLOR: '1' }), false);
    assert.equal(useColour({ isTTY: true }, { TERM: 'dumb' }), false);
  });

  it('takes the --since values docker takes, and refuses the rest', () => {
    for (const v of [
      '10m',
      '1h30m',
      '90s',
      '1.5h',
      '1700000000',
      '1700000000.25',
      '2026-01-02',
      '2026-01-02T03:04:05Z',
    ])
      assert.ok(isSinceValue(v), v);
    for (const v of ['', 'yesterday', '-5m', '10 m', '2026-13-45T99:99', '1h;rm', '--tail'])
      assert.ok(!isSinceValue(v), v);
  });
});

describe('health and restart policies', () => {
  const svc = (extra: Partial<ServiceSpec>): ServiceSpec => ({ name: 's', image: 'x', ping: () => true, ...extra });

  it('is unhealthy after `retries` failures in a row; restarts when the policy restarts failed services', () => {
    let st: HealthState = { failures: 0, healthy: true };
    const step = (ok: boolean, policy?: 'no' | 'on-failure' | 'always') => {
      const r = nextHealth(st, ok, { retries: 2 }, policy);
      st = r.state;
      return r.action;
    };
    assert.equal(step(false), 'none');
    assert.equal(step(true), 'none', 'one failure is forgiven');
    assert.equal(step(false), 'none');
    assert.equal(step(false), 'unhealthy');
    assert.equal(step(false), 'none', 'reported once');
    assert.equal(step(true), 'recovered');
    assert.equal(step(false, 'on-failure'), 'none');
    assert.equal(step(false, 'on-failure'), 'restart');
    assert.deepEqual(st, { failures: 0, healthy: false }, 'a restarted service gets `retries` pings to come up');
    assert.equal(step(false, 'always'), 'none');
    assert.equal(step(false, 'always'), 'restart');
    assert.equal(step(true, 'always'), 'recovered');
  });

  it("maps onto the engine's policies: always is unless-stopped, so a stopped service stays stopped", () => {
    assert.equal(engineRestartPolicy(undefined), 'no');
    assert.equal(engineRestartPolicy('no'), 'no');
    assert.equal(engineRestartPolicy('on-failure'), 'on-failure');
    assert.equal(engineRestartPolicy('always'), 'unless-stopped');
  });

  it('refuses bad restart and health values before anything starts', () => {
    const bad: Partial<ServiceSpec>[] = [
      { restart: 'sometimes' as never },
      { health: { intervalS: 0 } },
      { health: { timeoutS: -1 } },
      { health: { retries: 1.5 } },
      { health: { interval: 5 } as never },
      { health: [] as never },
      { health: { intervalS: 1 }, ping: undefined },
    ];
    for (const b of bad) {
      assert.throws(() => validateHealth(svc(b)), isCode('E_SERVICE_INVALID'), JSON.stringify(b));
      assert.throws(
        () => validateEnsemble({ name: 'daily-core', services: [svc(b)] }),
        isCode('E_SERVICE_INVALID'),
        JSON.stringify(b),
      );
    }
    validateHealth(svc({ restart: 'always', health: { intervalS: 0.5, timeoutS: 2, retries: 1 } }));
  });
});

describe('one-off containers', () => {
  const base: RunSpec = {
    name: 'cairn.daily.app',
    image: 'img:1',
    hostname: 'app',
    network: 'cairn.daily',
    labels: { 'cairn.ensemble': 'daily', 'cairn.service': 'app', 'cairn.spec': 'h', extra: 'x' },
    env: { A: '1' },
    ports: { '80/tcp': 8080 },
    stopSignal: 'SIGINT',
    command: ['serve'],
    restart: 'on-failure',
    mounts: ['type=volume,source=cairn.daily.data,target=/data'],
  };
  const opts = { rm: true, deps: true, tty: false, env: ['B=2'] };

  it('come from the service spec, labelled as one-offs, never as the service; no alias, ports or restart', () => {
    const args = oneOffArgs(base, 'cairn.daily.app.run-1', opts, ['sh', '-c', 'exit 3']);
    const labels = args.flatMap((a, i) => (args[i - 1] === '--label' ? [a] : []));
    assert.deepEqual(labels.sort(), ['cairn.ensemble=daily', 'cairn.oneoff=app', 'extra=x']);
    assert.deepEqual(args.slice(-4), ['img:1', 'sh', '-c', 'exit 3']);
    for (const flag of ['--publish', '--network-alias', '--restart', '--hostname', '--tty', '--detach'])
      assert.ok(!args.includes(flag), flag);
    for (const want of ['--rm', '--init', '--interactive', 'A=1', 'B=2', 'cairn.daily', base.mounts![0]!])
      assert.ok(args.includes(want), want);
    // No command: the service's own.
    assert.deepEqual(oneOffArgs(base, 'n', { ...opts, rm: false, tty: true }, []).slice(-2), ['img:1', 'serve']);
    assert.ok(oneOffArgs(base, 'n', { ...opts, rm: false, tty: true }, []).includes('--tty'));
    assert.throws(() => oneOffArgs(base, 'n', { ...opts, env: ['1BAD=x'] }, []), isCode('E_SERVICE_INVALID'));
  });

  it("start the service's dependencies, direct or not, and nothing else", () => {
    const byName = new Map<string, { dependsOn?: string[] }>([
      ['db', {}],
      ['cache', {}],
      ['app', { dependsOn: ['db'] }],
      ['worker', { dependsOn: ['app', 'cache'] }],
      ['other', {}],
    ]);
    assert.deepEqual([...dependencyClosure(byName, 'worker')].sort(), ['app', 'cache', 'db']);
    assert.deepEqual([...dependencyClosure(byName, 'db')], []);
  });
});
