/**
 * The builder scheduler without hosts: spec parsing, resources, and the
 * pool's placement rules with builders whose faults are injected (the real
 * ssh and Slurm builders are exercised in builders-ssh and builders-slurm).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, stage } from '../src/index.js';
import { parseBuilderSpec, parseBuilderSpecs } from '../src/stages/builders/spec.js';
import { checkResources, slurmResourceArgs } from '../src/stages/builders/resources.js';
import { BuilderPool, type RemoteBuilder } from '../src/stages/builders/pool.js';
import { explainLine } from '../src/stages/builders/explain.js';
import { slurmJobScript } from '../src/stages/builders/slurm.js';
import { instantiate, type Derivation } from '../src/stages/instantiate.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cairn, isCode, ok, tempDir } from './helpers.js';
import { writeFanout } from './fixtures/builders/fanout.js';

const node = (name: string): Derivation => {
  const s = stage({ name, config: {}, build: () => {} });
  const g = instantiate(s);
  return g.nodes.get(g.targets[0]!)!;
};

describe('builder specs', () => {
  it('parses local, ssh and slurm specs', () => {
    assert.deepEqual(parseBuilderSpec('local'), { kind: 'local', name: 'local' });
    assert.deepEqual(parseBuilderSpec('ssh://root@10.0.0.2?maxJobs=4'), {
      kind: 'ssh',
      name: 'ssh://root@10.0.0.2',
      user: 'root',
      host: '10.0.0.2',
      store: '.cache/cairn-builder',
      maxJobs: 4,
    });
    assert.deepEqual(parseBuilderSpec('ssh://b1:2222/srv/cairn'), {
      kind: 'ssh',
      name: 'ssh://b1:2222/srv/cairn',
      host: 'b1',
      port: 2222,
      store: '/srv/cairn',
      maxJobs: 1,
    });
    assert.deepEqual(parseBuilderSpec('slurm:gpu?maxJobs=3'), {
      kind: 'slurm',
      name: 'slurm:gpu',
      partition: 'gpu',
      maxJobs: 3,
    });
    assert.equal(parseBuilderSpec('slurm').kind, 'slurm');
    assert.equal(parseBuilderSpecs(['local', 'ssh://a', 'ssh://a', 'local']).length, 2);
  });

  it('refuses bad specs with E_BAD_BUILDER', () => {
    for (const bad of [
      '',
      'ssh://',
      'ssh://-oProxyCommand=x',
      'ssh://-l@host',
      'ssh://h?maxJobs=0',
      'ssh://h?maxJobs=1.5',
      'ssh://h?jobs=2',
      'ssh://h:99999',
      'ssh://h/',
      'slurm:-p',
      'slurm:a b',
      'http://h',
      'ssh://h?maxJobs=1?x',
    ])
      assert.throws(() => parseBuilderSpec(bad), isCode('E_BAD_BUILDER'), bad);
  });

  it('resources: checked at stage(), not part of the DRef, turned into srun options', () => {
    const a = stage({ name: 'r', config: {}, build: () => {} });
    const b = stage({ name: 'r', config: {}, build: () => {}, resources: { cpus: 2, memory: '4g', gpus: 1 } });
    assert.equal(instantiate(a).targets[0], instantiate(b).targets[0]);
    assert.deepEqual(b.resources, { cpus: 2, memory: '4G', gpus: 1 });
    assert.deepEqual(slurmResourceArgs(b.resources), ['--cpus-per-task=2', '--mem=4G', '--gpus=1']);
    assert.deepEqual(slurmResourceArgs(undefined), ['--cpus-per-task=1']);
    for (const bad of [{ cpus: 0 }, { cpus: 1.5 }, { memory: '4 GB' }, { memory: -1 }, { gpu: 1 }, [], 'x'])
      assert.throws(() => checkResources('s', bad), isCode('E_BAD_STAGE_SPEC'), JSON.stringify(bad));
  });

  it('the Slurm job script quotes every word it is given', () => {
    const n = node('quoted');
    const script = slurmJobScript('cairn', "s3://b/p?x='y'", { node: n, inputs: [], log: () => {} }, '/k k', 'n:K');
    assert.match(script, /cache push 's3:\/\/b\/p\?x='\\''y'\\''' /);
    assert.match(script, /--key '\/k k'/);
    assert.match(script, /trap .*rm -rf "\$S"' EXIT/);
  });
});

/** A remote builder whose behaviour the test sets; counts what it was given. */
function fake(
  name: string,
  slots: number,
  behave: (n: Derivation) => Promise<string>,
): RemoteBuilder & { got: string[] } {
  const got: string[] = [];
  return {
    name,
    slots,
    got,
    build: async (job) => {
      got.push(job.node.name);
      return [await behave(job.node)] as never;
    },
  };
}

