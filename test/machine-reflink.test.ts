/**
 * Disk clones by filesystem. On a loop-mounted XFS with reflink=1 the
 * pipeline clones disks with FICLONE: machine.json says `clone: 'reflink'`
 * and `chain: 0` (standalone images), and parent and child disks share
 * extents on disk (filefrag shows `shared`). Restores stay isolated and the
 * saved states unchanged (`cairn store verify`). On the ext4 root the same
 * pipeline falls back to qcow2 overlays whose chain grows by one per step.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { machine, step, type MachineState } from '../src/stages/machine.js';
import { tiny } from '../src/stages/bases/tiny.js';
import type { QemuState } from '../src/backends/qemu/qemu-machine.js';
import { LocalStore } from '../src/store/store.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { cairn, ok, sha256, tempDir } from './helpers.js';

const sh = step<{ cmd: string }>({
  name: 'test.sh',
  version: '1',
  async run(vm, { cmd }) {
    await vm.exec(cmd, { check: true, shell: true });
  },
});

const { dir, cleanup } = tempDir('cairn-reflink');
const image = path.join(dir, 'xfs.img');
const mnt = path.join(dir, 'mnt');
let mounted = false;

/** Unmounts and detaches whatever this file attached, whatever state the tests left. */
function unmountAll(): void {
  if (mounted) {
    // A QEMU that outlived a failed test keeps the mount busy for a moment.
    for (let i = 0; i < 20 && spawnSync('umount', [mnt]).status !== 0; i++) spawnSync('sleep', ['0.25']);
    if (spawnSync('mountpoint', ['-q', mnt]).status === 0) spawnSync('umount', ['-l', mnt]);
    mounted = false;
  }
  // mount -o loop sets autoclear, but a lazy unmount may leave the device attached until later.
  const loops = spawnSync('losetup', ['-j', image], { encoding: 'utf8' }).stdout ?? '';
  for (const line of loops.split('\n')) {
    const dev = line.split(':')[0];
    if (dev) spawnSync('losetup', ['-d', dev]);
  }
}

before(() => {
  requireQemu();
  fs.mkdirSync(mnt);
  execFileSync('truncate', ['-s', '2G', image]);
  execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
  execFileSync('mount', ['-o', 'loop', image, mnt]);
  mounted = true;
});
after(() => {
  unmountAll();
  cleanup();
});

const qemuState = (s: MachineState): QemuState => s.description.state as QemuState;
const diskOf = (s: MachineState): string => path.join(s.dir, qemuState(s).disk!);

/** base -> a -> b, each step writing a file on the guest disk. */
async function pipeline(store: LocalStore): Promise<MachineState[]> {
  const base = machine(tiny());
  const a = base.apply(sh, { cmd: 'echo a > /mnt/a; export X=a; sync' });
  const b = a.apply(sh, { cmd: 'echo b > /mnt/b; export X=$X-b; sync' });
  const states: MachineState[] = [];
  for (const m of [base, a, b]) states.push(await m.realize({ store }));
  return states;
}

function sharedExtents(file: string): boolean {
  const out = execFileSync('filefrag', ['-v', file], { encoding: 'utf8' });
  return /\bshared\b/.test(out);
}

describe('disk clones', () => {
  it('on XFS with reflink: standalone disks sharing extents, isolated restores, states unchanged', async () => {
    const storeDir = path.join(mnt, 'store');
    const store = LocalStore.open(storeDir);
    const states = await pipeline(store);
    for (const s of states) {
      assert.equal(qemuState(s).clone, 'reflink', `${s.rref} was cloned with FICLONE`);
      assert.equal(qemuState(s).chain, 0, `${s.rref} has a standalone disk`);
    }
    const [base, , b] = states;
    // The last state's disk is a reflink copy of its parent's plus the step's writes.
    assert.ok(sharedExtents(diskOf(b!)), 'the newest disk shares extents');
    assert.ok(sharedExtents(diskOf(base!)), 'the base disk shares extents');
    // Control: a plain byte copy on the same filesystem shares nothing.
    const plain = path.join(mnt, 'plain-copy.qcow2');
    execFileSync('cp', ['--reflink=never', diskOf(b!), plain]);
    assert.equal(sharedExtents(plain), false, 'a full copy does not share extents');
    fs.rmSync(plain);
    const before = states.map((s) => sha256(fs.readFileSync(diskOf(s))));

    const last = machine(tiny())
      .apply(sh, { cmd: 'echo a > /mnt/a; export X=a; sync' })
      .apply(sh, { cmd: 'echo b > /mnt/b; export X=$X-b; sync' });
    let arrived = 0;
    let release!: () => void;
    const both = new Promise<void>((r) => (release = r));
    const writeThenRead = (who: string) =>
      last.use(
        async (vm) => {
          await vm.exec(`echo ${who} > /mnt/b; export X=${who}; sync`, { check: true, shell: true });
          if (++arrived === 2) release();
          await both;
          return (await vm.exec('echo $X; cat /mnt/a /mnt/b', { check: true })).stdout;
        },
        { store },
      );
    const [r1, r2] = await Promise.all([writeThenRead('one'), writeThenRead('two')]);
    assert.equal(r1, 'one\na\none\n');
    assert.equal(r2, 'two\na\ntwo\n');
    const again = await last.use(async (vm) => (await vm.exec('echo $X; cat /mnt/a /mnt/b', { check: true })).stdout, {
      store,
    });
    assert.equal(again, 'a-b\na\nb\n');

    assert.deepEqual(
      states.map((s) => sha256(fs.readFileSync(diskOf(s)))),
      before,
      'saved disks are unchanged',
    );
    const verify = ok(cairn(storeDir, ['store', 'verify']));
    assert.match(verify.stdout, /all intact/);
  });

  it('on ext4: qcow2 overlays whose backing chain grows by one per step', async (t) => {
    const ext4 = tempDir('cairn-overlay');
    t.after(() => ext4.cleanup());
    assert.equal(
      execFileSync('stat', ['-f', '-c', '%T', ext4.dir], { encoding: 'utf8' }).trim(),
      'ext2/ext3',
      'the temp dir is on ext4',
    );
    const store = LocalStore.open(path.join(ext4.dir, 'store'));
    const states = await pipeline(store);
    assert.deepEqual(
      states.map((s) => qemuState(s).clone),
      ['overlay', 'overlay', 'overlay'],
    );
    const chains = states.map((s) => qemuState(s).chain);
    assert.deepEqual(chains, [chains[0]!, chains[0]! + 1, chains[0]! + 2], `chains ${chains.join(', ')}`);
    assert.ok(chains[0]! >= 1, 'even the base state is an overlay on the files disk');
    const seen = await machine(tiny())
      .apply(sh, { cmd: 'echo a > /mnt/a; export X=a; sync' })
      .apply(sh, { cmd: 'echo b > /mnt/b; export X=$X-b; sync' })
      .use(async (vm) => (await vm.exec('echo $X; cat /mnt/a /mnt/b', { check: true })).stdout, { store });
    assert.equal(seen, 'a-b\na\nb\n');
  });
});
