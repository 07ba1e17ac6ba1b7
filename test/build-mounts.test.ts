/**
 * Mounts made by builds (issue 18, bug 2: Ctrl-C during a debootstrap
 * stage left /proc mounted under STORE/tmp, and every later realize failed
 * in the temporary sweep). Real mounts, as root: a build mounts a proc, a
 * tmpfs and a bind mount of a directory outside the store (same
 * filesystem, so st_dev does not give it away) under its scratch
 * directory, then waits; cairn is killed with SIGINT, SIGTERM or SIGKILL.
 * Afterwards nothing may stay mounted under the store, the next realize
 * must succeed, and nothing may have been deleted through a mount.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { debootstrap, LocalStore, type BuildContext, type DebootstrapConfig } from '../src/index.js';
import { mountPointsBelow, parseMountPoints, removeBuildTree } from '../src/store/mounts.js';
import { cairn, cairnBin, isolateModuleCache, ok, repoRoot, tempDir, tmpEntries } from './helpers.js';

isolateModuleCache(after);

const STAGES = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inPrivateMounts, stage } from 'cairn';
const signals = process.env.SIGNALS!;
const outside = process.env.OUTSIDE!;
const salt = process.env.SALT ?? '';
// Mounts under its scratch directory with plain mount(8), in cairn's own mount namespace, then waits.
export const mounter = stage({ name: 'mounter', config: { salt }, build: async ({ exec, tmp }) => {
  for (const d of ['root/proc', 'scratch', 'bind']) fs.mkdirSync(path.join(tmp, d), { recursive: true });
  await exec('mount', ['-t', 'proc', 'proc', path.join(tmp, 'root/proc')]);
  await exec('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(tmp, 'scratch')]);
  fs.writeFileSync(path.join(tmp, 'scratch', 'inside'), 'x');
  await exec('mount', ['--bind', outside, path.join(tmp, 'bind')]);
  fs.writeFileSync(path.join(signals, 'ready'), '');
  await new Promise((r) => setTimeout(r, 600_000));
} });
// Mounts in a private mount namespace, as the debootstrap builtin does, then waits.
export const privately = stage({ name: 'privately', config: { salt }, build: async ({ exec, tmp }) => {
  fs.mkdirSync(path.join(tmp, 'proc'));
  const script = 'mount -t proc proc "$0/proc" && echo $$ > "$1/pid" && touch "$1/ready" && exec sleep 600';
  await exec(...inPrivateMounts('sh', ['-c', script, tmp, signals]));
} });
export const good = stage({ name: 'good', config: { salt }, build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'ok'), 'ok');
} });
`;

interface Env {
  dir: string;
  store: string;
  file: string;
  signals: string;
  outside: string;
  sentinel: string;
  cleanup: () => void;
}

function setup(): Env {
  const t = tempDir('cairn-mounts');
  const signals = path.join(t.dir, 'signals');
  const outside = path.join(t.dir, 'outside');
  fs.mkdirSync(signals);
  fs.mkdirSync(outside);
  const sentinel = path.join(outside, 'sentinel');
  fs.writeFileSync(sentinel, 'keep\n');
  const file = path.join(t.dir, 'stages.ts');
  fs.writeFileSync(file, STAGES);
  const store = path.join(t.dir, 'store');
  const e = { dir: t.dir, store, file, signals, outside, sentinel, cleanup: t.cleanup };
  return {
    ...e,
    cleanup: () => {
      // Whatever a failed assertion left: never let it outlive the test (deepest first, lazily).
      for (const m of mountsUnder(t.dir)) spawnSync('umount', ['-l', m]);
      t.cleanup();
    },
  };
}

function mountsUnder(dir: string): string[] {
  const real = fs.realpathSync(dir);
  return mountPointsBelow(parseMountPoints(fs.readFileSync('/proc/self/mountinfo')), Buffer.from(real)).map((b) =>
    b.toString(),
  );
}

function env(e: Env, salt: string): NodeJS.ProcessEnv {
  return { ...process.env, SIGNALS: e.signals, OUTSIDE: e.outside, SALT: salt };
}

async function waitFor(file: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!fs.existsSync(file)) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${file}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts `cairn realize FILE -s STAGE`, waits until the build is ready, sends `sig`, returns how cairn ended. */
async function interrupt(
  e: Env,
  stageName: string,
  sig: NodeJS.Signals,
  salt: string,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  fs.rmSync(path.join(e.signals, 'ready'), { force: true });
  const child = spawn(process.execPath, [cairnBin, '--store', e.store, 'realize', e.file, '-s', stageName], {
    cwd: repoRoot,
    env: env(e, salt),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  try {
    await waitFor(path.join(e.signals, 'ready'));
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`${(err as Error).message}; stderr: ${stderr}`);
  }
  child.kill(sig);
  return done;
}

function realizeGood(e: Env, salt: string): string {
  const r = ok(cairn(e.store, ['realize', e.file, '-s', 'good'], { env: env(e, salt) }));
  assert.doesNotMatch(r.stderr, /warning|internal error/, r.stderr);
  return r.stderr;
}

describe('mounts made by a build', () => {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`are undone when cairn gets ${sig}, and the next realize succeeds`, async () => {
      const e = setup();
      try {
        const r = await interrupt(e, 'mounter', sig, sig);
        assert.equal(r.code, sig === 'SIGINT' ? 130 : 143, r.stderr);
        assert.deepEqual(mountsUnder(e.store), [], 'nothing stays mounted under the store');
        assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp is empty');
        assert.equal(fs.readFileSync(e.sentinel, 'utf8'), 'keep\n', 'nothing was deleted through the bind mount');
        realizeGood(e, sig);
      } finally {
        e.cleanup();
      }
    });
  }

  it('left by cairn killed with SIGKILL are undone by the next realize, which succeeds', async () => {
    const e = setup();
    try {
      const r = await interrupt(e, 'mounter', 'SIGKILL', 'kill');
      assert.equal(r.signal, 'SIGKILL');
      assert.equal(mountsUnder(e.store).length, 3, 'the killed build left its three mounts');
      realizeGood(e, 'kill');
      assert.deepEqual(mountsUnder(e.store), [], 'nothing stays mounted under the store');
      assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp is empty');
      assert.equal(fs.readFileSync(e.sentinel, 'utf8'), 'keep\n', 'nothing was deleted through the bind mount');
      assert.deepEqual(fs.readdirSync(e.outside), ['sentinel']);
    } finally {
      e.cleanup();
    }
  });

  it('in a private mount namespace (as debootstrap runs) are never seen outside, even after SIGKILL', async () => {
    const e = setup();
    let pid: number | undefined;
    try {
      const r = await interrupt(e, 'privately', 'SIGKILL', 'ns');
      assert.equal(r.signal, 'SIGKILL');
      pid = Number(fs.readFileSync(path.join(e.signals, 'pid'), 'utf8'));
      // The build's program outlives a kill -9 of cairn (its own process group), mount and all.
      assert.ok(fs.existsSync(`/proc/${pid}`), 'the mounting program still runs');
      assert.deepEqual(mountsUnder(e.store), [], 'its /proc is not mounted in our namespace');
      realizeGood(e, 'ns');
      assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp is empty');
    } finally {
      if (pid) spawnSync('kill', ['-9', String(pid)]);
      e.cleanup();
    }
  });
});

