/**
 * `cairn catalog run FILE ACTION`: the selected entry is fetched from a real
 * HTTP server on 127.0.0.1, then the action runs. Actions declared in the
 * catalog (a shell command, an argv list, `{ module, export }`) or exported
 * by `<catalog>.actions.ts` / `actions.ts` next to the catalog; commands see
 * CAIRN_* in their environment, functions get a context; the action's exit
 * status becomes cairn's.
 */
import { describe, it, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { cairnAsync, expectError, isolateModuleCache, repoRoot, tempDir } from './helpers.js';
import { CatalogServer, makeTarGz, sha256 } from './fixtures/catalog/server.js';

isolateModuleCache(after, 'cairn-catalog-run-cache');

let server: CatalogServer;
let work: { dir: string; cleanup: () => void };
let archive: Buffer;
let plain: Buffer;
const actModule = path.join(repoRoot, 'test', 'fixtures', 'catalog', 'actions', 'act.ts');

before(async () => {
  server = await CatalogServer.start();
  work = tempDir('cairn-catalog-run');
  archive = makeTarGz(work.dir, { 'etc/os-release': 'NAME=testos\nVERSION=2\n', 'boot/vmlinuz-2': 'kernel\n' });
  plain = Buffer.from('a plain image, version 1\n');
  server.serve('/img/testos-1.img', plain);
  server.serve('/img/testos-2.tar.gz', archive);
});
after(async () => {
  await server.close();
  work.cleanup();
});

let dir: string;
let cleanup: () => void;
let store: string;
/** Where actions write what they saw ($ACTION_OUT). */
let outDir: string;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('cairn-catalog-run-t'));
  store = path.join(dir, 'store');
  outDir = path.join(dir, 'out');
  fs.mkdirSync(outDir);
});
afterEach(() => cleanup());

/** A catalog in its own directory under the test's temp dir, with these `actions:` lines. */
function writeCatalog(name: string, actionLines: string[], sub = 'cat'): string {
  const d = path.join(dir, sub);
  fs.mkdirSync(d, { recursive: true });
  const f = path.join(d, `${name}.yml`);
  fs.writeFileSync(
    f,
    [
      `name: ${name}`,
      'defaults:',
      '  device_types: [testboard]',
      'history:',
      '  - version: "1"',
      `    url: ${server.base}/img/testos-1.img`,
      `    hash: ${sha256(plain)}`,
      '  - version: "2"',
      `    url: ${server.base}/img/testos-2.tar.gz`,
      `    hash: ${sha256(archive)}`,
      '    __default__: true',
      ...(actionLines.length > 0 ? ['actions:', ...actionLines] : []),
      '',
    ].join('\n'),
  );
  return f;
}

const run = (catalog: string, action: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) =>
  cairnAsync(store, ['catalog', 'run', catalog, action, ...args], { env: { ACTION_OUT: outDir, ...env } });

interface ManifestYaml {
  catalog: string;
  version: string;
  rref: string;
  path: string;
  hash: string;
  store: string;
  fetched: { path: string };
  unpacked?: { path: string };
}

