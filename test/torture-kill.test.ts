/**
 * kill -9 torture: realizes of pipeline.ts (five stages, two of them with
 * n: 2, small random outputs, builds sleeping 10-60 ms) are killed with
 * SIGKILL at a random moment between 0 and the duration of a full realize
 * (two thirds of them after Node's start-up, see delay()),
 * at least KILLS times, in two lanes at once on the same store. Rounds mix
 * forced rebuilds of existing derivations (merge paths), brand-new
 * derivations (a fresh $TORTURE_SALT: drv.json writes, first commits) and
 * plain realizes that finish half-built work.
 *
 * After every round (two kills): no partial realization is visible (every
 * d/STAR/r/STAR has meta.json naming itself and out/), and `store verify`
 * reports nothing but 'extra' entries (a kill between the rename that
 * publishes a realization and the index insert leaves a complete, intact
 * realization the index does not list yet; see docs/reliability.md). At
 * the end a normal realize completes, STORE/tmp is empty, and after
 * `verify --repair` (which indexes the extras) verify is clean; the next
 * realize builds only what depends on a newly indexed extra that its
 * matcher now chooses, and the one after it nothing.
 *
 * Where each kill landed is read from outside the store: the build trace
 * (fixtures/torture/_trace.ts) and the killed process's leftovers in
 * STORE/tmp, looked at the moment it died.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, cairnBin, lastLine, repoRoot, tempDir } from './helpers.js';
import { ownerId } from '../src/store/fsutil.js';
import {
  CHAIN,
  PIPELINE,
  assertNoPartialRealizations,
  assertVerifyClean,
  lines,
  ok,
  realizeJson,
  rrefsOnDisk,
  rzDir,
  tmpEntries,
  verify,
} from './fixtures/torture/support.js';

const KILLS = 200;
const MAX_ROUNDS = 400;

const cache = tempDir('cairn-kill-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

type Phase = 'startup' | 'build' | 'seal' | 'commit' | 'after-commit' | 'finished';

interface Run {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  delay: number;
  phase: Phase;
  ms: number;
  stderr: string;
}

/** A realize that was not killed must have succeeded, even next to killed ones. */
function assertFinishedOk(r: Run): void {
  if (r.signal !== 'SIGKILL')
    assert.equal(
      r.code,
      0,
      `an unkilled realize failed (exit ${r.code}, signal ${r.signal}): ${r.stderr.slice(0, 1500)}`,
    );
}

function startRealize(
  store: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  killAfterMs: number | null,
  classify: (pid: number) => Phase,
): Promise<Run> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [cairnBin, '--store', store, 'realize', PIPELINE, '-q', ...args], {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    let timer: NodeJS.Timeout | undefined;
    if (killAfterMs !== null) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      // Look at the leftovers at once, before another process sweeps them.
      const phase: Phase = signal === 'SIGKILL' ? classify(child.pid!) : 'finished';
      resolve({ pid: child.pid!, code, signal, delay: killAfterMs ?? 0, phase, ms: Date.now() - t0, stderr });
    });
  });
}

