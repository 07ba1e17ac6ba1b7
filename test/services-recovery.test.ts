/**
 * Recovery through the CLI against the real engine, with PostgreSQL (ping:
 * SELECT 1) and an app whose postStartInit seeds it (test/fixtures/services
 * /life.ts). A first start that does not finish (postStartInit throws, the
 * ping times out, Ctrl-C during the ping, `stop` during `start`) is
 * finished by the next start: ping and init again, never "running" without
 * its init. Also: a hung ping attempt is aborted by its own timeout; a host
 * port published twice, a failing directory build, an exited service kept
 * by `stop -x`, and a port already in use.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { expectError, isolateModuleCache, ok, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';
import { containersOf, containersRunning, spawnServices } from './fixtures/services/life-support.js';

isolateModuleCache(after, 'cairn-services-recovery-cache');

const NAME = 'life-rec';
const BAD = 'life-rec-bad';
const file = fixtureFile('life.ts');
let state: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;
let tag: string;
const run = (args: string[], extra: NodeJS.ProcessEnv = {}) =>
  services([args[0]!, file, ...args.slice(1), '--state-dir', state.dir], { ...env, ...extra });
const ctx = (): Record<string, string> => {
  const f = path.join(state.dir, `${NAME}.context.json`);
  return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, string>) : {};
};
const containerToken = async (): Promise<string> =>
  (await docker(['exec', `cairn.${NAME}.app`, 'cat', '/tmp/init-token'], { check: false })).stdout.trim();

/** The app finished its start: its init ran for the container that runs now, and the worker got the answer. */
async function assertConverged(): Promise<void> {
  for (const s of ['db', 'app', 'worker']) assert.equal((await inspect(NAME, s))?.State.Running, true, s);
  assert.equal(await containerToken(), ctx().app_token, 'postStartInit ran for the running app container');
  assert.ok((await inspect(NAME, 'worker'))?.Config.Env.includes('ANSWER=42'));
}

before(async () => {
  tag = (await fixtureImage()).tag;
  await removeEnsemble(NAME);
  await removeEnsemble(BAD);
  state = tempDir('life-rec');
  env = { SVC_ENSEMBLE: NAME };
});
after(async () => {
  await removeEnsemble(NAME);
  await removeEnsemble(BAD);
  await docker(['rmi', '-f', `cairn-build/${BAD}-web:latest`], { check: false });
  state?.cleanup();
});

describe('services recovery: a start counts only once its postStartInit succeeded', () => {
  it('a throwing postStartInit fails the start (non-zero); the next start runs it again', async () => {
    const r = await run(['start'], { LIFE_INIT: 'throw' });
    expectError(r, 'E_SERVICE_FAILED');
    assert.match(r.stdout, /^app\s+failed.*postStartInit threw: seed script failed/m);
    assert.match(r.stdout, /^worker\s+dependency-failed/m);
    assert.equal(ctx().app_inits, '1');
    const again = ok(await run(['start']));
    assert.match(again.stdout, /^app\s+running.*did not finish/m);
    assert.match(again.stdout, /^worker\s+created/m);
    assert.equal(ctx().app_inits, '2', 'the init ran again');
    await assertConverged();
    // Finished now: a third start leaves it alone.
    const third = ok(await run(['start']));
    assert.match(third.stdout, /^app\s+running\s*(\(|$)/m);
    assert.equal(ctx().app_inits, '2');
    ok(await run(['stop', '--remove']));
  });

  it('a ping timeout on the first start: the next start pings and runs the init', async () => {
    const r = await run(['start', '--timeout', '3'], { LIFE_PING: 'never' });
    expectError(r, 'E_SERVICE_FAILED');
    assert.match(
      r.stdout,
      /^app\s+failed\s+E_PING_TIMEOUT: app: ping did not return true within 3\.0s.*returned false/m,
    );
    assert.equal(ctx().app_inits, undefined);
    const again = ok(await run(['start']));
    assert.match(again.stdout, /^app\s+running/m);
    assert.equal(ctx().app_inits, '1');
    await assertConverged();
    ok(await run(['stop', '--remove']));
  });

  it('Ctrl-C during the ping exits 130 at once; the next up finishes the start', async () => {
    const p = spawnServices(['start', file, '--state-dir', state.dir, '--timeout', '120'], {
      ...env,
      LIFE_PING: 'never',
    });
    assert.ok(await p.waitFor(/app: creating a container/), 'the app container is being created');
    await new Promise((r) => setTimeout(r, 1500));
    process.kill(p.pid, 'SIGINT');
    const r = await p.done;
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stdout, /^app\s+interrupted/m);
    assert.match(r.stderr, /E_INTERRUPTED/);
    assert.equal((await inspect(NAME, 'worker')) === undefined, true);
    assert.equal(ctx().app_inits, undefined);
    const again = ok(await run(['up']));
    assert.match(again.stdout, /^app\s+running.*did not finish/m);
    assert.equal(ctx().app_inits, '1');
    await assertConverged();
  });

  it('`stop` during a start: the next start restarts the app and runs its init', async () => {
    ok(await run(['stop', '--remove']));
    const p = spawnServices(['start', file, '--state-dir', state.dir, '--timeout', '120'], {
      ...env,
      LIFE_PING: 'never',
    });
    assert.ok(await p.waitFor(/app: creating a container/));
    await new Promise((r) => setTimeout(r, 1000));
    ok(await run(['stop']));
    const r = await p.done;
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /^app\s+failed/m);
    const again = ok(await run(['start']));
    assert.match(again.stdout, /^app\s+restarted.*did not finish/m);
    assert.equal(ctx().app_inits, '1');
    await assertConverged();
  });
});

