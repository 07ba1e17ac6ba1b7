/**
 * Interrupts: a signal sent to the `cairn` process alone (not to its
 * process group) ends the programs its builds run, which live in process
 * groups of their own, removes the temporary directories and stores
 * nothing; cairn exits 128 + the signal's number. The programs are real
 * Python processes that ignore SIGINT (and, in some cases, SIGTERM, so only
 * SIGKILL after the grace ends them); each writes its pid to a file and
 * appends to a tick file until it dies. Other exit paths (process.exit in
 * a build, an uncaught exception, a build that returns while its programs
 * linger) end them too.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairnBin, isolateModuleCache, repoRoot, tempDir, tmpEntries } from './helpers.js';

isolateModuleCache(after);

/**
 * A Python program: ignores SIGINT (and SIGTERM with IGNORE_TERM=1), writes
 * its pid, ticks every 20 ms, prints an epoch line.
 */
const TICKER = `
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
if os.environ.get('IGNORE_TERM') == '1':
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
d, i = sys.argv[1], sys.argv[2]
with open(os.path.join(d, 'pid-' + i + '.tmp'), 'w') as f: f.write(str(os.getpid()))
os.rename(os.path.join(d, 'pid-' + i + '.tmp'), os.path.join(d, 'pid-' + i))
n = 0
while True:
    with open(os.path.join(d, 'ticks-' + i), 'a') as f: f.write('tick\\n')
    print('epoch', n, flush=True)
    n += 1
    time.sleep(0.02)
`;

interface Env {
  dir: string;
  store: string;
  work: string;
  pids: string;
  cleanup: () => void;
}

function setup(): Env {
  const t = tempDir('cairn-int');
  const work = path.join(t.dir, 'work');
  const pids = path.join(t.dir, 'pids');
  fs.mkdirSync(work);
  fs.mkdirSync(pids);
  fs.writeFileSync(path.join(work, 'ticker.py'), TICKER);
  fs.writeFileSync(path.join(work, 'stages.ts'), STAGES);
  return { dir: t.dir, store: path.join(t.dir, 'store'), work, pids, cleanup: t.cleanup };
}

/** Stages running the ticker in the ways a build may run programs. */
const STAGES =
  `
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { stage } from 'cairn';
const py = path.join(import.meta.dirname, 'ticker.py');
const pids = process.env.PIDS!;
const salt = process.env.SALT ?? '';
// One program through exec.
export const one = stage({ name: 'train', config: { salt }, build: ` +
  `async ({ exec }) => { await exec('python3', [py, pids, '0']); } });
// Three at once in one build (n: 3), each working on its output.
export const three = stage({ name: 'train3', n: 3, config: { salt }, build: async ({ exec, outs }) => {
  await Promise.all(outs.map((o, i) => exec('python3', [py, pids, String(i)], { cwd: o })));
} });
// Three stages built at once (-j 3).
export const parallel = [0, 1, 2].map((i) => stage({ name: 'par' + i, config: { salt, i }, build: async ({ exec }) => {
  await exec('python3', [py, pids, String(i)]);
} }));
// A program the build function starts itself (no exec): it shares cairn's process group.
export const own = stage({ name: 'own', config: { salt }, build: () => new Promise<void>((_, reject) => {
  spawn('python3', [py, pids, '0'], { stdio: 'ignore' }).on('exit', () => reject(new Error('ended')));
}) });
// process.exit() once the program runs (the pid file is there).
export const exits = stage({ name: 'exits', config: { salt }, build: async ({ exec }) => {
  void exec('python3', [py, pids, '0']);
  const fs = await import('node:fs');
  while (!fs.existsSync(path.join(pids, 'pid-0'))) await new Promise((r) => setTimeout(r, 20));
  process.exit(3);
} });
// An uncaught exception once the program runs.
export const throws = stage({ name: 'throws', config: { salt }, build: async ({ exec }) => {
  void exec('python3', [py, pids, '0']);
  const fs = await import('node:fs');
  while (!fs.existsSync(path.join(pids, 'pid-0'))) await new Promise((r) => setTimeout(r, 20));
  setTimeout(() => { throw new Error('uncaught on purpose'); }, 0);
  await new Promise((r) => setTimeout(r, 60_000));
} });
// A build whose program leaves a background child holding its output pipes, and returns.
export const linger = stage({ name: 'linger', config: { salt }, build: async ({ exec, out }) => {
  await exec('sh', ['-c', 'python3 "$0" "$1" 0 & while [ ! -e ` +
  `"$1/pid-0" ]; do sleep 0.02; done; echo started', py, pids]);
  (await import('node:fs')).writeFileSync(path.join(out, 'done'), 'yes');
} });
`;

