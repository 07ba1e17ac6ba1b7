/**
 * Machine step options and how `machine ls` shows a step, without a VM:
 * `cache: 0` (or '0s', or `--cache=0`) means "never reuse", so the step is
 * not saved and runs on every use with the steps after it; a negative cap is
 * refused.
 * test/machine-cli.test.ts runs the same on the tiny guest.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { machine, stage } from '../src/index.js';
import { parseDuration } from '../src/duration.js';
import { exec } from '../src/stages/machine-steps.js';
import { drefOf, isCode } from './helpers.js';

const base = stage({ name: 'base', config: {}, build: () => undefined });

describe('cache: 0', () => {
  it("'0' is a duration (zero) besides '0s'", () => {
    assert.equal(parseDuration('0'), 0);
    assert.equal(parseDuration('0s'), 0);
    assert.throws(() => parseDuration('00'), isCode('E_BAD_ARGUMENT'));
  });

  for (const cache of [0, '0s', '0']) {
    it(`{ cache: ${JSON.stringify(cache)} }: the step and the ones after it are not saved`, () => {
      const m = machine(base)
        .apply(exec, { cmd: 'echo a' })
        .apply(exec, { cmd: 'echo b' }, { cache })
        .apply(exec, { cmd: 'echo c' });
      assert.deepEqual(m.transientSteps, ['exec', 'exec'], 'b runs every time, and c builds on it');
      const saved = machine(base).apply(exec, { cmd: 'echo a' }).saved;
      assert.equal(drefOf(m.saved), drefOf(saved), 'the saved part ends with a');
    });
  }

  it('a positive cache still saves the step; a negative one is E_BAD_ARGUMENT', () => {
    assert.deepEqual(machine(base).apply(exec, { cmd: 'x' }, { cache: '1s' }).transientSteps, []);
    assert.throws(() => machine(base).apply(exec, { cmd: 'x' }, { cache: -1 }), isCode('E_BAD_ARGUMENT'));
  });
});
