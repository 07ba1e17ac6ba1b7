/**
 * Slurm jobs that die mid-build (issue 19), on the real single-node Slurm
 * (scripts/slurm.sh) with the S3 cache on Swift: the job cancelled with
 * `scancel` (Slurm sends SIGTERM, the job script's traps run) and the srun
 * client SIGKILLed (slurmstepd then SIGKILLs the job: no trap runs). Either
 * way the derivation is rebuilt here, the realize equals a local one,
 * nothing partial reaches the cache or this store, and no job store is
 * left in TMPDIR (after SIGKILL, the next job on the node sweeps it).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { cairn, cairnBin, isolateModuleCache, ok, repoRoot, tempDir, type CliResult } from './helpers.js';
import { buildersCache } from './fixtures/builders/builders-cache.js';
import { ensureSlurm } from './fixtures/slurm.js';
import { writeFanout } from './fixtures/builders/fanout.js';
import { tmpEntries, type VerifyReport } from './fixtures/torture/support.js';

isolateModuleCache(after, 'cairn-builders-slurm-kill-cache');

let t: { dir: string; cleanup: () => void };
let url: string;
let key: string;
let slurmConf: string;

before(async () => {
  t = tempDir('cairn-builders-slurm-kill');
  slurmConf = ensureSlurm();
  ({ url, key } = await buildersCache(t.dir, 'cairn-slurm-kill', { primed: true }));
});
after(() => t?.cleanup());

interface Result {
  builds: number;
  plan: {
    name: string;
    dref: string;
    rrefs: string[];
    where?: { builder: string; why: string; failures: { builder: string; code: string }[] };
  }[];
  warnings?: string[];
}

const cmdline = (pid: string): string[] => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
};
const ppid = (pid: string): number => {
  try {
    // `pid (comm) state ppid ...`; comm may hold spaces, so count from the last ')'.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return -1;
  }
};
const pids = (): string[] => fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n));

/** The pid of the job's `cairn build-drv` of `dref`, in a job store under `jobTmp` (this test's jobs only). */
function buildDrvIn(jobTmp: string, dref: string): string | undefined {
  return pids().find((p) => {
    const c = cmdline(p);
    return c.includes('build-drv') && c.includes(dref) && c.some((w) => w.startsWith(jobTmp));
  });
}

function jobIdOf(pid: string): string {
  const env = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  const id = env.find((e) => e.startsWith('SLURM_JOB_ID='))?.slice('SLURM_JOB_ID='.length);
  assert.ok(id, `process ${pid} runs in a Slurm job`);
  return id;
}

const jobDirs = (jobTmp: string): string[] => fs.readdirSync(jobTmp).filter((n) => n.startsWith('cairn-slurm-job'));

/**
 * Realizes a fan-out of 2 parts (part-0 slow) plus a report on slurm:cairn;
 * `kill` is called once part-0's build runs in its job; returns the result.
 */
