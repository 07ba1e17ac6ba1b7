/**
 * `cairn catalog list` and `cairn catalog fetch` against a real HTTP server on
 * 127.0.0.1: entries oldest first with the default marked, device-type
 * prefix filtering, selection by version / index / device type / default,
 * manifests, --unpack, --out-link, caching, defaults merged into entries,
 * and mirrors.
 */
import { describe, it, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parse as parseYaml } from 'yaml';
import { cairn, cairnAsync, expectError, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';
import { CatalogServer, makeTarGz, sha256, sha512 } from './fixtures/catalog/server.js';

isolateModuleCache(after, 'cairn-catalog-fetch-cache');

let server: CatalogServer;
let work: { dir: string; cleanup: () => void };
let catalogFile: string;

/** What the server holds, by version. */
interface Image {
  path: string;
  body: Buffer;
  hash: string;
  file: string;
}
const images: Record<string, Image> = {};

before(async () => {
  server = await CatalogServer.start();
  work = tempDir('cairn-catalog-fetch');
  const add = (version: string, p: string, body: Buffer, hash = sha256(body)): void => {
    server.serve(p, body);
    images[version] = { path: p, body, hash, file: path.basename(p) };
  };
  add('1.0', '/v1.0/image-1.0.tar.gz', makeTarGz(work.dir, { VERSION: '1.0\n', 'boot/kernel': 'kernel 1.0\n' }));
  add('1.1', '/v1.1/image-1.1.tar.gz', makeTarGz(work.dir, { VERSION: '1.1\n', 'boot/kernel': 'kernel 1.1\n' }));
  const rpi4 = Buffer.from('raspberry pi 4 image, version 1.2\n');
  add('1.2', '/v1.2/rpi4-download.bin', rpi4, sha512(rpi4));
  images['1.2']!.file = 'rpi4.img';
  add('2.0', '/good/qemu-2.0.img', Buffer.from('qemu image 2.0\n'));
  add('2.1', '/v2.1/qemu-2.1.tar.gz', makeTarGz(work.dir, { VERSION: '2.1\n' }));
  add('3.0', '/v3.0/bone-3.0.img', Buffer.from('beaglebone image 3.0\n'));
  const u = (v: string): string => server.base + images[v]!.path;
  catalogFile = path.join(work.dir, 'boards.yml');
  fs.writeFileSync(
    catalogFile,
    [
      'name: boards',
      'defaults:',
      '  hash_type: sha256',
      '  device_types: [raspberry-pi]',
      'history:',
      '  - version: "1.0"',
      `    url: ${u('1.0')}`,
      `    hash: ${images['1.0']!.hash}`,
      '    date: 2024-01-01',
      '  - version: "1.1"',
      `    url: ${u('1.1')}`,
      `    hash: ${images['1.1']!.hash}`,
      '    date: 2024-02-01',
      '    __default__: true',
      '  - version: "1.2"',
      `    url: ${u('1.2')}`,
      '    file: rpi4.img',
      '    hash_type: sha512',
      `    hash: ${images['1.2']!.hash}`,
      '    date: 2024-03-01',
      '    device_types: [raspberry-pi/4]',
      '  - version: "2.0"',
      '    mirrors:',
      `      - ${server.missing('/gone/qemu-2.0.img')}`,
      `      - ${u('2.0')}`,
      `    hash: ${images['2.0']!.hash}`,
      '    date: 2024-04-01',
      '    device_types: [qemu]',
      '  - version: "2.1"',
      `    url: ${u('2.1')}`,
      `    hash: ${images['2.1']!.hash}`,
      '    date: 2024-05-01',
      '    device_types: [qemu/x86_64]',
      '  - version: "3.0"',
      `    url: ${u('3.0')}`,
      `    hash: ${images['3.0']!.hash}`,
      '    date: 2024-06-01',
      '    device_types: [beaglebone]',
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
  ({ dir, cleanup } = tempDir('cairn-catalog-fetch-t'));
  store = path.join(dir, 'store');
});
afterEach(() => cleanup());

/** `cairn catalog fetch` in a child process (the server lives in this one, so no spawnSync). */
const fetch = (...args: string[]) => cairnAsync(store, ['catalog', 'fetch', catalogFile, ...args]);
/** Versions shown by the text form of `catalog list`. */
const listedVersions = (stdout: string): string[] =>
  stdout
    .trim()
    .split('\n')
    .slice(1)
    .map((l) => l.slice(1).trim().split(/\s+/)[1]!);

interface ManifestYaml {
  catalog: string;
  catalog_file: string;
  version: string;
  hash: string;
  store: string;
  rref: string;
  path: string;
  entry: Record<string, unknown>;
  fetched: { rref: string; path: string };
  unpacked?: { rref: string; path: string; file?: string };
}
const readManifest = (f: string): ManifestYaml => parseYaml(fs.readFileSync(f, 'utf8')) as ManifestYaml;

/** The fetched path is the stored file of `version`: same bytes, same declared hash. */
function assertFetched(p: string, version: string): void {
  const img = images[version]!;
  assert.ok(path.isAbsolute(p), `${p} must be absolute`);
  assert.ok(p.startsWith(store + path.sep), `${p} must be inside the store ${store}`);
  assert.equal(path.basename(p), img.file);
  assert.ok(fs.statSync(p).isFile());
  assert.deepEqual(fs.readFileSync(p), img.body);
}

describe('catalog list', () => {
  it('lists every entry oldest first and marks only the default with *', () => {
    const r = ok(cairn(store, ['catalog', 'list', catalogFile]));
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /^boards \(6 entries, oldest first\)$/);
    assert.deepEqual(listedVersions(r.stdout), ['1.0', '1.1', '1.2', '2.0', '2.1', '3.0']);
    const starred = lines.slice(1).filter((l) => l.startsWith('*'));
    assert.equal(starred.length, 1);
    assert.match(starred[0]!, /\b1\.1\b/);
    assert.match(lines[1]!, /2024-01-01/);
    assert.match(lines[1]!, /raspberry-pi/);
    assert.match(lines[5]!, /qemu\/x86_64/);
  });

  it('--device-type keeps the entries whose device type is the given one or a prefix of it', () => {
    const v = (t: string): string[] =>
      listedVersions(ok(cairn(store, ['catalog', 'list', catalogFile, '--device-type', t])).stdout);
    assert.deepEqual(v('raspberry-pi/4'), ['1.0', '1.1', '1.2'], 'raspberry-pi covers raspberry-pi/4');
    assert.deepEqual(v('raspberry-pi'), ['1.0', '1.1'], 'raspberry-pi/4 does not cover plain raspberry-pi');
    assert.deepEqual(v('raspberry-pi/3b'), ['1.0', '1.1']);
    assert.deepEqual(v('qemu/x86_64/kvm'), ['2.0', '2.1']);
    assert.deepEqual(v('raspberry'), [], 'a prefix of the name is not a prefix of the type path');
    assert.deepEqual(v('beaglebone'), ['3.0']);
  });

  it('--json gives the name and the entries, oldest first, with the default flagged', () => {
    const j = JSON.parse(ok(cairn(store, ['catalog', 'list', catalogFile, '--json'])).stdout) as {
      name: string;
      entries: {
        index: number;
        version: string;
        isDefault: boolean;
        deviceTypes: string[];
        hash: string;
        hashType: string;
        urls: string[];
        date?: string;
      }[];
    };
    assert.equal(j.name, 'boards');
    assert.deepEqual(
      j.entries.map((e) => e.version),
      ['1.0', '1.1', '1.2', '2.0', '2.1', '3.0'],
    );
    assert.deepEqual(
      j.entries.map((e) => e.index),
      [0, 1, 2, 3, 4, 5],
    );
    assert.deepEqual(
      j.entries.filter((e) => e.isDefault).map((e) => e.version),
      ['1.1'],
    );
    assert.deepEqual(j.entries[0]!.deviceTypes, ['raspberry-pi']);
    assert.equal(j.entries[0]!.hash, `sha256:${images['1.0']!.hash}`);
    assert.equal(j.entries[0]!.date, '2024-01-01');
    assert.equal(j.entries[2]!.hashType, 'sha512');
    assert.deepEqual(j.entries[3]!.urls, [server.missing('/gone/qemu-2.0.img'), server.base + images['2.0']!.path]);
    const filtered = JSON.parse(
      ok(cairn(store, ['catalog', 'list', catalogFile, '--json', '--device-type', 'qemu/x86_64'])).stdout,
    ) as { entries: { version: string }[] };
    assert.deepEqual(
      filtered.entries.map((e) => e.version),
      ['2.0', '2.1'],
    );
  });

  it('an entry may be named by `name` instead of `version`', () => {
    const f = path.join(dir, 'named.yml');
    fs.writeFileSync(
      f,
      [
        'name: named',
        'history:',
        '  - name: bookworm',
        `    url: ${server.base}/n/bookworm.img`,
        `    hash: ${'a'.repeat(64)}`,
        '  - version: trixie',
        `    url: ${server.base}/n/trixie.img`,
        `    hash: ${'b'.repeat(64)}`,
        '',
      ].join('\n'),
    );
    assert.deepEqual(listedVersions(ok(cairn(store, ['catalog', 'list', f])).stdout), ['bookworm', 'trixie']);
  });

  it('lists the example catalog (examples/catalog) without fetching anything', () => {
    const r = ok(
      cairn(store, ['catalog', 'list', path.join(repoRoot, 'examples', 'catalog', 'debian-cloud-kernel.yml')]),
    );
    assert.deepEqual(listedVersions(r.stdout), ['6.1.192-1', '6.1.192-2']);
    assert.match(r.stdout.trim().split('\n')[2]!, /^\*.*6\.1\.192-2/);
    assert.equal(fs.existsSync(path.join(store, 'd')) && fs.readdirSync(path.join(store, 'd')).length > 0, false);
  });

  it('keeps a version written as an unquoted number exactly as written (1.10 is not 1.1)', () => {
    const f = path.join(dir, 'numeric.yml');
    fs.writeFileSync(
      f,
      [
        'name: numeric',
        'history:',
        '  - version: 1.9',
        `    url: ${server.base}/n/a.img`,
        `    hash: ${'a'.repeat(64)}`,
        '  - version: 1.10',
        `    url: ${server.base}/n/b.img`,
        `    hash: ${'b'.repeat(64)}`,
        '',
      ].join('\n'),
    );
    const r = ok(cairn(store, ['catalog', 'list', f]));
    assert.deepEqual(listedVersions(r.stdout), ['1.9', '1.10']);
  });
});

describe('catalog fetch: selection', () => {
  it('fetches the default entry and prints its store path as the last stdout line', async () => {
    const r = ok(await fetch());
    assertFetched(lastLine(r.stdout), '1.1');
    assert.equal(server.hits(images['1.1']!.path) >= 1, true);
  });

  it('--version picks that entry', async () => {
    assertFetched(lastLine(ok(await fetch('--version', '1.0')).stdout), '1.0');
    assertFetched(lastLine(ok(await fetch('--version', '3.0')).stdout), '3.0');
  });

  it('--version that the catalog does not list fails with E_BAD_CATALOG', async () => {
    const r = await fetch('--version', '9.9');
    expectError(r, 'E_BAD_CATALOG', store);
    assert.match(r.stderr, /9\.9/);
  });

  it('--index 0 is the oldest, --index -1 the newest', async () => {
    assertFetched(lastLine(ok(await fetch('--index', '0')).stdout), '1.0');
    assertFetched(lastLine(ok(await fetch('--index', '-1')).stdout), '3.0');
    assertFetched(lastLine(ok(await fetch('--index', '-6')).stdout), '1.0');
  });

  it('an --index out of range fails with E_BAD_CATALOG and contacts no server', async () => {
    const total = (): number => Object.values(images).reduce((n, img) => n + server.hits(img.path), 0);
    const before = total();
    for (const i of ['6', '-7']) {
      const r = await fetch('--index', i);
      expectError(r, 'E_BAD_CATALOG', store);
      assert.match(r.stderr, new RegExp(`entry ${i}\\b`));
      assert.match(r.stderr, /history has 6/);
    }
    assert.equal(total(), before);
  });

  it('--device-type picks the default when it matches', async () => {
    const r = ok(await fetch('--device-type', 'raspberry-pi/4'));
    assertFetched(lastLine(r.stdout), '1.1');
  });

  it('--device-type picks the newest matching entry when the default does not match', async () => {
    assertFetched(lastLine(ok(await fetch('--device-type', 'qemu/x86_64')).stdout), '2.1');
    assertFetched(lastLine(ok(await fetch('--device-type', 'qemu')).stdout), '2.0');
    assertFetched(lastLine(ok(await fetch('--device-type', 'raspberry-pi/4/8gb')).stdout), '1.1');
  });

  it('--version with a device type it is not for fails with E_BAD_CATALOG', async () => {
    const r = await fetch('--version', '1.0', '--device-type', 'qemu');
    expectError(r, 'E_BAD_CATALOG', store);
    assert.match(r.stderr, /1\.0/);
    assert.match(r.stderr, /qemu/);
  });

  it('--index of an entry for another device type fails with E_BAD_CATALOG', async () => {
    const r = await fetch('--index', '0', '--device-type', 'beaglebone');
    expectError(r, 'E_BAD_CATALOG', store);
    assert.match(r.stderr, /beaglebone/);
  });

  it('a device type no entry is for fails with E_BAD_CATALOG naming the file and the types there are', async () => {
    const r = await fetch('--device-type', 'pine64');
    expectError(r, 'E_BAD_CATALOG', store);
    assert.ok(r.stderr.includes(catalogFile), r.stderr);
    assert.match(r.stderr, /pine64/);
    assert.match(r.stderr, /raspberry-pi/);
    assert.match(r.stderr, /beaglebone/);
  });
});

describe('catalog fetch: manifest, unpack, out-link, cache', () => {
  it('writes a YAML manifest with the catalog, the version, the entry fields, rref, store path and hash', async () => {
    const mf = path.join(dir, 'manifest.yml');
    const r = ok(await fetch('--version', '1.0', '--manifest', mf));
    const m = readManifest(mf);
    assert.equal(m.catalog, 'boards');
    assert.equal(m.catalog_file, catalogFile);
    assert.equal(m.version, '1.0');
    assert.equal(m.hash, `sha256:${images['1.0']!.hash}`);
    assert.equal(m.store, store);
    assert.equal(m.path, lastLine(r.stdout));
    assertFetched(m.path, '1.0');
    assert.equal(sha256(fs.readFileSync(m.path)), images['1.0']!.hash, 'the stored content has the declared hash');
    assert.equal(typeof m.rref, 'string');
    assert.ok(m.rref.length > 0);
    assert.deepEqual(m.fetched, { rref: m.rref, path: m.path });
    assert.equal(m.unpacked, undefined);
    assert.equal(m.entry.version, '1.0');
    assert.equal(m.entry.url, server.base + images['1.0']!.path);
    assert.equal(m.entry.hash, images['1.0']!.hash);
    assert.equal(m.entry.date, '2024-01-01');
    // The rref names a realization the store knows, holding that file.
    const ls = ok(cairn(store, ['lsref', m.rref]));
    assert.match(ls.stdout, /image-1\.0\.tar\.gz/);
  });

  it('merges defaults into every entry, and an entry overrides a default', async () => {
    const m10 = path.join(dir, 'm10.yml');
    ok(await fetch('--version', '1.0', '--manifest', m10));
    const a = readManifest(m10);
    assert.equal(a.entry.hash_type, 'sha256', 'hash_type from defaults');
    assert.deepEqual(a.entry.device_types, ['raspberry-pi'], 'device_types from defaults');
    const m12 = path.join(dir, 'm12.yml');
    const r = ok(await fetch('--version', '1.2', '--manifest', m12));
    const b = readManifest(m12);
    assert.equal(b.entry.hash_type, 'sha512', 'the entry overrides hash_type');
    assert.deepEqual(b.entry.device_types, ['raspberry-pi/4'], 'the entry overrides device_types');
    assert.equal(b.hash, `sha512:${images['1.2']!.hash}`);
    assert.equal(b.entry.file, 'rpi4.img');
    assertFetched(lastLine(r.stdout), '1.2');
    assert.equal(sha512(fs.readFileSync(b.path)), images['1.2']!.hash);
  });

  it(
    '--unpack gives the unpacked directory; the manifest has ' + 'both the fetched file and the unpacked tree',
    async () => {
      const mf = path.join(dir, 'manifest.yml');
      const r = ok(await fetch('--version', '1.1', '--unpack', '--manifest', mf));
      const out = lastLine(r.stdout);
      assert.ok(fs.statSync(out).isDirectory(), `${out} must be a directory`);
      assert.equal(fs.readFileSync(path.join(out, 'VERSION'), 'utf8'), '1.1\n');
      assert.equal(fs.readFileSync(path.join(out, 'boot', 'kernel'), 'utf8'), 'kernel 1.1\n');
      const m = readManifest(mf);
      assert.equal(m.path, out);
      assert.ok(m.unpacked, 'the manifest must have `unpacked`');
      assert.equal(m.unpacked.path, out);
      assert.equal(m.rref, m.unpacked.rref);
      assert.notEqual(m.fetched.rref, m.unpacked.rref);
      assertFetched(m.fetched.path, '1.1');
      assert.equal(m.hash, `sha256:${images['1.1']!.hash}`);
    },
  );

  it('--out-link makes a symlink to the result, which `cairn root ls` lists', async () => {
    const link = path.join(dir, 'result');
    const r = ok(await fetch('--version', '2.1', '--unpack', '--out-link', link));
    assert.ok(fs.lstatSync(link).isSymbolicLink());
    assert.equal(fs.readFileSync(path.join(link, 'VERSION'), 'utf8'), '2.1\n');
    // 2.1 holds one file, so the printed path is that file; the link names the realization, its directory.
    assert.equal(path.join(fs.realpathSync(link), 'VERSION'), fs.realpathSync(lastLine(r.stdout)));
    const roots = ok(cairn(store, ['root', 'ls'])).stdout;
    const line = roots.split('\n').find((l) => l.includes(link));
    assert.ok(line, `root ls must show ${link}:\n${roots}`);
    assert.match(line, /out-link/);
  });

  it('a second fetch is cached: same path, the server is contacted once', async () => {
    const before = server.hits(images['3.0']!.path);
    const a = lastLine(ok(await fetch('--version', '3.0')).stdout);
    const b = lastLine(ok(await fetch('--version', '3.0')).stdout);
    assert.equal(a, b);
    assertFetched(b, '3.0');
    assert.equal(server.hits(images['3.0']!.path) - before, 1);
  });
});

describe('catalog fetch: a .zip holding one image (the f0cal seed 003 shape)', () => {
  let seedFile: string;
  let zipBody: Buffer;
  const image = Buffer.concat([Buffer.from('disk image 003\n'), Buffer.alloc(2 << 20), Buffer.from('end\n')]);
  before(() => {
    const src = path.join(work.dir, 'seed-003');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'board-003.img'), image);
    const zipFile = path.join(work.dir, 'board-003.zip');
    const r = spawnSync('zip', ['-qj', zipFile, path.join(src, 'board-003.img')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    zipBody = fs.readFileSync(zipFile);
    server.serve('/seed/003/board-003.zip', zipBody);
    seedFile = path.join(work.dir, 'seed-003.yml');
    fs.writeFileSync(
      seedFile,
      [
        'name: seed-003',
        'history:',
        '  - version: "003"',
        `    url: ${server.base}/seed/003/board-003.zip`,
        `    hash: ${sha256(zipBody)}`,
        '    device_types: [board]',
        'actions:',
        '  size: \'stat -c "%n %s" "$CAIRN_STORE_PATH"\'',
        '',
      ].join('\n'),
    );
  });

  it('--unpack prints the image file itself; the manifest has the directory and the file', async () => {
    const mf = path.join(dir, 'manifest.yml');
    const r = ok(await cairnAsync(store, ['catalog', 'fetch', seedFile, '--unpack', '--manifest', mf]));
    const p = lastLine(r.stdout);
    assert.equal(path.basename(p), 'board-003.img');
    assert.ok(p.startsWith(store + path.sep));
    assert.deepEqual(fs.readFileSync(p), image);
    const m = readManifest(mf);
    assert.equal(m.path, p);
    assert.equal(m.unpacked?.file, p);
    assert.equal(m.unpacked?.path, path.dirname(p));
    assert.equal(path.basename(m.fetched.path), 'board-003.zip');
    assert.deepEqual(fs.readFileSync(m.fetched.path), zipBody);
  });

  it('without --unpack the path is the .zip; an action sees the image as CAIRN_STORE_PATH', async () => {
    const r = ok(await cairnAsync(store, ['catalog', 'fetch', seedFile]));
    assert.equal(path.basename(lastLine(r.stdout)), 'board-003.zip');
    const run = ok(await cairnAsync(store, ['catalog', 'run', seedFile, 'size', '--unpack']));
    assert.match(run.stdout, new RegExp(`/board-003\\.img ${image.length}$`, 'm'));
  });
});

describe('catalog fetch: mirrors', () => {
  it('falls back to the second mirror when the first answers 404', async () => {
    const gone = server.hits('/gone/qemu-2.0.img');
    const good = server.hits(images['2.0']!.path);
    const mf = path.join(dir, 'manifest.yml');
    const r = ok(await fetch('--version', '2.0', '--manifest', mf));
    assertFetched(lastLine(r.stdout), '2.0');
    assert.ok(server.hits('/gone/qemu-2.0.img') > gone, 'the first mirror was tried');
    assert.equal(server.hits(images['2.0']!.path) - good, 1, 'the second mirror served it once');
    assert.deepEqual(readManifest(mf).entry.mirrors, [
      server.missing('/gone/qemu-2.0.img'),
      server.base + images['2.0']!.path,
    ]);
  });
});
