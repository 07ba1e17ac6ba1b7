/**
 * Files and links replaced through a fresh, unpredictable name created with
 * O_EXCL|O_NOFOLLOW (src/store/atomic-file.ts): a symlink planted at a
 * plausible temporary name is never followed, and the call sites that used
 * fixed `*.tmp-PID`-style names (catalog manifests, the services context,
 * the module cache, out-links and their root entries) now use the helper,
 * checked by planting symlinks at their old names for this process's pid.
 */
import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { freshNameBeside, symlinkAtomic, writeFileAtomic } from '../src/store/atomic-file.js';
import { writeManifest, type Manifest } from '../src/stages/catalog-run.js';
import { FileContext } from '../src/services/context.js';
import { compileForImport } from '../src/stages/module-compile.js';
import { addOutLink } from '../src/store/roots.js';
import { canReflink } from '../src/backends/qemu/disk.js';
import { realize, stage, LocalStore } from '../src/index.js';
import { one, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
/** A file outside the destination directory that a planted symlink points at. */
let victim: string;
const VICTIM = 'victim: must stay as it is\n';
beforeEach(() => {
  ({ dir, cleanup } = tempDir('cairn-atomic'));
  fs.mkdirSync(path.join(dir, 'elsewhere'));
  victim = path.join(dir, 'elsewhere', 'victim');
  fs.writeFileSync(victim, VICTIM);
});
afterEach(() => cleanup());

const plant = (at: string): void => fs.symlinkSync(victim, at);
const victimUntouched = (): void =>
  assert.equal(fs.readFileSync(victim, 'utf8'), VICTIM, 'the symlink target was written');
/** Entries of a directory other than the planted links and the expected results. */
const leftovers = (d: string, expected: string[]): string[] =>
  fs.readdirSync(d).filter((n) => !expected.includes(n) && !fs.lstatSync(path.join(d, n)).isSymbolicLink());

describe('writeFileAtomic / symlinkAtomic', () => {
  it('writes the file whole and leaves no temporary behind', () => {
    const dest = path.join(dir, 'out.json');
    writeFileAtomic(dest, '{"a":1}\n', { fsync: true, mode: 0o600 });
    assert.equal(fs.readFileSync(dest, 'utf8'), '{"a":1}\n');
    assert.equal(fs.statSync(dest).mode & 0o777, 0o600);
    writeFileAtomic(dest, 'second\n');
    assert.equal(fs.readFileSync(dest, 'utf8'), 'second\n');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['elsewhere', 'out.json']);
  });

  it('temporary names are fresh each time, beside the destination, and hidden', () => {
    const dest = path.join(dir, 'x');
    const names = new Set(Array.from({ length: 100 }, () => freshNameBeside(dest)));
    assert.equal(names.size, 100);
    for (const n of names) {
      assert.equal(path.dirname(n), dir);
      assert.match(path.basename(n), /^\.x\.[0-9a-f]{24}\.tmp$/);
    }
    assert.ok(path.basename(freshNameBeside(path.join(dir, 'n'.repeat(255)))).length <= 255);
  });

  it('replaces a symlink at the destination itself, never writing through it', () => {
    const dest = path.join(dir, 'link');
    plant(dest);
    writeFileAtomic(dest, 'new\n');
    victimUntouched();
    assert.ok(fs.lstatSync(dest).isFile());
    assert.equal(fs.readFileSync(dest, 'utf8'), 'new\n');
  });

  it('symlinkAtomic replaces an existing link, and leaves no temporary behind', () => {
    const dest = path.join(dir, 'result');
    symlinkAtomic('/first', dest);
    symlinkAtomic('/second', dest);
    assert.equal(fs.readlinkSync(dest), '/second');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['elsewhere', 'result']);
  });
});

describe('the former fixed-name call sites, with symlinks planted at their old names', () => {
  const pid = process.pid;

  it('catalog manifests (was FILE.tmp-PID)', async () => {
    const file = path.join(dir, 'manifest.yml');
    plant(`${file}.tmp-${pid}`);
    await writeManifest(file, { catalog: 'c', version: '1' } as unknown as Manifest);
    victimUntouched();
    assert.match(fs.readFileSync(file, 'utf8'), /catalog: c/);
    assert.deepEqual(leftovers(dir, ['elsewhere', 'manifest.yml']), []);
  });

  it('the services context file (was FILE.PID.tmp)', () => {
    const file = path.join(dir, 'ens.context.json');
    plant(`${file}.${pid}.tmp`);
    const ctx = new FileContext(file);
    ctx.set('user_id', '7');
    victimUntouched();
    assert.deepEqual(FileContext.read(file), { user_id: '7' });
    assert.deepEqual(leftovers(dir, ['elsewhere', 'ens.context.json']), []);
  });

  it('the compiled-module cache (was FILE.PID.tmp)', async () => {
    const src = path.join(dir, 'mod.ts');
    fs.writeFileSync(src, 'export const x: number = 1;\n');
    const cacheDir = path.join(dir, 'cache');
    const env = { cairnUrl: new URL('../src/index.ts', import.meta.url).href, cacheDir };
    // A first compile names the cache files; then they are removed and links planted at their old temp names.
    await compileForImport(src, env);
    const names = fs.readdirSync(cacheDir);
    assert.ok(names.length > 0);
    for (const n of names) {
      fs.rmSync(path.join(cacheDir, n));
      plant(path.join(cacheDir, `${n}.${pid}.tmp`));
    }
    await compileForImport(src, env);
    victimUntouched();
    for (const n of names) assert.ok(fs.lstatSync(path.join(cacheDir, n)).isFile(), n);
    assert.deepEqual(leftovers(cacheDir, names), []);
  });

  it('out-links and their root entries (were LINK.cairn-PID and ENTRY.PID.tmp)', async () => {
    const store = LocalStore.open(path.join(dir, 'store'));
    try {
      const s = stage({ name: 'o', config: {}, build: ({ out }) => fs.writeFileSync(path.join(out, 'f'), 'x') });
      const rref = one(await realize(s, { store }));
      const link = path.join(dir, 'result');
      plant(`${link}.cairn-${pid}`);
      addOutLink(store, link, rref);
      victimUntouched();
      assert.equal(fs.readlinkSync(link), store.outPath(rref));
      assert.equal(fs.readlinkSync(`${link}.cairn-${pid}`), victim, 'the planted link is left alone');
      const autos = fs.readdirSync(path.join(store.root, 'roots', 'auto'));
      assert.equal(autos.length, 1, autos.join(', '));
      assert.equal(fs.readlinkSync(path.join(store.root, 'roots', 'auto', autos[0]!)), link);
    } finally {
      store.close();
    }
  });

  it('the reflink probe (was DIR/.reflink-probe-PID)', () => {
    const d = path.join(dir, 'probe');
    fs.mkdirSync(d);
    plant(path.join(d, `.reflink-probe-${pid}`));
    plant(path.join(d, `.reflink-probe-${pid}-clone`));
    assert.equal(typeof canReflink(d), 'boolean');
    victimUntouched();
    assert.deepEqual(leftovers(d, []), []);
  });
});
