/**
 * File transfer between the host and the tiny guest over the 9p share, with
 * real QEMU: a 50 MB file both ways byte for byte, a directory tree both
 * ways (modes, symlinks, empty directories, a non-UTF-8 name, many small
 * files), cp's "into a directory" rules (bug 6), a state saved and resumed
 * after transfers, downloads kept in a saved step's realization, and a
 * hostile guest (symlinks to host paths, device nodes, a share it mounts
 * and fills itself) that changes nothing outside the destination.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LocalStore } from '../src/store/store.js';
import { verifyStore } from '../src/store/verify.js';
import { machine, step, DOWNLOADS } from '../src/stages/machine.js';
import { exec } from '../src/stages/machine-steps.js';
import { tiny } from '../src/stages/bases/tiny.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { cairn, isCode, isolateModuleCache, lastLine, ok, sha256, tempDir } from './helpers.js';

requireQemu();
isolateModuleCache(after);
const { dir, cleanup } = tempDir('cairn-machine-files');
const storeDir = path.join(dir, 'store');
const store = LocalStore.open(storeDir);
after(() => cleanup());

const base = machine(tiny());

before(async () => {
  await base.realize({ store });
});

/** Every entry below `root`: relative byte path (hex for non-UTF-8) -> kind, exec bit, content or target. */
function listing(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: Buffer, rel: string): void => {
    for (const name of fs.readdirSync(p, { encoding: 'buffer' })) {
      const q = Buffer.concat([p, Buffer.from('/'), name]);
      const r = rel + (rel ? '/' : '') + name.toString('hex');
      const st = fs.lstatSync(q);
      if (st.isDirectory()) {
        out[r] = 'dir';
        walk(q, r);
      } else if (st.isSymbolicLink()) out[r] = `link:${fs.readlinkSync(q, 'utf8')}`;
      else out[r] = `file:${st.mode & 0o111 ? 'x' : '-'}:${sha256(fs.readFileSync(q))}`;
    }
  };
  walk(Buffer.from(root), '');
  return out;
}

/** A tree with what a build product has: nesting, an exec bit, a relative link, an empty dir, odd names, many files. */
function makeTree(root: string): void {
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(root, 'empty'));
  fs.mkdirSync(path.join(root, 'many'));
  fs.writeFileSync(path.join(root, 'bin', 'tool'), '#!/bin/sh\necho tool\n', { mode: 0o755 });
  fs.writeFileSync(path.join(root, 'data.bin'), randomBytes(300_000));
  fs.symlinkSync('bin/tool', path.join(root, 'tool-link'));
  fs.writeFileSync(Buffer.from(`${root}/caf\xe9 \n name`, 'latin1'), 'not utf-8\n');
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(root, 'many', `f${i}`), `${i}\n`);
}

