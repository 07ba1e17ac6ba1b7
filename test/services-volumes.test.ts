/**
 * Volumes against the real engine: PostgreSQL keeps its data in the named
 * volume `data` across reload, an env change (the container is recreated),
 * an image rebuild (a changed image stage), stop/start and `down`; only
 * `down --volumes` removes it. A host directory is bind-mounted read-only.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { expectError, isolateModuleCache, ok, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-volumes-cache');

const NAME = 'data-vol';
const VOLUME = `cairn.${NAME}.data`;
let dir: { dir: string; cleanup: () => void };
let file: string;
let env: NodeJS.ProcessEnv;
const run = (args: string[], extra: NodeJS.ProcessEnv = {}) => services(args, { ...env, ...extra });
const start = async (extra: NodeJS.ProcessEnv = {}) => ok(await run(['start', file], extra));
const sql = async (q: string): Promise<string> => {
  const r = await docker(['exec', `cairn.${NAME}.db`, 'runuser', '-u', 'postgres', '--', 'psql', '-qtAc', q]);
  return r.stdout.trim();
};
const rows = (): Promise<string> => sql('SELECT name FROM kept ORDER BY name');
const volumeExists = async (): Promise<boolean> =>
  (await docker(['volume', 'inspect', VOLUME], { check: false })).exitCode === 0;

before(async () => {
  await fixtureImage();
  await removeEnsemble(NAME);
  dir = tempDir('cairn-services-volumes');
  // A copy of the fixture next to its ./conf, so the relative bind mount resolves there.
  file = path.join(dir.dir, 'data.ts');
  fs.copyFileSync(fixtureFile('data.ts'), file);
  fs.mkdirSync(path.join(dir.dir, 'conf'));
  fs.writeFileSync(path.join(dir.dir, 'conf', 'greeting.txt'), 'from the host\n');
  env = { SVC_ENSEMBLE: NAME };
});
after(async () => {
  await removeEnsemble(NAME);
  dir?.cleanup();
});

describe('services volumes (PostgreSQL data in a named volume)', () => {
  it('refuses a missing host path before creating anything', async () => {
    const bare = path.join(dir.dir, 'bare');
    fs.mkdirSync(bare);
    fs.copyFileSync(fixtureFile('data.ts'), path.join(bare, 'data.ts'));
    const r = await run(['start', path.join(bare, 'data.ts'), '-p', 'data-vol-bare']);
    expectError(r, 'E_SERVICE_INVALID');
    assert.match(r.stderr, /host path .*\/bare\/conf \(mounted at \/etc\/cairn-conf\) does not exist/);
    assert.equal(await inspect('data-vol-bare', 'db'), undefined);
    assert.equal((await docker(['volume', 'inspect', 'cairn.data-vol-bare.data'], { check: false })).exitCode, 1);
  });

  it('creates the labelled volume and bind-mounts ./conf read-only', async () => {
    const r = await start();
    assert.match(r.stdout, /^db\s+created/m);
    const v = JSON.parse((await docker(['volume', 'inspect', VOLUME])).stdout) as [{ Labels: Record<string, string> }];
    assert.equal(v[0].Labels['cairn.project'], NAME);
    assert.equal(v[0].Labels['cairn.ensemble'], NAME);
    assert.equal(v[0].Labels['cairn.volume'], 'data');
    assert.equal(v[0].Labels['cairn.test'], 'services');
    const c = `cairn.${NAME}.db`;
    assert.equal((await docker(['exec', c, 'cat', '/etc/cairn-conf/greeting.txt'])).stdout, 'from the host\n');
    const w = await docker(['exec', c, 'sh', '-c', 'echo x > /etc/cairn-conf/new'], { check: false });
    assert.notEqual(w.exitCode, 0, 'the bind mount is read-only');
    assert.match(w.stderr, /read-only/i);
    await sql("CREATE TABLE kept (name text); INSERT INTO kept VALUES ('alice')");
    assert.equal(await rows(), 'alice');
  });

  it('keeps the data across reload, an env change, an image rebuild and stop/start', async () => {
    const first = (await inspect(NAME, 'db'))!.Id;
    assert.match(ok(await run(['reload', file, 'db'])).stdout, /^db\s+reloaded/m);
    const reloaded = (await inspect(NAME, 'db'))!.Id;
    assert.notEqual(reloaded, first);
    assert.equal(await rows(), 'alice', 'after reload');
    await sql("INSERT INTO kept VALUES ('bob')");

    ok(await run(['stop', file]));
    const changed = await start({ SVC_GREETING: 'changed' });
    assert.match(changed.stdout, /^db\s+recreated/m);
    assert.ok((await inspect(NAME, 'db'))!.Config.Env.includes('GREETING=changed'));
    assert.equal(await rows(), 'alice\nbob', 'after an env change');

    const imageBefore = (await docker(['container', 'inspect', '-f', '{{.Image}}', `cairn.${NAME}.db`])).stdout;
    assert.match(ok(await run(['reload', file, 'db'], { SVC_GREETING: 'changed', SVC_REV: '2' })).stdout, /reloaded/);
    const imageAfter = (await docker(['container', 'inspect', '-f', '{{.Image}}', `cairn.${NAME}.db`])).stdout;
    assert.notEqual(imageAfter, imageBefore, 'a changed image stage makes a new image');
    assert.equal(await rows(), 'alice\nbob', 'after an image rebuild');

    ok(await run(['stop', file], { SVC_REV: '2' }));
    assert.equal((await inspect(NAME, 'db'))!.State.Running, false);
    assert.match((await start({ SVC_GREETING: 'changed', SVC_REV: '2' })).stdout, /^db\s+restarted/m);
    assert.equal(await rows(), 'alice\nbob', 'after stop and start');
  });

  it('down keeps the volume (a new container sees the data); down --volumes removes it', async () => {
    const d = ok(await run(['down', file]));
    assert.match(d.stdout, /^db\s+removed/m);
    assert.equal(await inspect(NAME, 'db'), undefined);
    assert.equal(await volumeExists(), true);
    assert.match((await start()).stdout, /^db\s+created/m);
    assert.equal(await rows(), 'alice\nbob', 'a new container on the kept volume');

    const dv = ok(await run(['down', file, '--volumes']));
    assert.match(dv.stdout, new RegExp(`^volume ${VOLUME.replace(/\./g, '\\.')} removed`, 'm'));
    assert.equal(await inspect(NAME, 'db'), undefined);
    assert.equal(await volumeExists(), false);
    assert.equal((await docker(['network', 'inspect', `cairn.${NAME}`], { check: false })).exitCode, 1);
    // A fresh start is a fresh database: the table is gone.
    await start();
    assert.equal(await sql("SELECT count(*) FROM pg_tables WHERE tablename = 'kept'"), '0');
  });
});
