/**
 * Reload and spec changes through the CLI against the real engine: a
 * service built with `docker build` from a directory (FROM the fixture
 * image, no registry), rebuilt and replaced by `reload` with the saved
 * context; a changed env recreates a stopped container, an unchanged one
 * restarts it; alwaysStartNew-like behaviour is covered by reload.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { isolateModuleCache, ok, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-reload-cache');

const NAME = 'cairntest-reload';
const file = fixtureFile('reload.ts');
let state: { dir: string; cleanup: () => void };
let build: string;
let env: NodeJS.ProcessEnv;
const ctx = (): Record<string, string> =>
  JSON.parse(fs.readFileSync(path.join(state.dir, `${NAME}.context.json`), 'utf8')) as Record<string, string>;

before(async () => {
  const { tag } = await fixtureImage();
  await removeEnsemble(NAME);
  state = tempDir('cairn-services-reload');
  build = path.join(state.dir, 'web');
  fs.mkdirSync(build);
  fs.writeFileSync(
    path.join(build, 'Dockerfile'),
    'ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY msg.txt /msg.txt\nCMD ["sleep", "infinity"]\n',
  );
  fs.writeFileSync(path.join(build, 'msg.txt'), 'version one\n');
  env = { SVC_ENSEMBLE: NAME, SVC_IMAGE: tag, SVC_BUILD_DIR: build, SVC_GREETING: 'hello' };
});
after(async () => {
  await removeEnsemble(NAME);
  await docker(['rmi', '-f', `cairn-build/${NAME}-web:latest`], { check: false });
  state?.cleanup();
});

describe('services reload and spec changes', () => {
  it(
    'builds from a directory over a local base image, then reload rebuilds ' +
      'and replaces only that service, with the saved context',
    async () => {
      const r = ok(await services(['start', file, '--state-dir', state.dir], env));
      assert.match(r.stdout, /^web\s+created/m);
      assert.deepEqual(ctx(), { base_inits: '1', web_msg: 'version one' });
      const baseId = (await inspect(NAME, 'base'))?.Id;
      const webId = (await inspect(NAME, 'web'))?.Id;
      fs.writeFileSync(path.join(build, 'msg.txt'), 'version two\n');
      const rl = ok(await services(['reload', file, 'web', '--state-dir', state.dir], env));
      assert.match(rl.stdout, /^web\s+reloaded/m);
      assert.notEqual((await inspect(NAME, 'web'))?.Id, webId);
      assert.equal((await inspect(NAME, 'base'))?.Id, baseId, 'reload touches only the named service');
      // The saved context fed the env ({base_inits}) and the new container's init ran.
      assert.ok((await inspect(NAME, 'web'))?.Config.Env.includes('INITS=1'));
      assert.deepEqual(ctx(), { base_inits: '1', web_msg: 'version two' });
    },
  );

  it('a stopped container restarts when its spec is unchanged and is recreated when it changed', async () => {
    ok(await services(['stop', file, '--state-dir', state.dir], env));
    const baseId = (await inspect(NAME, 'base'))?.Id;
    const same = ok(await services(['start', file, '--state-dir', state.dir], env));
    assert.match(same.stdout, /^base\s+restarted/m);
    assert.equal((await inspect(NAME, 'base'))?.Id, baseId);
    assert.equal(ctx().base_inits, '1');

    // A running container is left alone even if its definition changed, with a note.
    const running = ok(await services(['start', file, '--state-dir', state.dir], { ...env, SVC_GREETING: 'changed' }));
    assert.match(running.stdout, /^base\s+running.*definition changed/m);

    ok(await services(['stop', file, '--state-dir', state.dir], env));
    const changed = ok(await services(['start', file, '--state-dir', state.dir], { ...env, SVC_GREETING: 'changed' }));
    assert.match(changed.stdout, /^base\s+recreated/m);
    const base = await inspect(NAME, 'base');
    assert.notEqual(base?.Id, baseId);
    assert.ok(base?.Config.Env.includes('GREETING=changed'));
    // The new base container ran its init; web's env depends on it, so web was recreated too.
    assert.equal(ctx().base_inits, '2');
    assert.match(changed.stdout, /^web\s+recreated/m);
    assert.ok((await inspect(NAME, 'web'))?.Config.Env.includes('INITS=2'));
  });
});