describe('file transfer over 9p', () => {
  it('a 50 MB file goes in and comes back byte for byte, with its mode', async () => {
    const src = path.join(dir, 'big.bin');
    fs.writeFileSync(src, randomBytes(50 * 1024 * 1024), { mode: 0o640 });
    fs.chmodSync(src, 0o640);
    const back = path.join(dir, 'big.back');
    const times: number[] = [];
    const seen = await base.use(
      async (vm) => {
        let t = performance.now();
        await vm.upload(src, '/tmp/big.bin');
        times.push(performance.now() - t);
        const r = await vm.exec('sha256sum /tmp/big.bin; stat -c %a /tmp/big.bin', { check: true });
        t = performance.now();
        await vm.download('/tmp/big.bin', back);
        times.push(performance.now() - t);
        return r.stdout;
      },
      { store },
    );
    const [sum, mode] = seen.trim().split('\n');
    assert.equal(sum!.split(' ')[0], sha256(fs.readFileSync(src)));
    assert.equal(mode, '640');
    assert.equal(sha256(fs.readFileSync(back)), sha256(fs.readFileSync(src)));
    // A figure for the log, not an assertion (timing depends on the host's load).
    const mbps = times.map((ms) => (52.4288 / (ms / 1000)).toFixed(0));
    process.stderr.write(
      `# 50 MB: upload ${times[0]!.toFixed(0)} ms (${mbps[0]} MB/s), ` +
        `download ${times[1]!.toFixed(0)} ms (${mbps[1]} MB/s)\n`,
    );
  });

  it('a tree goes in and comes back: names as bytes, exec bits, links, empty dirs, 300 small files', async () => {
    const src = path.join(dir, 'tree');
    makeTree(src);
    const back = path.join(dir, 'tree-back');
    const guest = await base.use(
      async (vm) => {
        await vm.upload(src, '/tmp/'); // into /tmp: /tmp/tree
        const r = await vm.exec(
          'cd /tmp/tree && find . | sort | wc -l && stat -c %a bin/tool && readlink tool-link && ./tool-link && ' +
            'ls -ld empty | cut -c1 && stat -c %u:%g data.bin',
          { check: true },
        );
        await vm.download('/tmp/tree', back);
        return r.stdout;
      },
      { store },
    );
    // 300 + many, bin, bin/tool, empty, data.bin, tool-link, the odd name (two lines: it holds a newline), and '.'
    assert.deepEqual(guest.trim().split('\n'), ['309', '755', 'bin/tool', 'tool', 'd', '0:0']);
    assert.deepEqual(listing(back), listing(src));
  });

  it('bug 6: upload of a directory, and of a file into an existing directory or a trailing slash', async () => {
    const f = path.join(dir, 'f.txt');
    fs.writeFileSync(f, 'file content\n');
    const d = path.join(dir, 'updir');
    fs.mkdirSync(path.join(d, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(d, 'sub', 'x'), 'x\n');
    const out = await base.use(
      async (vm) => {
        await vm.upload(f, '/tmp/'); // into /tmp
        await vm.upload(f, '/tmp/new-dir/'); // a trailing slash makes the directory
        await vm.upload(f, '/tmp/renamed.txt'); // a new name
        await vm.upload(d, '/tmp/copy'); // a directory under a new name
        await vm.upload(d, '/tmp/copy'); // again: into the existing directory, as cp does
        const r = await vm.exec(
          'cat /tmp/f.txt /tmp/new-dir/f.txt /tmp/renamed.txt /tmp/copy/sub/x /tmp/copy/updir/sub/x',
          { check: true },
        );
        await assert.rejects(vm.upload(path.join(dir, 'missing'), '/tmp/'), isCode('E_NO_SUCH_PATH'));
        await assert.rejects(vm.download('/tmp/missing', path.join(dir, 'nope')), isCode('E_MACHINE_TRANSFER'));
        return r.stdout;
      },
      { store },
    );
    assert.equal(out, 'file content\nfile content\nfile content\nx\nx\n');
    assert.ok(!fs.existsSync(path.join(dir, 'nope')));
  });

  it('a state saves and resumes after transfers; a saved step keeps its downloads in its realization', async () => {
    const src = path.join(dir, 'in.txt');
    fs.writeFileSync(src, 'uploaded\n');
    let runs = 0;
    const build = step<{ src: string }>({
      name: 'build-product',
      async run(vm, a) {
        runs++;
        await vm.upload(a.src, '/mnt/in.txt');
        await vm.exec('mkdir -p /tmp/out/lib && cp /mnt/in.txt /tmp/out/lib/ && echo built > /tmp/out/result', {
          check: true,
        });
        await vm.download('/tmp/out', 'product');
        await vm.download('/tmp/out/result', 'single');
      },
    });
    const m = base.apply(build, { src }).apply(exec, { cmd: 'cat /mnt/in.txt /tmp/out/result > /mnt/seen' });
    await m.realize({ store });
    // The share was unmounted before the save (QEMU refuses to save while it is mounted).
    const seen = await m.use((vm) => vm.exec('cat /mnt/seen; mount | grep -c 9p'), { store });
    assert.equal(seen.stdout, 'uploaded\nbuilt\n0\n');
    // The download step's own state holds files/product and files/single.
    const parent = await base.apply(build, { src }).realize({ store });
    const files = path.join(parent.dir, DOWNLOADS);
    assert.equal(fs.readFileSync(path.join(files, 'product', 'lib', 'in.txt'), 'utf8'), 'uploaded\n');
    assert.equal(fs.readFileSync(path.join(files, 'single'), 'utf8'), 'built\n');
    assert.equal(runs, 1, 'cached: the step did not run again, and its files are still there');
    assert.deepEqual((await verifyStore(store)).problems, []);
    const cat = ok(cairn(storeDir, ['catref', parent.rref, `${DOWNLOADS}/single`]));
    assert.equal(cat.stdout, 'built\n');
  });

  it('a saved step may only download to a relative name in its files/', async () => {
    const bad = step<{ to: string }>({
      name: 'bad-download',
      async run(vm, a) {
        await vm.exec('echo x > /tmp/x', { check: true });
        await vm.download('/tmp/x', a.to);
      },
    });
    for (const to of [path.join(dir, 'abs'), '../up', 'a/../../b'])
      await assert.rejects(base.apply(bad, { to }).realize({ store }), isCode('E_BAD_ARGUMENT'), to);
    assert.ok(!fs.existsSync(path.join(dir, 'abs')));
  });
});

describe('a hostile guest', () => {
  it('links to host paths and device nodes refuse the download; nothing outside the destination changes', async () => {
    const secret = path.join(dir, 'host-secret');
    fs.writeFileSync(secret, 'host only\n');
    const dest = path.join(dir, 'hostile-out');
    await base.use(
      async (vm) => {
        await vm.exec(`mkdir -p /tmp/evil && ln -s ${secret} /tmp/evil/abs && echo x > /tmp/evil/ok`, { check: true });
        await assert.rejects(vm.download('/tmp/evil', dest), isCode('E_UNSAFE_ARCHIVE'));
        await vm.exec('rm /tmp/evil/abs && ln -s ../../../../../../../.. /tmp/evil/up', { check: true });
        await assert.rejects(vm.download('/tmp/evil', dest), isCode('E_UNSAFE_ARCHIVE'));
        await vm.exec('rm /tmp/evil/up && mknod /tmp/evil/null c 1 3', { check: true });
        await assert.rejects(vm.download('/tmp/evil', dest), isCode('E_UNSAFE_ARCHIVE'));
        // A link to the secret as the download itself: it comes back as a link, never as the file it names.
        await vm.exec(`ln -s ${secret} /tmp/lone-link`, { check: true });
        await assert.rejects(vm.download('/tmp/lone-link', dest), isCode('E_UNSAFE_ARCHIVE'));
      },
      { store },
    );
    assert.ok(!fs.existsSync(dest), 'a refused download leaves no destination');
    assert.equal(fs.readFileSync(secret, 'utf8'), 'host only\n');
  });

  it('a guest that mounts the share and plants links there changes nothing on the host', async () => {
    const victim = path.join(dir, 'victim');
    fs.mkdirSync(victim);
    fs.writeFileSync(path.join(victim, 'keep'), 'keep\n');
    const up = path.join(dir, 'up.txt');
    fs.writeFileSync(up, 'up\n');
    const back = path.join(dir, 'planted-back');
    const out = await base.use(
      async (vm) => {
        // Links with the names the host could pick are planted, and stay planted while the host works.
        await vm.exec(
          'mkdir -p /tmp/p && mount -t 9p -o trans=virtio,version=9p2000.L cairn-xfer /tmp/p && ' +
            `ln -s ${victim} /tmp/p/dir-link && ln -s ${victim}/keep /tmp/p/file-link && ` +
            // QEMU refuses device nodes in the export (ENXIO); the test checks it stays so.
            '! mknod /tmp/p/zero c 1 5 2>/dev/null && umount /tmp/p',
          { check: true },
        );
        await vm.upload(up, '/tmp/up.txt');
        await vm.exec('echo back > /tmp/back.txt', { check: true });
        await vm.download('/tmp/back.txt', back);
        await vm.download('/tmp/back.txt', `${back}-dir/`);
        return (await vm.exec('cat /tmp/up.txt', { check: true })).stdout;
      },
      { store },
    );
    assert.equal(out, 'up\n');
    assert.equal(fs.readFileSync(back, 'utf8'), 'back\n');
    assert.equal(fs.readFileSync(`${back}-dir/back.txt`, 'utf8'), 'back\n');
    assert.deepEqual(fs.readdirSync(victim), ['keep']);
    assert.equal(fs.readFileSync(path.join(victim, 'keep'), 'utf8'), 'keep\n');
  });
});

describe('cairn machine upload/download', () => {
  it('+ upload DIR, + upload F /tmp/, + download into the state and out to a host path; cached runs copy again', () => {
    const f = path.join(dir, 'cli-f.txt');
    fs.writeFileSync(f, 'cli file\n');
    const d = path.join(dir, 'cli-dir');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'inner'), 'inner\n');
    const hostOut = path.join(dir, 'cli-out');
    const args = [
      'machine',
      'tiny',
      '+',
      'upload',
      f,
      '/tmp/',
      '+',
      'upload',
      d,
      '/mnt/',
      '+',
      'exec',
      'mkdir -p /tmp/o && cat /tmp/cli-f.txt /mnt/cli-dir/inner > /tmp/o/both',
      '+',
      'download',
      '/tmp/o',
      hostOut,
    ];
    const r1 = ok(cairn(storeDir, args));
    assert.match(r1.stderr, /upload \S+cli-f\.txt -> \/tmp\/: [\d.]+ MB in [\d.]+ s/, 'the transfer is logged');
    assert.equal(fs.readFileSync(path.join(hostOut, 'both'), 'utf8'), 'cli file\ninner\n');
    fs.rmSync(hostOut, { recursive: true });
    const r2 = ok(cairn(storeDir, args));
    assert.doesNotMatch(r2.stderr, /^built /m, 'fully cached');
    assert.equal(lastLine(r2.stdout), lastLine(r1.stdout));
    assert.equal(fs.readFileSync(path.join(hostOut, 'both'), 'utf8'), 'cli file\ninner\n', 'copied from the state');
    fs.writeFileSync(path.join(hostOut, 'both'), 'edited');
    fs.writeFileSync(path.join(hostOut, 'stray'), 'stray');
    const r3 = ok(cairn(storeDir, args));
    assert.doesNotMatch(r3.stderr, /^built /m, 'an existing destination does not change the identity');
    // The destination is replaced as a whole, not entered (cp would make cli-out/o): reruns give the same tree.
    assert.deepEqual(fs.readdirSync(hostOut), ['both']);
    assert.equal(fs.readFileSync(path.join(hostOut, 'both'), 'utf8'), 'cli file\ninner\n', 'replaced');
  });
});
