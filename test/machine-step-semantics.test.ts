/**
 * fingertip's step semantics on the tiny guest, from the CLI as a user runs
 * it and through the TS API (issue 17, bugs 1, 2, 4 and 5):
 * - a transient step's effects are thrown away; the next step builds on the
 *   parent state and is saved and cached like any other;
 * - transient-when-last: `script.run` reruns when it is the last step unless
 *   `--cache` is given, and is kept when another step follows; a step module
 *   can declare that default, and `--transient=...` says it per step;
 * - a user step module's own code (module-level constants, local imports)
 *   is part of the step's identity;
 * - piped `+ shell` streams its output, and Ctrl-C keeps what was printed
 *   and leaves no QEMU running.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalStore } from '../src/store/store.js';
import { machine, step, readDescription } from '../src/stages/machine.js';
import { exec } from '../src/stages/machine-steps.js';
import { tiny } from '../src/stages/bases/tiny.js';
import { storeIndex } from '../src/store/internals.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import {
  cairn,
  cairnBin,
  expectError,
  isCode,
  isolateModuleCache,
  lastLine,
  ok,
  repoRoot,
  tempDir,
  tmpEntries,
} from './helpers.js';

requireQemu();
isolateModuleCache(after);
const { dir, cleanup } = tempDir('cairn-machine-steps');
const storeDir = path.join(dir, 'store');
after(() => cleanup());

const built = (stderr: string, name: string): number =>
  stderr.split('\n').filter((l) => l.startsWith(`built ${name} `)).length;
const states = (): number => (JSON.parse(ok(cairn(storeDir, ['machine', 'ls', '--json'])).stdout) as unknown[]).length;

before(() => {
  ok(cairn(storeDir, ['machine', 'tiny'])); // the base, once for the file
});

describe('transient steps roll back (bug 1)', () => {
  it('CLI: the step after a transient one builds on the parent, is saved, and is cached', () => {
    const next = ['+', 'exec', 'ls /tmp/t /mnt/t 2>&1; echo "v=$V"; echo listed'];
    const transient = ['+', 'transient', 'exec', 'touch /tmp/t /mnt/t; export V=set; echo touched'];
    const r1 = ok(cairn(storeDir, ['machine', 'tiny', ...transient, ...next]));
    assert.match(r1.stderr, /exec \(transient\)> touched/, 'the transient step ran');
    assert.match(r1.stderr, /exec> ls: \/tmp\/t: No such file or directory/);
    assert.match(r1.stderr, /exec> ls: \/mnt\/t: No such file or directory/);
    assert.match(r1.stderr, /exec> v=\n/);
    assert.equal(built(r1.stderr, 'exec'), 1, 'the next step was built (and saved)');
    // It is the same state as the chain without the transient step: it was built on the parent.
    const plain = ok(cairn(storeDir, ['machine', 'tiny', ...next]));
    assert.equal(built(plain.stderr, 'exec'), 0);
    assert.equal(lastLine(plain.stdout), lastLine(r1.stdout));
    // Again: the transient step runs again, the next step is cached.
    const r2 = ok(cairn(storeDir, ['machine', 'tiny', ...transient, ...next]));
    assert.match(r2.stderr, /exec \(transient\)> touched/);
    assert.equal(built(r2.stderr, 'exec'), 0);
    assert.equal(lastLine(r2.stdout), lastLine(r1.stdout));
    // A failing transient step fails the command before the next step builds.
    const bad = cairn(storeDir, ['machine', 'tiny', '+', 'transient', 'exec', 'exit 5', '+', 'exec', 'echo never']);
    expectError(bad, 'E_MACHINE_EXEC', storeDir);
    assert.equal(built(bad.stderr, 'exec'), 0);
  });

  it('TS API: a transient step is thrown away before the next step; use() sees trailing ones', async () => {
    const store = LocalStore.open(storeDir);
    const base = machine(tiny()).apply(exec, { cmd: 'echo base > /mnt/b' });
    await base.realize({ store });
    const t = base.apply(exec, { cmd: 'echo t > /mnt/b; echo t > /tmp/t' }, { transient: true });
    const look = { cmd: 'cat /mnt/b; ls /tmp/t 2>/dev/null; echo end' };
    const after = t.apply(exec, look);
    assert.deepEqual(after.transientSteps, ['exec']);
    const count = storeIndex(store).all().length;
    const s = await after.realize({ store });
    assert.equal(storeIndex(store).all().length, count + 1, 'the step after the transient one is saved');
    assert.equal(s.rref, (await base.apply(exec, look).realize({ store })).rref, 'built on the parent');
    assert.equal((await after.use((vm) => vm.exec('cat /mnt/b'), { store })).stdout, 'base\n');
    // use() runs the trailing transient steps, in order, in its own session.
    const two = t.apply(exec, { cmd: 'echo two >> /mnt/b' }, { transient: true });
    assert.equal((await two.use((vm) => vm.exec('cat /mnt/b'), { store })).stdout, 't\ntwo\n');
    // A transient step's failure fails the run, also when a saved step follows it.
    await assert.rejects(
      base.apply(exec, { cmd: 'exit 9' }, { transient: true }).apply(exec, { cmd: 'true' }).realize({ store }),
      isCode('E_MACHINE_EXEC'),
    );
  });
});

describe('transient when last (bug 2)', () => {
  it('script.run reruns when last, unless --cache; kept when followed', () => {
    const script = path.join(dir, 'test.sh');
    fs.writeFileSync(script, 'echo "test ran $1"; echo ran > /mnt/ran\n');
    const n = states();
    const last = ['machine', 'tiny', '+', 'script.run', script, 'A'];
    const r1 = ok(cairn(storeDir, last));
    assert.match(r1.stderr, /script\.run \(transient\)> test ran A/);
    const r2 = ok(cairn(storeDir, last));
    assert.match(r2.stderr, /script\.run \(transient\)> test ran A/, 'the second run runs the test again');
    assert.equal(states(), n, 'nothing saved');
    // Followed by another step, it is kept: saved once, then cached.
    const followed = [...last, '+', 'exec', 'cat /mnt/ran'];
    const f1 = ok(cairn(storeDir, followed));
    assert.equal(built(f1.stderr, 'script.run'), 1);
    assert.match(f1.stderr, /exec> ran/);
    const f2 = ok(cairn(storeDir, followed));
    assert.equal(built(f2.stderr, 'script.run') + built(f2.stderr, 'exec'), 0);
    assert.doesNotMatch(f2.stderr, /test ran/);
    // --cache asks for a saved state even when last; --transient=never too (the state the followed run saved).
    for (const [flag, builds] of [
      ['--cache=1h', 1],
      ['--transient=never', 0],
    ] as const) {
      const c1 = ok(cairn(storeDir, [...last, flag]));
      assert.equal(built(c1.stderr, 'script.run'), builds, flag);
      assert.doesNotMatch(c1.stderr, /\(transient\)/, flag);
      const c2 = ok(cairn(storeDir, [...last, flag]));
      assert.equal(built(c2.stderr, 'script.run'), 0, flag);
      assert.doesNotMatch(c2.stderr, /test ran/, flag);
    }
    // + shell after it: the shell sees what the (rerun) script did.
    const sh = ok(cairn(storeDir, [...last, '+', 'shell'], { input: 'cat /mnt/ran\n' }));
    assert.match(sh.stderr, /test ran A/);
    assert.match(sh.stdout, /^ran$/m);
  });

  it('--transient=last|always on any step, and a step module that declares transient: last', () => {
    const n = states();
    const e = ['machine', 'tiny', '+', 'exec', 'echo per-step', '--transient=last'];
    for (let i = 0; i < 2; i++) assert.match(ok(cairn(storeDir, e)).stderr, /exec \(transient\)> per-step/);
    assert.equal(states(), n);
    const always = ok(cairn(storeDir, [...e.slice(0, -1), '--transient', '+', 'exec', 'true']));
    assert.match(always.stderr, /exec \(transient\)> per-step/);
    expectError(cairn(storeDir, [...e.slice(0, -1), '--transient=sometimes']), 'E_USAGE');
    expectError(cairn(storeDir, ['machine', 'tiny', '+', 'transient', 'exec', 'true', '--transient=never']), 'E_USAGE');

    const steps = path.join(dir, 'steps-last');
    fs.mkdirSync(steps, { recursive: true });
    fs.writeFileSync(
      path.join(steps, 'check.ts'),
      `import { step } from 'cairn';
export default step({
  name: 'check',
  transient: 'last',
  async run(vm) {
    vm.log((await vm.exec('echo checked; echo c > /mnt/c', { check: true })).stdout.trim());
  },
});
`,
    );
    const run = ['machine', '--steps', steps, 'tiny', '+', 'check'];
    for (let i = 0; i < 2; i++) assert.match(ok(cairn(storeDir, run)).stderr, /check \(transient\)> checked/);
    assert.equal(states(), n + 1, 'only the exec after the --transient step was saved');
    const kept = [...run, '+', 'exec', 'cat /mnt/c'];
    assert.equal(built(ok(cairn(storeDir, kept)).stderr, 'check'), 1);
    assert.equal(built(ok(cairn(storeDir, kept)).stderr, 'check'), 0);
  });

  it('TS API: step({transient: "last"}) is the default; apply options override it', async () => {
    const store = LocalStore.open(storeDir);
    const probe = step({
      name: 'probe',
      transient: 'last',
      async run(vm) {
        await vm.exec('echo p > /mnt/p', { check: true });
      },
    });
    const base = machine(tiny());
    assert.deepEqual(base.apply(probe, null).transientSteps, ['probe']);
    assert.deepEqual(base.apply(probe, null, { cache: '1h' }).transientSteps, []);
    assert.deepEqual(base.apply(probe, null, { cache: 0 }).transientSteps, ['probe'], 'no reuse asked: the default');
    assert.deepEqual(base.apply(probe, null, { transient: false }).transientSteps, []);
    assert.deepEqual(base.apply(probe, null).apply(exec, { cmd: 'true' }).transientSteps, []);
    const s = await base.apply(probe, null).apply(exec, { cmd: 'cat /mnt/p' }).realize({ store });
    assert.equal(readDescription(s.dir).step!.name, 'exec');
    assert.throws(() => step({ name: 'x', transient: 'first' as never, run() {} }), isCode('E_BAD_ARGUMENT'));
  });
});

describe('a user step module is identified by its code (bug 4)', () => {
  it('changing a module-level constant or a local import reruns the step; changing it back finds the old state', () => {
    const steps = path.join(dir, 'steps-banner');
    fs.mkdirSync(path.join(steps, 'lib'), { recursive: true });
    const mod = (banner: string): string => `import { step } from 'cairn';
import { suffix } from './lib/suffix.js';
// The run function's own text never changes; only what it uses around it.
const BANNER = '${banner}';
export default step({
  name: 'banner',
  async run(vm) {
    await vm.exec(\`echo \${BANNER}\${suffix()} > /mnt/banner\`, { check: true });
  },
});
`;
    const lib = (s: string): string => `export const suffix = (): string => '${s}';\n`;
    fs.writeFileSync(path.join(steps, 'banner.ts'), mod('v1'));
    fs.writeFileSync(path.join(steps, 'lib', 'suffix.ts'), lib('-a'));
    const args = ['machine', '--steps', steps, 'tiny', '+', 'banner', '+', 'exec', 'cat /mnt/banner'];
    const r1 = ok(cairn(storeDir, args));
    assert.match(r1.stderr, /exec> v1-a/);
    assert.equal(built(ok(cairn(storeDir, args)).stderr, 'banner'), 0, 'unchanged: cached');

    fs.writeFileSync(path.join(steps, 'banner.ts'), mod('v2'));
    const r2 = ok(cairn(storeDir, args));
    assert.equal(built(r2.stderr, 'banner'), 1);
    assert.match(r2.stderr, /exec> v2-a/, 'the guest sees the new constant');

    fs.writeFileSync(path.join(steps, 'lib', 'suffix.ts'), lib('-b'));
    assert.match(ok(cairn(storeDir, args)).stderr, /exec> v2-b/, 'a local import is covered too');

    // A comment is not code; going back to v1 finds the first state again.
    fs.writeFileSync(path.join(steps, 'banner.ts'), mod('v1') + '// a comment\n');
    fs.writeFileSync(path.join(steps, 'lib', 'suffix.ts'), lib('-a'));
    const back = ok(cairn(storeDir, args));
    assert.equal(built(back.stderr, 'banner'), 0);
    assert.equal(lastLine(back.stdout), lastLine(r1.stdout));
  });
});

/** QEMU processes whose command line mentions `where` (the test's own directory). */
function qemusUnder(where: string): number[] {
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let cmd: string;
    try {
      cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmd.includes('qemu-system') && cmd.includes(where)) pids.push(Number(e));
  }
  return pids;
}

