/**
 * Many processes realizing the same closure at once build each stage once;
 * a build whose process was killed -9 is taken over and its leftovers swept.
 * Builds are counted in files OUTSIDE the store (see fixtures/_note.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import {
  cairn,
  cairnAsync,
  cairnBin,
  lastLine,
  repoRoot,
  tempDir,
  type CliResult,
  isolateModuleCache,
  tmpEntries,
} from './helpers.js';

const fixture = (name: string): string => path.join(repoRoot, 'test', 'fixtures', name);
const PROCS = 8;

isolateModuleCache(after, 'cairn-conc-cache');

function lines(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function realizationsOf(store: string, name: string): string[] {
  return fs
    .readdirSync(path.join(store, 'd'))
    .filter((d) => d.endsWith(`-${name}`))
    .flatMap((d) => {
      try {
        return fs.readdirSync(path.join(store, 'd', d, 'r')).map((h) => `${h}-${d}`);
      } catch {
        return [];
      }
    });
}

function assertAllOk(results: CliResult[]): void {
  results.forEach((r, i) => {
    assert.equal(r.code, 0, `process ${i} exited ${r.code}\nstderr: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /error/i, `process ${i} reported an error: ${r.stderr}`);
  });
}

describe('concurrent realizes', { timeout: 180_000 }, () => {
  it(`${PROCS} processes realizing the same slow closure build each stage exactly once`, async () => {
    const t = tempDir('cairn-conc');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const env = { CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '300' };
      const file = fixture('diamond.ts');
      const results = await Promise.all(
        Array.from({ length: PROCS }, () => cairnAsync(store, ['realize', file], { env })),
      );
      assertAllOk(results);
      const outputs = results.map((r) => lastLine(r.stdout));
      assert.equal(new Set(outputs).size, 1, `all processes print the same RRefs: ${outputs.join(', ')}`);
      assert.match(outputs[0]!, /-join$/);
      for (const name of ['src', 'left', 'right', 'join']) {
        assert.equal(
          lines(path.join(counter, name)).length,
          1,
          `${name} was built exactly once across ${PROCS} processes`,
        );
        assert.equal(realizationsOf(store, name).length, 1, `${name} has exactly one realization`);
      }
      assert.deepEqual(tmpEntries(store), [], 'STORE/tmp is empty afterwards');
      const total = cairn(store, ['catref', outputs[0]!, 'total.txt']);
      assert.equal(total.stdout, `${2 * (1 + 2 + 3 + 4) + (1 + 2 + 3 + 4 + 40)}\n`);

      // And a later run in the same store is fully cached.
      const again = cairn(store, ['realize', file, '--json'], { env });
      assert.equal(again.code, 0, again.stderr);
      const j = JSON.parse(again.stdout) as { builds: number; plan: { action: string }[] };
      assert.equal(j.builds, 0);
      assert.ok(j.plan.every((p) => p.action === 'cached'));
    } finally {
      t.cleanup();
    }
  });

  it(`${PROCS} processes realizing a chain with -j 1 also build each stage once`, async () => {
    const t = tempDir('cairn-conc');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const env = { CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '300' };
      const results = await Promise.all(
        Array.from({ length: PROCS }, () =>
          cairnAsync(store, ['realize', fixture('chain.ts'), '-j', '1', '-q'], { env }),
        ),
      );
      assertAllOk(results);
      assert.equal(new Set(results.map((r) => lastLine(r.stdout))).size, 1);
      for (const name of ['a', 'b', 'c']) assert.equal(lines(path.join(counter, name)).length, 1, name);
      assert.deepEqual(tmpEntries(store), []);
    } finally {
      t.cleanup();
    }
  });

  it(`a non-deterministic stage with n: 1 and some(3): ${PROCS} processes run exactly 3 builds in all`, async () => {
    const t = tempDir('cairn-conc');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const env = { CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '100' };
      const results = await Promise.all(
        Array.from({ length: PROCS }, () => cairnAsync(store, ['realize', fixture('nondet.ts'), '--json'], { env })),
      );
      assertAllOk(results);
      const parsed = results.map(
        (r) =>
          JSON.parse(r.stdout) as {
            builds: number;
            plan: { name: string; rrefs: string[] }[];
            targets: { rrefs: string[] }[];
          },
      );
      assert.equal(lines(path.join(counter, 'roll')).length, 3, 'exactly 3 builds of roll across all processes');
      assert.equal(lines(path.join(counter, 'tally')).length, 1, 'tally built once');
      assert.equal(
        parsed.reduce((a, j) => a + j.builds, 0),
        4,
        'the processes report 3 + 1 build runs between them',
      );
      const rolls = realizationsOf(store, 'roll');
      assert.equal(rolls.length, 3, '3 distinct realizations of roll');
      const chosen = parsed.map((j) => j.plan.find((p) => p.name === 'roll')!.rrefs);
      for (const c of chosen) assert.deepEqual(c, chosen[0], 'every process chose the same 3 rolls');
      assert.deepEqual([...chosen[0]!].sort(), [...rolls].sort());
      assert.equal(new Set(parsed.map((j) => j.targets[0]!.rrefs[0])).size, 1);
      const tally = cairn(store, ['catref', parsed[0]!.targets[0]!.rrefs[0]!, 'tally.txt']).stdout.split('\n');
      assert.equal(tally[0], '3', 'tally saw the 3 chosen rolls');
      assert.deepEqual(tmpEntries(store), []);

      // More processes later build nothing more.
      const more = await Promise.all(
        Array.from({ length: 4 }, () => cairnAsync(store, ['realize', fixture('nondet.ts'), '-q'], { env })),
      );
      assertAllOk(more);
      assert.equal(lines(path.join(counter, 'roll')).length, 3);
      assert.equal(realizationsOf(store, 'roll').length, 3);
    } finally {
      t.cleanup();
    }
  });
});

describe('stale lock takeover', { timeout: 180_000 }, () => {
  it('a realize killed with SIGKILL mid-build is taken over, and its temp dir swept', async () => {
    const t = tempDir('cairn-stale');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const started = path.join(counter, 'a');
      const file = fixture('chain.ts');

      // A build that would take a minute; it is killed long before that.
      const child = spawn(process.execPath, [cairnBin, '--store', store, 'realize', file, '--stage', 'a'], {
        cwd: repoRoot,
        env: { ...process.env, CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '60000' },
        stdio: 'ignore',
      });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
        child.on('exit', (code, signal) => resolve({ code, signal })),
      );
      try {
        // Wait (bounded, as a hang guard) until the build has started.
        for (let i = 0; i < 600 && lines(started).length === 0; i++) await sleep(50);
        assert.equal(lines(started).length, 1, 'the first build started');
        assert.equal(lines(started)[0], String(child.pid));
        const leftovers = tmpEntries(store).filter((n) => n.startsWith(`${child.pid}.`));
        assert.ok(leftovers.length >= 1, `the running build has a temp dir: ${tmpEntries(store).join(', ')}`);
      } finally {
        child.kill('SIGKILL');
      }
      const end = await exited;
      assert.equal(end.signal, 'SIGKILL');
      assert.equal(realizationsOf(store, 'a').length, 0, 'the killed build stored nothing');

      // The new realize must not wait for the dead holder; the kill below is
      // a hang guard only, not a timing assertion.
      const next = spawn(process.execPath, [cairnBin, '--store', store, 'realize', file, '--stage', 'a'], {
        cwd: repoRoot,
        env: { ...process.env, CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '0' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      next.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
      });
      next.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr += d;
      });
      const guard = setTimeout(() => next.kill('SIGKILL'), 120_000);
      const code = await new Promise<number | null>((resolve) => next.on('close', (c) => resolve(c)));
      clearTimeout(guard);
      assert.equal(code, 0, `the second realize completes: ${stderr}`);
      assert.doesNotMatch(stderr, /error/i);
      const rref = lastLine(stdout);
      assert.match(rref, /-a$/);
      assert.equal(lines(started).length, 2, 'the stage was built again by the new process');
      assert.deepEqual(realizationsOf(store, 'a'), [rref]);
      assert.deepEqual(tmpEntries(store), [], "the dead process's temp dir was swept");
      assert.equal(cairn(store, ['catref', rref, 'a.txt']).stdout, 'alpha\n');
    } finally {
      t.cleanup();
    }
  });

  it(`${PROCS} processes starting together all sweep a killed build's big temp tree without crashing`, async () => {
    const t = tempDir('cairn-stale');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const file = fixture('litter.ts');
      const child = spawn(process.execPath, [cairnBin, '--store', store, 'realize', file], {
        cwd: repoRoot,
        env: { ...process.env, CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '60000', CAIRN_TEST_LITTER: '4000' },
        stdio: 'ignore',
      });
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      try {
        for (let i = 0; i < 1200 && lines(path.join(counter, 'litter')).length === 0; i++) await sleep(50);
        assert.equal(lines(path.join(counter, 'litter')).length, 1, 'the first build started');
      } finally {
        child.kill('SIGKILL');
      }
      await exited;
      assert.ok(tmpEntries(store).length >= 1, 'the killed build left its temp dir behind');

      const results = await Promise.all(
        Array.from({ length: PROCS }, () =>
          cairnAsync(store, ['realize', file, '-q'], { env: { CAIRN_TEST_COUNTER: counter } }),
        ),
      );
      assertAllOk(results);
      assert.equal(new Set(results.map((r) => lastLine(r.stdout))).size, 1);
      assert.equal(lines(path.join(counter, 'litter')).length, 2, 'built once more, by one of the processes');
      assert.deepEqual(tmpEntries(store), []);
    } finally {
      t.cleanup();
    }
  });

  it('a build lock held by a killed process does not block the rest of the graph', async () => {
    const t = tempDir('cairn-stale');
    try {
      const store = path.join(t.dir, 'store');
      const counter = path.join(t.dir, 'counter');
      const file = fixture('diamond.ts');
      // Build src normally, then kill a process while it builds left/right.
      const first = cairn(store, ['realize', file, '--stage', 'src', '-q'], { env: { CAIRN_TEST_COUNTER: counter } });
      assert.equal(first.code, 0, first.stderr);
      const child = spawn(process.execPath, [cairnBin, '--store', store, 'realize', file], {
        cwd: repoRoot,
        env: { ...process.env, CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '60000' },
        stdio: 'ignore',
      });
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      try {
        for (
          let i = 0;
          i < 600 &&
          (lines(path.join(counter, 'left')).length === 0 || lines(path.join(counter, 'right')).length === 0);
          i++
        )
          await sleep(50);
        assert.equal(lines(path.join(counter, 'left')).length, 1);
        assert.equal(lines(path.join(counter, 'right')).length, 1);
      } finally {
        child.kill('SIGKILL');
      }
      await exited;

      const results = await Promise.all(
        Array.from({ length: 4 }, () =>
          cairnAsync(store, ['realize', file, '-q'], {
            env: { CAIRN_TEST_COUNTER: counter, CAIRN_TEST_SLEEP_MS: '200' },
          }),
        ),
      );
      assertAllOk(results);
      assert.equal(new Set(results.map((r) => lastLine(r.stdout))).size, 1);
      assert.equal(lines(path.join(counter, 'src')).length, 1);
      assert.equal(lines(path.join(counter, 'left')).length, 2, 'left: the killed attempt and one rebuild');
      assert.equal(lines(path.join(counter, 'right')).length, 2, 'right: the killed attempt and one rebuild');
      assert.equal(lines(path.join(counter, 'join')).length, 1);
      assert.deepEqual(tmpEntries(store), []);
    } finally {
      t.cleanup();
    }
  });
});

describe('a new store opened by several processes at once', { timeout: 60_000 }, () => {
  it(
    "waits while another process holds the new index's write lock, " + 'instead of failing with "database is locked"',
    async () => {
      const t = tempDir('cairn-new-store');
      try {
        const store = path.join(t.dir, 'store');
        fs.mkdirSync(store);
        // A second process in the middle of creating the index (rollback mode, write lock held for 1.5 s):
        // SQLite refuses the switch to WAL at once rather than waiting for it.
        const holder = spawn(
          process.execPath,
          [
            '-e',
            `
        const Database = require(${JSON.stringify(path.join(repoRoot, 'node_modules', 'better-sqlite3'))});
        const db = new Database(${JSON.stringify(path.join(store, 'index.sqlite'))});
        db.exec('BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS holder (x);');
        process.stdout.write('held\\n');
        setTimeout(() => { db.exec('COMMIT'); db.close(); }, 1500);
      `,
          ],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        const closed = new Promise((resolve) => holder.on('close', resolve));
        await new Promise((resolve) => holder.stdout.once('data', resolve));
        const r = await cairnAsync(store, ['du']);
        assert.equal(r.code, 0, r.stderr);
        await closed;
      } finally {
        t.cleanup();
      }
    },
  );
});
