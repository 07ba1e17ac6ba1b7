/**
 * `cairn realize --builders slurm:cairn` against a real single-node Slurm
 * (scripts/slurm.sh) with the S3 cache on Swift as the data plane: every
 * stage of the fan-out pipeline is built by its own job, in a store of the
 * job's own, and comes back through the cache; the results equal a local
 * realize, and no job store or job is left behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cairn, cairnAsync, cairnBin, isolateModuleCache, ok, tempDir } from './helpers.js';
import { buildersCache } from './fixtures/builders/builders-cache.js';
import { ensureSlurm } from './fixtures/slurm.js';
import { writeFanout } from './fixtures/builders/fanout.js';
import { rzDir, type VerifyReport } from './fixtures/torture/support.js';

isolateModuleCache(after, 'cairn-builders-slurm-cache');

let t: { dir: string; cleanup: () => void };
let url: string;
let key: string;
let env: NodeJS.ProcessEnv;
// Job stores are made under this TMPDIR (srun passes the environment on), so the test can see them go.
let jobTmp: string;

before(async () => {
  t = tempDir('cairn-builders-slurm');
  jobTmp = path.join(t.dir, 'job-tmp');
  fs.mkdirSync(jobTmp);
  env = { SLURM_CONF: ensureSlurm(), TMPDIR: jobTmp };
  ({ url, key } = await buildersCache(t.dir, 'cairn-slurm', { primed: true }));
});
after(() => t?.cleanup());

interface Result {
  builds: number;
  targets: { rrefs: string[] }[];
  plan: { name: string; action: string; rrefs: string[]; where?: { builder: string; why: string } }[];
  warnings?: string[];
}

const slurmJobs = (): string[] =>
  spawnSync('squeue', ['-h', '-o', '%j'], { encoding: 'utf8', env: { ...process.env, ...env } })
    .stdout.split('\n')
    .filter((l) => l.startsWith('cairn-'));

describe('Slurm builders', () => {
  it('builds the fan-out pipeline in Slurm jobs, through the cache; equal to a local realize', async () => {
    const file = writeFanout(t.dir, { salt: `slurm-${Date.now()}`, sleepMs: 300, resources: { cpus: 2, memory: 300 } });
    const store = path.join(t.dir, 'coordinator');
    const r = ok(
      await cairnAsync(
        store,
        [
          'realize',
          file,
          '--json',
          '--explain',
          '--builders',
          'slurm:cairn?maxJobs=8',
          '--substituter',
          url,
          '--key',
          key,
          '--remote-cairn',
          `${process.execPath} ${cairnBin}`,
        ],
        { env },
      ),
    );
    const res = JSON.parse(r.stdout) as Result;
    assert.equal(res.builds, 9);
    for (const p of res.plan) {
      assert.equal(p.where?.builder, 'slurm:cairn', `${p.name}: ${JSON.stringify(p.where)}`);
      assert.equal(p.where?.why, 'slot free');
    }
    assert.equal(res.warnings, undefined);
    assert.match(r.stderr, /report: built on slurm:cairn: a slot was free/);
    // Equal to a local realize in a fresh store.
    const local = JSON.parse(
      ok(cairn(path.join(t.dir, 'reference'), ['realize', file, '--json', '-q'])).stdout,
    ) as Result;
    const want = new Map(local.plan.map((p) => [p.name, p.rrefs]));
    for (const p of res.plan) assert.deepEqual(p.rrefs, want.get(p.name), p.name);
    const report = res.targets[0]!.rrefs[0]!;
    const text = fs.readFileSync(path.join(rzDir(store, report), 'out', 'report.txt'), 'utf8');
    assert.equal(text.split('\n').filter(Boolean).length, 8);
    const verify = JSON.parse(cairn(store, ['store', 'verify', '--json']).stdout) as VerifyReport;
    assert.deepEqual(verify.problems, []);
    // part-0's job asked for its stage's resources (finished jobs stay listed for MinJobAge, 60 s).
    const jobs = spawnSync('scontrol', ['show', 'job', '-o'], { encoding: 'utf8', env: { ...process.env, ...env } });
    const part0 = jobs.stdout.split('\n').filter((l) => l.includes('JobName=cairn-part-0 '));
    assert.ok(part0.length >= 1, jobs.stdout + jobs.stderr);
    // The newest (an earlier run's jobs may still be listed).
    assert.match(part0.at(-1)!, / NumCPUs=2 /);
    assert.match(part0.at(-1)!, /mem=300M/);
    const part1 = jobs.stdout.split('\n').findLast((l) => l.includes('JobName=cairn-part-1 '))!;
    assert.match(part1, / NumCPUs=1 /);
    // Every job's store is gone, and no job is left.
    assert.deepEqual(
      fs.readdirSync(jobTmp).filter((n) => n.startsWith('cairn-slurm-job')),
      [],
    );
    assert.deepEqual(slurmJobs(), []);
  });

  it('a slurm builder without a cache to exchange through is refused before anything runs', () => {
    const file = writeFanout(t.dir, { salt: 'no-cache', parts: 1 });
    const r = cairn(path.join(t.dir, 'no-cache'), ['realize', file, '--builders', 'slurm', '--no-substituters'], {
      env,
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cairn: error E_USAGE: a slurm builder exchanges inputs and results through a binary cache/);
  });
});
