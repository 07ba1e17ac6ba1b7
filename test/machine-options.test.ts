/**
 * Machine step options and how `machine ls` shows a step, without a VM:
 * `cache: 0` (or '0s', or `--cache=0`) means "never reuse", so the step is
 * not saved and runs on every use with the steps after it; a negative cap is
 * refused; step args are shown on one short line with URL secrets masked.
 * test/machine-cli.test.ts runs the same on the tiny guest.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { machine, stage } from '../src/index.js';
import { parseDuration } from '../src/duration.js';
import { exec } from '../src/stages/machine-steps.js';
import { formatStepArgs, redactArgs } from '../src/stages/step-args-text.js';
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

describe('step args as machine ls shows them', () => {
  it('named values, then positional words; hashes shortened; long lines elided', () => {
    assert.equal(formatStepArgs({ cmd: 'echo hi' }), 'cmd="echo hi"');
    assert.equal(formatStepArgs({ args: ['a', 'b c'], debug: true }), 'debug=true a "b c"');
    assert.equal(
      formatStepArgs({ path: '/t/test.sh', sha256: 'ab'.repeat(32), args: ['hi'] }),
      'path=/t/test.sh sha256=abababababab… hi',
    );
    assert.equal(formatStepArgs({ n: { deep: [1] } }), 'n={"deep":[1]}');
    const long = formatStepArgs({ cmd: 'x'.repeat(200) });
    assert.equal(long.length, 60);
    assert.ok(long.endsWith('…'));
  });

  it('user info, query values and fragments of URLs are masked, anywhere in the args', () => {
    const args = { cmd: 'curl https://bob:hunter2@example.org/a?token=s3cret#frag', args: ['http://u:p@h/x'] };
    const shown = formatStepArgs(args, 1000);
    assert.doesNotMatch(shown, /hunter2|s3cret|frag|u:p/);
    assert.match(shown, /https:\/\/\*\*\*@example\.org\/a\?token=\*\*\*#\*\*\*/);
    assert.deepEqual(redactArgs(args), {
      cmd: 'curl https://***@example.org/a?token=***#***',
      args: ['http://***@h/x'],
    });
  });
});
