/**
 * Strict ensemble specs (bug 4), volumes' spelling and project names: pure
 * rules, and ensemble files loaded as the CLI loads them, where a bad key
 * or type is reported as file:line with a "did you mean" hint. No Docker.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../src/errors.js';
import { validateEnsemble } from '../src/services/graph.js';
import { loadEnsembleFile } from '../src/services/load.js';
import { checkClaim, defaultProjectName, resolveProject, type Project } from '../src/services/project.js';
import { suggestKey } from '../src/services/spec-keys.js';
import { findLine } from '../src/services/spec-location.js';
import { mountArg, parseVolumes } from '../src/services/volumes.js';
import { cairnAsync, expectError, isCode, isolateModuleCache, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-services-spec-cache');
const files = tempDir('cairn-services-spec');
after(() => files.cleanup());

let n = 0;
/** Writes an ensemble file (in a directory of its own) and returns its path. */
function ensembleFile(body: string): string {
  const dir = path.join(files.dir, `e${++n}`);
  fs.mkdirSync(dir);
  const f = path.join(dir, 'ensemble.ts');
  fs.writeFileSync(f, body);
  return f;
}

async function loadError(f: string): Promise<CairnError> {
  try {
    await loadEnsembleFile(f);
  } catch (e) {
    assert.ok(e instanceof CairnError, String(e));
    return e;
  }
  assert.fail('expected E_SERVICE_INVALID');
}

