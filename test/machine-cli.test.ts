/**
 * `cairn machine` as a user runs it: chains of built-in and user steps on
 * the tiny guest, `+ shell` on piped input, transient steps, two processes
 * applying the same step, `machine ls` / `machine gc` over roots, and
 * errors with stable codes.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LocalStore } from '../src/index.js';
import type { RRef } from '../src/store/refs.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { cairn, cairnAsync, expectError, isolateModuleCache, lastLine, ok, tempDir } from './helpers.js';

requireQemu();
isolateModuleCache(after);
const { dir, cleanup } = tempDir('cairn-machine-cli');
const store = path.join(dir, 'store');
after(() => cleanup());

const RREF = /^[a-z0-9]{32}-[a-z0-9]{32}-[\w.+-]+$/;
const built = (stderr: string, name: string): number =>
  stderr.split('\n').filter((l) => l.startsWith(`built ${name} `)).length;

before(() => {
  ok(cairn(store, ['machine', 'tiny'])); // the base, once for the file
});

describe('cairn machine', () => {
  it('runs a chain, prints the final state, and a second run is fully cached', () => {
    const args = ['machine', 'tiny', '+', 'exec', 'echo Hello > /mnt/greeting', '+', 'exec', 'cat /mnt/greeting'];
    const r1 = ok(cairn(store, args));
    assert.match(lastLine(r1.stdout), RREF);
    assert.match(r1.stderr, /exec> Hello/, 'step output is shown');
    assert.equal(built(r1.stderr, 'exec'), 2);
    const r2 = ok(cairn(store, args));
    assert.equal(lastLine(r2.stdout), lastLine(r1.stdout));
    assert.equal(built(r2.stderr, 'exec'), 0);
    assert.doesNotMatch(r2.stderr, /exec> Hello/);
  });

  it('+ shell connects the console to stdin/stdout and throws the changes away', () => {
    const r = ok(
      cairn(store, ['machine', 'tiny', '+', 'exec', 'echo kept > /mnt/k', '+', 'shell'], {
        input: 'cat /mnt/k; echo sh$((6*7))ell; echo x > /mnt/k\n',
      }),
    );
    assert.match(r.stdout, /kept/);
    assert.match(r.stdout, /sh42ell/);
    const again = ok(
      cairn(store, ['machine', 'tiny', '+', 'exec', 'echo kept > /mnt/k', '+', 'shell'], { input: 'cat /mnt/k\n' }),
    );
    assert.match(again.stdout, /kept/);
    expectError(cairn(store, ['machine', 'tiny', '+', 'shell', '+', 'exec', 'true']), 'E_USAGE', store);
  });

  it('a transient step runs every time and leaves no realization', () => {
    const before = ok(cairn(store, ['machine', 'ls', '--json']));
    const n = (JSON.parse(before.stdout) as unknown[]).length;
    const r = ok(cairn(store, ['machine', 'tiny', '+', 'transient', 'exec', 'rm -rf /mnt/*; echo wiped']));
    assert.match(r.stderr, /wiped/);
    assert.equal(
      lastLine(r.stdout),
      lastLine(ok(cairn(store, ['machine', 'tiny'])).stdout),
      'the result is the base state',
    );
    assert.equal((JSON.parse(ok(cairn(store, ['machine', 'ls', '--json'])).stdout) as unknown[]).length, n);
  });

  it('steps from a steps directory and by path, with positional, --key=value and flag words', () => {
    const steps = path.join(dir, 'steps');
    fs.mkdirSync(path.join(steps, 'app'), { recursive: true });
    fs.writeFileSync(
      path.join(steps, 'app', 'install.ts'),
      `
import { step } from 'cairn';
export default step<{ args: string[]; version?: string; debug?: boolean }>({
  name: 'app.install',
  async run(vm, a) {
    await vm.exec(\`echo "\${a.args.join(',')} v=\${a.version} ` +
        `debug=\${a.debug === true}" > /mnt/app\`, { check: true });
  },
});
`,
    );
    const r = ok(
      cairn(store, [
        'machine',
        '--steps',
        steps,
        'tiny',
        '+',
        'app.install',
        'one',
        'two',
        '--version=1.2',
        '--debug',
        '+',
        'exec',
        'cat /mnt/app',
      ]),
    );
    assert.match(r.stderr, /exec> one,two v=1\.2 debug=true/);
    const byPath = ok(
      cairn(store, ['machine', 'tiny', '+', path.join(steps, 'app', 'install.ts'), 'x', '+', 'exec', 'cat /mnt/app']),
    );
    assert.match(byPath.stderr, /exec> x v=undefined debug=false/);
    expectError(cairn(store, ['machine', 'tiny', '+', 'no.such.step']), 'E_UNKNOWN_STEP', store);
    expectError(cairn(store, ['machine', 'tiny', '+', 'exec', 'true', '--cache']), 'E_USAGE', store);
    expectError(cairn(store, ['machine', 'no-such-base']), 'E_UNKNOWN_BASE', store);
  });

  it('script.run: the script content is the identity; --cache caps reuse', () => {
    const script = path.join(dir, 'test.sh');
    fs.writeFileSync(script, 'echo "script says $1"\n');
    const args = ['machine', 'tiny', '+', 'script.run', script, 'hi', '--cache=1h'];
    const r1 = ok(cairn(store, args));
    assert.match(r1.stderr, /script says hi/);
    const state = JSON.parse(ok(cairn(store, ['machine', 'ls', '--json'])).stdout) as {
      rref: string;
      expiresAt: string | null;
    }[];
    const mine = state.find((s) => s.rref === lastLine(r1.stdout))!;
    assert.ok(mine.expiresAt && Date.parse(mine.expiresAt) > Date.now() + 3_500_000);
    assert.equal(built(ok(cairn(store, args)).stderr, 'script.run'), 0);
    fs.writeFileSync(script, 'echo "edited $1"\n');
    const r3 = ok(cairn(store, args));
    assert.match(r3.stderr, /edited hi/);
    assert.notEqual(lastLine(r3.stdout), lastLine(r1.stdout));
  });

  it('a failing step is E_MACHINE_EXEC and leaves nothing behind', () => {
    const r = cairn(store, ['machine', 'tiny', '+', 'exec', 'echo boom >&2; exit 4']);
    expectError(r, 'E_MACHINE_EXEC', store);
    assert.match(r.stderr, /boom/);
  });

  it('two processes applying the same step: one builds, the other waits and reuses', async () => {
    const args = ['machine', 'tiny', '+', 'exec', `sleep 2; echo ${Date.now()} > /mnt/race`];
    const [a, b] = await Promise.all([cairnAsync(store, args), cairnAsync(store, args)]);
    ok(a);
    ok(b);
    assert.equal(lastLine(a.stdout), lastLine(b.stdout));
    assert.equal(built(a.stderr, 'exec') + built(b.stderr, 'exec'), 1);
    assert.match(a.stderr + b.stderr, /waiting for exec/);
  });

  it('--cache=0 and --cache=0s: the step runs every time, later steps see it, nothing is saved', () => {
    const count = (): number => (JSON.parse(ok(cairn(store, ['machine', 'ls', '--json'])).stdout) as unknown[]).length;
    const n = count();
    const baseRref = lastLine(ok(cairn(store, ['machine', 'tiny'])).stdout);
    for (const c of ['0', '0s']) {
      const args = ['machine', 'tiny', '+', 'exec', `echo ran-${c} | tee /mnt/zero`, `--cache=${c}`];
      const then = [...args, '+', 'exec', 'echo "next sees $(cat /mnt/zero)"'];
      for (let run = 0; run < 2; run++) {
        const r = ok(cairn(store, then));
        assert.match(r.stderr, new RegExp(`> ran-${c}$`, 'm'), `run ${run}: the step ran`);
        assert.match(r.stderr, new RegExp(`> next sees ran-${c}$`, 'm'), 'the next step built on its effects');
        assert.equal(lastLine(r.stdout), baseRref, 'the last saved state is the base');
      }
    }
    assert.equal(count(), n, 'no state was saved, expired or not');
  });

  it('a step that caps its own state at 0 is used by its run, and runs again next time', () => {
    const steps = path.join(dir, 'cap-steps');
    fs.mkdirSync(steps, { recursive: true });
    fs.writeFileSync(
      path.join(steps, 'capzero.ts'),
      `import { step } from 'cairn';
export default step({ name: 'capzero', async run(vm) { vm.expiration.cap(0); await vm.exec('echo c > /mnt/c'); } });
`,
    );
    const args = ['machine', '--steps', steps, 'tiny', '+', 'capzero', '+', 'exec', 'cat /mnt/c'];
    const r1 = ok(cairn(store, args));
    assert.match(r1.stderr, /exec> c$/m);
    assert.equal(built(r1.stderr, 'capzero'), 1);
    const r2 = ok(cairn(store, args));
    assert.equal(built(r2.stderr, 'capzero'), 1, 'an expired state is not reused');
  });

  it('machine ls shows the step args, with secrets in URLs masked', () => {
    const cmd = 'echo https://bob:hunter2@example.org/x?token=s3cret > /mnt/u';
    const rref = lastLine(ok(cairn(store, ['machine', 'tiny', '+', 'exec', cmd])).stdout);
    const ls = ok(cairn(store, ['machine', 'ls']));
    const line = ls.stdout.split('\n').find((l) => l.startsWith(rref))!;
    assert.match(line, /exec cmd="echo https:\/\/\*\*\*@example\.org\/x\?token=\*\*\* > \/mnt\/u"/);
    assert.doesNotMatch(ls.stdout, /hunter2|s3cret/);
    const rows = JSON.parse(ok(cairn(store, ['machine', 'ls', '--json'])).stdout) as { rref: string; args: unknown }[];
    assert.deepEqual(rows.find((r) => r.rref === rref)!.args, {
      cmd: 'echo https://***@example.org/x?token=*** > /mnt/u',
    });
  });

  it("a state QEMU refuses to restore is E_MACHINE_RESTORE, naming the state and QEMU's reason", () => {
    const first = ['machine', 'tiny', '+', 'exec', 'echo t > /mnt/t'];
    const rref = lastLine(ok(cairn(store, first)).stdout);
    const file = path.join(LocalStore.open(store).outPath(rref as RRef), 'machine.json');
    const original = fs.readFileSync(file, 'utf8');
    const d = JSON.parse(original) as { state: { memoryMb: number } };
    d.state.memoryMb *= 2; // the snapshot's RAM block no longer fits the machine
    fs.writeFileSync(file, JSON.stringify(d));
    try {
      const r = cairn(store, [...first, '+', 'exec', 'true']);
      expectError(r, 'E_MACHINE_RESTORE', store);
      assert.notEqual(r.code, 70, 'not an internal error');
      assert.match(r.stderr, new RegExp(`cannot resume the machine state ${rref}`));
      assert.match(r.stderr, /QEMU could not restore memory\.bin: .*(mismatch|ramblock|migration)/i);
    } finally {
      fs.writeFileSync(file, original);
    }
  });

  it('machine ls shows states; machine gc keeps rooted states and what they stand on', () => {
    const kept = lastLine(
      ok(cairn(store, ['machine', '--root', 'keep-me', 'tiny', '+', 'exec', 'echo r > /mnt/r', '+', 'exec', 'true']))
        .stdout,
    );
    const ls = ok(cairn(store, ['machine', 'ls']));
    assert.match(ls.stdout, new RegExp(`${kept}.*\\(root\\)`));
    const dry = ok(cairn(store, ['machine', 'gc', '--dry-run']));
    assert.match(dry.stdout, /would delete \d+ machine state/);
    const gc = ok(cairn(store, ['machine', 'gc']));
    assert.match(gc.stdout, /deleted [1-9]\d* machine state/);
    const left = JSON.parse(ok(cairn(store, ['machine', 'ls', '--json'])).stdout) as { rref: string; step: string }[];
    // The rooted state, its parent exec state and the base state remain.
    assert.deepEqual(left.map((s) => s.step).sort(), ['(base)', 'exec', 'exec']);
    assert.ok(left.some((s) => s.rref === kept));
    // Non-machine realizations (the base's files) are kept by machine gc.
    assert.match(ok(cairn(store, ['lsref', left.find((s) => s.step === '(base)')!.rref])).stdout, /machine\.json/);
    ok(cairn(store, ['store', 'verify']));
    // The kept chain still resumes.
    assert.match(
      ok(
        cairn(store, ['machine', 'tiny', '+', 'exec', 'echo r > /mnt/r', '+', 'exec', 'true', '+', 'shell'], {
          input: 'cat /mnt/r\n',
        }),
      ).stdout,
      /\br\b/,
    );
  });
});
