/**
 * Cairn's own tar reader and writer (src/store/tar-format.ts): names are
 * bytes (non-UTF-8 survives), long names (pax and GNU 'L'/'K'), base-256
 * sizes, checksums, truncation; archives from GNU tar and python's tarfile.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK, END, TarParser, entryHeader, padding, readNumber, type TarEntry } from '../src/store/tar-format.js';
import { isCode, tempDir } from './helpers.js';

const work = tempDir('cairn-tarfmt');
after(() => work.cleanup());

interface Read {
  entry: TarEntry;
  data: Buffer;
}
/** Parses `tar` fed in chunks of `step` bytes. */
function parse(tar: Buffer, step = tar.length): Read[] {
  const out: Read[] = [];
  let parts: Buffer[] = [];
  const p = new TarParser({
    entry: (e) => {
      out.push({ entry: e, data: Buffer.alloc(0) });
      parts = [];
    },
    data: (c) => {
      parts.push(Buffer.from(c));
    },
    entryEnd: () => {
      out[out.length - 1]!.data = Buffer.concat(parts);
    },
  });
  for (let i = 0; i < tar.length; i += step) p.write(tar.subarray(i, i + step));
  p.end();
  return out;
}
const fileEntry = (name: Buffer, data: Buffer, mode = 0o644): Buffer =>
  Buffer.concat([
    entryHeader({ path: name, type: 'file', size: data.length, mode }),
    data,
    Buffer.alloc(padding(data.length)),
  ]);
const latin1 = (b: Buffer): string => b.toString('latin1');

describe('tar format: write then read', () => {
  const nonUtf8 = Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74, 0x78, 0x74]); // "f\xff\xfe.txt"
  const longName = Buffer.from(`${'d'.repeat(150)}/${'n'.repeat(120)}`);
  const tar = Buffer.concat([
    entryHeader({ path: Buffer.from('dir'), type: 'dir', mode: 0o755 }),
    fileEntry(Buffer.from('dir/a'), Buffer.from('hello\n'), 0o755),
    fileEntry(nonUtf8, Buffer.alloc(1000, 7)),
    fileEntry(longName, Buffer.alloc(0)),
    entryHeader({
      path: Buffer.from('ln'),
      type: 'symlink',
      mode: 0o777,
      linkpath: Buffer.concat([Buffer.from('x/'), nonUtf8]),
    }),
    END,
  ]);
  const expect = (r: Read[]): void => {
    assert.deepEqual(
      r.map((x) => [x.entry.path, x.entry.type, x.entry.linkpath, x.entry.size]),
      [
        ['dir/', 'dir', '', 0],
        ['dir/a', 'file', '', 6],
        [latin1(nonUtf8), 'file', '', 1000],
        [latin1(longName), 'file', '', 0],
        ['ln', 'symlink', `x/${latin1(nonUtf8)}`, 0],
      ],
    );
    assert.equal(r[1]!.data.toString(), 'hello\n');
    assert.equal(r[1]!.entry.mode & 0o111, 0o111);
    assert.deepEqual(r[2]!.data, Buffer.alloc(1000, 7));
  };

  it('names are bytes: non-UTF-8 and long names come back exactly, in any chunking', () => {
    for (const step of [tar.length, 1, 7, 511, 512, 513, 4096]) expect(parse(tar, step));
  });

  it('GNU tar reads what the writer wrote, names as bytes', () => {
    const f = path.join(work.dir, 'mine.tar');
    fs.writeFileSync(f, tar);
    const r = spawnSync('tar', ['--quoting-style=literal', '-tf', f]);
    assert.equal(r.status, 0, r.stderr.toString());
    const names = r.stdout.toString('latin1').split('\n').filter(Boolean);
    assert.deepEqual(names, ['dir/', 'dir/a', latin1(nonUtf8), latin1(longName), 'ln']);
  });

  it("reads GNU tar's own archives: 'L' long names, 'K' long links and raw bytes (gnu format)", () => {
    const root = path.join(work.dir, 'gnu');
    const long = 'x'.repeat(200);
    fs.mkdirSync(root);
    fs.writeFileSync(Buffer.from(`${root}/${long}`), 'long\n');
    fs.writeFileSync(Buffer.concat([Buffer.from(`${root}/`), nonUtf8]), 'bytes\n');
    fs.symlinkSync(long, path.join(root, 'lnk'));
    for (const format of ['gnu', 'pax', 'ustar']) {
      const f = path.join(work.dir, `gnu-${format}.tar`);
      const args = ['--format', format, '-cf', f, '-C', root, '--sort=name', '.'];
      const r = spawnSync('tar', args);
      if (format === 'ustar') {
        assert.notEqual(r.status, 0, 'ustar cannot hold a 200-byte name');
        continue;
      }
      assert.equal(r.status, 0, r.stderr.toString());
      const got = parse(fs.readFileSync(f), 1000);
      const byName = new Map(got.map((x) => [x.entry.path, x]));
      assert.equal(byName.get(`./${long}`)?.data.toString(), 'long\n', format);
      assert.equal(byName.get(`./${latin1(nonUtf8)}`)?.data.toString(), 'bytes\n', format);
      assert.equal(byName.get('./lnk')?.entry.linkpath, long, format);
    }
  });

  it('sizes beyond 8 GiB: base-256 numbers are read, and the writer puts the size in a pax header', () => {
    const field = Buffer.alloc(12);
    field[0] = 0x80;
    field.writeUIntBE(20 * 1024 ** 3, 6, 6);
    assert.equal(readNumber(field), 20 * 1024 ** 3);
    assert.equal(readNumber(Buffer.from('00000001750\0')), 1000);
    const h = entryHeader({ path: Buffer.from('disk.img'), type: 'file', size: 20 * 1024 ** 3, mode: 0o644 });
    assert.ok(h.length > BLOCK, 'a pax header precedes');
    let seen: TarEntry | undefined;
    const p = new TarParser({
      entry: (e) => {
        seen = e;
      },
      data: () => {},
      entryEnd: () => {},
    });
    p.write(h);
    assert.equal(seen?.size, 20 * 1024 ** 3);
  });
});

describe('tar format: damage is E_BAD_ARCHIVE', () => {
  const good = Buffer.concat([fileEntry(Buffer.from('a'), Buffer.alloc(3000, 1)), END]);
  it('a flipped header byte fails the checksum', () => {
    const t = Buffer.from(good);
    t[10] = t[10]! ^ 1;
    assert.throws(() => parse(t), isCode('E_BAD_ARCHIVE'));
  });
  it('truncation mid-data, mid-header, and at an entry boundary without the end marker', () => {
    for (const n of [1000, 3584 - 100, 200, BLOCK + 3072]) {
      assert.throws(() => parse(good.subarray(0, n)), isCode('E_BAD_ARCHIVE'), String(n));
    }
  });
  it('an unknown entry type (GNU sparse) is refused, not extracted wrongly', () => {
    const h = entryHeader({ path: Buffer.from('s'), type: 'file', size: 0, mode: 0o644 });
    h[156] = 'S'.charCodeAt(0);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    assert.throws(() => parse(Buffer.concat([h, END])), isCode('E_BAD_ARCHIVE'));
  });
});