describe('kill -9 torture', { timeout: 1_500_000 }, () => {
  it(
    `at least ${KILLS} kill -9s at random moments leave no partial realization, verify clean but for 'extra', and ` +
      `an empty STORE/tmp after the next realize`,
    async () => {
      const t = tempDir('cairn-kill');
      const started = Date.now();
      try {
        const store = path.join(t.dir, 'store');
        const trace = path.join(t.dir, 'trace');
        let salt = 0;
        const envFor = (s: number): NodeJS.ProcessEnv => ({
          TORTURE_TRACE: trace,
          TORTURE_SLEEP_MS: '10-60',
          TORTURE_SALT: `s${s}`,
        });

        const classify = (pid: number): Phase => {
          const mine = lines(trace).filter((l) => l.split(' ')[1] === String(pid));
          const starts = mine.filter((l) => l.startsWith('start ')).length;
          const ends = mine.filter((l) => l.startsWith('end ')).length;
          if (starts > ends) return 'build';
          let leftovers: string[] = [];
          try {
            leftovers = fs
              .readdirSync(path.join(store, 'tmp'))
              .filter((n) => n.startsWith(`${pid}.`) && n.includes('-build-'));
          } catch {
            /* none */
          }
          let sawOutput = false;
          for (const dir of leftovers) {
            const abs = path.join(store, 'tmp', dir);
            let entries: string[] = [];
            try {
              entries = fs.readdirSync(abs);
            } catch {
              continue;
            }
            // Staging directories: rz-0, rz-1, ... for n > 1; with one output
            // the build directory may be the staging directory itself.
            const staging = entries.some((n) => n.startsWith('rz-'))
              ? entries.filter((n) => n.startsWith('rz-')).map((n) => path.join(abs, n))
              : [abs];
            for (const st of staging) {
              if (fs.existsSync(path.join(st, 'meta.json'))) return 'commit';
              try {
                if (fs.readdirSync(path.join(st, 'out')).length > 0) sawOutput = true;
              } catch {
                /* swept meanwhile */
              }
            }
          }
          // A build directory whose outputs are still empty: killed while setting up a build.
          if (leftovers.length > 0) return sawOutput ? 'seal' : 'build';
          return starts > 0 ? 'after-commit' : 'startup';
        };

        // Calibrate, with two lanes as below: how long does an unkilled forced
        // realize take here, now, and when does its first build start?
        const calib: number[] = [];
        const firstBuild: number[] = [];
        for (let i = 0; i < 3; i++) {
          const spawnedAt = Date.now();
          const rs = await Promise.all([0, 1].map(() => startRealize(store, ['-f'], envFor(salt), null, classify)));
          for (const r of rs) {
            assertFinishedOk(r);
            calib.push(r.ms);
            const starts = lines(trace)
              .filter((l) => l.startsWith(`start ${r.pid} `))
              .map((l) => Number(l.split(' ')[3]));
            if (starts.length > 0) firstBuild.push(Math.min(...starts) - spawnedAt);
          }
        }
        // The median: a single run slowed down by other work on the machine
        // would make most kills come too late.
        const full = [...calib].sort((a, b) => a - b)[Math.floor(calib.length / 2)]!;
        const startup = firstBuild.length > 0 ? Math.min(...firstBuild) : 0;
        // A third of the kills anywhere in [0, full]; the rest in [0.8 startup,
        // full], so more of them land in builds, sealing and commits than in
        // Node's start-up.
        const delay = (): number =>
          Math.random() < 1 / 3 ? Math.random() * full : 0.8 * startup + Math.random() * (full - 0.8 * startup);

        const phases: Record<Phase, number> = {
          startup: 0,
          build: 0,
          seal: 0,
          commit: 0,
          'after-commit': 0,
          finished: 0,
        };
        const extras = new Set<string>();
        const writableDirs = new Set<string>();
        let kills = 0;
        let rounds = 0;
        let verifies = 0;
        let roundsWithExtras = 0;
        /** Anything verify reported besides 'extra': ref, kind and detail, with the round it was first seen in. */
        const violations = new Map<string, string>();
        const modes: Record<string, number> = { force: 0, fresh: 0, plain: 0 };
        const summary = (): Record<string, unknown> => ({
          kills,
          rounds,
          fullRealizeMs: full,
          firstBuildMs: startup,
          calibrationMs: calib,
          phases,
          modes,
          verifies,
          roundsWithExtras,
          extras: extras.size,
          violations: violations.size,
          writableRealizationDirs: writableDirs.size,
          realizations: rrefsOnDisk(store).length,
          builds: lines(trace).filter((l) => l.startsWith('start ')).length,
          wallSeconds: Math.round((Date.now() - started) / 1000),
        });
        const report = (): void => {
          const s = summary();
          console.log(`kill torture: ${JSON.stringify(s)}`);
          for (const [what, where] of violations) console.log(`  verify problem: ${what} (${where})`);
          if (process.env.TORTURE_REPORT)
            fs.writeFileSync(
              process.env.TORTURE_REPORT,
              JSON.stringify({ ...s, problems: [...violations] }, null, 2) + '\n',
            );
        };
        try {
          while (kills < KILLS && rounds < MAX_ROUNDS) {
            rounds++;
            // Mostly forced rebuilds; sometimes brand-new derivations; sometimes a plain realize.
            const roll = Math.random();
            const mode = roll < 0.2 ? 'fresh' : roll < 0.9 ? 'force' : 'plain';
            modes[mode]!++;
            if (mode === 'fresh') salt++;
            const lane = (): string[] => [
              ...(mode === 'force' ? ['-f'] : []),
              ...(Math.random() < 0.3 ? ['-j', '1'] : []),
            ];
            const runs = await Promise.all(
              [0, 1].map(() => startRealize(store, lane(), envFor(salt), delay(), classify)),
            );
            for (const r of runs) {
              assertFinishedOk(r);
              phases[r.phase]++;
              if (r.signal === 'SIGKILL') kills++;
            }
            // No partial realization is ever visible.
            const seen = assertNoPartialRealizations(store);
            for (const w of seen.writableDirs) writableDirs.add(w);
            // verify: nothing modified or missing; 'extra' only (see the header).
            // Other problems are collected and asserted at the end, so one run
            // measures them all.
            const v = verify(store);
            verifies++;
            assert.equal(v.code, v.report.problems.length > 0 ? 1 : 0);
            for (const p of v.report.problems) {
              if (p.kind === 'extra') extras.add(p.ref);
              else {
                const key = `${p.kind} ${p.ref}: ${p.detail}`;
                if (!violations.has(key))
                  violations.set(
                    key,
                    `first seen after round ${rounds}, kills landed in: ${runs.map((r) => r.phase).join(', ')}`,
                  );
              }
            }
            if (v.report.problems.some((p) => p.kind === 'extra')) roundsWithExtras++;
          }
        } finally {
          report();
        }
        assert.ok(kills >= KILLS, `${kills} kills in ${rounds} rounds`);

        // A normal realize completes and leaves STORE/tmp empty.
        const final = cairn(store, ['realize', PIPELINE, '-q'], { env: envFor(salt) });
        ok(final, 'the realize after the torture');
        assert.match(lastLine(final.stdout), /-final$/);
        assert.deepEqual(tmpEntries(store), [], 'STORE/tmp is empty after a normal realize');
        assert.deepEqual([...violations.keys()], [], 'after every kill, verify reports nothing but extra realizations');
        const end = verify(store);
        assert.deepEqual(
          end.report.problems.filter((p) => p.kind !== 'extra'),
          [],
        );
        const repaired = verify(store, { repair: true });
        assert.equal(repaired.code, 0);
        assert.deepEqual(repaired.report.quarantined, [], 'nothing had to be quarantined');
        const clean = verify(store);
        assert.deepEqual(clean.report.problems, [], 'verify is clean after --repair indexed the extras');
        assert.equal(clean.code, 0);
        // Indexed, the extras are candidates like any other realization: an
        // extra fan output newer than every indexed one becomes latest()'s
        // choice (an extra noise output older than the chosen ones, some(2)'s),
        // and what depends on it is built once for that new context. Nothing
        // else may be built.
        const indexed = new Set(end.report.problems.filter((p) => p.kind === 'extra').map((p) => p.ref));
        const next = realizeJson(store, PIPELINE, [], envFor(salt));
        const built = new Set<string>();
        for (const p of next.plan) {
          if (p.action === 'cached') continue;
          for (const r of p.rrefs) {
            const meta = JSON.parse(fs.readFileSync(path.join(rzDir(store, r), 'meta.json'), 'utf8')) as {
              context: Record<string, string[]>;
            };
            const inputs = Object.values(meta.context).flat();
            assert.ok(
              inputs.some((i) => indexed.has(i) || built.has(i)),
              `${p.name} was built again after --repair although none of ` +
                `its inputs was newly indexed: ${inputs.join(', ')}`,
            );
          }
          for (const r of p.rrefs) built.add(r);
        }
        console.log(
          `kill torture: after --repair indexed ${indexed.size} extra(s), ` +
            `the next realize built ${next.builds} stage(s): ${
              next.plan
                .filter((p) => p.action !== 'cached')
                .map((p) => p.name)
                .join(', ') || 'none'
            }`,
        );
        assertVerifyClean(store, 'verify after the realize that follows --repair');
        assert.equal(realizeJson(store, PIPELINE, [], envFor(salt)).builds, 0, 'and then the pipeline is fully cached');
        assertNoPartialRealizations(store);
      } finally {
        t.cleanup();
      }
    },
  );
});

