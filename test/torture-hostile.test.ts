/**
 * Hostile input: every case must fail with a clear error and a stable code
 * (`cairn: error E_…`, exit 1, no internal error), and leave nothing
 * half-written: no new realization or derivation, STORE/tmp empty, no
 * STORE/failed, no lock rows or temp roots, and `store verify` clean.
 *
 * Stage files are written to a temporary directory at test time. The last
 * group runs a store on a 16 MiB loop-mounted ext4 filesystem and fills it
 * during a build (needs root and loop devices: the test fails, it does not
 * skip, when it cannot mount).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cairn, lastLine, tempDir } from './helpers.js';
import {
  assertVerifyClean,
  drefsOnDisk,
  expectError,
  leftoverRows,
  ok,
  outDir,
  rrefsOnDisk,
  tmpEntries,
  writeStageFile,
} from './fixtures/torture/support.js';

const cache = tempDir('cairn-hostile-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

const work = tempDir('cairn-hostile');
after(() => work.cleanup());

const GOOD =
  `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
export default stage({ name: 'good', config: { v: 1 }, build: ({ out ` +
  `}) => { fs.writeFileSync(path.join(out, 'ok.txt'), 'ok\\n'); } });
`;

/** A store with one good realization in it, to see that hostile runs add nothing. */
function freshStore(label: string): string {
  const store = path.join(work.dir, `${label}-${Math.random().toString(36).slice(2, 8)}`);
  ok(cairn(store, ['realize', writeStageFile(work.dir, 'good.ts', GOOD), '-q']));
  return store;
}

/**
 * Derivations are written ahead of their builds (as Nix writes .drv files
 * before building), so a failed build may leave its derivation behind, but
 * only whole: drv.json in place and no realization.
 */
function assertNewDerivationsWhole(store: string, before: string[], label: string): void {
  for (const d of drefsOnDisk(store).filter((x) => !before.includes(x))) {
    assert.ok(fs.existsSync(path.join(store, 'd', d, 'drv.json')), `${label}: the new derivation ${d} is whole`);
    assert.deepEqual(
      fs.readdirSync(path.join(store, 'd', d, 'r')),
      [],
      `${label}: the new derivation ${d} has no realization`,
    );
  }
}

/** Realizes `source` and expects `code`; then checks that nothing was half-written. */
function expectHostile(label: string, source: string, code: string, opts: { message?: RegExp } = {}): void {
  const store = freshStore(label);
  const rzBefore = rrefsOnDisk(store);
  const drvBefore = drefsOnDisk(store);
  const file = writeStageFile(work.dir, `${label}.ts`, source);
  const r = cairn(store, ['realize', file]);
  expectError(r, code, label);
  if (opts.message) assert.match(r.stderr, opts.message, `${label}: the message says what is wrong`);
  assert.equal(r.stdout, '', `${label}: nothing on stdout`);
  assert.deepEqual(rrefsOnDisk(store), rzBefore, `${label}: no new realization`);
  assertNewDerivationsWhole(store, drvBefore, label);
  assert.deepEqual(tmpEntries(store), [], `${label}: STORE/tmp is empty`);
  assert.equal(fs.existsSync(path.join(store, 'failed')), false, `${label}: no STORE/failed`);
  assert.deepEqual(leftoverRows(store), { locks: 0, tempRoots: 0 }, `${label}: no lock rows or temp roots left`);
  assertVerifyClean(store, `${label}: verify`);
}

const HEAD = `import * as fs from 'node:fs';\nimport * as path from 'node:path';\nimport { stage } from 'cairn';\n`;

describe('hostile stage files', { timeout: 300_000 }, () => {
  it('a stage file that throws at import: E_STAGE_FILE', () => {
    expectHostile('throws', `${HEAD}throw new Error('boom at import');\n`, 'E_STAGE_FILE', {
      message: /boom at import/,
    });
  });
  it('a stage file with a syntax error: E_STAGE_FILE', () => {
    expectHostile(
      'syntax',
      `${HEAD}export default stage({ name: 'x', config: {}, build: () => { ) });\n`,
      'E_STAGE_FILE',
    );
  });
  it('a default export function that throws: E_STAGE_FILE', () => {
    expectHostile(
      'fnthrows',
      `${HEAD}export default () => { throw new Error('no stages for you'); };\n`,
      'E_STAGE_FILE',
      { message: /no stages for you/ },
    );
  });
  it('a stage file that exports nothing: E_NO_TARGET', () => {
    expectHostile('nothing', `${HEAD}export const x = 1;\n`, 'E_NO_TARGET');
  });
  it('a stage file whose exports are no stages: E_NO_TARGET', () => {
    expectHostile('nostage', `${HEAD}export default { name: 'fake', build() {} };\n`, 'E_NO_TARGET');
  });
  it('a file that does not exist: E_STAGE_FILE', () => {
    const store = freshStore('missing');
    expectError(cairn(store, ['realize', path.join(work.dir, 'no-such-file.ts')]), 'E_STAGE_FILE');
    assert.deepEqual(tmpEntries(store), []);
  });
});

