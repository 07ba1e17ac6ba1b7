/**
 * The pure core of services: validation (names, duplicates, unknown and
 * circular dependencies), dependency order, start/stop selections with
 * exclusions, context interpolation and spec hashing. No Docker.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  dependantsOf,
  dependencyOrder,
  selectForStart,
  selectForStop,
  validateEnsemble,
} from '../src/services/graph.js';
import { interpolate, interpolateEnv, specHash, type ContainerSpec } from '../src/services/interpolate.js';
import { FileContext } from '../src/services/context.js';
import type { ServiceSpec } from '../src/services/spec.js';
import { isCode, tempDir } from './helpers.js';

const svc = (name: string, dependsOn: string[] = [], extra: Partial<ServiceSpec> = {}): ServiceSpec => ({
  name,
  image: 'debian:x',
  dependsOn,
  ...extra,
});
const ens = (...services: ServiceSpec[]) => ({ name: 'e', services });

describe('validateEnsemble', () => {
  it('accepts a valid ensemble and orders dependencies first, keeping definition order among peers', () => {
    const m = validateEnsemble(ens(svc('web', ['api']), svc('db'), svc('api', ['db', 'cache']), svc('cache')));
    assert.deepEqual(dependencyOrder(m), ['db', 'cache', 'api', 'web']);
    assert.deepEqual([...dependantsOf(m, 'db')].sort(), ['api', 'web']);
  });

  it('refuses names that are not hostnames, duplicates, unknown and circular dependencies', () => {
    for (const bad of ['Db', 'my_db', '-db', 'db-', '', 'a.b', 'x'.repeat(64)]) {
      assert.throws(() => validateEnsemble(ens(svc(bad))), isCode('E_SERVICE_INVALID'), bad);
    }
    assert.throws(() => validateEnsemble(ens(svc('db'), svc('db'))), /defined twice/);
    assert.throws(() => validateEnsemble(ens(svc('app', ['db']))), /"db", which is not defined/);
    assert.throws(() => validateEnsemble(ens(svc('a', ['a']))), /depends on itself/);
    assert.throws(
      () => validateEnsemble(ens(svc('a', ['c']), svc('b', ['a']), svc('c', ['b']))),
      (e: Error) => isCode('E_SERVICE_INVALID')(e) && /circular dependency: a → c → b → a/.test(e.message),
    );
    assert.throws(() => validateEnsemble({ name: 'Bad_Name', services: [] }), isCode('E_SERVICE_INVALID'));
  });

  it('refuses bad images, ports, env, commands and hooks', () => {
    const bad: Partial<ServiceSpec>[] = [
      { image: undefined },
      { buildFromDirectory: { directory: '.' } },
      { image: 'has space' },
      { ports: { '70000': 1 } },
      { ports: { '80': -1 } },
      { env: { 'BAD-KEY': 'x' } },
      { command: 'sh -c x' as never },
      { ping: 'yes' as never },
      { stopSignal: 'kill me' },
    ];
    for (const extra of bad)
      assert.throws(
        () => validateEnsemble(ens(svc('s', [], extra))),
        isCode('E_SERVICE_INVALID'),
        JSON.stringify(extra),
      );
  });
});

describe('start and stop selections', () => {
  const m = validateEnsemble(ens(svc('db'), svc('app', ['db']), svc('worker', ['app']), svc('other')));
  it('starts in dependency order and refuses to start a service without an excluded dependency', () => {
    assert.deepEqual(selectForStart(m, []), ['db', 'app', 'worker', 'other']);
    assert.deepEqual(selectForStart(m, ['worker']), ['db', 'app', 'other']);
    assert.throws(
      () => selectForStart(m, ['db']),
      (e: Error) => isCode('E_SERVICE_INVALID')(e) && /cannot start app without its dependency db/.test(e.message),
    );
    assert.throws(() => selectForStart(m, ['nope']), /no such service/);
  });
  it('stops in reverse order and refuses to keep a service whose dependency is stopped', () => {
    assert.deepEqual(selectForStop(m, []), ['other', 'worker', 'app', 'db']);
    assert.deepEqual(selectForStop(m, ['db', 'app']), ['other', 'worker']);
    assert.throws(
      () => selectForStop(m, ['worker']),
      (e: Error) =>
        isCode('E_SERVICE_INVALID')(e) &&
        /cannot keep worker running while stopping its dependency app/.test(e.message),
    );
  });
});

describe('interpolation and spec hashes', () => {
  it('replaces {key} from the context, keeps {{ }} as braces, refuses missing keys', () => {
    assert.equal(interpolate('id={user_id}, {{literal}}', { user_id: '7' }), 'id=7, {literal}');
    assert.throws(
      () => interpolate('{missing}', {}, 'service w: env X'),
      (e: Error) => isCode('E_SERVICE_FAILED')(e) && /service w: env X uses \{missing\}/.test(e.message),
    );
    assert.deepEqual(interpolateEnv({ B: '{a}', A: 'x' }, { a: '1' }, 's'), { A: 'x', B: '1' });
  });
  it('hashes the canonical spec: key order does not matter, any value does', () => {
    const base: ContainerSpec = {
      imageId: 'sha256:1',
      command: null,
      env: { A: '1', B: '2' },
      ports: { '80/tcp': 0 },
      stopSignal: null,
      network: 'n',
      hostname: 'h',
    };
    assert.equal(specHash(base), specHash({ ...base, env: { B: '2', A: '1' } }));
    for (const change of [
      { imageId: 'sha256:2' },
      { env: { A: '1', B: '3' } },
      { ports: { '80/tcp': 8080 } },
      { stopSignal: 'SIGINT' },
      { command: ['x'] },
    ]) {
      assert.notEqual(specHash(base), specHash({ ...base, ...change }), JSON.stringify(change));
    }
  });
  it('persists the context atomically and reads it back', () => {
    const t = tempDir('cairn-svc-ctx');
    try {
      const file = path.join(t.dir, 'state', 'e.context.json');
      const c = new FileContext(file);
      assert.deepEqual(c.all(), {});
      c.set('user_id', '42');
      assert.equal(new FileContext(file).get('user_id'), '42');
      assert.deepEqual(fs.readdirSync(path.dirname(file)), ['e.context.json']);
      fs.writeFileSync(file, '[1]');
      assert.throws(() => new FileContext(file), isCode('E_SERVICE_INVALID'));
    } finally {
      t.cleanup();
    }
  });
});
