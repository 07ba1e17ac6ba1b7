/**
 * Hostile output trees (issue 13): sealing never writes through a link the
 * tree plants, links are judged before anything is written, names are
 * bytes (not necessarily UTF-8) from end to end, and a temporary leftover
 * that cannot be removed never stops later realizes.
 *
 * Real filesystems throughout; the mount test needs root (it fails, it does
 * not skip, when it cannot mount).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { realize, stage, LocalStore, type BuildContext, type RRef } from '../src/index.js';
import { removeTree, treeBytes } from '../src/store/fsutil.js';
import { walkTree } from '../src/store/tree.js';
import { cairn, expectError, isCode, ok, one, tempDir } from './helpers.js';
import { writeStageFile } from './fixtures/torture/support.js';

const cache = tempDir('cairn-hostile-tree-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

/** A fresh directory; removed with removeTree, which (unlike fs.rmSync) handles non-UTF-8 names. */
function scratch(label: string): { dir: string; cleanup: () => void } {
  const t = tempDir(label);
  return {
    dir: t.dir,
    cleanup: () => {
      removeTree(t.dir);
      t.cleanup();
    },
  };
}

/** DIR/NAME/... as bytes (path.join would decode the names). */
const joinPath = (dir: string | Buffer, ...names: Buffer[]): Buffer =>
  Buffer.concat([Buffer.from(dir as string), ...names.flatMap((n) => [Buffer.from('/'), n])]);
const mode = (p: fs.PathLike): number => fs.lstatSync(p).mode & 0o7777;
/** A name that is not valid UTF-8: "bad" + 0xff + `last`. */
const badName = (last = 0x01): Buffer => Buffer.from([0x62, 0x61, 0x64, 0xff, last]);

