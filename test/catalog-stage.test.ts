/**
 * Catalog entries as stages in TypeScript (`catalogStage` as a dependency,
 * realized with `cairn realize` against a real HTTP server on 127.0.0.1),
 * and `cairn hash`: sha256 of a file, tree-sha256 of a directory, both
 * accepted where hashes are declared (catalogs, fetchlocal).
 */
import { describe, it, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cairn, cairnAsync, expectError, isolateModuleCache, lastLine, ok, tempDir } from './helpers.js';
import { CatalogServer, makeTarGz, sha256, sha512 } from './fixtures/catalog/server.js';

isolateModuleCache(after, 'cairn-catalog-stage-cache');

let server: CatalogServer;
let work: { dir: string; cleanup: () => void };
let catalogFile: string;
const plain = Buffer.from('image 1.0: plain bytes\n');
let archive: Buffer;

before(async () => {
  server = await CatalogServer.start();
  work = tempDir('cairn-catalog-stage');
  archive = makeTarGz(work.dir, { VERSION: '2.0\n', 'boot/kernel': 'kernel 2.0\n' });
  server.serve('/s/image-1.0.img', plain);
  server.serve('/s/image-2.0.tar.gz', archive);
  catalogFile = path.join(work.dir, 'images.yml');
  fs.writeFileSync(
    catalogFile,
    [
      'name: images',
      'history:',
      '  - version: "1.0"',
      `    url: ${server.base}/s/image-1.0.img`,
      `    hash: ${sha256(plain)}`,
      '  - version: "2.0"',
      `    url: ${server.base}/s/image-2.0.tar.gz`,
      `    hash: ${sha256(archive)}`,
      '',
    ].join('\n'),
  );
});
after(async () => {
  await server.close();
  work.cleanup();
});

let dir: string;
let cleanup: () => void;
let store: string;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('cairn-catalog-stage-t'));
  store = path.join(dir, 'store');
});
afterEach(() => cleanup());

describe('catalogStage in a stage file', () => {
  it(
    'is a dependency whose Dep gives the fetched file (and the ' + 'unpacked tree); cached on a second realize',
    async () => {
      const stageFile = path.join(dir, 'pipeline.ts');
      fs.writeFileSync(
        stageFile,
        [
          "import * as fs from 'node:fs';",
          "import * as path from 'node:path';",
          "import { catalogStage, stage } from 'cairn';",
          `const image = catalogStage(${JSON.stringify(catalogFile)}, { version: '1.0' });`,
          `const tree = catalogStage(${JSON.stringify(catalogFile)}, { version: '2.0', unpack: true });`,
          'export default stage({',
          "  name: 'inspect-image',",
          '  config: { image, tree },',
          '  build: ({ config, out }) => {',
          "    fs.writeFileSync(path.join(out, 'copy.txt'), fs.readFileSync(config.image.file('image-1.0.img')));",
          "    fs.writeFileSync(path.join(out, 'version.txt'), fs.readFileSync(config.tree.file('VERSION')));",
          "    fs.writeFileSync(path.join(out, 'listing.txt'), fs.readdirSync(config.image.path).join(','));",
          '  },',
          '});',
          '',
        ].join('\n'),
      );
      const r = ok(await cairnAsync(store, ['realize', stageFile]));
      const rref = lastLine(r.stdout);
      assert.equal(ok(cairn(store, ['catref', rref, 'copy.txt'])).stdout, plain.toString());
      assert.equal(ok(cairn(store, ['catref', rref, 'version.txt'])).stdout, '2.0\n');
      assert.equal(ok(cairn(store, ['catref', rref, 'listing.txt'])).stdout, 'image-1.0.img');
      assert.equal(server.hits('/s/image-1.0.img'), 1);
      assert.equal(server.hits('/s/image-2.0.tar.gz'), 1);

      const again = ok(await cairnAsync(store, ['realize', stageFile]));
      assert.equal(lastLine(again.stdout), rref, 'cached: the same RRef');
      assert.equal(server.hits('/s/image-1.0.img'), 1, 'cached: the server is not contacted again');

      // `catalog fetch` of the same entry is the same derivation: already in the store.
      const f = ok(await cairnAsync(store, ['catalog', 'fetch', catalogFile, '--version', '1.0']));
      assert.deepEqual(fs.readFileSync(lastLine(f.stdout)), plain);
      assert.equal(server.hits('/s/image-1.0.img'), 1);
    },
  );

  it('a stage file naming a bad catalog fails with E_BAD_CATALOG and its file:line', async () => {
    const bad = path.join(dir, 'bad.yml');
    fs.writeFileSync(
      bad,
      ['name: bad', 'history:', '  - version: "1"', `    url: ${server.base}/s/image-1.0.img`, ''].join('\n'),
    );
    const stageFile = path.join(dir, 'uses-bad.ts');
    fs.writeFileSync(
      stageFile,
      [
        "import { catalogStage, stage } from 'cairn';",
        `const image = catalogStage(${JSON.stringify(bad)});`,
        "export default stage({ name: 'x', config: { image }, build: () => {} });",
        '',
      ].join('\n'),
    );
    const r = await cairnAsync(store, ['realize', stageFile]);
    expectError(r, 'E_BAD_CATALOG', store);
    assert.ok(r.stderr.includes(`${bad}:3: version 1 has no \`hash\``), r.stderr);
  });
});