describe('hostile configs and graphs', { timeout: 300_000 }, () => {
  const build = `build: ({ out }) => { fs.writeFileSync(path.join(out, 'x'), 'x'); }`;
  for (const [what, config] of [
    ['a function', '{ f: () => 1 }'],
    ['a nested function', '{ a: [1, { g() { return 2; } }] }'],
    ['a cycle', '(() => { const c: any = { a: 1 }; c.self = c; return c; })()'],
    ['a BigInt', '{ n: 10n }'],
    ['NaN', '{ x: NaN }'],
    ['Infinity', '{ x: [1, -Infinity] }'],
    ['a Date', '{ when: new Date(0) }'],
  ] as const) {
    it(`a config with ${what}: E_CONFIG_NOT_JSON`, () => {
      expectHostile(
        `config-${what.replace(/\W+/g, '-')}`,
        `${HEAD}export default stage({ name: 'cfg', config: ${config}, ${build} });\n`,
        'E_CONFIG_NOT_JSON',
      );
    });
  }

  it('a cyclic stage graph (a -> b -> a): E_CYCLE', () => {
    expectHostile(
      'cycle2',
      `${HEAD}
const a = stage({ name: 'a', config: { dep: null as unknown }, ${build} });
const b = stage({ name: 'b', config: { dep: a }, ${build} });
(a.config as { dep: unknown }).dep = b;
export default b;
`,
      'E_CYCLE',
    );
  });

  it('a stage depending on itself: E_CYCLE', () => {
    expectHostile(
      'cycle1',
      `${HEAD}
const a = stage({ name: 'a', config: { deps: [] as unknown[] }, ${build} });
(a.config as { deps: unknown[] }).deps.push(a);
export default a;
`,
      'E_CYCLE',
    );
  });

  for (const [what, name] of [
    ["a '/'", "'a/b'"],
    ["'..'", "'..'"],
    ["'..' inside", "'a..b'"],
    ["a leading '../'", "'../x'"],
    ['a NUL', "'a\\0b'"],
    ['nothing', "''"],
  ] as const) {
    it(`a stage name with ${what}: E_BAD_NAME`, () => {
      expectHostile(
        `name-${what.replace(/\W+/g, '-')}`,
        `${HEAD}export default stage({ name: ${name}, config: {}, ${build} });\n`,
        'E_BAD_NAME',
      );
    });
  }
});

