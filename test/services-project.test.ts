/**
 * Project names against the real engine (bug 7): two copies of one
 * ensemble file in two directories are two projects, and `down` or
 * `stop --remove` of one leaves the other running. A default name taken
 * by another copy, or a name taken by another ensemble, is
 * E_PROJECT_IN_USE; containers from before project names are pointed out.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { expectError, isolateModuleCache, ok, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';
import { removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-project-cache');

const NAME = 'data-copy';
const OTHER = 'data-other';
let root: { dir: string; cleanup: () => void };
let image: string;

const source = (name: string): string => `import { ensemble } from 'cairn';
const image = process.env.SVC_IMAGE!;
export default ensemble({
  name: '${name}',
  labels: { 'cairn.test': 'services' },
  services: [
    { name: 'db', image, command: ['sleep', 'infinity'], volumes: { data: '/data' } },
    {
      name: 'app',
      image,
      command: ['sleep', 'infinity'],
      dependsOn: ['db'],
      postStartInit: (h) => h.context.set('started_by', process.env.SVC_COPY ?? ''),
    },
  ],
});
`;

/** A copy of the ensemble at ROOT/<sub>/ensemble.ts. */
function copyAt(sub: string, name = NAME): string {
  const dir = path.join(root.dir, sub);
  fs.mkdirSync(dir, { recursive: true });
  const f = path.join(dir, 'ensemble.ts');
  fs.writeFileSync(f, source(name));
  return f;
}

// SVC_PROJECT '' : no -p, the default project of the file's directory.
const run = (args: string[], copy = '') => services(args, { SVC_PROJECT: '', SVC_IMAGE: image, SVC_COPY: copy });
const running = async (container: string): Promise<boolean> =>
  (await docker(['container', 'inspect', '-f', '{{.State.Running}}', container], { check: false })).stdout.trim() ===
  'true';
const exists = async (kind: 'container' | 'volume' | 'network', name: string): Promise<boolean> =>
  (await docker([kind, 'inspect', name], { check: false })).exitCode === 0;
const contextOf = (f: string, project: string): Record<string, string> =>
  JSON.parse(
    fs.readFileSync(path.join(path.dirname(f), '.cairn-services', `${project}.context.json`), 'utf8'),
  ) as Record<string, string>;

let one: string;
let two: string;

before(async () => {
  image = (await fixtureImage()).tag;
  await removeEnsemble(NAME);
  await removeEnsemble(OTHER);
  root = tempDir('cairn-services-project');
  one = copyAt('one/alpha');
  two = copyAt('two/beta');
});
after(async () => {
  await removeEnsemble(NAME);
  await removeEnsemble(OTHER);
  root?.cleanup();
});

describe('services projects', () => {
  it('two copies in two directories are two projects; down of one leaves the other running', async () => {
    assert.match(ok(await run(['start', one], 'one')).stdout, /^app\s+created/m);
    assert.match(ok(await run(['start', two], 'two')).stdout, /^app\s+created/m);
    for (const p of ['alpha-data-copy', 'beta-data-copy']) {
      assert.equal(await running(`cairn.${p}.db`), true, p);
      assert.equal(await running(`cairn.${p}.app`), true, p);
      assert.equal(await exists('volume', `cairn.${p}.data`), true, p);
    }
    assert.equal(contextOf(one, 'alpha-data-copy').started_by, 'one');
    assert.equal(contextOf(two, 'beta-data-copy').started_by, 'two');
    const st = JSON.parse(ok(await run(['status', one, '--json'])).stdout) as { project: string };
    assert.equal(st.project, 'alpha-data-copy');

    ok(await run(['down', two]));
    assert.equal(await exists('container', 'cairn.beta-data-copy.db'), false);
    assert.equal(await exists('network', 'cairn.beta-data-copy'), false);
    assert.equal(fs.existsSync(path.join(root.dir, 'two/beta/.cairn-services/beta-data-copy.context.json')), false);
    assert.equal(await running('cairn.alpha-data-copy.db'), true, 'down of the copy left the original running');
    assert.equal(await running('cairn.alpha-data-copy.app'), true);
    assert.equal(contextOf(one, 'alpha-data-copy').started_by, 'one');

    // And the other way round, with stop --remove.
    ok(await run(['start', two], 'two'));
    ok(await run(['stop', one, '--remove']));
    assert.equal(await exists('container', 'cairn.alpha-data-copy.app'), false);
    assert.equal(await running('cairn.beta-data-copy.app'), true, 'stop --remove of one left the other running');
    assert.equal(await exists('volume', 'cairn.alpha-data-copy.data'), true, 'stop --remove keeps volumes');
    // A container of a service since deleted from the file is still the project's: down removes it.
    const labels = ['cairn.ensemble=data-copy', 'cairn.project=alpha-data-copy', 'cairn.service=old'];
    await docker([
      'run',
      '--detach',
      '--name',
      'cairn.alpha-data-copy.old',
      ...labels.flatMap((l) => ['--label', l]),
      image,
      'sleep',
      'infinity',
    ]);
    const down = ok(await run(['down', one, '--volumes']));
    assert.match(down.stdout, /^cairn\.alpha-data-copy\.old\s+orphan-removed/m);
    assert.equal(await exists('container', 'cairn.alpha-data-copy.old'), false);
    assert.match(down.stdout, /^volume cairn\.alpha-data-copy\.data removed/m);
    assert.equal(await exists('volume', 'cairn.alpha-data-copy.data'), false);
    assert.equal(await exists('volume', 'cairn.beta-data-copy.data'), true);
  });

  it('a default name another copy holds, or a name another ensemble holds, is E_PROJECT_IN_USE', async () => {
    // Same directory name as ../two/beta: the default project is taken by the other copy.
    const three = copyAt('three/beta');
    const refused = await run(['start', three], 'three');
    expectError(refused, 'E_PROJECT_IN_USE');
    assert.match(refused.stderr, /two\/beta.*-p NAME/);
    expectError(await run(['down', three]), 'E_PROJECT_IN_USE');
    assert.equal(await running('cairn.beta-data-copy.app'), true, 'the refused copy touched nothing');
    // As its own project it runs beside the other.
    ok(await run(['start', three, '-p', 'data-copy-three'], 'three'));
    assert.equal(await running('cairn.data-copy-three.app'), true);
    ok(await run(['down', three, '-p', 'data-copy-three', '--volumes']));
    assert.equal(await running('cairn.beta-data-copy.app'), true);

    const other = copyAt('other', OTHER);
    expectError(await run(['status', other, '-p', 'beta-data-copy']), 'E_PROJECT_IN_USE');
    expectError(await run(['start', other, '-p', 'Bad.Name']), 'E_SERVICE_INVALID');
    ok(await run(['down', two, '--volumes']));
  });

  it('containers from before project names are pointed out, and -p <ensemble> manages them', async () => {
    // What start made before projects: cairn.<ensemble>.<service>, labelled with the ensemble only.
    await docker([
      'run',
      '--detach',
      '--init',
      '--name',
      `cairn.${NAME}.db`,
      '--label',
      `cairn.ensemble=${NAME}`,
      image,
      'sleep',
      'infinity',
    ]);
    const st = ok(await run(['status', one]));
    assert.match(st.stderr, new RegExp(`cairn\\.${NAME}\\.db was created before project names.*-p ${NAME}`));
    const down = ok(await run(['down', one, '-p', NAME]));
    assert.match(down.stdout, /^db\s+removed/m);
    assert.equal(await exists('container', `cairn.${NAME}.db`), false);
  });
});