describe('cairn hash', () => {
  it('prints sha256:<hex> of a file, equal to its real sha256 (and sha512 with --type)', () => {
    const f = path.join(dir, 'blob.bin');
    const body = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31) % 251));
    fs.writeFileSync(f, body);
    assert.equal(lastLine(ok(cairn(store, ['hash', f])).stdout), `sha256:${sha256(body)}`);
    assert.equal(lastLine(ok(cairn(store, ['hash', f, '--type', 'sha512'])).stdout), `sha512:${sha512(body)}`);
  });

  it('its output is accepted as a catalog hash', async () => {
    const f = path.join(dir, 'img.bin');
    fs.writeFileSync(f, plain);
    const declared = lastLine(ok(cairn(store, ['hash', f])).stdout);
    const cat = path.join(dir, 'h.yml');
    fs.writeFileSync(
      cat,
      [
        'name: h',
        'history:',
        '  - version: "1"',
        `    url: ${server.base}/s/image-1.0.img`,
        `    hash: ${declared}`,
        '',
      ].join('\n'),
    );
    const r = ok(await cairnAsync(store, ['catalog', 'fetch', cat]));
    assert.deepEqual(fs.readFileSync(lastLine(r.stdout)), plain);
  });

  it('prints tree-sha256:<hex> of a directory, which fetchlocal accepts (and a changed tree is refused)', () => {
    const tree = path.join(dir, 'config');
    fs.mkdirSync(path.join(tree, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(tree, 'a.txt'), 'alpha\n');
    fs.writeFileSync(path.join(tree, 'sub', 'b.txt'), 'beta\n');
    const h = lastLine(ok(cairn(store, ['hash', tree])).stdout);
    assert.match(h, /^tree-sha256:[0-9a-f]{64}$/);
    assert.equal(lastLine(ok(cairn(store, ['hash', tree])).stdout), h, 'the same tree hashes the same');

    const stageFile = path.join(dir, 'local.ts');
    fs.writeFileSync(
      stageFile,
      [
        "import { fetchlocal } from 'cairn';",
        `export default fetchlocal({ path: ${JSON.stringify(tree)}, hash: ${JSON.stringify(h)} });`,
        '',
      ].join('\n'),
    );
    const rref = lastLine(ok(cairn(store, ['realize', stageFile])).stdout);
    assert.equal(ok(cairn(store, ['catref', rref, 'config/sub/b.txt'])).stdout, 'beta\n');

    fs.writeFileSync(path.join(tree, 'sub', 'b.txt'), 'changed\n');
    assert.notEqual(lastLine(ok(cairn(store, ['hash', tree])).stdout), h);
    const r = cairn(store, ['realize', stageFile, '--force']);
    expectError(r, 'E_HASH_MISMATCH', store);
  });

  it('a path that does not exist is a usage error', () => {
    const r = cairn(store, ['hash', path.join(dir, 'nope')]);
    expectError(r, 'E_USAGE');
  });
});