describe('hostile outputs', { timeout: 300_000 }, () => {
  const unsafe = (label: string, body: string, n = 1): void => {
    expectHostile(
      label,
      `${HEAD}import * as net from 'node:net';\nimport { execFileSync } from 'node:child_process';
export default stage({ name: 'bad', config: { label: ` +
        `${JSON.stringify(label)} }, n: ${n}, build: async ({ out, outs }) => {
  fs.writeFileSync(path.join(out, 'fine.txt'), 'fine\\n');
  ${body}
} });
`,
      'E_UNSAFE_OUTPUT',
    );
  };

  it('an absolute symlink: E_UNSAFE_OUTPUT', () =>
    unsafe('abs-link', `fs.symlinkSync('/etc/passwd', path.join(out, 'pw'));`));
  it('a relative symlink leaving the output: E_UNSAFE_OUTPUT', () =>
    unsafe(
      'rel-link',
      `fs.mkdirSync(path.join(out, 'sub')); fs.symlinkSync('../../../outside', path.join(out, 'sub', 'up'));`,
    ));
  it('a symlink escaping through another symlink (s -> ., x -> s/../sibling): E_UNSAFE_OUTPUT', () =>
    unsafe(
      'via-link',
      `fs.symlinkSync('.', path.join(out, 's')); fs.symlinkSync('s/../sibling', path.join(out, 'x'));`,
    ));
  it('a character device (mknod c 1 3): E_UNSAFE_OUTPUT', () =>
    unsafe('device', `execFileSync('mknod', [path.join(out, 'null'), 'c', '1', '3']);`));
  it('a unix socket: E_UNSAFE_OUTPUT', () =>
    unsafe(
      'socket',
      `
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(path.join(out, 'sock'), () => resolve()));
  srv.unref();
  if (!fs.lstatSync(path.join(out, 'sock')).isSocket()) throw new Error('no socket was made');`,
    ));
  it('a FIFO: E_UNSAFE_OUTPUT', () => unsafe('fifo', `execFileSync('mkfifo', [path.join(out, 'pipe')]);`));
  it(
    'an unsafe entry deep in the second of two outputs (n: 2): ' +
      'E_UNSAFE_OUTPUT, and the first output is not stored either',
    () =>
      unsafe(
        'second',
        `fs.writeFileSync(path.join(outs[1], 'fine.txt'), 'also ` +
          `fine\\n'); fs.mkdirSync(path.join(outs[1], 'a', 'b'), ` +
          `{ recursive: true }); execFileSync('mkfifo', [path.join(outs[1], 'a', 'b', 'pipe')]);`,
        2,
      ),
  );

  it(
    'a hard link to a file outside the output is copied, not sealed ' +
      'in place: the outside file keeps its mode and content',
    () => {
      const store = freshStore('hardlink');
      const outside = path.join(work.dir, 'outside.txt');
      fs.writeFileSync(outside, 'mine\n', { mode: 0o644 });
      const file = writeStageFile(
        work.dir,
        'hardlink.ts',
        `${HEAD}
export default stage({ name: 'linker', config: { v: 1 }, build: ({ out }) => { ` +
          `fs.linkSync(${JSON.stringify(outside)}, path.join(out, 'linked.txt')); } });
`,
      );
      const rref = lastLine(ok(cairn(store, ['realize', file, '-q'])).stdout);
      const inStore = path.join(outDir(store, rref), 'linked.txt');
      assert.equal(fs.statSync(outside).mode & 0o777, 0o644, 'the outside file is still writable');
      assert.equal(fs.statSync(outside).nlink, 1, 'and no longer shares its inode with the store');
      assert.equal(fs.statSync(inStore).mode & 0o777, 0o444);
      assert.notEqual(fs.statSync(inStore).ino, fs.statSync(outside).ino);
      fs.appendFileSync(outside, 'changed later\n');
      assert.equal(fs.readFileSync(inStore, 'utf8'), 'mine\n', 'the store copy does not change with it');
      assertVerifyClean(store);
      assert.deepEqual(tmpEntries(store), []);
    },
  );
});

