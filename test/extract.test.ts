/**
 * The extraction shell (src/store/extract.ts) on real files: names and link
 * targets as bytes, hard links, exec bits, and opens that never reuse a name.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { extractTar, planArchive } from '../src/store/extract.js';
import { END, entryHeader, padding } from '../src/store/tar-format.js';
import { isCode, tempDir } from './helpers.js';

const work = tempDir('cairn-extract');
after(() => work.cleanup());
let n = 0;
const fresh = (): string => fs.mkdtempSync(path.join(work.dir, `x${n++}-`));
const file = (name: Buffer | string, data: string, mode = 0o644): Buffer => {
  const b = Buffer.from(data);
  const h = entryHeader({ path: Buffer.from(name), type: 'file', size: b.length, mode });
  return Buffer.concat([h, b, Buffer.alloc(padding(b.length))]);
};
const write = (parts: Buffer[]): string => {
  const f = path.join(work.dir, `a${n++}.tar`);
  fs.writeFileSync(f, Buffer.concat([...parts, END]));
  return f;
};
const raw = Buffer.from([0x62, 0x79, 0x74, 0xe9, 0xff]); // not UTF-8
const under = (dir: string, name: Buffer): Buffer => Buffer.concat([Buffer.from(`${dir}/`), name]);

describe('extractTar', () => {
  it('a plain tar is planned by seeking past data, and still sees every header after a big entry', async () => {
    const big = 'x'.repeat(3 << 20);
    const hostile = entryHeader({
      path: Buffer.from('evil'),
      type: 'symlink',
      mode: 0o777,
      linkpath: Buffer.from('/etc'),
    });
    const tar = write([file('big.bin', big), file('after.txt', 'after\n'), hostile]);
    await assert.rejects(extractTar(tar, 'tar', fresh()), isCode('E_UNSAFE_ARCHIVE'));
    const ok = write([file('big.bin', big), file('after.txt', 'after\n')]);
    const dest = fresh();
    assert.equal(await extractTar(ok, 'tar', dest), 2);
    assert.equal(fs.readFileSync(path.join(dest, 'after.txt'), 'utf8'), 'after\n');
    assert.equal(fs.statSync(path.join(dest, 'big.bin')).size, big.length);
    // Cut inside the big entry's data, or right after it: refused, nothing written.
    for (const cut of [1 << 20, 512 + big.length]) {
      const t = path.join(work.dir, `cut${n++}.tar`);
      fs.writeFileSync(t, fs.readFileSync(ok).subarray(0, cut));
      const d = fresh();
      await assert.rejects(extractTar(t, 'tar', d), isCode('E_BAD_ARCHIVE'));
      assert.deepEqual(fs.readdirSync(d), []);
    }
  });

  it('non-UTF-8 names and targets, exec bits and hard links come out exactly', async () => {
    const dest = fresh();
    const hardlink = Buffer.alloc(512);
    // A hard link header by hand: the writer only makes what export needs.
    const h = entryHeader({ path: Buffer.from('hard'), type: 'file', size: 0, mode: 0o644 });
    h.copy(hardlink);
    hardlink[156] = 0x31;
    raw.copy(hardlink, 157);
    hardlink.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of hardlink) sum += b;
    hardlink.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    const tar = write([
      file(raw, 'bytes\n'),
      file('bin/tool', '#!/bin/sh\n', 0o4755),
      hardlink,
      entryHeader({ path: Buffer.from('link'), type: 'symlink', mode: 0o777, linkpath: raw }),
    ]);
    assert.equal(await extractTar(tar, 'tar', dest), 4);
    assert.equal(fs.readFileSync(under(dest, raw), 'utf8'), 'bytes\n');
    assert.deepEqual(fs.readlinkSync(path.join(dest, 'link'), { encoding: 'buffer' }), raw);
    assert.equal(fs.statSync(path.join(dest, 'hard')).ino, fs.statSync(under(dest, raw)).ino);
    const mode = fs.statSync(path.join(dest, 'bin', 'tool')).mode & 0o7777;
    assert.ok(mode & 0o100, 'executable');
    assert.equal(mode & 0o7000, 0, 'no setuid/setgid/sticky');
  });

  it('strip drops a top-level file with data, as tar --strip-components does (red team: was E_STORE_IO)', async () => {
    const dest = fresh();
    const tar = write([file('README', 'top level\n'), file('pkg/x', 'x\n'), file('pkg/sub/y', 'y\n')]);
    assert.equal(await extractTar(tar, 'tar', dest, { strip: 1 }), 3);
    assert.deepEqual(fs.readdirSync(dest).sort(), ['sub', 'x']);
    assert.equal(fs.readFileSync(path.join(dest, 'x'), 'utf8'), 'x\n');
    assert.equal(fs.readFileSync(path.join(dest, 'sub', 'y'), 'utf8'), 'y\n');
  });

  it('GNU tar agrees on the names it reads from Cairn-written and its own archives', async () => {
    const root = fresh();
    fs.writeFileSync(under(root, raw), 'x');
    const t = path.join(work.dir, 'gnu.tar.gz');
    assert.equal(spawnSync('tar', ['-czf', t, '-C', root, '.']).status, 0);
    const dest = fresh();
    await extractTar(t, 'tar.gz', dest);
    assert.deepEqual(fs.readdirSync(dest, { encoding: 'buffer' }), [raw]);
  });

  it('never opens a name that exists: a link already in the destination is not written through', async () => {
    const dest = fresh();
    const victim = path.join(work.dir, 'victim.txt');
    fs.writeFileSync(victim, 'victim\n');
    fs.symlinkSync(victim, path.join(dest, 'a'));
    await assert.rejects(extractTar(write([file('a', 'pwned\n')]), 'tar', dest), isCode('E_STORE_IO'));
    assert.equal(fs.readFileSync(victim, 'utf8'), 'victim\n');
  });

  it('the first pass reads headers only and extracts nothing when an entry is refused', async () => {
    const dest = fresh();
    const up = entryHeader({ path: Buffer.from('up'), type: 'symlink', mode: 0o777, linkpath: Buffer.from('..') });
    const tar = write([file('ok', 'x'), up]);
    await assert.rejects(planArchive(tar, 'tar'), isCode('E_UNSAFE_ARCHIVE'));
    await assert.rejects(extractTar(tar, 'tar', dest), isCode('E_UNSAFE_ARCHIVE'));
    assert.deepEqual(fs.readdirSync(dest), []);
  });
});
