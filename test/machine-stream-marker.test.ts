/**
 * untilMarker: how streamed exec output is cut at the end-of-stdout marker
 * (pure; the QEMU path is in machine-step-semantics.test.ts).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { untilMarker } from '../src/backends/qemu/qemu-machine.js';

const run = (marker: string, pieces: string[]): string[] => {
  const out: string[] = [];
  const push = untilMarker(marker, (t) => out.push(t));
  for (const p of pieces) push(p);
  return out;
};

describe('untilMarker', () => {
  it('passes text on as it comes, up to the marker and nothing after it', () => {
    assert.deepEqual(run('__M1__', ['first\n', 'second\n__M1__ 0\n', 'stderr\n']), ['first\n', 'second\n']);
  });

  it('holds back a tail that may start the marker, and releases it when it does not', () => {
    assert.deepEqual(run('__M1__', ['a__', 'M1__ 0\n']), ['a']);
    assert.deepEqual(run('__M1__', ['a__M', 'x\n']), ['a', '__Mx\n']);
    // The whole line before the marker, its newline included, goes out at once.
    assert.deepEqual(run('__M1__', ['line\n']), ['line\n']);
  });

  it('a marker split over many pieces, and output that is only the marker', () => {
    assert.deepEqual(run('__M1__', ['x', '_', '_', 'M', '1', '_', '_', ' 3\n']), ['x']);
    assert.deepEqual(run('__M1__', ['__M1__ 0\n']), []);
  });
});
