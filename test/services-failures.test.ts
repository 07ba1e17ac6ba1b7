/**
 * Failures through the CLI against the real engine: a ping timeout, a
 * throwing ping, a container that exits, and their dependants reported as
 * failed without being started; the command exits non-zero with
 * E_SERVICE_FAILED while independent services still start. Invalid
 * ensembles are refused before anything starts.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expectError, isolateModuleCache, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-failures-cache');

const NAME = 'cairntest-fail';
let state: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;

before(async () => {
  const { tag } = await fixtureImage();
  await removeEnsemble(NAME);
  await removeEnsemble('cairntest-bad');
  state = tempDir('cairn-services-failures');
  env = { SVC_ENSEMBLE: NAME, SVC_IMAGE: tag };
});
after(async () => {
  await removeEnsemble(NAME);
  await removeEnsemble('cairntest-bad');
  state?.cleanup();
});

describe('services failures', () => {
  it(
    'reports ping timeouts, throwing pings, exited containers ' + 'and failed dependencies, and exits non-zero',
    async () => {
      const t0 = performance.now();
      const r = await services(['start', fixtureFile('failing.ts'), '--state-dir', state.dir, '--timeout', '2'], env);
      const s = (performance.now() - t0) / 1000;
      expectError(r, 'E_SERVICE_FAILED');
      assert.match(r.stdout, /^fine\s+created/m);
      assert.match(r.stdout, /^slow\s+failed.*E_PING_TIMEOUT: slow: ping did not return true within 2\.0s/m);
      assert.match(r.stdout, /^after-slow\s+dependency-failed\s+not started: dependency slow failed/m);
      assert.match(r.stdout, /^after-after\s+dependency-failed\s+not started: dependency after-slow failed/m);
      assert.match(r.stdout, /^thrower\s+failed.*ping threw: cannot reach it/m);
      assert.match(r.stdout, /^exits\s+failed.*exited with code 4; last output: bye/m);
      assert.match(r.stderr, /5 of 6 service\(s\) failed to start/);
      assert.equal(await inspect(NAME, 'after-slow'), undefined, 'a dependant of a failed service is never created');
      assert.equal((await inspect(NAME, 'fine'))?.State.Running, true);
      assert.ok(s < 30, `took ${s}s`);
    },
  );

  it('refuses invalid ensembles before starting anything', async () => {
    const dir = path.join(state.dir, 'bad');
    fs.mkdirSync(dir);
    const write = (name: string, services: string): string => {
      const f = path.join(dir, name);
      fs.writeFileSync(
        f,
        `import { ensemble } from 'cairn';\nexport default ensemble({ ` +
          `name: 'cairntest-bad', services: ${services} });\n`,
      );
      return f;
    };
    const cases: [string, RegExp][] = [
      [
        write(
          'cycle.ts',
          "[{ name: 'a', image: 'x', dependsOn: ['b'] }, { name: 'b', " +
            "image: 'x', dependsOn: ['a'] }, { name: 'c', image: 'x' }]",
        ),
        /circular dependency: a → b → a/,
      ],
      [write('unknown.ts', "[{ name: 'a', image: 'x', dependsOn: ['nope'] }]"), /depends on "nope"/],
      [write('dup.ts', "[{ name: 'a', image: 'x' }, { name: 'a', image: 'x' }]"), /defined twice/],
      [write('host.ts', "[{ name: 'Not_A_Host', image: 'x' }]"), /not a valid hostname/],
    ];
    for (const [f, msg] of cases) {
      const r = await services(['start', f, '--state-dir', state.dir], env);
      expectError(r, 'E_SERVICE_INVALID');
      assert.match(r.stderr, msg);
    }
    assert.equal(await inspect('cairntest-bad', 'c'), undefined);
    // An image tag the engine lacks is a failure of that service (nothing is pulled).
    const missing = write('missing.ts', "[{ name: 'a', image: 'cairn/does-not-exist:1' }]");
    // Its own project: cairntest-fail (the -p the helper passes) belongs to the other ensemble.
    const r = await services(['start', missing, '--state-dir', state.dir], { ...env, SVC_PROJECT: 'cairntest-bad' });
    expectError(r, 'E_SERVICE_FAILED');
    assert.match(r.stdout, /pulls from no registry/);
    await removeEnsemble('cairntest-bad');
  });
});