describe('services recovery: pings, ports, builds, stop', () => {
  it('a hung ping attempt is aborted after pingAttemptTimeoutMs and the next attempt answers', async () => {
    ok(await run(['stop', '--remove']));
    const r = ok(await run(['start', '--timeout', '20'], { LIFE_PING: 'hang-once', LIFE_ATTEMPT_MS: '500' }));
    assert.match(r.stdout, /^app\s+created/m);
    await assertConverged();
    ok(await run(['stop', '--remove']));
    const hung = await run(['start', '--timeout', '3'], { LIFE_PING: 'hang', LIFE_ATTEMPT_MS: '700' });
    expectError(hung, 'E_SERVICE_FAILED');
    assert.match(hung.stdout, /^app\s+failed\s+E_PING_TIMEOUT: .*\d+ attempts; last: attempt \d+ got no answer/m);
  });

  it('`stop -x app` is allowed when app has already exited', async () => {
    ok(await run(['stop', '--remove']));
    ok(await run(['start']));
    await docker(['stop', `cairn.${NAME}.app`]);
    const r = ok(await run(['stop', '-x', 'app']));
    assert.match(r.stdout, /^worker\s+stopped/m);
    assert.match(r.stdout, /^db\s+stopped/m);
    // A running app still may not be kept while its dependency stops.
    ok(await run(['start']));
    expectError(await run(['stop', '-x', 'app']), 'E_SERVICE_INVALID');
    ok(await run(['stop', '--remove']));
  });

  it('a host port already in use is reported once', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    ok(await run(['stop', '--remove']));
    try {
      const r = await run(['start'], { LIFE_DB_PORT: String(port) });
      expectError(r, 'E_SERVICE_FAILED');
      const all = r.stdout + r.stderr;
      const shown = all.split('\n').filter((l) => l.includes(`127.0.0.1:${port}`));
      assert.equal(shown.length, 1, all);
      assert.match(r.stdout, /^db\s+failed/m);
    } finally {
      server.close();
    }
  });

  it('two services publishing one host port are refused before anything starts', async () => {
    const dir = path.join(state.dir, 'bad');
    fs.mkdirSync(dir, { recursive: true });
    const f = path.join(dir, 'ports.ts');
    fs.writeFileSync(
      f,
      `import { ensemble } from 'cairn';\nexport default ensemble({ name: '${BAD}', services: [` +
        `{ name: 'a', image: '${tag}', command: ['sleep', 'infinity'], ports: { '80': 18099 } }, ` +
        `{ name: 'b', image: '${tag}', command: ['sleep', 'infinity'], ports: { '81': 18099 } }] });\n`,
    );
    const r = await services(['start', f, '--state-dir', state.dir], { ...env, SVC_ENSEMBLE: BAD });
    expectError(r, 'E_SERVICE_INVALID');
    assert.match(r.stderr, /host port 18099\/tcp is published twice: by a 80 and by b 81/);
    assert.deepEqual([...(await containersOf(BAD)).keys()], []);
  });

  it('a failing directory build leaves no intermediate container behind', async () => {
    const dir = path.join(state.dir, 'web');
    fs.mkdirSync(dir, { recursive: true });
    const marker = `life-marker-${process.pid}-${Date.now()}`;
    fs.writeFileSync(
      path.join(dir, 'Dockerfile'),
      `ARG BASE_IMAGE\nFROM \${BASE_IMAGE}\nRUN echo ${marker} > /m\nRUN exit 3 # ${marker}\n`,
    );
    const f = path.join(dir, 'build.ts');
    fs.writeFileSync(
      f,
      `import { ensemble } from 'cairn';\nexport default ensemble({ name: '${BAD}', services: [` +
        `{ name: 'web', buildFromDirectory: { directory: '.', baseImage: '${tag}' } }] });\n`,
    );
    const r = await services(['start', f, '--state-dir', state.dir], { ...env, SVC_ENSEMBLE: BAD });
    expectError(r, 'E_SERVICE_FAILED');
    assert.match(r.stdout, /^web\s+failed/m);
    assert.deepEqual(await containersRunning(marker), [], 'no container of the failed step is left');
  });
});
