/**
 * The pure extraction planner (src/store/extract-plan.ts): which archives may
 * be extracted, judged over the whole entry list before anything is written.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LIMITS, ExtractionPlanner, planExtraction } from '../src/store/extract-plan.js';
import type { TarEntry } from '../src/store/tar-format.js';
import { isCode } from './helpers.js';

const f = (path: string, size = 1, mode = 0o644): TarEntry => ({ path, type: 'file', linkpath: '', size, mode });
const d = (path: string): TarEntry => ({ path, type: 'dir', linkpath: '', size: 0, mode: 0o755 });
const sym = (path: string, linkpath: string): TarEntry => ({ path, type: 'symlink', linkpath, size: 0, mode: 0o777 });
const hard = (path: string, linkpath: string): TarEntry => ({ path, type: 'hardlink', linkpath, size: 0, mode: 0o644 });
const refused = (entries: TarEntry[], strip = 0): void =>
  assert.throws(() => planExtraction(entries, strip), isCode('E_UNSAFE_ARCHIVE'));

/** d/l1 -> .. is the root; d/l2 -> l1/.. reads as d/ on paper, but is the root's parent on disk. */
const chain = [d('d/'), sym('d/l1', '..'), sym('d/l2', 'l1/..')];

describe('extraction plan: symlinks judged by where they resolve', () => {
  it('a chain inside on paper, outside on disk, is refused', () => refused(chain));
  it('the same chain one level less deep is fine', () => {
    const p = planExtraction([d('d/'), sym('d/l1', '..'), sym('d/l2', 'l1/d')]);
    assert.deepEqual(
      p.symlinks.map((s) => s.path),
      ['d/l1', 'd/l2'],
    );
  });
  it('order does not matter: the link used by the chain may come later', () => {
    refused([d('d/'), sym('d/l2', 'l1/..'), sym('d/l1', '..')]);
  });
  it('a deep chain that climbs to / one level per link', () => {
    const deep = 'a/b/c/d/e';
    refused([sym(`${deep}/up`, '../../../../..'), sym('far', `${deep}/up/..`)]);
  });
  it('absolute targets, .. above the root, and loops', () => {
    refused([sym('l', '/etc/passwd')]);
    refused([sym('sub/l', '../../x')]);
    refused([sym('a', 'b'), sym('b', 'a/x')]);
  });
  it('a name the tree lacks is passed lexically: missing/../.. still escapes', () => {
    refused([sym('l', 'missing/../..')]);
    planExtraction([sym('l', 'missing/../x')]);
  });
  it('links inside the tree, through other links, are fine', () => {
    planExtraction([
      f('pkg/README'),
      sym('pkg/lib/readme', '../README'),
      sym('top', 'pkg/lib/readme'),
      sym('self', '.'),
    ]);
  });
});

describe('extraction plan: writes and links', () => {
  it('a file entry below a symlink the archive planted is refused', () => {
    refused([d('real/'), sym('ln', 'real'), f('ln/x')]);
    refused([sym('ln', 'real'), d('ln/sub/')]);
  });
  it('a hard link must name an earlier regular file by its own path', () => {
    planExtraction([f('a'), hard('b', 'a'), hard('c', 'b')]);
    refused([hard('b', 'a'), f('a')]); // later
    refused([d('dir/'), hard('b', 'dir')]); // not a file
    refused([d('dir/'), f('dir/a'), sym('ln', 'dir'), hard('b', 'ln/a')]); // through a symlink
    refused([f('a'), hard('b', '../a')]);
    refused([hard('b', '/etc/passwd')]);
  });
  it('duplicates are refused; repeated directories merge', () => {
    refused([f('a'), f('a')]);
    refused([f('a'), d('a/')]);
    refused([f('a/b'), f('a')]); // a is a directory already
    refused([f('a'), f('a/b')]); // below a file
    const p = planExtraction([d('a/'), f('a/x'), d('a/'), d('./a/')]);
    assert.deepEqual(p.dirs, ['a']);
  });
  it('strip drops leading components of names and hard link targets; what it empties is skipped', () => {
    const p = planExtraction([d('pkg/'), f('pkg/a'), hard('pkg/b', 'pkg/a'), f('other/c')], 1);
    assert.deepEqual(p.steps, [
      null,
      { kind: 'file', path: 'a', size: 1, exec: false },
      { kind: 'hardlink', path: 'b', target: 'a' },
      { kind: 'file', path: 'c', size: 1, exec: false },
    ]);
    refused([f('pkg/a'), f('other/a')], 1); // strip makes them one name
  });
  it('devices, fifos, absolute and .. names', () => {
    for (const type of ['chardev', 'blockdev', 'fifo'] as const) {
      refused([{ path: 'x', type, linkpath: '', size: 0, mode: 0 }]);
    }
    refused([f('/abs')]);
    refused([f('a/../../x')]);
    refused([f('pkg/../../x')], 1);
  });
  it(
    'a NUL in a name or link target (only pax can carry one) is ' +
      'E_BAD_ARCHIVE before anything is written (red team)',
    () => {
      for (const entries of [
        [f('ok'), f('a\0b')],
        [f('ok'), sym('l', 'ok\0x')],
        [f('ok'), hard('h', 'ok\0')],
      ]) {
        assert.throws(() => planExtraction(entries), isCode('E_BAD_ARCHIVE'));
      }
    },
  );

  it('only the exec bit is kept', () => {
    const p = planExtraction([f('x', 1, 0o4755), f('y', 1, 0o600)]);
    assert.deepEqual(
      p.steps.map((s) => s?.kind === 'file' && s.exec),
      [true, false],
    );
  });
});

describe('extraction plan: limits', () => {
  it('the defaults are 64 GiB and a million entries, and are enforced', () => {
    assert.deepEqual(DEFAULT_LIMITS, { bytes: 64 * 1024 ** 3, entries: 1_000_000 });
    const p = new ExtractionPlanner();
    p.add(f('disk.img', DEFAULT_LIMITS.bytes));
    assert.throws(() => p.add(f('one-more-byte', 1)), isCode('E_ARCHIVE_TOO_LARGE'));
    const q = new ExtractionPlanner();
    for (let i = 0; i < DEFAULT_LIMITS.entries; i++) q.add(d('d/'));
    assert.throws(() => q.add(d('d/')), isCode('E_ARCHIVE_TOO_LARGE'));
  });
  it('a per-archive override', () => {
    assert.throws(() => planExtraction([f('a', 10), f('b', 10)], 0, { bytes: 15 }), isCode('E_ARCHIVE_TOO_LARGE'));
    assert.throws(() => planExtraction([f('a'), f('b'), f('c')], 0, { entries: 2 }), isCode('E_ARCHIVE_TOO_LARGE'));
    planExtraction([f('a', 10), f('b', 5)], 0, { bytes: 15, entries: 2 });
  });
});
