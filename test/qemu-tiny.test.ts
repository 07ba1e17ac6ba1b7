/**
 * The tiny base built from Debian packages: the cpio writer's format and
 * determinism, and the full build (apt-get download -> kernel + initramfs)
 * giving identical bytes twice.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { aptDownload, buildTinyInitramfs, cpioNewc } from '../src/backends/qemu/tiny.js';
import { tinyFixture } from './fixtures/qemu/tiny.js';
import { tempDir } from './helpers.js';

/** Reads a newc archive back: [path, mode, size, data] per entry. */
function parseNewc(buf: Buffer): { path: string; mode: number; data: Buffer; rdev: [number, number] }[] {
  const out = [];
  let off = 0;
  const pad = (n: number): number => (n + 3) & ~3;
  for (;;) {
    const h = buf.subarray(off, off + 110).toString('ascii');
    assert.equal(h.slice(0, 6), '070701');
    const f = (i: number): number => parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const mode = f(1),
      size = f(6),
      namesize = f(11);
    assert.equal(f(5), 0, 'mtime is zero');
    assert.equal(f(2), 0, 'uid is zero');
    const name = buf.subarray(off + 110, off + 110 + namesize - 1).toString();
    off = pad(off + 110 + namesize);
    const data = buf.subarray(off, off + size);
    off = pad(off + size);
    if (name === 'TRAILER!!!') break;
    out.push({ path: name, mode, data, rdev: [f(9), f(10)] as [number, number] });
  }
  assert.equal(off, buf.length);
  return out;
}

describe('cpioNewc', () => {
  it('writes sorted entries with parents, symlinks and devices, independent of input order', () => {
    const entries = [
      { path: 'usr/bin/x', type: 'file' as const, data: Buffer.from('hello'), mode: 0o644 },
      { path: 'bin/sh', type: 'symlink' as const, target: '/bin/busybox' },
      { path: 'dev/console', type: 'chardev' as const, major: 5, minor: 1 },
    ];
    const a = cpioNewc(entries);
    assert.deepEqual(a, cpioNewc([...entries].reverse()));
    const parsed = parseNewc(a);
    assert.deepEqual(
      parsed.map((e) => e.path),
      ['bin', 'bin/sh', 'dev', 'dev/console', 'usr', 'usr/bin', 'usr/bin/x'],
    );
    const x = parsed.find((e) => e.path === 'usr/bin/x')!;
    assert.equal(x.mode, 0o100644);
    assert.equal(x.data.toString(), 'hello');
    assert.equal(parsed.find((e) => e.path === 'bin/sh')!.data.toString(), '/bin/busybox');
    assert.deepEqual(parsed.find((e) => e.path === 'dev/console')!.rdev, [5, 1]);
  });
});

describe('tiny base from Debian packages', () => {
  it('builds kernel + initramfs; rebuilding from the same .debs gives the same bytes', async () => {
    const fx = await tinyFixture();
    assert.match(fx.kernelVersion, /^\d\S*-amd64$/);
    assert.doesNotMatch(fx.kernelVersion, /cloud/, 'the generic kernel: the cloud one has no 9p');
    const kernel = fs.readFileSync(fx.kernel);
    assert.equal(kernel.subarray(0x202, 0x206).toString(), 'HdrS', 'a bzImage');
    const initramfs = fs.readFileSync(fx.initramfs);
    assert.equal(createHash('sha256').update(initramfs).digest('hex'), fx.initramfsSha256);
    const names = parseNewc(initramfs).map((e) => e.path);
    for (const p of ['init', 'bin/busybox', 'bin/sh', 'dev/console', 'lib/cairn-modules/05-virtio_blk.ko'])
      assert.ok(names.includes(p), p);
    // 9p for file transfers, ext4 (a module in the generic kernel) and what they depend on, dependencies first.
    const mods = names.filter((n) => n.startsWith('lib/cairn-modules/')).map((n) => n.replace(/^.*\/\d+-/, ''));
    const pairs: [string, string][] = [
      ['9pnet.ko', '9p.ko'],
      ['netfs.ko', '9p.ko'],
      ['jbd2.ko', 'ext4.ko'],
      ['9pnet.ko', '9pnet_virtio.ko'],
    ];
    for (const [dep, mod] of pairs)
      assert.ok(
        mods.indexOf(dep) >= 0 && mods.indexOf(dep) < mods.indexOf(mod),
        `${dep} before ${mod}: ${mods.join()}`,
      );

    const { dir, cleanup } = tempDir('cairn-tiny-rebuild');
    try {
      const debs = await aptDownload(['busybox-static', `linux-image-${fx.kernelVersion}`], path.join(dir, 'debs'));
      const out = path.join(dir, 'initramfs.cpio');
      const sha = await buildTinyInitramfs({
        busyboxDeb: debs[0]!,
        kernelDeb: debs[1]!,
        tmp: path.join(dir, 'tmp'),
        out,
      });
      assert.equal(sha, fx.initramfsSha256);
    } finally {
      cleanup();
    }
  });
});