const gone = (): Promise<string> =>
  Promise.reject(new CairnError('E_SYNC_FAILED', 'ssh to h failed: connection refused'));
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('the builder pool', () => {
  it('spreads ready derivations over free slots', async () => {
    let open = 0;
    let peak = 0;
    const slow = async (n: Derivation): Promise<string> => {
      open++;
      peak = Math.max(peak, open);
      for (let i = 0; i < 5; i++) await tick();
      open--;
      return n.name;
    };
    const a = fake('ssh://a', 2, slow);
    const b = fake('ssh://b', 2, slow);
    const pool = new BuilderPool([a, b], { local: false, localSlots: 1 });
    const nodes = Array.from({ length: 8 }, (_, i) => node(`s${i}`));
    const runs = await Promise.all(
      nodes.map((n) =>
        pool.run<unknown>(
          n,
          (r) => r.build({ node: n, inputs: [], log() {} }),
          () => Promise.reject(new Error('no local')),
        ),
      ),
    );
    assert.equal(peak, 4, 'four slots in all, all used');
    assert.ok(a.got.length >= 1 && b.got.length >= 1, `${a.got.length} / ${b.got.length}`);
    assert.equal(a.got.length + b.got.length, 8);
    for (const r of runs) assert.equal(r.placement.why, 'slot free');
  });

  it('a builder that fails is left out, its derivation built elsewhere, and one warning line names it', async () => {
    const a = fake('ssh://a', 1, gone);
    const b = fake('ssh://b', 1, async (n) => n.name);
    const pool = new BuilderPool([a, b], { local: false, localSlots: 1 });
    const warnings: string[] = [];
    pool.onWarning((l) => warnings.push(l));
    const n1 = node('one');
    const r1 = await pool.run<unknown>(
      n1,
      (r) => r.build({ node: n1, inputs: [], log() {} }),
      () => Promise.resolve('local'),
    );
    // a had the most free slots (tie: first) and failed; b built it.
    assert.deepEqual(r1.value, ['one']);
    assert.equal(r1.placement.builder, 'ssh://b');
    assert.equal(r1.placement.why, 'retry');
    assert.deepEqual(
      r1.placement.failures.map((f) => [f.builder, f.code]),
      [['ssh://a', 'E_SYNC_FAILED']],
    );
    assert.match(
      explainLine({ dref: n1.dref, name: 'one', action: 'build', rrefs: [], where: r1.placement }),
      /on ssh:\/\/b: retried after the failure of ssh:\/\/a \(E_SYNC_FAILED\)/,
    );
    const n2 = node('two');
    await pool.run<unknown>(
      n2,
      (r) => r.build({ node: n2, inputs: [], log() {} }),
      () => Promise.resolve('local'),
    );
    assert.deepEqual(a.got, ['one'], 'a failed builder gets nothing more');
    // One line says so (not silence: otherwise only --explain would tell), once for the run.
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(
      warnings[0]!,
      /^builder ssh:\/\/a failed \(E_SYNC_FAILED .*\); its builds go elsewhere, retried after a backoff$/,
    );
  });

  it('when every remote builder fails: local, with one warning line', async () => {
    const a = fake('ssh://a', 1, gone);
    const b = fake('ssh://b', 1, () => Promise.reject(new CairnError('E_SYNC_HASH_MISMATCH', 'tampered')));
    const pool = new BuilderPool([a, b], { local: false, localSlots: 1 });
    const warnings: string[] = [];
    pool.onWarning((l) => warnings.push(l));
    for (const name of ['x', 'y', 'z']) {
      const n = node(name);
      const r = await pool.run<unknown>(
        n,
        (rb) => rb.build({ node: n, inputs: [], log() {} }),
        () => Promise.resolve('here'),
      );
      assert.equal(r.value, 'here');
      assert.equal(r.placement.builder, 'local');
      assert.equal(r.placement.why, 'fallback');
      assert.deepEqual(r.placement.failures.map((f) => f.builder).sort(), ['ssh://a', 'ssh://b']);
    }
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(
      warnings[0]!,
      /every remote builder failed \(ssh:\/\/a: E_SYNC_FAILED .*ssh:\/\/b: E_SYNC_HASH_MISMATCH tampered\); building/,
    );
  });

  it('a failure of the derivation itself is not retried elsewhere', async () => {
    const a = fake('ssh://a', 1, () => Promise.reject(new CairnError('E_BUILD_FAILED', 'stage s: boom')));
    const b = fake('ssh://b', 1, async (n) => n.name);
    const pool = new BuilderPool([a, b], { local: false, localSlots: 1 });
    const n = node('s');
    await assert.rejects(
      pool.run<unknown>(
        n,
        (r) => r.build({ node: n, inputs: [], log() {} }),
        () => Promise.resolve('l'),
      ),
      isCode('E_BUILD_FAILED'),
    );
    assert.deepEqual(b.got, []);
  });

  it('local as a listed builder takes derivations while remote slots are busy', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const a = fake('ssh://a', 1, async (n) => {
      await held;
      return n.name;
    });
    const pool = new BuilderPool([a], { local: true, localSlots: 1 });
    const n1 = node('first');
    const n2 = node('second');
    const p1 = pool.run<unknown>(
      n1,
      (r) => r.build({ node: n1, inputs: [], log() {} }),
      () => Promise.resolve('here-1'),
    );
    const p2 = pool.run<unknown>(
      n2,
      (r) => r.build({ node: n2, inputs: [], log() {} }),
      () => Promise.resolve('here-2'),
    );
    const r2 = await p2;
    release();
    const r1 = await p1;
    assert.deepEqual([r1.placement.builder, r2.placement.builder].sort(), ['local', 'ssh://a']);
  });
});

