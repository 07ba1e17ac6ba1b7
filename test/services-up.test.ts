/**
 * `cairn services up` against the real engine, on the PostgreSQL ensemble
 * (test/fixtures/services/ensemble.ts: db pinged with SELECT 1, app seeding
 * a row, worker reading its id): up creates what is missing, leaves what
 * matches running, recreates exactly what changed and its dependants,
 * restarts what is stopped, and `up SERVICE` touches only it and its
 * dependencies; `status` marks what is stale against the file. Prints the
 * first start, warm start and no-op times (docs/services.md).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { isolateModuleCache, ok, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-up-cache');

const NAME = 'life-up';
const file = fixtureFile('ensemble.ts');
let state: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;
const run = (args: string[], extra: NodeJS.ProcessEnv = {}) =>
  services([args[0]!, file, ...args.slice(1), '--state-dir', state.dir], { ...env, ...extra });
const ids = async (): Promise<Record<string, string | undefined>> =>
  Object.fromEntries(
    await Promise.all(
      ['db', 'app', 'worker'].map(async (s): Promise<[string, string | undefined]> => [
        s,
        (await inspect(NAME, s))?.Id,
      ]),
    ),
  );
const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
  const t0 = performance.now();
  const r = await f();
  process.stderr.write(`# ${what}: ${((performance.now() - t0) / 1000).toFixed(1)}s\n`);
  return r;
};

interface Status {
  services: { name: string; state: string; stale: boolean; staleReasons: string[] }[];
}
const status = async (extra: NodeJS.ProcessEnv = {}): Promise<Status> =>
  JSON.parse(ok(await run(['status', '--json'], extra)).stdout) as Status;

before(async () => {
  await fixtureImage();
  await removeEnsemble(NAME);
  state = tempDir('life-up');
  env = { SVC_ENSEMBLE: NAME };
});
after(async () => {
  await removeEnsemble(NAME);
  state?.cleanup();
});

describe('services up', () => {
  it('creates the whole ensemble, then leaves it alone', async () => {
    const st0 = await status();
    assert.deepEqual(
      st0.services.map((s) => [s.name, s.stale, s.staleReasons]),
      [
        ['db', true, ['no container']],
        ['app', true, ['no container']],
        ['worker', true, ['no container']],
      ],
    );
    const r = ok(await timed('first start (up, 3 containers, PostgreSQL)', () => run(['up'])));
    for (const s of ['db', 'app', 'worker']) assert.match(r.stdout, new RegExp(`^${s}\\s+created`, 'm'));
    assert.match(r.stderr, /images: |image ready|creating a container/);
    const before = await ids();
    const again = ok(await timed('no-op up (all running)', () => run(['up'])));
    for (const s of ['db', 'app', 'worker']) assert.match(again.stdout, new RegExp(`^${s}\\s+running`, 'm'));
    assert.deepEqual(await ids(), before);
    assert.ok((await status()).services.every((s) => !s.stale));
  });

  it('recreates exactly the changed service and its dependants; status marks them stale first', async () => {
    const before = await ids();
    const st = await status({ SVC_GREETING: 'changed' });
    assert.deepEqual(
      st.services.map((s) => [s.name, s.stale]),
      [
        ['db', false],
        ['app', true],
        // up recreates the worker too (it depends on app), so status must say so beforehand.
        ['worker', true],
      ],
    );
    assert.deepEqual(st.services[1]!.staleReasons, ['definition changed']);
    assert.deepEqual(st.services[2]!.staleReasons, ['dependency app will be recreated']);
    const text = ok(await run(['status'], { SVC_GREETING: 'changed' })).stdout;
    assert.match(text, /^app\s+running.*stale: definition changed/m);
    const r = ok(await run(['up'], { SVC_GREETING: 'changed' }));
    assert.match(r.stdout, /^db\s+running/m);
    assert.match(r.stdout, /^app\s+recreated.*its definition changed/m);
    assert.match(r.stdout, /^worker\s+recreated.*dependency app was recreated/m);
    const now = await ids();
    assert.equal(now.db, before.db);
    assert.notEqual(now.app, before.app);
    assert.notEqual(now.worker, before.worker);
    assert.ok((await inspect(NAME, 'app'))?.Config.Env.includes('GREETING=changed'));
    assert.ok((await status({ SVC_GREETING: 'changed' })).services.every((s) => !s.stale));
  });

  it('a dependency recreated outside up makes its dependants stale; up recreates them', async () => {
    // Remove db behind cairn's back: up creates it, and recreates app and worker, which ran against the old one.
    await docker(['rm', '-f', `cairn.${NAME}.db`]);
    const st = await status({ SVC_GREETING: 'changed' });
    assert.deepEqual(st.services[0]!.staleReasons, ['no container']);
    assert.deepEqual(st.services[1]!.staleReasons, ['dependency db was recreated']);
    assert.deepEqual(st.services[2]!.staleReasons, ['dependency app will be recreated']);
    const r = ok(await run(['up'], { SVC_GREETING: 'changed' }));
    assert.match(r.stdout, /^db\s+created/m);
    assert.match(r.stdout, /^app\s+recreated.*dependency db was recreated/m);
    assert.match(r.stdout, /^worker\s+recreated/m);
    // The worker reads the row the new app seeded in the new database.
    assert.equal((await docker(['exec', `cairn.${NAME}.worker`, 'cat', '/tmp/name'])).stdout.trim(), 'alice');
  });

  it('restarts stopped services (warm start) and leaves their containers', async () => {
    ok(await run(['stop'], { SVC_GREETING: 'changed' }));
    const before = await ids();
    const r = ok(
      await timed('warm start (up of the stopped ensemble)', () => run(['up'], { SVC_GREETING: 'changed' })),
    );
    for (const s of ['db', 'app', 'worker']) assert.match(r.stdout, new RegExp(`^${s}\\s+restarted`, 'm'));
    assert.deepEqual(await ids(), before);
  });

  it('up SERVICE touches only it and its dependencies', async () => {
    ok(await run(['stop'], { SVC_GREETING: 'changed' }));
    const r = ok(await run(['up', 'app'], { SVC_GREETING: 'changed' }));
    assert.match(r.stdout, /^db\s+restarted/m);
    assert.match(r.stdout, /^app\s+restarted/m);
    assert.doesNotMatch(r.stdout, /^worker/m);
    assert.equal((await inspect(NAME, 'worker'))?.State.Running, false);
    const bad = await run(['up', 'nope']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /E_SERVICE_INVALID: no service nope/);
    assert.ok(path.isAbsolute(state.dir));
  });
});
