/**
 * A real ensemble through the CLI against the real engine: PostgreSQL built
 * from Debian's package (ping = SQL SELECT 1), an app whose postStartInit
 * seeds a row and sets user_id in the context, a worker that reads it from
 * its env. Then: status, a second start leaves running containers alone,
 * stop order (dependants first), exclusion errors, restart of stopped
 * containers (postStartInit not re-run), stop --remove.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { cairnBin, expectError, isolateModuleCache, ok, tempDir } from './helpers.js';
import { FIXTURE_STORE, fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-ensemble-cache');

const NAME = 'cairntest-pg';
const file = fixtureFile('ensemble.ts');
let state: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;
const run = (...args: string[]) => services(args, env);

before(async () => {
  await fixtureImage();
  await removeEnsemble(NAME);
  state = tempDir('cairn-services-state');
  env = { SVC_ENSEMBLE: NAME };
});
after(async () => {
  await removeEnsemble(NAME);
  state?.cleanup();
});

const contextOf = (): Record<string, string> =>
  JSON.parse(fs.readFileSync(path.join(state.dir, `${NAME}.context.json`), 'utf8')) as Record<string, string>;

describe('services ensemble (postgres, app, worker)', () => {
  it(
    'starts in dependency order: SQL ping, postStartInit seeds a ' + 'row and sets the context, the worker reads it',
    async () => {
      const t0 = performance.now();
      const r = ok(await run('start', file, '--state-dir', state.dir));
      process.stderr.write(
        `# first start of the postgres ensemble: ${((performance.now() - t0) / 1000).toFixed(1)}s\n`,
      );
      assert.match(r.stdout, /^db\s+created/m);
      assert.match(r.stdout, /^app\s+created/m);
      assert.match(r.stdout, /^worker\s+created/m);
      const ctx = contextOf();
      assert.match(ctx.user_id ?? '', /^\d+$/);
      const worker = await inspect(NAME, 'worker');
      assert.ok(worker?.Config.Env.includes(`USER_ID=${ctx.user_id}`), String(worker?.Config.Env));
      assert.equal(worker?.Config.Labels['cairn.ensemble'], NAME);
      // The worker queried the seeded row over the ensemble network by hostname.
      const { docker } = await import('../src/backends/containers/docker.js');
      assert.equal((await docker(['exec', `cairn.${NAME}.worker`, 'cat', '/tmp/name'])).stdout.trim(), 'alice');
      // db's port is published on loopback.
      const st = ok(await run('status', file, '--state-dir', state.dir, '--json'));
      const status = JSON.parse(st.stdout) as {
        services: { name: string; state: string; ports: Record<string, string> }[];
        context: Record<string, string>;
      };
      assert.deepEqual(
        status.services.map((s) => [s.name, s.state]),
        [
          ['db', 'running'],
          ['app', 'running'],
          ['worker', 'running'],
        ],
      );
      assert.equal(status.context.user_id, ctx.user_id);
      const port = Number(status.services[0]!.ports['5432/tcp']!.split(':')[1]);
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.end();
          resolve();
        });
        s.on('error', reject);
      });
    },
  );

  it('leaves running containers alone on a second start (no second postStartInit)', async () => {
    const before = await inspect(NAME, 'app');
    const r = ok(await run('start', file, '--state-dir', state.dir));
    assert.match(r.stdout, /^db\s+running/m);
    assert.match(r.stdout, /^app\s+running/m);
    assert.equal((await inspect(NAME, 'app'))?.Id, before?.Id);
  });

  it('status into a closed pipe (`| head`) exits like a SIGPIPE, without a stack trace', async () => {
    const child = spawn(
      process.execPath,
      [cairnBin, '--store', FIXTURE_STORE, 'services', 'status', '-p', NAME, file, '--state-dir', state.dir],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stdout.destroy(); // the reader is gone before cairn writes a line
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const [code] = (await once(child, 'close')) as [number | null];
    assert.equal(code, 141, stderr);
    assert.doesNotMatch(stderr, /EPIPE|Unhandled|at /);
  });

  it('refuses exclusions that would break dependencies, before touching anything', async () => {
    expectError(await run('stop', file, '--state-dir', state.dir, '--exclude', 'worker'), 'E_SERVICE_INVALID');
    expectError(await run('start', file, '--state-dir', state.dir, '--exclude', 'db'), 'E_SERVICE_INVALID');
    expectError(await run('reload', file, 'nope', '--state-dir', state.dir), 'E_SERVICE_INVALID');
    for (const s of ['db', 'app', 'worker']) assert.equal((await inspect(NAME, s))?.State.Running, true, s);
  });

  it('stops dependants first; a stopped ensemble restarts with the same containers and context', async () => {
    const userId = contextOf().user_id;
    // Stopping only the leaf is allowed.
    const leaf = ok(await run('stop', file, '--state-dir', state.dir, '--exclude', 'db', 'app'));
    assert.match(leaf.stdout, /^worker\s+stopped/m);
    assert.equal((await inspect(NAME, 'db'))?.State.Running, true);
    const r = ok(await run('stop', file, '--state-dir', state.dir));
    assert.deepEqual(
      r.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(/\s+/).slice(0, 2).join(' ')),
      ['worker already-stopped', 'app stopped', 'db stopped'],
    );
    const finished = async (s: string) => Date.parse((await inspect(NAME, s))!.State.FinishedAt);
    assert.ok((await finished('app')) <= (await finished('db')), 'app must stop before db');
    const appId = (await inspect(NAME, 'app'))?.Id;
    const again = ok(await run('start', file, '--state-dir', state.dir));
    assert.match(again.stdout, /^db\s+restarted/m);
    assert.match(again.stdout, /^worker\s+restarted/m);
    assert.equal((await inspect(NAME, 'app'))?.Id, appId);
    assert.equal(contextOf().user_id, userId, 'postStartInit must not run again for an existing container');
  });

  it('stop --remove removes containers, the network and the context file', async () => {
    const r = ok(await run('stop', file, '--state-dir', state.dir, '--remove'));
    assert.match(r.stdout, /^db\s+removed/m);
    for (const s of ['db', 'app', 'worker']) assert.equal(await inspect(NAME, s), undefined);
    assert.equal(fs.existsSync(path.join(state.dir, `${NAME}.context.json`)), false);
    const st = ok(await run('status', file, '--state-dir', state.dir));
    assert.match(st.stdout, /^db\s+absent/m);
  });
});