interface Started {
  pid: number;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function start(e: Env, args: string[], env: NodeJS.ProcessEnv = {}): Started {
  const child = spawn(
    process.execPath,
    [cairnBin, '--store', e.store, 'realize', path.join(e.work, 'stages.ts'), ...args],
    {
      cwd: repoRoot,
      env: { ...process.env, PIDS: e.pids, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
  return { pid: child.pid!, done };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `count` tickers have written their pid and ticked; their pids. */
async function tickers(e: Env, count: number): Promise<number[]> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ready = Array.from({ length: count }, (_, i) => i).filter(
      (i) => fs.existsSync(path.join(e.pids, `pid-${i}`)) && fs.existsSync(path.join(e.pids, `ticks-${i}`)),
    );
    if (ready.length === count) return ready.map((i) => Number(fs.readFileSync(path.join(e.pids, `pid-${i}`), 'utf8')));
    assert.ok(Date.now() < deadline, `${count} program(s) should have started; ${ready.length} did`);
    await sleep(20);
  }
}

/** Whether a process exists and is not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/** The tickers are gone (checked at once: cairn waits for them before it exits) and their files stop growing. */
async function assertEnded(e: Env, pids: number[]): Promise<void> {
  for (const p of pids) assert.equal(running(p), false, `program ${p} still runs after cairn exited`);
  const sizes = (): number[] => pids.map((_, i) => fs.statSync(path.join(e.pids, `ticks-${i}`)).size);
  const before = sizes();
  await sleep(200);
  assert.deepEqual(sizes(), before, 'the tick files stopped growing');
}

function realizations(store: string): string[] {
  let drvs: string[];
  try {
    drvs = fs.readdirSync(path.join(store, 'd'));
  } catch {
    return [];
  }
  return drvs.flatMap((d) => {
    try {
      return fs.readdirSync(path.join(store, 'd', d, 'r'));
    } catch {
      return [];
    }
  });
}

describe('cairn realize: interrupted by a signal to its pid alone', { timeout: 120_000 }, () => {
  const cases: {
    title: string;
    args: string[];
    sig: NodeJS.Signals;
    status: number;
    count: number;
    ignoreTerm?: boolean;
  }[] = [
    {
      title: 'SIGINT ends a program that ignores SIGINT; exit 130',
      args: ['-s', 'one'],
      sig: 'SIGINT',
      status: 130,
      count: 1,
    },
    { title: 'SIGTERM ends it too; exit 143', args: ['-s', 'one'], sig: 'SIGTERM', status: 143, count: 1 },
    { title: 'SIGHUP ends it too; exit 129', args: ['-s', 'one'], sig: 'SIGHUP', status: 129, count: 1 },
    {
      title: 'SIGINT ends three programs of one build (n: 3) that ignore SIGINT and SIGTERM (SIGKILL after the grace)',
      args: ['-s', 'three', '-v'],
      sig: 'SIGINT',
      status: 130,
      count: 3,
      ignoreTerm: true,
    },
    {
      title: 'SIGTERM ends the programs of three builds running at once (-j 3)',
      args: ['-s', 'parallel', '-j', '3'],
      sig: 'SIGTERM',
      status: 143,
      count: 3,
    },
    {
      title: "SIGINT ends a program the build function started itself (in cairn's own process group)",
      args: ['-s', 'own'],
      sig: 'SIGINT',
      status: 130,
      count: 1,
    },
  ];
  for (const c of cases) {
    it(c.title, async () => {
      const e = setup();
      try {
        const run = start(e, c.args, { IGNORE_TERM: c.ignoreTerm ? '1' : '0' });
        const pids = await tickers(e, c.count);
        process.kill(run.pid, c.sig);
        const r = await run.done;
        assert.equal(r.code, c.status, `exit status (signal ${r.signal}); stderr: ${r.stderr.slice(-2000)}`);
        await assertEnded(e, pids);
        assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp is empty');
        assert.deepEqual(realizations(e.store), [], 'nothing is stored');
        assert.match(r.stderr, new RegExp(`${c.sig}: stopping builds`));
      } finally {
        e.cleanup();
      }
    });
  }
});

describe('cairn realize: other exits end the programs of builds', { timeout: 120_000 }, () => {
  it("process.exit() in a build: the program is ended, tmp is empty, the status is the build's", async () => {
    const e = setup();
    try {
      const run = start(e, ['-s', 'exits']);
      const r = await run.done;
      assert.equal(r.code, 3, r.stderr);
      await assertEnded(e, await tickers(e, 1));
      assert.deepEqual(tmpEntries(e.store), []);
      assert.deepEqual(realizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('an uncaught exception: the program is ended, tmp is empty', async () => {
    const e = setup();
    try {
      const r = await start(e, ['-s', 'throws']).done;
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /uncaught on purpose/);
      await assertEnded(e, await tickers(e, 1));
      assert.deepEqual(tmpEntries(e.store), []);
      assert.deepEqual(realizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it(
    'a program whose background child lingers (holding its pipes): ' + 'the child is ended and the build completes',
    async () => {
      const e = setup();
      try {
        const r = await start(e, ['-s', 'linger', '-q']).done;
        assert.equal(r.code, 0, r.stderr);
        await assertEnded(e, await tickers(e, 1));
        assert.equal(realizations(e.store).length, 1, 'the build is stored');
        assert.deepEqual(tmpEntries(e.store), []);
      } finally {
        e.cleanup();
      }
    },
  );
});