describe('sealing never writes through a planted link', () => {
  it('a hard-linked f next to f.cairn-unlink -> a sentinel outside: the sentinel is untouched', async () => {
    const t = scratch('cairn-hostile-tree');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const sentinel = path.join(t.dir, 'sentinel');
      const shared = path.join(t.dir, 'shared');
      fs.writeFileSync(sentinel, 'sentinel\n', { mode: 0o644 });
      fs.writeFileSync(shared, 'shared\n', { mode: 0o644 });
      const s = stage({
        name: 'planted',
        config: { sentinel },
        build: ({ out }: BuildContext<unknown>) => {
          fs.linkSync(shared, path.join(out, 'f'));
          fs.symlinkSync(sentinel, path.join(out, 'f.cairn-unlink'));
        },
      });
      await assert.rejects(realize(s, { store }), isCode('E_UNSAFE_OUTPUT'));
      assert.equal(fs.readFileSync(sentinel, 'utf8'), 'sentinel\n', 'the sentinel keeps its content');
      assert.equal(mode(sentinel), 0o644, 'the sentinel keeps its mode');
      assert.equal(fs.readFileSync(shared, 'utf8'), 'shared\n');
      assert.equal(mode(shared), 0o644, 'the file the output linked to keeps its mode');
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('a hard link to a file outside is copied away: the output is sealed, the outside file unchanged', async () => {
    const t = scratch('cairn-hostile-tree');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const shared = path.join(t.dir, 'shared');
      fs.writeFileSync(shared, 'shared\n', { mode: 0o755 });
      const s = stage({
        name: 'linked',
        config: { shared },
        build: ({ out }: BuildContext<unknown>) => {
          fs.linkSync(shared, path.join(out, 'f'));
          fs.symlinkSync('f', path.join(out, 'f.cairn-unlink'));
        },
      });
      const rref = one(await realize(s, { store }));
      const f = path.join(store.rzDir(rref), 'out', 'f');
      assert.equal(fs.readFileSync(f, 'utf8'), 'shared\n');
      assert.equal(mode(f), 0o555, 'sealed, exec bit kept');
      assert.notEqual(fs.statSync(f).ino, fs.statSync(shared).ino, 'a file of its own');
      assert.equal(mode(shared), 0o755, 'the outside file keeps its mode');
      assert.equal(fs.readlinkSync(path.join(store.rzDir(rref), 'out', 'f.cairn-unlink')), 'f');
      assert.deepEqual(fs.readdirSync(path.join(store.rzDir(rref), 'out')).sort(), ['f', 'f.cairn-unlink']);
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('a build that swaps its build.log for a link to a sentinel: the sentinel keeps its mode', async () => {
    const t = scratch('cairn-hostile-tree');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const sentinel = path.join(t.dir, 'sentinel');
      fs.writeFileSync(sentinel, 'sentinel\n', { mode: 0o644 });
      const s = stage({
        name: 'logswap',
        config: { sentinel },
        build: ({ out }: BuildContext<unknown>) => {
          fs.writeFileSync(path.join(out, 'ok'), 'ok\n');
          fs.unlinkSync(path.join(out, '..', 'build.log'));
          fs.symlinkSync(sentinel, path.join(out, '..', 'build.log'));
        },
      });
      await assert.rejects(realize(s, { store }), isCode('E_UNSAFE_OUTPUT'));
      assert.equal(mode(sentinel), 0o644);
      assert.equal(fs.readFileSync(sentinel, 'utf8'), 'sentinel\n');
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('a link that stays inside lexically but leaves physically is refused before anything is written', async () => {
    const t = scratch('cairn-hostile-tree');
    try {
      const root = path.join(t.dir, 'out');
      const sentinel = path.join(t.dir, 'sentinel');
      const shared = path.join(t.dir, 'shared');
      fs.mkdirSync(root, { mode: 0o755 });
      fs.chmodSync(root, 0o755);
      fs.writeFileSync(sentinel, 'sentinel\n', { mode: 0o644 });
      fs.writeFileSync(shared, 'shared\n', { mode: 0o644 });
      // Sorted by bytes: 0.txt, a, a.cairn-unlink, s. The old walk chmodded
      // 0.txt and copied a through a.cairn-unlink before judging it.
      fs.writeFileSync(path.join(root, '0.txt'), 'zero\n', { mode: 0o644 });
      fs.linkSync(shared, path.join(root, 'a'));
      fs.symlinkSync('s/../sentinel', path.join(root, 'a.cairn-unlink'));
      fs.symlinkSync('.', path.join(root, 's'));
      await assert.rejects(walkTree(root, { seal: true }), (e: unknown) => {
        isCode('E_UNSAFE_OUTPUT')(e);
        assert.match((e as Error).message, /a\.cairn-unlink/);
        return true;
      });
      assert.equal(fs.readFileSync(sentinel, 'utf8'), 'sentinel\n', 'nothing written outside');
      assert.equal(mode(sentinel), 0o644);
      assert.equal(mode(shared), 0o644);
      assert.equal(mode(path.join(root, '0.txt')), 0o644, 'nothing in the tree chmodded before the refusal');
      assert.equal(mode(root), 0o755, 'the root is not sealed either');
    } finally {
      t.cleanup();
    }
  });
});

describe('names are bytes', () => {
  it('two trees differing only in one byte of a non-UTF-8 name hash differently', async () => {
    const t = scratch('cairn-hostile-tree');
    try {
      const hashes: string[] = [];
      for (const last of [0x01, 0x02]) {
        const root = path.join(t.dir, `t${last}`);
        fs.mkdirSync(root);
        fs.writeFileSync(joinPath(root, badName(last)), 'same\n');
        hashes.push((await walkTree(root, { seal: false })).treeHash);
      }
      assert.notEqual(hashes[0], hashes[1]);
      // And a name that decodes to the same string (U+FFFD) as valid UTF-8 does not collide either.
      const root = path.join(t.dir, 'valid');
      fs.mkdirSync(root);
      fs.writeFileSync(path.join(root, 'bad\ufffd\x01'), 'same\n');
      assert.notEqual((await walkTree(root, { seal: false })).treeHash, hashes[0]);
    } finally {
      t.cleanup();
    }
  });

  it('a non-UTF-8 file is sealed, and store verify sees a change to it', async () => {
    const t = scratch('cairn-hostile-tree');
    const storeDir = path.join(t.dir, 'store');
    const store = LocalStore.open(storeDir);
    let f: Buffer;
    let rref: RRef;
    try {
      const s = stage({
        name: 'bytes',
        config: {},
        build: ({ out }: BuildContext<unknown>) => {
          fs.mkdirSync(joinPath(out, badName(0x02)));
          fs.writeFileSync(joinPath(out, badName(0x02), badName()), 'content\n');
        },
      });
      rref = one(await realize(s, { store }));
      f = joinPath(store.rzDir(rref), Buffer.from('out'), badName(0x02), badName());
      assert.equal(mode(f), 0o444, 'the file is sealed read-only');
      assert.equal(mode(joinPath(store.rzDir(rref), Buffer.from('out'), badName(0x02))), 0o555, 'its directory too');
    } finally {
      store.close();
    }
    try {
      const verified = ok(cairn(storeDir, ['store', 'verify', '--json', rref]));
      const clean = JSON.parse(verified.stdout) as { problems: unknown[] };
      assert.deepEqual(clean.problems, [], 'intact before the change');
      const listed = ok(cairn(storeDir, ['lsref', rref]))
        .stdout.split('\n')
        .filter(Boolean);
      assert.equal(listed.length, 2, 'both entries are listed');
      assert.match(listed[0]!, /^dr-xr-xr-x +- {2}bad\\xff\\x02\/$/);
      assert.match(listed[1]!, /^-r--r--r-- +8 {2}bad\\xff\\x02\/bad\\xff\\x01$/);
      // catref takes the name as lsref shows it (red team: argv cannot carry the raw bytes).
      assert.equal(ok(cairn(storeDir, ['catref', rref, 'bad\\xff\\x02/bad\\xff\\x01'])).stdout, 'content\n');
      expectError(cairn(storeDir, ['catref', rref, '..\\x2f..\\x2fmeta.json']), 'E_NO_SUCH_PATH');
      fs.chmodSync(f, 0o644);
      fs.writeFileSync(f, 'changed\n');
      fs.chmodSync(f, 0o444);
      const r = cairn(storeDir, ['store', 'verify', '--json', rref]);
      const report = JSON.parse(r.stdout) as { problems: { kind: string }[] };
      assert.equal(report.problems.length, 1, r.stdout);
      assert.equal(report.problems[0]!.kind, 'modified');
    } finally {
      t.cleanup();
    }
  });

  it("a dead owner's temp dir holding non-UTF-8 names is swept, and removeTree removes such a tree", async () => {
    const t = scratch('cairn-hostile-tree');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const plant = (at: Buffer): void => {
        fs.mkdirSync(at);
        fs.mkdirSync(joinPath(at, badName()));
        fs.writeFileSync(joinPath(at, badName(), badName(0x03)), 'x');
        fs.symlinkSync('/etc/passwd', joinPath(at, badName(0x04)));
        fs.chmodSync(joinPath(at, badName()), 0o555);
        fs.chmodSync(at, 0o555);
      };
      // pid 2^22+1 is above Linux's pid_max limit, so its owner is dead.
      const dead = Buffer.concat([Buffer.from('4194305.1-build-x-1-'), badName()]);
      const leftover = joinPath(path.join(store.root, 'tmp'), dead);
      plant(leftover);
      assert.equal(store.sweepTemp(), 1);
      assert.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), []);
      const loose = joinPath(t.dir, badName(0x05));
      plant(loose);
      removeTree(loose);
      assert.equal(fs.existsSync(loose), false);
      assert.ok(fs.existsSync('/etc/passwd'), 'the link was removed, not followed');
    } finally {
      store.close();
      t.cleanup();
    }
  });
});

const GOOD = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
export default stage({
  name: 'good', config: { v: 2 }, build: ({ out }) => { fs.writeFileSync(path.join(out, 'ok.txt'), 'ok\\n'); },
});
`;

describe('the temporary sweep', () => {
  it('a leftover holding a mount point is unmounted, never entered, and later realizes work', () => {
    const t = scratch('cairn-hostile-tree');
    const storeDir = path.join(t.dir, 'store');
    const mnt = path.join(storeDir, 'tmp', '4194305.1-build-m-1', 'proc');
    let fd: number | undefined;
    const mountedUnder = (dir: string): string[] =>
      fs
        .readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[4])
        .filter((p): p is string => p?.startsWith(dir) === true);
    try {
      LocalStore.open(storeDir).close();
      fs.mkdirSync(mnt, { recursive: true });
      const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { encoding: 'utf8' });
      assert.equal(m.status, 0, `mount tmpfs (needs root): ${m.stderr}`);
      fs.writeFileSync(path.join(mnt, 'inside-the-mount'), 'keep\n');
      // Held open, so the tmpfs can be read once it is detached.
      fd = fs.openSync(mnt, 'r');
      const file = writeStageFile(t.dir, 'good.ts', GOOD);
      for (let i = 0; i < 2; i++) {
        const r = ok(cairn(storeDir, ['realize', file, '-q']));
        assert.doesNotMatch(r.stderr, /warning/);
      }
      assert.deepEqual(mountedUnder(path.join(storeDir, 'tmp')), [], 'the sweep unmounted the tmpfs');
      assert.deepEqual(fs.readdirSync(path.join(storeDir, 'tmp')), []);
      const kept = fs.readFileSync(`/proc/self/fd/${fd}/inside-the-mount`, 'utf8');
      assert.equal(kept, 'keep\n', 'the mount was never entered');
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      for (const p of mountedUnder(t.dir).reverse()) spawnSync('umount', ['-l', p]);
      t.cleanup();
    }
  });

  it('an output holding a mount point is refused, and removeTree/treeBytes never enter one', async () => {
    const t = scratch('cairn-hostile-tree');
    const root = path.join(t.dir, 'out');
    const mnt = path.join(root, 'proc');
    let mounted = false;
    try {
      fs.mkdirSync(mnt, { recursive: true });
      const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { encoding: 'utf8' });
      assert.equal(m.status, 0, `mount tmpfs (needs root): ${m.stderr}`);
      mounted = true;
      fs.writeFileSync(path.join(mnt, 'keep'), 'keep\n', { mode: 0o644 });
      await assert.rejects(walkTree(root, { seal: true }), isCode('E_UNSAFE_OUTPUT'));
      assert.throws(() => treeBytes(root), isCode('E_MOUNT_IN_TREE'));
      assert.throws(() => removeTree(root), isCode('E_MOUNT_IN_TREE'));
      assert.equal(fs.readFileSync(path.join(mnt, 'keep'), 'utf8'), 'keep\n');
      assert.equal(mode(path.join(mnt, 'keep')), 0o644);
    } finally {
      if (mounted) spawnSync('umount', [mnt]);
      t.cleanup();
    }
  });

  it('a leftover holding an immutable file is reported and skipped, and later realizes work', () => {
    const t = scratch('cairn-hostile-tree');
    const storeDir = path.join(t.dir, 'store');
    const leftover = path.join(storeDir, 'tmp', '4194305.1-build-i-1');
    let locked: string | undefined;
    try {
      LocalStore.open(storeDir).close();
      fs.mkdirSync(leftover, { recursive: true });
      const f = path.join(leftover, 'immutable');
      fs.writeFileSync(f, 'x');
      const c = spawnSync('chattr', ['+i', f], { encoding: 'utf8' });
      assert.equal(c.status, 0, `chattr +i (needs root and ext4/xfs/btrfs): ${c.stderr}`);
      locked = f;
      const file = writeStageFile(t.dir, 'good.ts', GOOD);
      const r = ok(cairn(storeDir, ['realize', file, '-q']));
      assert.match(r.stderr, /cannot remove leftover .*skipped/);
      ok(cairn(storeDir, ['realize', file, '-q']));
    } finally {
      if (locked) {
        for (const name of fs.readdirSync(path.join(storeDir, 'tmp'))) {
          spawnSync('chattr', ['-i', path.join(storeDir, 'tmp', name, 'immutable')]);
        }
      }
      t.cleanup();
    }
  });
});
