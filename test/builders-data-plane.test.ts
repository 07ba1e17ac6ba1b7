/**
 * The job script of the cache data plane (slurmJobScript: a Slurm job, or
 * an ssh host with a cache) run for real with `sh`, the CLI and a file://
 * cache, on a builder store that already holds another realization of the
 * derivation (built from other inputs): only what this build chose reaches
 * the cache; and the job sweeps the stores of jobs killed outright (their
 * lock free), never a running job's, never through a link.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, cairnBin, isolateModuleCache, ok, tempDir } from './helpers.js';
import { rzDir } from './fixtures/torture/support.js';
import { slurmJobScript } from '../src/stages/builders/slurm.js';
import type { Derivation } from '../src/stages/instantiate.js';
import type { RRef } from '../src/store/refs.js';

isolateModuleCache(after, 'cairn-builders-data-plane-cache');
const t = tempDir('cairn-builders-data-plane');
after(() => t.cleanup());

// `seed` differs on every build (a nondeterministic input); `copy` depends on it.
const STAGES = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { stage } from 'cairn';

export const seed = stage({
  name: 'seed',
  config: { v: 1 },
  build: ({ out }) => fs.writeFileSync(path.join(out, 'seed.txt'), randomUUID()),
});
export default stage({
  name: 'copy',
  config: { seed },
  build: ({ config, out }) =>
    fs.writeFileSync(path.join(out, 'copy.txt'), 'copy of ' + fs.readFileSync(config.seed.file('seed.txt'), 'utf8')),
});
`;

interface Realized {
  plan: { name: string; dref: string; rrefs: string[] }[];
}

function realize(store: string, file: string): Map<string, { dref: string; rrefs: string[] }> {
  const r = JSON.parse(ok(cairn(store, ['realize', file, '--self-contained', '--json', '-q'])).stdout) as Realized;
  return new Map(r.plan.map((p) => [p.name, p]));
}

function exportClosure(store: string, rrefs: string[], name: string): string {
  const file = path.join(t.dir, `${name}.tar`);
  ok(cairn(store, ['export', ...rrefs, '-o', file]));
  return file;
}

const cached = (url: string): string[] =>
  (JSON.parse(ok(cairn(path.join(t.dir, 'lister'), ['cache', 'ls', url, '--json'])).stdout) as { rref: string }[])
    .map((e) => e.rref)
    .sort();

describe('the cache data plane', () => {
  it("a job pushes exactly the realizations its build chose, not the builder store's older ones", async () => {
    const file = path.join(t.dir, 'stages.ts');
    fs.writeFileSync(file, STAGES);
    // Two coordinators realized the same derivations: different seeds, so different copies.
    const one = realize(path.join(t.dir, 'one'), file);
    const two = realize(path.join(t.dir, 'two'), file);
    const copy = two.get('copy')!;
    assert.equal(one.get('copy')!.dref, copy.dref);
    assert.notDeepEqual(one.get('copy')!.rrefs, copy.rrefs);
    // The builder's store already holds copy (and seed) from the first coordinator's build.
    const builder = path.join(t.dir, 'builder');
    ok(cairn(builder, ['import', exportClosure(path.join(t.dir, 'one'), one.get('copy')!.rrefs, 'old')]));

    const url = `file://${path.join(t.dir, 'cache')}`;
    ok(cairn(path.join(t.dir, 'keys'), ['key', 'generate', path.join(t.dir, 'k')]));
    const key = path.join(t.dir, 'k.secret');
    const pub = fs.readFileSync(path.join(t.dir, 'k.public'), 'utf8').trim();
    // The second coordinator sends its seed through the cache, as a builder's caller does.
    const inputs = two.get('seed')!.rrefs as RRef[];
    ok(cairn(path.join(t.dir, 'two'), ['cache', 'push', url, ...inputs, '--key', key]));
    assert.deepEqual(cached(url), [...inputs].sort());

    const drvs = path.join(t.dir, 'drv.tar');
    ok(cairn(path.join(t.dir, 'two'), ['export-drv', copy.dref, '-o', drvs]));
    const node = { dref: copy.dref, name: 'copy' } as unknown as Derivation;
    const script = slurmJobScript(
      `${process.execPath} ${cairnBin}`,
      url,
      { node, inputs, log: () => {} },
      key,
      pub,
      builder,
    );
    const jobTmp = path.join(t.dir, 'job-tmp');
    fs.mkdirSync(jobTmp);
    // What a job finds in TMPDIR: the store of a job killed outright (its lock free), a running job's (its
    // lock held), a job's that has no lock yet, and a link to someone's directory: only the first goes.
    const plant = (name: string, lock: boolean): string => {
      const d = path.join(jobTmp, `cairn-slurm-job.${name}`);
      fs.mkdirSync(path.join(d, 'store', 'd'), { recursive: true });
      fs.writeFileSync(path.join(d, 'store', 'd', 'f'), 'x', { mode: 0o444 });
      fs.chmodSync(path.join(d, 'store', 'd'), 0o555);
      if (lock) fs.writeFileSync(path.join(d, 'lock'), '');
      return d;
    };
    const killed = plant('killed', true);
    const running = plant('running', true);
    const starting = plant('starting', false);
    const elsewhere = path.join(t.dir, 'elsewhere');
    fs.mkdirSync(elsewhere);
    fs.writeFileSync(path.join(elsewhere, 'lock'), '');
    fs.symlinkSync(elsewhere, path.join(jobTmp, 'cairn-slurm-job.link'));
    const holder = spawn('flock', [path.join(running, 'lock'), 'sleep', '60'], { stdio: 'ignore' });
    let r: { status: number | null; stdout: string; stderr: string };
    try {
      for (let i = 0; spawnSync('flock', ['-n', path.join(running, 'lock'), 'true']).status === 0; i++) {
        assert.ok(i < 200, 'flock holds the lock');
        await sleep(20);
      }
      r = spawnSync('/bin/sh', ['-c', script], {
        input: fs.readFileSync(drvs),
        encoding: 'utf8',
        env: { ...process.env, TMPDIR: jobTmp },
      });
    } finally {
      holder.kill('SIGKILL');
    }
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!fs.existsSync(killed), 'the killed job store is swept');
    for (const d of [running, starting]) assert.ok(fs.existsSync(path.join(d, 'store', 'd', 'f')), d);
    assert.ok(fs.existsSync(path.join(elsewhere, 'lock')), 'nothing is removed through a link');
    assert.ok(fs.lstatSync(path.join(jobTmp, 'cairn-slurm-job.link')).isSymbolicLink());
    const report = JSON.parse(r.stdout) as { realizations: string[]; built: boolean };
    assert.equal(report.built, true);
    assert.deepEqual(report.realizations, copy.rrefs, 'the same RRef as the coordinator built');
    // The builder store has both copies now; only the new one (and its input) is in the cache.
    ok(cairn(builder, ['store', 'verify']));
    for (const rref of [...one.get('copy')!.rrefs, ...copy.rrefs])
      assert.ok(fs.existsSync(rzDir(builder, rref)), `${rref} is in the builder's store`);
    assert.deepEqual(cached(url), [...inputs, ...copy.rrefs].sort());
    assert.deepEqual(
      fs.readdirSync(jobTmp).sort(),
      ['cairn-slurm-job.link', 'cairn-slurm-job.running', 'cairn-slurm-job.starting'],
      'the job removed its own scratch directory',
    );
  });
});
