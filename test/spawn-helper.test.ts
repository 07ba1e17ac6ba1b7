/**
 * The spawn helper (cli/client/spawn.c, src/stages/spawn-helper.ts): a
 * build's programs start through it, and behave exactly as they do through
 * Node's spawn, which remains the fallback when the helper is missing,
 * cannot start or dies. Needs a build (dist/bin/cairn-spawn).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { execLogged } from '../src/stages/build-context.js';
import { BuildGroups } from '../src/stages/build-processes.js';
import { encodeInput, encodeSpawn, FrameReader, INPUT_CHUNK } from '../src/stages/spawn-frames.js';
import { spawnHelperPid } from '../src/stages/spawn-helper.js';
import { cairnBin, isolateModuleCache, repoRoot, tempDir } from './helpers.js';

isolateModuleCache(after);

const HELPER = path.join(repoRoot, 'dist', 'bin', 'cairn-spawn');
const PROBE = path.join(repoRoot, 'test', 'fixtures', 'spawn-probe.ts');

interface Probe {
  results: Record<string, { stdout?: string; stderr?: string; error?: string; message?: string; details?: unknown }>;
  echoed: string[];
  log: string;
}

function probe(helper: string | undefined): Probe {
  const t = tempDir('cairn-spawn-probe');
  try {
    const env = { ...process.env, CAIRN_SPAWN_HELPER: helper ?? 'off' };
    const r = spawnSync(process.execPath, ['--import', 'tsx', PROBE, t.dir], { env, encoding: 'utf8', cwd: repoRoot });
    assert.equal(r.status, 0, r.stderr);
    // Paths under the probe's own directory differ from run to run.
    return JSON.parse(r.stdout.split(t.dir).join('DIR')) as Probe;
  } finally {
    t.cleanup();
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is gone for our purposes (its parent has not reaped it yet).
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('spawn helper: the same programs, the same results', () => {
  assert.ok(fs.existsSync(HELPER), `${HELPER} is missing: run npm run build`);
  const withHelper = probe(HELPER);
  const without = probe(undefined);

  it('starts programs through the helper when it is there, and through Node when it is off', () => {
    assert.equal(withHelper.results.parent!.stdout, 'cairn-spawn\n');
    assert.equal(without.results.parent!.stdout, 'node\n');
  });

  for (const [name, p] of [
    ['helper', withHelper],
    ['Node spawn', without],
  ] as const) {
    it(`${name}: argv, env, PATH lookup, working directory, umask`, () => {
      const r = p.results;
      assert.equal(r.argv!.stdout, "[zero]\n[a b]\n[]\n[ü]\n[$HOME]\n[it's]\n");
      assert.deepEqual(r.env!.stdout!.trim().split('\n').sort(), ['A=1', 'B=x y', 'EMPTY=', 'PATH=/usr/bin:/bin']);
      assert.equal(r['path-lookup']!.stdout, 'tool x\n');
      assert.equal(r['no-shebang']!.stdout, 'plain y DIR/bin/plain-tool\n');
      assert.equal(r['cwd-relative']!.stdout, 'DIR/sub\n');
      assert.equal(r['cwd-inherited']!.stdout, 'DIR\n');
      assert.equal(r.umask!.stdout, '0027\n');
    });

    it(`${name}: stdin input, or /dev/null`, () => {
      const r = p.results;
      assert.equal(r['stdin-binary']!.stdout, `${r['stdin-expected'] as unknown as string}  -\n`);
      assert.equal(r['stdin-string']!.stdout, 'line 1\nline 2');
      assert.deepEqual(r['stdin-unread'], { stdout: '', stderr: '' });
      assert.equal(r['stdin-none']!.stdout, 'done\n');
    });

    it(`${name}: a session and process group of its own, default signals, no stray descriptors`, () => {
      const r = p.results;
      const [pid, groupSession] = r.group!.stdout!.trim().split('\n');
      assert.equal(groupSession, `${pid} ${pid}`);
      assert.equal(r.signals!.stdout, 'SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n');
      // 0-2, ls's directory, and whatever the test runner itself inherited.
      assert.deepEqual(r.fds!.stdout!.trim().split('\n').slice(0, 3), ['0', '1', '2']);
    });

    it(`${name}: errors: not found, not executable, missing directory, exit status, signal`, () => {
      const r = p.results;
      const err = (k: string): unknown => ({ error: r[k]!.error, message: r[k]!.message });
      assert.deepEqual(err('not-found'), {
        error: 'E_BUILD_FAILED',
        message: 'cannot run no-such-program-here: spawn no-such-program-here ENOENT',
      });
      assert.deepEqual(err('not-executable'), {
        error: 'E_BUILD_FAILED',
        message: 'cannot run not-exec: spawn not-exec EACCES',
      });
      assert.deepEqual(err('bad-cwd'), {
        error: 'E_BUILD_FAILED',
        message: 'cannot run /bin/sh: spawn /bin/sh ENOENT',
      });
      assert.deepEqual(err('directory'), { error: 'E_BUILD_FAILED', message: 'cannot run DIR: spawn DIR EACCES' });
      assert.deepEqual(r['exit-code'], {
        error: 'E_BUILD_FAILED',
        message: 'sh exited with 4: first | second',
        details: { cmd: 'sh', code: 4, signal: null },
      });
      assert.deepEqual(r.killed, {
        error: 'E_BUILD_FAILED',
        message: 'sh exited with SIGTERM',
        details: { cmd: 'sh', code: null, signal: 'SIGTERM' },
      });
      assert.deepEqual(r.mixed, { stdout: 'a\nno newline', stderr: 'b\n' });
    });
  }

  it('the build log and the echoed lines hold the same, whichever starts the programs', () => {
    // Pids and the parent's name differ; the echo splits each stream into lines by itself, so its lines
    // are the same (in another order), while the log holds the two streams interleaved as they came: its
    // characters are the same.
    const differ = (l: string): boolean => /^\d+( \d+)?$|^(cairn-spawn|node)$/.test(l);
    const lines = (s: string): string[] =>
      s
        .split('\n')
        .filter((l) => !differ(l))
        .sort();
    const chars = (s: string): string =>
      Array.from(s.replace(/cairn-spawn|node/g, '').replace(/\d/g, ''))
        .sort()
        .join('');
    assert.equal(chars(withHelper.log), chars(without.log));
    assert.deepEqual(lines(withHelper.echoed.join('\n')), lines(without.echoed.join('\n')));
    assert.equal(withHelper.results.fds!.stdout, without.results.fds!.stdout, 'no descriptor of the helper leaks');
    assert.ok(withHelper.echoed.includes('$ sh -c echo out; echo first >&2; echo second >&2; exit 4'));
    assert.equal(withHelper.results.fds!.stdout, without.results.fds!.stdout, 'no descriptor of the helper leaks');
    assert.ok(withHelper.echoed.includes('no newline'));
  });
});

describe('spawn helper: a build that does not wait for its program', () => {
  it('ends it with the build, though the helper had not yet said it started', async () => {
    const t = tempDir('cairn-spawn-nowait');
    // A number no other process uses as an argument: how this program is found in /proc.
    const marker = `${900 + (process.pid % 97)}.${Date.now() % 100000}`;
    const mine = (): number[] =>
      fs
        .readdirSync('/proc')
        .filter((n) => /^\d+$/.test(n))
        .filter((n) => {
          try {
            return fs.readFileSync(`/proc/${n}/cmdline`, 'latin1') === `sleep\0${marker}\0` && alive(Number(n));
          } catch {
            return false;
          }
        })
        .map(Number);
    try {
      const groups = new BuildGroups();
      await execLogged({ file: path.join(t.dir, 'log'), groups }, 'true', []); // the helper runs
      // The build function returns at once; the build then ends its groups.
      void execLogged({ file: path.join(t.dir, 'log'), groups }, 'sleep', [marker]).catch(() => {});
      await groups.end();
      await until('the program to be ended', () => mine().length === 0, 5000);
    } finally {
      for (const p of mine()) process.kill(p, 'SIGKILL');
      t.cleanup();
    }
  });
});

describe('spawn helper: large and long outputs', () => {
  const t = tempDir('cairn-spawn-big');
  after(t.cleanup);
  const log = path.join(t.dir, 'log');

  it('passes 100 MB of stdout to the result and the log', async () => {
    const groups = new BuildGroups();
    const n = 100_000_000;
    const r = await execLogged({ file: log, groups }, 'head', ['-c', String(n), '/dev/zero']);
    assert.ok(spawnHelperPid() !== undefined, 'the helper ran it');
    assert.equal(r.stdout.length, n);
    assert.equal(fs.statSync(log).size, n + `$ head -c ${n} /dev/zero\n`.length);
    fs.rmSync(log);
  });

  it('echoes output live, while the program runs', async () => {
    // The program waits for a file that the echo of its previous line creates: output held back
    // until the program ends would leave it waiting (and the test failing at its deadline).
    const groups = new BuildGroups();
    const script = 'for i in 1 2 3 4 5; do echo "step $i"; while [ ! -e "$1/go-$i" ]; do sleep 0.01; done; done';
    const echoed: string[] = [];
    const echo = (l: string): void => {
      echoed.push(l);
      const m = /^step (\d)$/.exec(l);
      if (m) fs.writeFileSync(path.join(t.dir, `go-${m[1]}`), '');
    };
    const run = execLogged({ file: log, groups, echo }, 'timeout', ['60', 'sh', '-c', script, 'sh', t.dir]);
    const r = await run;
    assert.equal(r.stdout, 'step 1\nstep 2\nstep 3\nstep 4\nstep 5\n');
    assert.deepEqual(echoed.slice(1), ['step 1', 'step 2', 'step 3', 'step 4', 'step 5']);
    await groups.end();
  });
});

describe('spawn helper: when it is missing, broken or dies', () => {
  for (const [what, bin] of [
    ['missing', '/nonexistent/cairn-spawn'],
    ['exits at once', '/bin/true'],
    ['not a helper (prints something else)', 'not-a-helper'],
  ] as const) {
    it(`${what}: programs start through Node's spawn, with the same results`, () => {
      const t = tempDir('cairn-spawn-bad');
      const fake = path.join(t.dir, 'not-a-helper');
      fs.writeFileSync(fake, '#!/bin/sh\necho this is not a spawn helper\nexec cat\n', { mode: 0o755 });
      let p: Probe;
      try {
        p = probe(bin === 'not-a-helper' ? fake : bin);
      } finally {
        t.cleanup();
      }
      assert.equal(p.results.parent!.stdout, 'node\n');
      assert.equal(p.results['cwd-inherited']!.stdout, 'DIR\n');
      assert.equal(p.results['stdin-string']!.stdout, 'line 1\nline 2');
      assert.equal(
        p.results['not-found']!.message,
        'cannot run no-such-program-here: spawn no-such-program-here ENOENT',
      );
    });
  }

  it('a helper killed mid-program: that exec fails, its build ends its group, a new helper follows', async () => {
    const t = tempDir('cairn-spawn-die');
    try {
      const log = path.join(t.dir, 'log');
      const groups = new BuildGroups();
      await execLogged({ file: log, groups }, 'true', []);
      const first = spawnHelperPid()!;
      assert.ok(first !== undefined);
      const pidFile = path.join(t.dir, 'pid');
      const run = execLogged({ file: log, groups }, 'sh', [
        '-c',
        `echo $$ > ${pidFile}.tmp; mv ${pidFile}.tmp ${pidFile}; sleep 60`,
      ]);
      await until('the program', () => fs.existsSync(pidFile));
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      process.kill(first, 'SIGKILL');
      await assert.rejects(run, (e: Error & { code?: string }) => {
        assert.equal(e.code, 'E_BUILD_FAILED');
        assert.match(e.message, /^cannot run sh: the spawn helper died/);
        return true;
      });
      assert.ok(alive(pid), 'the program outlives the helper until its build ends');
      await groups.end();
      assert.ok(!alive(pid), 'the build ended its group');
      const r = await execLogged({ file: log, groups }, 'sh', ['-c', 'cat /proc/$PPID/comm']);
      assert.equal(r.stdout, 'cairn-spawn\n');
      assert.notEqual(spawnHelperPid(), first);
    } finally {
      t.cleanup();
    }
  });

  for (const how of ['exits', 'is killed'] as const) {
    it(`the Cairn process ${how} with a program running: the helper exits too`, async () => {
      const t = tempDir('cairn-spawn-exit');
      try {
        const script = path.join(t.dir, 'run.mts');
        fs.writeFileSync(
          script,
          [
            `import { execLogged } from ${JSON.stringify(path.join(repoRoot, 'src/stages/build-context.ts'))};`,
            `import { BuildGroups } from ${JSON.stringify(path.join(repoRoot, 'src/stages/build-processes.ts'))};`,
            `import { spawnHelperPid } from ${JSON.stringify(path.join(repoRoot, 'src/stages/spawn-helper.ts'))};`,
            'const [dir] = process.argv.slice(2);',
            "void execLogged({ file: dir + '/log', groups: new BuildGroups() }, 'sh', ['-c', " +
              '\'echo $$ > "$0/prog"; sleep 120\', dir]).catch(() => {});',
            "const fs = await import('node:fs');",
            "while (!fs.existsSync(dir + '/prog')) await new Promise((r) => setTimeout(r, 10));",
            "fs.writeFileSync(dir + '/helper', String(spawnHelperPid()));",
            how === 'exits' ? 'process.exit(0);' : 'setInterval(() => {}, 1000);',
          ].join('\n'),
        );
        const child = spawn(process.execPath, ['--import', 'tsx', script, t.dir], { cwd: repoRoot, stdio: 'inherit' });
        const exited = new Promise((r) => child.once('exit', r));
        await until('the program', () => fs.existsSync(path.join(t.dir, 'helper')));
        const prog = Number(fs.readFileSync(path.join(t.dir, 'prog'), 'utf8'));
        const helper = Number(fs.readFileSync(path.join(t.dir, 'helper'), 'utf8'));
        if (how === 'is killed') {
          assert.ok(alive(prog) && alive(helper));
          child.kill('SIGKILL');
        }
        await exited;
        await until('the helper to exit', () => !alive(helper));
        // The program's group is Cairn's to end (its exit handlers, during a realize), as with Node's spawn.
        process.kill(-prog, 'SIGKILL');
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('spawn helper: a realize through the CLI', () => {
  it('builds run their programs through dist/bin/cairn-spawn', () => {
    const t = tempDir('cairn-spawn-cli');
    try {
      fs.writeFileSync(
        path.join(t.dir, 'stages.ts'),
        [
          "import { stage } from 'cairn';",
          "export default stage({ name: 'parent', config: {}, build: async ({ exec, out }) => {",
          "  await exec('sh', ['-c', 'cat /proc/$PPID/comm > \"$1/v\"', 'sh', out]);",
          '} });',
        ].join('\n'),
      );
      const store = path.join(t.dir, 'store');
      const run = (...args: string[]): string => {
        const r = spawnSync(process.execPath, [cairnBin, '--store', store, ...args], { cwd: t.dir, encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        return r.stdout;
      };
      const rref = run('realize', 'stages.ts').trim().split('\n').pop()!;
      assert.equal(run('catref', rref, 'v'), 'cairn-spawn\n');
    } finally {
      t.cleanup();
    }
  });
});

describe('spawn frames', () => {
  it('splits frames however the bytes arrive', () => {
    const frames = [
      encodeSpawn(7, { cmd: 'sh', argv: ['sh', 'ü'], cwd: '/', env: ['A=1'], umask: 0o22, stdinPipe: true })!,
    ];
    frames.push(...encodeInput(7, Buffer.alloc(INPUT_CHUNK + 3, 1)));
    const all = Buffer.concat(frames);
    for (const step of [1, 3, 4096, all.length]) {
      const reader = new FrameReader();
      const got = [];
      for (let i = 0; i < all.length; i += step) got.push(...reader.push(all.subarray(i, i + step)));
      assert.deepEqual(
        got.map((f) => [f.type, f.id, f.payload.length]),
        [
          ['S', 7, frames[0]!.length - 9],
          ['I', 7, INPUT_CHUNK],
          ['I', 7, 3],
          ['I', 7, 0],
        ],
      );
    }
  });

  it('leaves a request with a NUL byte to Node (which refuses it), and refuses a bad length', () => {
    assert.equal(
      encodeSpawn(1, { cmd: 'sh', argv: ['sh', 'a\0b'], cwd: '/', env: [], umask: 0, stdinPipe: false }),
      undefined,
    );
    assert.throws(() => new FrameReader().push(Buffer.from([1, 0, 0, 0, 0])), /bad frame length 1/);
  });
});