describe('catalog run: commands declared in the catalog', () => {
  it(
    'a shell command sees CAIRN_MANIFEST (a readable YAML manifest) ' +
      "and CAIRN_STORE_PATH; its exit status is cairn's",
    async () => {
      const cat = writeCatalog('shellcat', [
        '  show: |',
        '    cp "$CAIRN_MANIFEST" "$ACTION_OUT/manifest.yml"',
        '    printf %s "$CAIRN_MANIFEST" > "$ACTION_OUT/manifest-path"',
        '    env | grep "^CAIRN_" | sort > "$ACTION_OUT/env"',
        '    ls "$CAIRN_STORE_PATH" > "$ACTION_OUT/ls"',
        '    exit "${ACTION_STATUS:-0}"',
      ]);
      const r = await run(cat, 'show', ['--unpack'], { ACTION_STATUS: '7' });
      assert.equal(r.code, 7, `the action's exit status must be cairn's\nstderr: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /internal error/);
      const env = Object.fromEntries(
        fs
          .readFileSync(path.join(outDir, 'env'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => {
            const i = l.indexOf('=');
            return [l.slice(0, i), l.slice(i + 1)];
          }),
      );
      const m = parseYaml(fs.readFileSync(path.join(outDir, 'manifest.yml'), 'utf8')) as ManifestYaml;
      assert.equal(m.catalog, 'shellcat');
      assert.equal(m.version, '2');
      assert.equal(m.hash, `sha256:${sha256(archive)}`);
      assert.equal(env.CAIRN_MANIFEST, fs.readFileSync(path.join(outDir, 'manifest-path'), 'utf8'));
      assert.ok(path.isAbsolute(env.CAIRN_MANIFEST));
      assert.equal(env.CAIRN_STORE_PATH, m.path);
      assert.ok(m.unpacked, 'with --unpack the manifest has `unpacked`');
      assert.equal(env.CAIRN_STORE_PATH, m.unpacked.path);
      assert.ok(env.CAIRN_STORE_PATH.startsWith(store + path.sep));
      assert.deepEqual(fs.readFileSync(path.join(outDir, 'ls'), 'utf8').trim().split('\n'), ['boot', 'etc']);
      assert.equal(env.CAIRN_RREF, m.rref);
      assert.equal(env.CAIRN_VERSION, '2');
      assert.equal(env.CAIRN_CATALOG, cat);
      assert.equal(env.CAIRN_STORE, store);
      assert.equal(fs.existsSync(env.CAIRN_MANIFEST), false, 'the temporary manifest is removed afterwards');

      const again = await run(cat, 'show', ['--unpack'], { ACTION_STATUS: '0' });
      assert.equal(again.code, 0, again.stderr);
      assert.equal(server.hits('/img/testos-2.tar.gz'), 1, 'the second run is cached');
    },
  );

  it("a command runs in the catalog's directory; --manifest keeps the manifest where asked", async () => {
    const cat = writeCatalog('cwdcat', ['  where: pwd > "$ACTION_OUT/pwd"']);
    const mf = path.join(dir, 'kept.yml');
    const r = await run(cat, 'where', ['--version', '1', '--manifest', mf]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      fs.realpathSync(fs.readFileSync(path.join(outDir, 'pwd'), 'utf8').trim()),
      fs.realpathSync(path.dirname(cat)),
    );
    const m = parseYaml(fs.readFileSync(mf, 'utf8')) as ManifestYaml;
    assert.equal(m.version, '1');
    assert.deepEqual(fs.readFileSync(m.path), plain);
  });

  it(
    'an argv-list action runs without a shell: arguments arrive ' + "verbatim, CAIRN_* are set, its status is cairn's",
    async () => {
      const script = [
        'const fs = require("node:fs");',
        'const e = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("CAIRN_")));',
        'fs.writeFileSync(process.env.ACTION_OUT + "/argv.json", ' +
          'JSON.stringify({ argv: process.argv.slice(1), env: e }));',
        'process.exit(5);',
      ].join(' ');
      const cat = writeCatalog('argvcat', [
        '  record:',
        `    - ${JSON.stringify(process.execPath)}`,
        '    - -e',
        `    - ${JSON.stringify(script)}`,
        '    - two words',
        "    - '$HOME; not expanded'",
      ]);
      const r = await run(cat, 'record', ['--version', '1']);
      assert.equal(r.code, 5, r.stderr);
      const seen = JSON.parse(fs.readFileSync(path.join(outDir, 'argv.json'), 'utf8')) as {
        argv: string[];
        env: Record<string, string>;
      };
      assert.deepEqual(seen.argv, ['two words', '$HOME; not expanded']);
      assert.equal(seen.env.CAIRN_VERSION, '1');
      assert.ok(seen.env.CAIRN_STORE_PATH!.endsWith(`${path.sep}testos-1.img`));
      assert.deepEqual(fs.readFileSync(seen.env.CAIRN_STORE_PATH!), plain);
      assert.ok(seen.env.CAIRN_MANIFEST);
    },
  );
});

describe('catalog run: TypeScript actions', () => {
  it('{ module, export } runs that export with an ActionContext; its return value is the exit status', async () => {
    const cat = writeCatalog('modcat', [
      '  look:',
      `    module: ${JSON.stringify(path.relative(path.join(dir, 'cat'), actModule))}`,
      '    export: inspect',
    ]);
    const r = await run(cat, 'look', ['--unpack'], { ACTION_STATUS: '9' });
    assert.equal(r.code, 9, r.stderr);
    assert.equal(fs.existsSync(path.join(outDir, 'other.json')), false);
    const seen = JSON.parse(fs.readFileSync(path.join(outDir, 'inspect.json'), 'utf8')) as {
      manifestPath: string;
      manifestText: string;
      storePath: string;
      storePathEntries: string[];
      manifest: ManifestYaml;
      entry: { version: string; index: number };
      catalog: { name: string; file: string };
    };
    assert.equal(seen.catalog.name, 'modcat');
    assert.equal(seen.catalog.file, cat);
    assert.deepEqual(seen.entry, { version: '2', index: 1 });
    assert.equal(seen.manifest.version, '2');
    assert.equal(seen.storePath, seen.manifest.path);
    assert.deepEqual(seen.storePathEntries, ['boot', 'etc']);
    assert.equal(
      (parseYaml(seen.manifestText) as ManifestYaml).rref,
      seen.manifest.rref,
      'the manifest file was readable during the action',
    );

    const zero = await run(cat, 'look', ['--unpack']);
    assert.equal(zero.code, 0, zero.stderr);
  });

  it(
    'an action exported by <catalog>.actions.ts next to the catalog gets ' +
      'the context; its return value is the exit status',
    async () => {
      const cat = writeCatalog('nextcat', []);
      fs.writeFileSync(
        path.join(path.dirname(cat), 'nextcat.actions.ts'),
        [
          "import * as fs from 'node:fs';",
          "import * as path from 'node:path';",
          'interface Ctx { storePath: string; manifestPath: string; manifest: { ' +
            'version: string; catalog: string }; entry: { version: string } }',
          'export function check(ctx: Ctx): number {',
          "  const release: string = fs.readFileSync(path.join(ctx.storePath, 'etc', 'os-release'), 'utf8');",
          "  fs.writeFileSync(path.join(process.env.ACTION_OUT as string, 'check.json'), JSON.stringify({ release, " +
            'version: ctx.manifest.version, catalog: ctx.manifest.catalog, entry: ' +
            'ctx.entry.version, manifestExists: fs.existsSync(ctx.manifestPath) }));',
          "  return release.includes('VERSION=2') ? 6 : 1;",
          '}',
          "export const notAFunction: string = 'x';",
          '',
        ].join('\n'),
      );
      const r = await run(cat, 'check', ['--unpack']);
      assert.equal(r.code, 6, r.stderr);
      const seen = JSON.parse(fs.readFileSync(path.join(outDir, 'check.json'), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(seen, {
        release: 'NAME=testos\nVERSION=2\n',
        version: '2',
        catalog: 'nextcat',
        entry: '2',
        manifestExists: true,
      });

      const notFn = await run(cat, 'notAFunction', ['--unpack']);
      expectError(notFn, 'E_BAD_CATALOG');
      assert.match(notFn.stderr, /nextcat\.actions\.ts does not export a function notAFunction/);
    },
  );

  it('an action exported by actions.ts next to the catalog; a function returning nothing exits 0', async () => {
    const cat = writeCatalog('plaincat', [], 'plain');
    fs.writeFileSync(
      path.join(path.dirname(cat), 'actions.ts'),
      [
        "import * as fs from 'node:fs';",
        'export async function touch(ctx: { manifest: { version: string } }): Promise<void> {',
        "  fs.writeFileSync((process.env.ACTION_OUT as string) + '/touched', ctx.manifest.version);",
        '}',
        '',
      ].join('\n'),
    );
    const r = await run(cat, 'touch', ['--version', '1']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.readFileSync(path.join(outDir, 'touched'), 'utf8'), '1');
  });
});

describe('catalog run: unknown actions', () => {
  it('an action neither declared nor exported fails with a clear error naming it and what exists', async () => {
    const cat = writeCatalog('unkcat', ['  known: "true"', '  other: ["true"]']);
    const hits = server.hits('/img/testos-2.tar.gz');
    const r = await run(cat, 'bogus');
    expectError(r, 'E_NO_SUCH_ACTION', store);
    assert.equal(server.hits('/img/testos-2.tar.gz'), hits, 'the action is looked up before anything is fetched');
    assert.equal(
      fs.existsSync(path.join(store, 'd')) && fs.readdirSync(path.join(store, 'd')).length > 0,
      false,
      'nothing is stored',
    );
    // An unknown name, like an unknown --stage or step: its own code, exit 1 (2 is for a malformed command line).
    assert.equal(r.code, 1);
    assert.match(r.stderr, /has no action bogus/);
    assert.match(r.stderr, /declared: known, other/);
    assert.match(r.stderr, /unkcat\.actions\.ts or actions\.ts/);
  });

  it("a TS action that throws makes cairn fail with the action's message, not a Cairn internal error", async () => {
    const cat = writeCatalog('throwcat', []);
    fs.writeFileSync(
      path.join(path.dirname(cat), 'throwcat.actions.ts'),
      ['export function explode(): number {', "  throw new Error('the board did not answer');", '}', ''].join('\n'),
    );
    const r = await run(cat, 'explode', ['--version', '1']);
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, null);
    assert.match(r.stderr, /the board did not answer/);
    assert.doesNotMatch(r.stderr, /internal error/, `stderr was: ${r.stderr}`);
  });

  it('a declared command that cannot be started is an error, not a crash', async () => {
    const cat = writeCatalog('nocmd', ['  gone: ["/nonexistent/cairn-test-command", "x"]']);
    const r = await run(cat, 'gone');
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, null);
    assert.doesNotMatch(r.stderr, /internal error/);
    assert.match(r.stderr, /gone/);
  });
});
