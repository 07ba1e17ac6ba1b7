/**
 * Overlays written by createOverlay (in-process, no qemu-img) are valid
 * qcow2 images: `qemu-img check` finds nothing, `qemu-img info` reads the
 * same virtual size and backing file as for an overlay qemu-img made, reads
 * fall through to the backing file, writes stay in the overlay. Over 4 TiB
 * (L1 table beyond one cluster) it falls back to qemu-img.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chainLength, createOverlay, qcow2Backing, qcow2OverlayBytes } from '../src/backends/qemu/disk.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('cairn-disk');
after(() => cleanup());

const img = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8' });
const info = (file: string): Record<string, unknown> =>
  JSON.parse(img('info', '--output=json', file)) as Record<string, unknown>;
const pick = (i: Record<string, unknown>) => ({
  format: i.format,
  'virtual-size': i['virtual-size'],
  'cluster-size': i['cluster-size'],
  'backing-filename': i['backing-filename'],
  'backing-filename-format': i['backing-filename-format'],
  'format-specific': i['format-specific'],
});

describe('createOverlay', () => {
  requireQemu();
  for (const [label, format, size] of [
    ['qcow2 2 GiB', 'qcow2', '2G'],
    ['qcow2 of an odd size', 'qcow2', '100000K'],
    ['raw 64 MiB', 'raw', '64M'],
  ] as const) {
    it(`matches qemu-img create for a ${label} backing file`, async () => {
      const base = path.join(dir, `base-${label.replace(/\W+/g, '-')}.${format}`);
      img('create', '-q', '-f', format, base, size);
      // Data in the base, to read through the overlay.
      execFileSync('qemu-io', ['-f', format, '-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 1M 4k', base], {
        stdio: 'ignore',
      });
      const ours = `${base}.ours.qcow2`;
      const theirs = `${base}.theirs.qcow2`;
      await createOverlay(base, format, ours);
      img('create', '-q', '-f', 'qcow2', '-F', format, '-b', base, theirs);
      assert.deepEqual(pick(info(ours)), pick(info(theirs)));
      img('check', ours); // exits non-zero on any corruption or leak
      assert.equal(qcow2Backing(ours), base);
      if (format === 'qcow2') assert.equal(chainLength(ours), 1);
      img('compare', '-f', 'qcow2', '-F', format, ours, base); // exits non-zero if contents differ
      const before = sha256(fs.readFileSync(base));
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4k', ours], { stdio: 'ignore' });
      img('check', ours);
      assert.match(
        execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x11 0 4k', '-c', 'read -P 0xab 4k 60k', ours], {
          encoding: 'utf8',
        }),
        /read 61440\/61440/,
      );
      assert.equal(sha256(fs.readFileSync(base)), before, 'the backing file is untouched');
    });
  }

  it('refuses to overwrite an existing file', async () => {
    const base = path.join(dir, 'small.qcow2');
    img('create', '-q', '-f', 'qcow2', base, '1M');
    const ov = path.join(dir, 'small-ov.qcow2');
    fs.writeFileSync(ov, 'keep');
    await assert.rejects(createOverlay(base, 'qcow2', ov), /EEXIST/);
    assert.equal(fs.readFileSync(ov, 'utf8'), 'keep');
  });

  it('falls back to qemu-img beyond 4 TiB', async () => {
    const base = path.join(dir, 'huge.qcow2');
    img('create', '-q', '-f', 'qcow2', base, '5T');
    assert.equal(qcow2OverlayBytes(base, 'qcow2', 5n * 2n ** 40n), null);
    const ov = path.join(dir, 'huge-ov.qcow2');
    await createOverlay(base, 'qcow2', ov);
    img('check', ov);
    assert.equal(info(ov)['virtual-size'], 5 * 2 ** 40);
  });
});
