/**
 * Ctrl-C torture against the real engine: `cairn services up` is sent
 * SIGINT at seeded random moments across its whole run (image build,
 * network, create, ping, postStartInit), after a change that gives it work
 * (everything removed, an env change, a changed build directory, stopped
 * containers), and `up` runs again. Every time the ensemble must converge:
 * all services running, each init done for the container that runs (the
 * token in the container is the one in the context, and the init record
 * names it), env built from the current context, and nothing orphaned (no
 * extra containers, no leftover build containers, one network, no mounts).
 * LIFE_TORTURE_SEED picks another seed; the test prints the one it used.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { isolateModuleCache, ok, tempDir } from './helpers.js';
import { FIXTURE_STORE, fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';
import { containersOf, containersRunning, networksOf, spawnServices } from './fixtures/services/life-support.js';

isolateModuleCache(after, 'cairn-services-torture-cache');

const NAME = 'life-tort';
/** Interrupts that must land while an up is under way (the brief: at least 20); rounds are capped. */
const INTERRUPTS = 20;
const MAX_ROUNDS = 32;
/** Below this, SIGINT lands while node is still loading (no command yet): covered, but not counted. */
const MIN_DELAY_MS = 300;
/**
 * Delays are drawn below this share of a run's time: most of a run is
 * spent starting node and winding down, and a run that finishes first is
 * a round without an interrupt.
 */
const SPAN_FACTOR = 0.7;
const SERVICES = ['base', 'web', 'worker'] as const;
const file = fixtureFile('torture.ts');
const seed = Number(process.env.LIFE_TORTURE_SEED ?? 1818);
let state: { dir: string; cleanup: () => void };
let build: string;
let marker: string;
let env: NodeJS.ProcessEnv;

/** mulberry32: a small seeded generator, so a failing run can be replayed. */
function random(s: number): () => number {
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const readJson = (name: string): Record<string, string> => {
  const f = path.join(state.dir, name);
  return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, string>) : {};
};

async function assertConverged(round: number): Promise<void> {
  const where = `round ${round} (seed ${seed})`;
  const ctx = readJson(`${NAME}.context.json`);
  const inits = readJson(`${NAME}.inits.json`);
  for (const s of SERVICES) {
    const c = await inspect(NAME, s);
    assert.equal(c?.State.Running, true, `${where}: ${s} runs`);
    const token = (await docker(['exec', `cairn.${NAME}.${s}`, 'cat', '/tmp/init-token'], { check: false })).stdout;
    assert.equal(token.trim(), ctx[`${s}_token`], `${where}: ${s}'s init ran for the running container`);
    assert.equal(inits[s], c?.Id, `${where}: the init record names ${s}'s running container`);
  }
  assert.ok((await inspect(NAME, 'web'))!.Config.Env.includes(`BASE=${ctx.base_token}`), `${where}: web's env`);
  assert.ok((await inspect(NAME, 'worker'))!.Config.Env.includes(`WEB=${ctx.web_token}`), `${where}: worker's env`);
  // Nothing orphaned: exactly the three containers, one network, no build leftovers, no mounts.
  assert.deepEqual([...(await containersOf(NAME)).keys()].sort(), SERVICES.map((s) => `cairn.${NAME}.${s}`).sort());
  assert.deepEqual(await networksOf(NAME), [`cairn.${NAME}`], where);
  assert.deepEqual(await containersRunning(marker), [], `${where}: no intermediate build container`);
  const mounts = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(FIXTURE_STORE) || l.includes(state.dir));
  assert.deepEqual(mounts, [], `${where}: nothing mounted`);
}

const secondsOf = (ms: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, Math.round(v / 1000)]));

/** What the interrupted up was doing: its last progress line before the SIGINT notice. */
function phaseOf(stderr: string): string {
  const lines = stderr.split('\n');
  const before = lines
    .slice(
      0,
      lines.findIndex((l) => l.startsWith('cairn: SIGINT')),
    )
    .reverse();
  const last = before.find((l) => l.trim() !== '') ?? '';
  if (/Step \d|docker build|images: /.test(last)) return 'image';
  if (/recreating/.test(last)) return 'remove';
  if (/creating a container|starting the stopped/.test(last)) return 'create/start+ping';
  if (/postStartInit/.test(last)) return 'init';
  if (/ready in/.test(last)) return 'between services';
  return last === '' ? 'before any step' : 'other';
}