describe('the temporary sweep and mounts', () => {
  it('detaches leftover mounts, never deletes through them, and removes the leftover', () => {
    const e = setup();
    const fds: number[] = [];
    try {
      LocalStore.open(e.store).close();
      // A dead owner's build directory holding a tmpfs, a proc and a bind mount of a directory outside;
      // and a dead owner's leftover that is itself a mount point.
      const leftover = path.join(e.store, 'tmp', '4194305.1-build-m-1');
      const top = path.join(e.store, 'tmp', '4194305.1-work-m-2');
      for (const d of ['t', 'root/proc', 'bind']) fs.mkdirSync(path.join(leftover, d), { recursive: true });
      fs.mkdirSync(top);
      const mount = (...args: string[]): void => {
        const m = spawnSync('mount', args, { encoding: 'utf8' });
        assert.equal(m.status, 0, `mount ${args.join(' ')} (needs root): ${m.stderr}`);
      };
      mount('-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(leftover, 't'));
      mount('-t', 'proc', 'proc', path.join(leftover, 'root/proc'));
      mount('--bind', e.outside, path.join(leftover, 'bind'));
      mount('-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', top);
      fs.writeFileSync(path.join(leftover, 't', 'inside'), 'tmpfs sentinel\n');
      fs.writeFileSync(path.join(top, 'inside'), 'top sentinel\n');
      // Held open, so what the tmpfs held can be read after it is detached.
      fds.push(fs.openSync(path.join(leftover, 't'), 'r'), fs.openSync(top, 'r'));
      assert.equal(mountsUnder(e.store).length, 4);

      const store = LocalStore.open(e.store);
      try {
        assert.equal(store.sweepTemp(), 2);
      } finally {
        store.close();
      }
      assert.deepEqual(mountsUnder(e.store), []);
      assert.deepEqual(tmpEntries(e.store), []);
      assert.equal(fs.readFileSync(e.sentinel, 'utf8'), 'keep\n', 'the bind mount was not deleted through');
      assert.equal(fs.readFileSync(`/proc/self/fd/${fds[0]}/inside`, 'utf8'), 'tmpfs sentinel\n');
      assert.equal(fs.readFileSync(`/proc/self/fd/${fds[1]}/inside`, 'utf8'), 'top sentinel\n');
      assert.ok(fs.existsSync('/proc/self/stat'), "the host's /proc is still mounted");
    } finally {
      for (const fd of fds) fs.closeSync(fd);
      e.cleanup();
    }
  });

  it('removeBuildTree unmounts through a descriptor (a name that is not UTF-8) and follows no link', () => {
    const e = setup();
    try {
      const tree = path.join(e.dir, 'tree');
      const odd = Buffer.concat([Buffer.from(tree + '/'), Buffer.from([0x6d, 0xff, 0x20, 0x0a])]);
      fs.mkdirSync(odd, { recursive: true });
      const fd = fs.openSync(odd, 'r');
      const m = spawnSync('mount', ['--bind', e.outside, '/proc/self/fd/3'], {
        stdio: ['ignore', 'ignore', 'pipe', fd],
        encoding: 'utf8',
      });
      fs.closeSync(fd);
      assert.equal(m.status, 0, m.stderr);
      // A link next to it, to the outside directory: removed, never followed.
      fs.symlinkSync(e.outside, path.join(tree, 'link'));
      assert.equal(mountsUnder(tree).length, 1);
      removeBuildTree(tree);
      assert.equal(fs.existsSync(tree), false);
      assert.deepEqual(mountsUnder(e.dir), []);
      assert.deepEqual(fs.readdirSync(e.outside), ['sentinel']);
    } finally {
      e.cleanup();
    }
  });
  it('removeBuildTree detaches a tmpfs mounted on the tree itself, holding only files', () => {
    const e = setup();
    let fd: number | undefined;
    try {
      const tree = path.join(e.dir, 'tree');
      fs.mkdirSync(tree);
      const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', tree], { encoding: 'utf8' });
      assert.equal(m.status, 0, m.stderr);
      fs.writeFileSync(path.join(tree, 'inside'), 'kept\n');
      fd = fs.openSync(tree, 'r');
      removeBuildTree(tree);
      assert.equal(fs.existsSync(tree), false);
      assert.deepEqual(mountsUnder(e.dir), []);
      assert.equal(fs.readFileSync(`/proc/self/fd/${fd}/inside`, 'utf8'), 'kept\n', 'detached, not emptied');
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      e.cleanup();
    }
  });
});

describe('mountinfo parsing', () => {
  it('decodes octal escapes and keeps other bytes', () => {
    const text = Buffer.concat([
      Buffer.from('36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n'),
      Buffer.from('37 35 0:5 / /s/m'),
      Buffer.from([0xff]),
      Buffer.from('\\012x\\134 rw - tmpfs tmpfs rw\n'),
    ]);
    const points = parseMountPoints(text);
    assert.deepEqual(points[0], Buffer.from('/mnt/a b'));
    assert.deepEqual(points[1], Buffer.concat([Buffer.from('/s/m'), Buffer.from([0xff]), Buffer.from('\nx\\')]));
    const below = mountPointsBelow(
      ['/s', '/s/a', '/s/a/b', '/sx', '/t', '/s/b'].map((p) => Buffer.from(p)),
      Buffer.from('/s'),
    ).map(String);
    assert.deepEqual(below, ['/s/a/b', '/s/a', '/s/b', '/s']);
  });
});

describe('the debootstrap builtin', () => {
  it('mounts only inside private mount namespaces, and removes policy-rc.d when the install fails', async () => {
    const t = tempDir('cairn-debootstrap-unit');
    try {
      const calls: string[][] = [];
      const tmp = path.join(t.dir, 'tmp');
      const out = path.join(t.dir, 'out');
      fs.mkdirSync(out);
      // The programs are recorded, not run: debootstrap "makes" a root with usr/sbin; the install fails.
      const exec = (cmd: string, args: readonly string[] = []): Promise<{ stdout: string; stderr: string }> => {
        calls.push([cmd, ...args]);
        if (args.includes('debootstrap')) fs.mkdirSync(path.join(tmp, 'root/usr/sbin'), { recursive: true });
        if (args.includes('-ec')) return Promise.reject(new Error('apt-get failed'));
        return Promise.resolve({ stdout: '', stderr: '' });
      };
      const log = Object.assign(() => {}, { file: path.join(t.dir, 'log') });
      const ctx = { config: {}, out, outs: [out], tmp, log, exec, files: {}, name: 'd', dref: 'x' };
      const s = debootstrap({ install: ['procps'], mirror: 'http://127.0.0.1:9/debian' });
      ctx.config = s.config;
      await assert.rejects(Promise.resolve(s.build(ctx as unknown as BuildContext<DebootstrapConfig>)), /apt-get/);
      assert.equal(calls.length, 2, JSON.stringify(calls));
      for (const c of calls) assert.deepEqual(c.slice(0, 4), ['unshare', '--mount', '--propagation', 'private']);
      assert.equal(calls[0]![5], 'debootstrap');
      assert.match(calls[1]!.join(' '), /mount -t proc proc "\$0\/proc"/);
      assert.equal(fs.existsSync(path.join(tmp, 'root/usr/sbin/policy-rc.d')), false);
    } finally {
      t.cleanup();
    }
  });
});