async function realizeAndKill(
  salt: string,
  kill: (o: { realizePid: number; buildPid: string; jobTmp: string }) => void,
): Promise<{ res: Result; stderr: string; file: string; jobTmp: string; store: string }> {
  const file = writeFanout(t.dir, {
    salt: `${salt}-${Date.now()}`,
    parts: 2,
    sleepMs: 200,
    slow: { index: 0, ms: 6000 },
  });
  const store = path.join(t.dir, `coordinator-${salt}`);
  const jobTmp = path.join(t.dir, `job-tmp-${salt}`);
  fs.mkdirSync(jobTmp);
  const drefs = JSON.parse(ok(cairn(store, ['realize', file, '--dry-run', '--json'])).stdout) as Result;
  const part0 = drefs.plan.find((p) => p.name === 'part-0')!.dref;
  const child = spawn(
    process.execPath,
    [
      cairnBin,
      '--store',
      store,
      'realize',
      file,
      '--json',
      '--explain',
      '--builders',
      'slurm:cairn?maxJobs=2',
      '--substituter',
      url,
      '--key',
      key,
      '--remote-cairn',
      `${process.execPath} ${cairnBin}`,
    ],
    {
      cwd: repoRoot,
      env: { ...process.env, SLURM_CONF: slurmConf, TMPDIR: jobTmp },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<CliResult>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  try {
    let buildPid: string | undefined;
    for (let i = 0; !buildPid; i++) {
      assert.ok(i < 1200, `part-0's build never ran in a job: ${stderr}`);
      await sleep(50);
      buildPid = buildDrvIn(jobTmp, part0);
    }
    kill({ realizePid: child.pid!, buildPid, jobTmp });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  const r = ok(await done);
  return { res: JSON.parse(r.stdout) as Result, stderr: r.stderr, file, jobTmp, store };
}

/** What every kill leaves: part-0 rebuilt here, results equal to a local realize, clean stores and cache. */
function assertRecovered(o: { res: Result; stderr: string; file: string; jobTmp: string; store: string }): void {
  const part0 = o.res.plan.find((p) => p.name === 'part-0')!;
  assert.equal(part0.where?.builder, 'local', JSON.stringify(part0.where));
  assert.equal(part0.where?.why, 'fallback');
  assert.deepEqual(
    part0.where?.failures.map((f) => f.builder),
    ['slurm:cairn'],
  );
  assert.equal(o.res.warnings?.length, 1, JSON.stringify(o.res.warnings));
  assert.match(o.stderr, /part-0: built locally: fallback after the failure of slurm:cairn \(E_\w+\)/);
  const local = JSON.parse(
    ok(cairn(path.join(o.store + '-reference'), ['realize', o.file, '--json', '-q'])).stdout,
  ) as Result;
  const want = new Map(local.plan.map((p) => [p.name, p.rrefs]));
  for (const p of o.res.plan) assert.deepEqual(p.rrefs, want.get(p.name), p.name);
  const verify = JSON.parse(cairn(o.store, ['store', 'verify', '--json']).stdout) as VerifyReport;
  assert.deepEqual(verify.problems, []);
  assert.deepEqual(tmpEntries(o.store), []);
  // The cache holds part-0 as this store built it (sent as the report's input), complete, and nothing else of it.
  const rows = JSON.parse(ok(cairn(o.store, ['cache', 'ls', url, part0.dref, '--json'])).stdout) as {
    rref: string;
    problem?: string;
  }[];
  assert.deepEqual(
    rows.map((r) => [r.rref, r.problem]),
    part0.rrefs.map((r) => [r, undefined]),
  );
  assert.deepEqual(jobDirs(o.jobTmp), [], 'no job store is left');
}

describe('Slurm jobs killed mid-build', () => {
  it('scancel: the job cleans up after itself; the derivation is rebuilt here', async () => {
    let cancelled = '';
    const out = await realizeAndKill('scancel', ({ buildPid }) => {
      cancelled = jobIdOf(buildPid);
      const r = spawnSync('scancel', [cancelled], { encoding: 'utf8', env: { ...process.env, SLURM_CONF: slurmConf } });
      assert.equal(r.status, 0, r.stderr);
    });
    assertRecovered(out);
    assert.ok(cancelled);
  });

  it('srun SIGKILLed: the job is killed with it; its store is swept by the next job on the node', async () => {
    const out = await realizeAndKill('srun-kill', ({ realizePid, buildPid }) => {
      const job = jobIdOf(buildPid);
      const srun = pids().find(
        (p) =>
          ppid(p) === realizePid && cmdline(p)[0]?.endsWith('srun') && cmdline(p).includes('--job-name=cairn-part-0'),
      );
      assert.ok(srun, `the srun of job ${job}, a child of the realize`);
      process.kill(Number(srun), 'SIGKILL');
    });
    assertRecovered(out);
  });
});