/**
 * Runs `cairn machine tiny + shell` with `script` piped in, and calls
 * `onFirst` (with the child and stdout so far) when stdout first contains `first`. Resolves
 * with the stdout chunks as they arrived and the exit.
 */
function pipedShell(
  script: string,
  onFirst: (child: ReturnType<typeof spawn>, soFar: string) => void,
): Promise<{ chunks: string[]; code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  // Socket short-links go to TMPDIR: inside the test's directory, so qemusUnder sees every VM.
  const tmp = path.join(dir, 'tmp');
  fs.mkdirSync(tmp, { recursive: true });
  const child = spawn(process.execPath, [cairnBin, '--store', storeDir, 'machine', 'tiny', '+', 'shell'], {
    cwd: repoRoot,
    env: { ...process.env, TMPDIR: tmp },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const chunks: string[] = [];
  let stderr = '';
  let seen = false;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    chunks.push(d);
    const soFar = chunks.join('');
    if (!seen && soFar.includes('first')) {
      seen = true;
      onFirst(child, soFar);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.end(script);
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ chunks, code, signal, stderr })));
}

describe('piped + shell streams (bug 5)', () => {
  it('the first line reaches stdout before the script ends', async () => {
    // What stdout held when "first" showed up (the console may deliver it a few bytes at a time).
    let atFirst: string | undefined;
    const r = await pipedShell('echo first\nsleep 3\necho second\n', (_child, soFar) => {
      atFirst = soFar;
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(atFirst !== undefined, `no "first" in ${JSON.stringify(r.chunks)}`);
    assert.doesNotMatch(atFirst, /second/, `"first" and "second" came together: ${JSON.stringify(r.chunks)}`);
    assert.equal(r.chunks.join(''), 'first\nsecond\n');
  });

  it(
    'SIGINT mid-script: what was printed stays printed, and no QEMU is left running',
    { timeout: 240_000 },
    async () => {
      let running: number[] = [];
      const r = await pipedShell('echo first\nsleep 600\necho second\n', (child) => {
        running = qemusUnder(dir);
        child.kill('SIGINT');
      });
      assert.ok(running.length > 0, 'a VM ran the script (and qemusUnder finds it)');
      assert.equal(r.code, 130, r.stderr);
      assert.equal(r.chunks.join(''), 'first\n');
      // A killed VM may take a moment to be gone from /proc.
      for (let i = 0; i < 50 && qemusUnder(dir).length > 0; i++) await sleep(100);
      assert.deepEqual(qemusUnder(dir), []);
      assert.deepEqual(tmpEntries(storeDir), [], "the interrupted machine's scratch directory is gone");
    },
  );
});