/** Runs `n` through the pool: `remote` on a builder, `here` locally. */
const runOn = (pool: BuilderPool, n: Derivation, here: () => Promise<unknown> = () => Promise.resolve('here')) =>
  pool.run<unknown>(n, (r) => r.build({ node: n, inputs: [], log() {} }), here);

/** A short backoff, so these tests wait tens of milliseconds, not seconds. */
const quick = { baseMs: 40, maxMs: 160, maxFailures: 3 };

describe('the builder pool: failed builders come back after a backoff', () => {
  it('a builder that failed is down for a while (local fallback, one warning), then takes builds again', async () => {
    let calls = 0;
    const a = fake('ssh://a', 1, async (n) => {
      if (++calls === 1) throw new CairnError('E_SYNC_FAILED', 'ssh: connect to host a: connection refused');
      return n.name;
    });
    const pool = new BuilderPool([a], { local: false, localSlots: 1, backoff: quick });
    const warnings: string[] = [];
    pool.onWarning((l) => warnings.push(l));
    const r1 = await runOn(pool, node('one'));
    assert.equal(r1.placement.builder, 'local');
    assert.equal(r1.placement.why, 'fallback');
    assert.deepEqual(r1.placement.down, [{ builder: 'ssh://a', state: 'backoff', failures: 1, code: 'E_SYNC_FAILED' }]);
    assert.deepEqual(
      r1.placement.failures.map((f) => f.builder),
      ['ssh://a'],
    );
    // While it backs off, builds run here and say which builder was down.
    const r2 = await runOn(pool, node('two'));
    assert.equal(r2.placement.builder, 'local');
    assert.deepEqual(r2.placement.down, [{ builder: 'ssh://a', state: 'backoff', failures: 1, code: 'E_SYNC_FAILED' }]);
    assert.match(
      explainLine({ dref: node('two').dref, name: 'two', action: 'build', rrefs: [], where: r2.placement }),
      new RegExp(
        String.raw`two: built locally: fallback after the failure of ssh://a \(E_SYNC_FAILED\); ` +
          String.raw`down then: ssh://a \(backing off after 1 failure, last E_SYNC_FAILED\)$`,
      ),
    );
    assert.deepEqual(a.got, ['one']);
    await sleep(quick.baseMs + 20);
    const r3 = await runOn(pool, node('three'));
    assert.equal(r3.placement.builder, 'ssh://a', 'back after its backoff');
    assert.equal(r3.placement.why, 'slot free');
    assert.deepEqual(a.got, ['one', 'three']);
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(
      warnings[0]!,
      /^every remote builder failed \(ssh:\/\/a: E_SYNC_FAILED ssh: connect .*\); building locally/,
    );
  });

  it('a build waiting for a local slot takes a builder that comes back up', async () => {
    let calls = 0;
    const a = fake('ssh://a', 1, async (n) => {
      if (++calls === 1) throw new CairnError('E_BUILDER_FAILED', 'ssh://a: exit 255: Connection reset');
      return n.name;
    });
    const pool = new BuilderPool([a], { local: false, localSlots: 1, backoff: quick });
    let releaseLocal!: () => void;
    const localHeld = new Promise<void>((r) => (releaseLocal = r));
    // one fails on a, falls back here and keeps the only local slot busy.
    const p1 = runOn(pool, node('one'), async () => {
      await localHeld;
      return 'here';
    });
    while (a.got.length === 0) await tick();
    await tick();
    // two finds a down and the local slot busy: it waits, and a's backoff ends first.
    const r2 = await runOn(pool, node('two'));
    assert.equal(r2.placement.builder, 'ssh://a');
    releaseLocal();
    const r1 = await p1;
    assert.equal(r1.placement.builder, 'local');
    assert.equal(r1.placement.why, 'fallback');
  });

  it('dropped for the run after maxFailures failures in a row', async () => {
    const a = fake('ssh://a', 1, gone);
    const pool = new BuilderPool([a], { local: false, localSlots: 1, backoff: quick });
    const warnings: string[] = [];
    pool.onWarning((l) => warnings.push(l));
    for (let i = 0; i < quick.maxFailures; i++) {
      // Each try waits out the backoff so the builder is tried again.
      await sleep(quick.maxMs + 20);
      await runOn(pool, node(`try-${i}`));
    }
    assert.equal(a.got.length, quick.maxFailures);
    await sleep(quick.maxMs + 20);
    const r = await runOn(pool, node('after'));
    assert.equal(a.got.length, quick.maxFailures, 'a dropped builder gets nothing more');
    assert.deepEqual(r.placement.down, [{ builder: 'ssh://a', state: 'dropped', failures: 3, code: 'E_SYNC_FAILED' }]);
    assert.match(
      explainLine({ dref: node('after').dref, name: 'after', action: 'build', rrefs: [], where: r.placement }),
      /down then: ssh:\/\/a \(dropped after 3 failures, last E_SYNC_FAILED\)$/,
    );
    assert.equal(warnings.length, 1);
  });

  it("a build's own failure does not put its builder down", async () => {
    const a = fake('ssh://a', 1, async (n) => {
      if (n.name === 'bad') throw new CairnError('E_BUILD_FAILED', 'stage bad: boom');
      return n.name;
    });
    const pool = new BuilderPool([a], { local: false, localSlots: 1, backoff: quick });
    await assert.rejects(runOn(pool, node('bad')), isCode('E_BUILD_FAILED'));
    const r = await runOn(pool, node('good'));
    assert.equal(r.placement.builder, 'ssh://a');
    assert.deepEqual(a.got, ['bad', 'good']);
  });

  it('while one builder is down, builds go to the other one (no fallback, no waiting)', async () => {
    let bCalls = 0;
    const b = fake('ssh://b', 1, async (n) => {
      if (++bCalls === 1) throw new CairnError('E_SYNC_FAILED', 'b is gone');
      return n.name;
    });
    const c = fake('ssh://c', 1, async (n) => n.name);
    const pool = new BuilderPool([b, c], { local: false, localSlots: 1, backoff: { ...quick, baseMs: 60_000 } });
    const r1 = await runOn(pool, node('one'));
    assert.equal(r1.placement.builder, 'ssh://c');
    assert.equal(r1.placement.why, 'retry');
    for (const name of ['two', 'three']) assert.equal((await runOn(pool, node(name))).placement.builder, 'ssh://c');
    assert.deepEqual(b.got, ['one']);
  });
});