describe('unknown keys and wrong types', () => {
  it('suggests Cairn names for compose names, and the closest key for typos', () => {
    const keys = ['name', 'image', 'env', 'dependsOn', 'stopSignal', 'volumes'];
    assert.equal(suggestKey('depends_on', keys), 'dependsOn');
    assert.equal(suggestKey('environment', keys), 'env');
    assert.match(suggestKey('build', keys)!, /buildFromDirectory/);
    assert.equal(suggestKey('dependson', keys), 'dependsOn');
    assert.equal(suggestKey('imgae', keys), 'image');
    assert.equal(suggestKey('volume', keys), 'volumes');
    assert.equal(suggestKey('stop-signal', keys), 'stopSignal');
    assert.equal(suggestKey('frobnicate', keys), undefined);
  });

  it('refuses unknown keys in services, ensembles and buildFromDirectory', () => {
    const cases: [unknown, RegExp][] = [
      [{ name: 'e', services: [{ name: 'a', image: 'x', depends_on: ['b'] }] }, /depends_on.*did you mean dependsOn/],
      [{ name: 'e', services: [{ name: 'a', image: 'x', environment: {} }] }, /did you mean env\?/],
      [{ name: 'e', services: [{ name: 'a', image: 'x', evn: {} }] }, /"evn".*did you mean env\?/],
      [{ name: 'e', services: [], version: '3' }, /ensemble: unknown key "version"/],
      [{ name: 'e', services: [], volumes: {} }, /unknown key "volumes" \(did you mean volumes on the services/],
      [
        { name: 'e', services: [{ name: 'a', buildFromDirectory: { directory: '.', file: 'D' } }] },
        /buildFromDirectory: unknown key "file"/,
      ],
    ];
    for (const [e, re] of cases)
      assert.throws(
        () => validateEnsemble(e as never),
        (err: unknown) => isCode('E_SERVICE_INVALID')(err) && re.test((err as Error).message),
        String(re),
      );
  });

  it('refuses fields of the wrong type', () => {
    const bad: Record<string, unknown>[] = [
      { env: 'A=1' },
      { env: { A: 1 } },
      { dependsOn: 'db' },
      { command: 'sleep 1' },
      { alwaysStartNew: 'yes' },
      { ports: [5432] },
      { ping: true },
      { volumes: 'data:/x' },
      { image: 42 },
    ];
    for (const extra of bad)
      assert.throws(
        () => validateEnsemble({ name: 'e', services: [{ name: 'a', image: 'x', ...extra }] }),
        isCode('E_SERVICE_INVALID'),
        JSON.stringify(extra),
      );
    assert.throws(() => validateEnsemble({ name: 'e', services: [], labels: { a: 1 } } as never), /labels must be/);
  });

  it('names file:line of the bad key in an ensemble file (plain objects and service())', async () => {
    const f = ensembleFile(
      [
        "import { ensemble, service } from 'cairn';", // 1
        '', // 2
        'export default ensemble({', // 3
        "  name: 'data-spec',", // 4
        '  services: [', // 5
        "    { name: 'db', image: 'x', command: ['sleep', 'infinity'] },", // 6
        '    {', // 7
        "      name: 'app',", // 8
        "      image: 'x',", // 9
        "      depends_on: ['db'],", // 10
        '    },', // 11
        '  ],', // 12
        '});', // 13
      ].join('\n'),
    );
    const e = await loadError(f);
    assert.equal(e.code, 'E_SERVICE_INVALID');
    assert.ok(e.message.startsWith(`${f}:10: service app: unknown key "depends_on"`), e.message);
    assert.match(e.message, /did you mean dependsOn/);
    assert.deepEqual([e.details.file, e.details.line], [f, 10]);

    const typed = ensembleFile(
      [
        "import { ensemble, service } from 'cairn';",
        'const db = service({',
        "  name: 'db',",
        "  image: 'x',",
        '  env: { PORT: 5432 as unknown as string },', // 5
        '});',
        "export default ensemble({ name: 'data-spec', services: [db] });",
      ].join('\n'),
    );
    const t = await loadError(typed);
    assert.ok(t.message.startsWith(`${typed}:5: service db: env must be an object of strings`), t.message);
  });

  it('the CLI refuses the file before touching the engine, naming file:line', async () => {
    const f = ensembleFile(
      [
        "import { ensemble } from 'cairn';",
        "export default ensemble({ name: 'data-spec', services: [",
        "  { name: 'db', image: 'x', environment: { A: 'b' } },",
        ']});',
      ].join('\n'),
    );
    const store = path.join(files.dir, 'store');
    const r = await cairnAsync(store, ['services', 'start', f], { env: { CAIRN_DOCKER_HOST: 'unix:///nonexistent' } });
    expectError(r, 'E_SERVICE_INVALID');
    assert.match(r.stderr, new RegExp(`${f.replace(/[.]/g, '\\.')}:3: service db: unknown key "environment"`));
    assert.match(r.stderr, /did you mean env\?/);
  });

  it('findLine searches the service, then the key before the next service', () => {
    const lines = ["{ name: 'a',", '  env: {},', '},', "{ name: 'b',", "  image: 'x',", '  env: 3 },'];
    assert.equal(findLine(lines, 1, 'b', 'env'), 6);
    assert.equal(findLine(lines, 1, 'a', 'env'), 2);
    assert.equal(findLine(lines, 1, 'a', 'image'), 1, 'not in a: the service line');
    assert.equal(findLine(lines, 1, 'zzz'), 1);
  });
});

describe('volumes', () => {
  it('parses the object and the compose list spelling alike, sorted by container path', () => {
    const obj = parseVolumes('db', { data: '/var/lib/pg', './conf': { path: '/etc/app/', readOnly: true } }, '/srv/e');
    const list = parseVolumes('db', ['data:/var/lib/pg', './conf:/etc/app:ro'], '/srv/e');
    assert.deepEqual(obj, list);
    assert.deepEqual(obj, [
      { kind: 'bind', source: '/srv/e/conf', target: '/etc/app', readOnly: true },
      { kind: 'volume', source: 'data', target: '/var/lib/pg', readOnly: false },
    ]);
    assert.equal(mountArg('p', obj[1]!), 'type=volume,source=cairn.p.data,target=/var/lib/pg');
    assert.equal(mountArg('p', obj[0]!), 'type=bind,source=/srv/e/conf,target=/etc/app,readonly');
    assert.deepEqual(parseVolumes('db', undefined, '/'), []);
  });

  it('refuses relative or duplicate container paths, bad names and unsafe characters', () => {
    const bad: unknown[] = [
      { data: 'var/lib' },
      { data: '/' },
      { data: '/x', other: '/x/' },
      { 'a.b': '/x' },
      { '~/x': '/x' },
      { data: '/x,readonly=false' },
      { './a,b': '/x' },
      { data: { path: '/x', readonly: true } },
      { data: { path: '/x', readOnly: 'yes' } },
      ['data'],
      ['data:/x:rx'],
      ['data:/x:ro:extra'],
      [42],
    ];
    for (const v of bad)
      assert.throws(() => parseVolumes('db', v, '/'), isCode('E_SERVICE_INVALID'), JSON.stringify(v));
  });
});

describe('project names', () => {
  it('default: the directory name and the ensemble name, reduced to a hostname label', () => {
    assert.equal(defaultProjectName('/home/u/My Shop', 'web'), 'my-shop-web');
    assert.equal(defaultProjectName('/', 'web'), 'web');
    assert.equal(defaultProjectName('/x/___', 'web'), 'web');
    const long = defaultProjectName(`/x/${'a'.repeat(80)}`, 'web');
    assert.equal(long.length, 63);
    assert.ok(long.endsWith('-web'));
    assert.throws(() => resolveProject('/x/e.ts', 'web', 'Bad.Name'), isCode('E_SERVICE_INVALID'));
    assert.equal(resolveProject('/x/e.ts', 'web', 'mine').name, 'mine');
  });

  it('claims: another ensemble or another copy owns the name; old containers are noted', () => {
    const p: Project = { name: 'shop-web', ensemble: 'web', dir: '/a/shop', explicit: false };
    const c = (project: string, ensemble = 'web', dir = '/a/shop', name = `cairn.${project}.db`) => ({
      name,
      ensemble,
      project,
      dir,
    });
    assert.deepEqual(checkClaim(p, [c('shop-web'), c('other-web', 'web', '/b/other')]), { legacy: [] });
    assert.throws(() => checkClaim(p, [c('shop-web', 'web', '/b/shop')]), isCode('E_PROJECT_IN_USE'));
    assert.deepEqual(checkClaim({ ...p, explicit: true }, [c('shop-web', 'web', '/b/shop')]), { legacy: [] });
    assert.throws(() => checkClaim({ ...p, explicit: true }, [c('shop-web', 'api')]), isCode('E_PROJECT_IN_USE'));
    assert.deepEqual(checkClaim(p, [c('', 'web', '', 'cairn.web.db')]).legacy, ['cairn.web.db']);
    assert.deepEqual(checkClaim({ ...p, name: 'web' }, [c('', 'web', '', 'cairn.web.db')]).legacy, []);
  });
});