before(async () => {
  const { tag } = await fixtureImage();
  await removeEnsemble(NAME);
  state = tempDir('life-tort');
  build = path.join(state.dir, 'web');
  marker = `life-tort-${process.pid}-${Date.now()}`;
  fs.mkdirSync(build);
  fs.writeFileSync(
    path.join(build, 'Dockerfile'),
    `ARG BASE_IMAGE\nFROM \${BASE_IMAGE}\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /copied # ${marker}\n` +
      'CMD ["sleep", "infinity"]\n',
  );
  fs.writeFileSync(path.join(build, 'msg.txt'), 'version 0\n');
  env = { SVC_ENSEMBLE: NAME, SVC_IMAGE: tag, LIFE_BUILD_DIR: build, LIFE_GREETING: 'g0' };
});
after(async () => {
  await removeEnsemble(NAME);
  await docker(['rmi', '-f', `cairn-build/${NAME}-web:latest`], { check: false });
  state?.cleanup();
});

describe('services up: Ctrl-C at random moments', () => {
  it(`converges after each of ${INTERRUPTS} interrupts, with nothing orphaned`, async () => {
    process.stderr.write(`# torture seed ${seed}\n`);
    const rand = random(seed);
    const up = (extra: NodeJS.ProcessEnv = {}) =>
      services(['up', file, '--state-dir', state.dir], { ...env, ...extra });
    const t0 = performance.now();
    ok(await up());
    // Interrupts fall anywhere in an up's run time: per kind of change, the span starts at the first
    // up's time and shrinks to the time of a run of that kind that finished before its interrupt.
    const span = [0, 1, 2, 3].map(() => SPAN_FACTOR * (performance.now() - t0));
    await assertConverged(0);
    const cut: Record<string, number> = {};
    const phases: Record<string, number> = {};
    const ms = { perturb: 0, interrupted: 0, again: 0, check: 0 };
    let lap = performance.now();
    const clock = (k: keyof typeof ms): void => {
      ms[k] += performance.now() - lap;
      lap = performance.now();
    };
    for (let round = 1; (cut['130'] ?? 0) < INTERRUPTS; round++) {
      assert.ok(round <= MAX_ROUNDS, `only ${cut['130'] ?? 0} interrupts landed in ${MAX_ROUNDS} rounds`);
      lap = performance.now();
      switch (round % 4) {
        case 0:
          // Everything gone behind cairn's back (quicker than a `stop --remove` through the CLI).
          await docker(['rm', '-f', ...SERVICES.map((x) => `cairn.${NAME}.${x}`)]);
          await docker(['network', 'rm', `cairn.${NAME}`]);
          break;
        case 1:
          env.LIFE_GREETING = `g${round}`;
          break;
        case 2:
          fs.writeFileSync(path.join(build, 'msg.txt'), `version ${round}\n`);
          break;
        case 3:
          await docker(['stop', '--time', '1', ...SERVICES.map((s) => `cairn.${NAME}.${s}`)]);
          break;
      }
      clock('perturb');
      const delay = MIN_DELAY_MS + Math.floor(rand() * Math.max(0, span[round % 4]! - MIN_DELAY_MS));
      const started = performance.now();
      const p = spawnServices(['up', file, '--state-dir', state.dir], env);
      await new Promise((r) => setTimeout(r, delay));
      try {
        process.kill(p.pid, 'SIGINT');
      } catch {
        // already exited: the up finished before the interrupt
      }
      const r = await p.done;
      // 130: interrupted and wound down; 0: done before the signal; killed by SIGINT: the signal came
      // while node was still loading, before the command (and its handler) began, so nothing was done.
      const how = r.signal === 'SIGINT' ? 'early' : String(r.code);
      assert.ok(['130', '0', 'early'].includes(how), `round ${round}: up exited ${r.code} ${r.signal}: ${r.stderr}`);
      cut[how] = (cut[how] ?? 0) + 1;
      if (how === '0') span[round % 4] = Math.min(span[round % 4]!, SPAN_FACTOR * (performance.now() - started));
      if (r.code === 130) {
        assert.match(r.stderr, /E_INTERRUPTED/);
        phases[phaseOf(r.stderr)] = (phases[phaseOf(r.stderr)] ?? 0) + 1;
      }
      clock('interrupted');
      const again = await up();
      assert.equal(again.code, 0, `round ${round} (delay ${delay} ms): ${again.stdout}\n${again.stderr}`);
      clock('again');
      await assertConverged(round);
      clock('check');
    }
    process.stderr.write(
      `# torture: ${cut['130'] ?? 0} interrupted, ${cut['0'] ?? 0} finished first, ${cut.early ?? 0} before starting;` +
        ` last step before the interrupt: ${JSON.stringify(phases)};` +
        ` seconds: ${JSON.stringify(secondsOf(ms))}\n`,
    );
  });
});