describe('builders in the store configuration', () => {
  it("config.json's builders is realize's default; a bad spec there fails before anything runs", () => {
    const t = tempDir('cairn-builders-config');
    try {
      const file = writeFanout(t.dir, { salt: 'config', parts: 1, sleepMs: 0 });
      const store = path.join(t.dir, 'store');
      fs.mkdirSync(store);
      fs.writeFileSync(path.join(store, 'config.json'), JSON.stringify({ builders: ['ssh://-oProxyCommand=x'] }));
      const bad = cairn(store, ['realize', file]);
      assert.equal(bad.code, 1, bad.stderr);
      assert.match(bad.stderr, /cairn: error E_BAD_BUILDER: /);
      // --builders replaces it; `local` alone builds here, as without builders.
      const r = JSON.parse(ok(cairn(store, ['realize', file, '--json', '--builders', 'local'])).stdout) as {
        builds: number;
        plan: { where?: unknown }[];
      };
      assert.equal(r.builds, 2);
      assert.ok(r.plan.every((p) => p.where === undefined));
      fs.writeFileSync(path.join(store, 'config.json'), JSON.stringify({ builders: 'local' }));
      assert.match(cairn(store, ['realize', file]).stderr, /cairn: error E_STORE_CONFIG: /);
    } finally {
      t.cleanup();
    }
  });
});
