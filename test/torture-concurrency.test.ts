/**
 * Sixteen processes realize one closure of slow, non-deterministic builds
 * at once (fixtures/torture/slow.ts). Builds are counted outside the store:
 * each must run exactly as often as the matchers require, every process
 * must succeed and print the same target RRef, and nothing temporary may be
 * left: no STORE/tmp entries, no lock rows, no temp roots.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairnAsync, lastLine, tempDir, type CliResult } from './helpers.js';
import {
  TORTURE,
  assertVerifyClean,
  leftoverRows,
  lines,
  outDir,
  rrefsOf,
  tmpEntries,
} from './fixtures/torture/support.js';

const PROCS = 16;
const SLOW = path.join(TORTURE, 'slow.ts');

const cache = tempDir('cairn-conc16-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

function assertAllOk(results: CliResult[]): void {
  results.forEach((r, i) => {
    assert.equal(r.code, 0, `process ${i} exited ${r.code}\nstderr: ${r.stderr.slice(0, 1500)}`);
    assert.doesNotMatch(r.stderr, /error/i, `process ${i} reported an error: ${r.stderr.slice(0, 1500)}`);
  });
}

/** Lock rows and temp roots left in the index: none once every process has exited. */

async function realizeAll(
  store: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ results: CliResult[]; ms: number }> {
  const t0 = Date.now();
  const results = await Promise.all(
    Array.from({ length: PROCS }, () => cairnAsync(store, ['realize', SLOW, ...args], { env })),
  );
  return { results, ms: Date.now() - t0 };
}

describe(`${PROCS} concurrent realizes of slow non-deterministic builds`, { timeout: 600_000 }, () => {
  it(
    `some(3) with n: 1 is built exactly 3 times and its dependant once, across ${PROCS}` +
      ` processes; all print the same RRef; nothing is left behind`,
    async () => {
      const t = tempDir('cairn-conc16');
      try {
        const store = path.join(t.dir, 'store');
        const counter = path.join(t.dir, 'counter');
        const env = { TORTURE_COUNTER: counter, TORTURE_SLEEP_MS: '200' };
        const { results, ms } = await realizeAll(store, [], env);
        assertAllOk(results);
        const outputs = results.map((r) => lastLine(r.stdout));
        assert.equal(
          new Set(outputs).size,
          1,
          `all ${PROCS} print the same target RRef: ${[...new Set(outputs)].join(', ')}`,
        );
        assert.match(outputs[0]!, /^[0-9a-z]{32}-[0-9a-z]{32}-sum$/);
        const diceBuilds = lines(path.join(counter, 'dice')).length;
        const sumBuilds = lines(path.join(counter, 'sum')).length;
        console.log(
          `${PROCS} processes: dice built ${diceBuilds}x, sum built ${sumBuilds}x, ${(ms / 1000).toFixed(1)}s`,
        );
        assert.equal(diceBuilds, 3, 'some(3), n: 1: exactly 3 builds in total');
        assert.equal(sumBuilds, 1, 'the dependant: exactly 1 build');
        assert.equal(rrefsOf(store, 'dice').length, 3);
        assert.equal(rrefsOf(store, 'sum').length, 1);
        assert.deepEqual(tmpEntries(store), [], 'no leftover temporary directories in STORE/tmp');
        assert.deepEqual(leftoverRows(store), { locks: 0, tempRoots: 0 }, 'no lock rows or temp roots left');
        // sum was built from the three chosen dice.
        const dice = rrefsOf(store, 'dice').map((r) =>
          Number(fs.readFileSync(path.join(outDir(store, r), 'roll.txt'), 'utf8').split(' ')[0]),
        );
        const [count, total] = fs.readFileSync(path.join(outDir(store, outputs[0]!), 'sum.txt'), 'utf8').split(' ');
        assert.equal(Number(count), 3);
        assert.equal(
          Number(total),
          dice.reduce((a, b) => a + b, 0),
        );
        assertVerifyClean(store);

        // Again: everything is cached, nothing is built, the same RRef.
        const again = await realizeAll(store, [], env);
        assertAllOk(again.results);
        assert.deepEqual([...new Set(again.results.map((r) => lastLine(r.stdout)))], [outputs[0]]);
        assert.equal(lines(path.join(counter, 'dice')).length, 3);
        assert.equal(lines(path.join(counter, 'sum')).length, 1);
        assert.deepEqual(tmpEntries(store), []);
      } finally {
        t.cleanup();
      }
    },
  );

  it(
    `some(5) with n: 2 is built exactly ceil(5/2) = 3 times (6 ` + `realizations) across ${PROCS} processes with -j 1`,
    async () => {
      const t = tempDir('cairn-conc16');
      try {
        const store = path.join(t.dir, 'store');
        const counter = path.join(t.dir, 'counter');
        const env = { TORTURE_COUNTER: counter, TORTURE_SLEEP_MS: '200' };
        const { results, ms } = await realizeAll(store, ['-s', 'pairSum', '-j', '1'], env);
        assertAllOk(results);
        const outputs = results.map((r) => lastLine(r.stdout));
        assert.equal(new Set(outputs).size, 1, `all print the same RRef: ${[...new Set(outputs)].join(', ')}`);
        const pairBuilds = lines(path.join(counter, 'pairs')).length;
        console.log(
          `${PROCS} processes: pairs built ${pairBuilds}x, pairSum built ` +
            `${lines(path.join(counter, 'pairSum')).length}x, ${(ms / 1000).toFixed(1)}s`,
        );
        assert.equal(pairBuilds, 3);
        assert.equal(lines(path.join(counter, 'pairSum')).length, 1);
        assert.equal(rrefsOf(store, 'pairs').length, 6);
        assert.equal(rrefsOf(store, 'pairSum').length, 1);
        assert.equal(
          fs.readFileSync(path.join(outDir(store, outputs[0]!), 'sum.txt'), 'utf8').split(' ')[0],
          '5',
          'pairSum saw the 5 chosen pairs',
        );
        assert.deepEqual(tmpEntries(store), []);
        assert.deepEqual(leftoverRows(store), { locks: 0, tempRoots: 0 });
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );
});