describe('a disk that fills up during a build', { timeout: 300_000 }, () => {
  const img = path.join(work.dir, 'disk.img');
  const mnt = path.join(work.dir, 'mnt');
  let mounted = false;

  before(() => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (it mounts a loop filesystem)');
    fs.mkdirSync(mnt);
    const steps: [string, string[]][] = [
      ['dd', ['if=/dev/zero', `of=${img}`, 'bs=1M', 'count=16', 'status=none']],
      ['mkfs.ext4', ['-q', '-F', img]],
      ['mount', ['-o', 'loop', img, mnt]],
    ];
    for (const [cmd, args] of steps) {
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      assert.equal(
        r.status,
        0,
        `${cmd} ${args.join(' ')} failed (exit ${r.status}): ${r.stderr}${r.error ? String(r.error) : ''}`,
      );
    }
    mounted = true;
  });

  after(() => {
    if (!mounted) return;
    spawnSync('chmod', ['-R', 'u+w', mnt]);
    let r = spawnSync('umount', [mnt]);
    if (r.status !== 0) r = spawnSync('umount', ['-l', mnt]);
    assert.equal(r.status, 0, `umount ${mnt}: ${String(r.stderr)}`);
  });

  const FILL =
    `${HEAD}
const MB = 1 << 20;
/** Writes 1 MiB chunks until ENOSPC (or 64 MiB, more than the disk holds). */
function fill(file: string, swallow: boolean): number {
  const fd = fs.openSync(file, 'w');
  let total = 0;
  try {
    for (let i = 0; i < 64; i++) total += fs.writeSync(fd, Buffer.alloc(MB, i));
  } catch (e) {
    if (!swallow) throw e;
    // Then take the last blocks too, as a hostile build would.
    try { for (;;) total += fs.writeSync(fd, Buffer.alloc(4096, 1)); } catch { /* full */ }
    try { for (;;) total += fs.writeSync(fd, Buffer.alloc(1, 1)); } catch { /* full */ }
  } finally {
    fs.closeSync(fd);
  }
  return total;
}
export const filler = stage({ name: 'filler', config: { v: 1 }, build: ` +
    `({ out }) => { fill(path.join(out, 'big.bin'), false); } });
export const hog = stage({ name: 'hog', config: { v: 1 }, build: ({ out }) => {
  fill(path.join(out, 'big.bin'), true);
  // Small files until not even an inode or a block is left.
  try { for (let i = 0; i < 100000; i++) fs.writeFileSync(path.join(out, 'f' + i), 'x'); } catch { /* full */ }
} });
export const small = stage({ name: 'small', config: { v: 1 }, build: ({ out }) => ` +
    `{ fs.writeFileSync(path.join(out, 'small.bin'), Buffer.alloc(MB, 3)); } });
export const tiny = stage({ name: 'tiny', config: { v: 1 }, build: ({ out ` +
    `}) => { fs.writeFileSync(path.join(out, 'tiny.txt'), 'tiny\\n'); } });
`;

  const avail = (): number => fs.statfsSync(mnt).bavail * fs.statfsSync(mnt).bsize;

  it(
    'a build writing more than fits fails with E_BUILD_FAILED (ENOSPC), leaves ' +
      'nothing half-written, and a smaller realize works afterwards',
    () => {
      const store = path.join(mnt, 'store');
      const file = writeStageFile(work.dir, 'fill.ts', FILL);
      ok(cairn(store, ['realize', file, '-q', '-s', 'tiny']));
      const rzBefore = rrefsOnDisk(store);
      const drvBefore = drefsOnDisk(store);
      const freeBefore = avail();

      const r = cairn(store, ['realize', file, '-s', 'filler']);
      console.log(`disk full during the build: ${r.stderr.trim().split('\n').pop()!.slice(0, 300)}`);
      assert.match(
        r.stderr,
        /cairn: error E_BUILD_FAILED: stage filler /,
        `the build's own write failed, so the build failed: ${r.stderr.slice(0, 1000)}`,
      );
      assert.equal(r.code, 1);
      assert.match(r.stderr, /ENOSPC|no space left/i, 'the message names the cause');
      assert.doesNotMatch(r.stderr, /internal error/);
      assert.deepEqual(rrefsOnDisk(store), rzBefore, 'no new realization');
      assertNewDerivationsWhole(store, drvBefore, 'filler');
      assert.deepEqual(tmpEntries(store), [], 'STORE/tmp is empty: the partial output was deleted');
      assert.deepEqual(leftoverRows(store), { locks: 0, tempRoots: 0 });
      assert.ok(avail() >= freeBefore - (256 << 10), `the space is free again (${avail()} of ${freeBefore} bytes)`);
      assertVerifyClean(store);

      const small = cairn(store, ['realize', file, '-q', '-s', 'small']);
      ok(small, 'a smaller realize after the failure');
      assert.equal(fs.statSync(path.join(outDir(store, lastLine(small.stdout)), 'small.bin')).size, 1 << 20);
      assertVerifyClean(store);
    },
  );

  it(
    'a build that takes every last block and inode, then returns: the realize fails with E_STORE_IO, nothing ' +
      'half-written; after freeing space a realize works',
    () => {
      const store = path.join(mnt, 'store');
      const file = writeStageFile(work.dir, 'fill.ts', FILL);
      ok(cairn(store, ['realize', file, '-q', '-s', 'tiny']));
      const rzBefore = rrefsOnDisk(store);
      const drvBefore = drefsOnDisk(store);

      const r = cairn(store, ['realize', file, '-s', 'hog']);
      console.log(`disk full after the build: ${r.stderr.trim().split('\n').pop()!.slice(0, 300)}`);
      assert.match(
        r.stderr,
        /cairn: error E_STORE_IO: /,
        `the build succeeded and storing its output failed, so E_STORE_IO, ` +
          `not E_BUILD_FAILED: exit ${r.code}, ${r.stderr.slice(0, 1000)}`,
      );
      assert.match(r.stderr, /ENOSPC|no space left/i, 'the message names the cause');
      assert.equal(r.code, 1);
      assert.doesNotMatch(r.stderr, /internal error/);
      assert.deepEqual(rrefsOnDisk(store), rzBefore, 'no new realization');
      assertNewDerivationsWhole(store, drvBefore, 'hog');
      assert.deepEqual(tmpEntries(store), [], 'STORE/tmp is empty');
      assert.deepEqual(leftoverRows(store), { locks: 0, tempRoots: 0 });
      assertVerifyClean(store);
      const small = cairn(store, ['realize', file, '-q', '-s', 'small']);
      ok(small, 'a smaller realize after the failure');
      assertVerifyClean(store);
    },
  );
});