/**
 * The states a kill -9 leaves at the narrow points of the commit protocol,
 * made directly (the random kills above hit them only now and then), and
 * what the next realize and `verify --repair` make of them.
 */
describe('states a kill -9 leaves behind, made directly', { timeout: 300_000 }, () => {
  /** The pid of a process that has exited (a dead owner). */
  function deadPid(): number {
    const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    return Number(r.stdout);
  }

  it("a dead owner's build directory in STORE/tmp is swept by the next realize", () => {
    const t = tempDir('cairn-kill-state');
    try {
      const store = path.join(t.dir, 'store');
      ok(cairn(store, ['realize', CHAIN, '-q']));
      const leftover = path.join(store, 'tmp', `${deadPid()}.12345-build-c-0123456789ab`);
      fs.mkdirSync(path.join(leftover, 'rz-0', 'out'), { recursive: true });
      fs.writeFileSync(path.join(leftover, 'rz-0', 'out', 'c.txt'), 'half\n');
      fs.chmodSync(path.join(leftover, 'rz-0', 'out'), 0o555);
      ok(cairn(store, ['realize', CHAIN, '-q']));
      assert.deepEqual(tmpEntries(store), []);
    } finally {
      t.cleanup();
    }
  });

  it(
    'the store.json staging file of a process killed while creating the store ' +
      "is swept by the next realize; a live creator's is left alone",
    () => {
      // Store.open writes tmp/<owner>-store-json-<hex>, links it to
      // store.json, then unlinks it: a kill in between leaves it in STORE/tmp.
      // It is swept like any other temporary of a dead owner; so is the
      // store-json-<pid>-<hex> that Cairn before 6e3dcb3 left in that case.
      const t = tempDir('cairn-kill-state');
      try {
        const store = path.join(t.dir, 'store');
        ok(cairn(store, ['realize', CHAIN, '-q']));
        const marker = '{"cairn-store":true,"layout":1}\n';
        fs.writeFileSync(path.join(store, 'tmp', `${deadPid()}.12345-store-json-0a1b2c3d`), marker, { mode: 0o444 });
        fs.writeFileSync(path.join(store, 'tmp', `store-json-${deadPid()}-4e5f6a7b`), marker, { mode: 0o444 });
        // This test process stands in for a process that is creating the store right now.
        const live = `${ownerId()}-store-json-8c9d0e1f`;
        fs.writeFileSync(path.join(store, 'tmp', live), marker, { mode: 0o444 });
        ok(cairn(store, ['realize', CHAIN, '-q']));
        ok(cairn(store, ['store', 'gc']));
        assert.deepEqual(
          tmpEntries(store),
          [live],
          "after a realize and a gc, only the live owner's file is left in STORE/tmp",
        );
        fs.unlinkSync(path.join(store, 'tmp', live));
      } finally {
        t.cleanup();
      }
    },
  );

  /**
   * A store where stage `a` is realized and the target's derivation directory
   * exists without drv.json, as a kill between creating d/DREF/r and renaming
   * drv.json in used to leave it.
   */
  const withBareDrvDir = (dir: string): { store: string; c: string } => {
    const store = path.join(dir, 'store');
    ok(cairn(store, ['realize', CHAIN, '-q', '-s', 'a']));
    const c = ok(cairn(store, ['instantiate', CHAIN]))
      .stdout.trim()
      .split('\n')
      .pop()!;
    fs.mkdirSync(path.join(store, 'd', c, 'r'), { recursive: true });
    return { store, c };
  };

  it(
    'a derivation directory without drv.json (killed between creating d/DREF/r and ' +
      'renaming drv.json in): the next realize of the stage completes it',
    () => {
      const t = tempDir('cairn-kill-state');
      try {
        const { store, c } = withBareDrvDir(t.dir);
        ok(cairn(store, ['realize', CHAIN, '-q']));
        assert.ok(fs.existsSync(path.join(store, 'd', c, 'drv.json')));
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );

  it('a derivation directory without drv.json (same state): verify --repair leaves a clean store', () => {
    const t = tempDir('cairn-kill-state');
    try {
      const { store } = withBareDrvDir(t.dir);
      verify(store, { repair: true });
      assertVerifyClean(store, 'verify after --repair');
    } finally {
      t.cleanup();
    }
  });
});
