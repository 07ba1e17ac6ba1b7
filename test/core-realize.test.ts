/**
 * realize(): building, caching, merging, sealing, failures and the store layout.
 */
import { describe, it, beforeEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import fsDefault from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  all,
  CairnError,
  collectGarbage,
  exact,
  instantiate,
  latest,
  parseRef,
  realize,
  stage,
  LocalStore,
  type BuildContext,
  type RRef,
  type Stage,
} from '../src/index.js';
import { isCode, drefOf, one, storePerTest } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';
import type { DRef } from '../src/store/refs.js';

let dir: string;
let store: LocalStore;
storePerTest('cairn-core-realize', (t) => ({ dir, store } = t));

const tmpEntries = (): string[] => fs.readdirSync(path.join(store.root, 'tmp'));
const rzOf = (dref: DRef): RRef[] =>
  storeIndex(store)
    .realizationsOf(dref)
    .map((r) => r.rref);
const rzDirsOf = (dref: DRef): string[] => {
  try {
    return fs.readdirSync(path.join(store.root, 'd', dref, 'r'));
  } catch {
    return [];
  }
};
const mode = (p: string): number => fs.lstatSync(p).mode & 0o7777;
/** Relative paths of every non-directory entry under dir. */
const filesUnder = (root: string, rel = ''): string[] =>
  fs
    .readdirSync(path.join(root, rel), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(root, path.join(rel, e.name)) : [path.join(rel, e.name)]));

/** Writes a random file into every output: each output is a different realization. */
const randomBuild = ({ outs }: BuildContext<unknown>): void => {
  for (const o of outs) fs.writeFileSync(path.join(o, 'r.bin'), randomBytes(16));
};
/** Writes the same file every time: a deterministic build. */
const fixedBuild = ({ outs }: BuildContext<unknown>): void => {
  for (const o of outs) fs.writeFileSync(path.join(o, 'same.txt'), 'same\n');
};

/** A deterministic build that records the upstream RRefs it saw, counting calls per name. */
const calls = new Map<string, number>();
const counted = (
  name: string,
  config: Record<string, unknown> = {},
  extra: Partial<Parameters<typeof stage>[0]> = {},
): Stage =>
  stage({
    name,
    config: { ...config, name },
    build: (ctx) => {
      const n = ctx.name;
      calls.set(n, (calls.get(n) ?? 0) + 1);
      const seen: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(ctx.config as Record<string, unknown>)) {
        seen[k] = v && typeof v === 'object' && 'rrefs' in v ? (v as { rrefs: readonly string[] }).rrefs : v;
      }
      fs.writeFileSync(path.join(ctx.out, 'seen.json'), JSON.stringify(seen));
    },
    ...extra,
  });
beforeEach(() => calls.clear());

/** Collects uncaught exceptions that happen while fn runs and shortly after. */
async function uncaughtDuring(fn: () => Promise<void>): Promise<unknown[]> {
  const caught: unknown[] = [];
  const onErr = (e: unknown) => {
    caught.push(e);
  };
  process.on('uncaughtException', onErr);
  try {
    await fn();
    // Let child-process and stream events that follow the build settle.
    await sleep(300);
  } finally {
    process.off('uncaughtException', onErr);
  }
  return caught;
}

describe('realize: caching', () => {
  it('realizing twice gives the same RRefs without rebuilding', async () => {
    const a = counted('a');
    const b = counted('b', { a });
    const c = counted('c', { a, b });
    const r1 = await realize(c, { store });
    assert.equal(r1.builds, 3);
    assert.deepEqual(Object.fromEntries(calls), { a: 1, b: 1, c: 1 });
    assert.deepEqual(
      r1.plan.map((p) => p.action),
      ['build', 'build', 'build'],
    );
    const r2 = await realize(c, { store });
    assert.equal(r2.builds, 0);
    assert.deepEqual(Object.fromEntries(calls), { a: 1, b: 1, c: 1 });
    assert.deepEqual(
      r2.plan.map((p) => p.action),
      ['cached', 'cached', 'cached'],
    );
    assert.deepEqual(
      r2.plan.map((p) => p.rrefs),
      r1.plan.map((p) => p.rrefs),
    );
    assert.deepEqual(r2.targets, r1.targets);
    // A fresh LocalStore object on the same directory sees the same thing.
    const again = LocalStore.open(store.root);
    try {
      const r3 = await realize(counted('c', { a: counted('a'), b: counted('b', { a: counted('a') }) }), {
        store: again,
      });
      assert.equal(r3.builds, 0);
      assert.deepEqual(r3.targets, r1.targets);
    } finally {
      again.close();
    }
  });

  it('stores a realization as d/<dref>/r/<rhash>/{out,meta.json,build.log} with drv.json beside it', async () => {
    const s = stage({
      name: 'lay',
      config: { k: 1 },
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'f'), 'data');
      },
    });
    const g = instantiate(s);
    const r = await realize(g, { store });
    const rref = one(r);
    const p = parseRef(rref);
    assert.equal(p.kind, 'rz');
    if (p.kind !== 'rz') return;
    assert.equal(p.dref, g.targets[0]);
    const rz = path.join(store.root, 'd', p.dref, 'r', p.rhash);
    assert.equal(store.rzDir(rref), rz);
    assert.deepEqual(fs.readdirSync(rz).sort(), ['build.log', 'meta.json', 'out']);
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'f'), 'utf8'), 'data');
    assert.equal(
      fs.readFileSync(path.join(store.root, 'd', p.dref, 'drv.json'), 'utf8').trim(),
      g.nodes.get(p.dref)!.drvJson,
    );
    const meta = JSON.parse(fs.readFileSync(path.join(rz, 'meta.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta.rref, rref);
    assert.equal(meta.dref, p.dref);
    assert.equal(meta.name, 'lay');
    assert.equal(meta.files, 1);
    assert.equal(meta.bytes, 4);
    assert.deepEqual(meta.context, {});
    assert.deepEqual(tmpEntries(), []);
  });

  it('gives the build a context: name, dref, n outputs, scratch tmp that is removed afterwards', async () => {
    let seen: { name: string; dref: string; outs: number; out: boolean; tmp: string } | undefined;
    const s = stage({
      name: 'ctx',
      config: {},
      n: 2,
      build: (ctx) => {
        seen = { name: ctx.name, dref: ctx.dref, outs: ctx.outs.length, out: ctx.out === ctx.outs[0], tmp: ctx.tmp };
        fs.writeFileSync(path.join(ctx.tmp, 'scratch'), 'x');
        for (const [i, o] of ctx.outs.entries()) fs.writeFileSync(path.join(o, 'i'), String(i));
      },
    });
    const r = await realize(s, { store });
    assert.equal(seen!.name, 'ctx');
    assert.equal(seen!.dref, drefOf(s));
    assert.equal(seen!.outs, 2);
    assert.equal(seen!.out, true);
    assert.equal(fs.existsSync(seen!.tmp), false);
    assert.equal(rzOf(drefOf(s)).length, 2);
    assert.equal(r.builds, 1);
  });

  it('resolves stage references in the config to Deps of the chosen realizations', async () => {
    const up = stage({
      name: 'up',
      config: {},
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'v.txt'), 'upstream');
      },
    });
    let got: unknown;
    const down = stage({
      name: 'down',
      config: { nested: { up }, list: [up], plain: 5 },
      build: ({ config, out }) => {
        const d = config.nested.up;
        got = {
          rrefs: d.rrefs,
          paths: d.paths,
          path: d.path,
          file: d.file('v.txt'),
          text: fs.readFileSync(d.file('v.txt'), 'utf8'),
          same: config.list[0]!.path === d.path,
          plain: config.plain,
          dref: d.dref,
        };
        fs.writeFileSync(path.join(out, 'x'), '');
      },
    });
    const r = await realize(down, { store });
    const upR = r.plan[0]!.rrefs[0]!;
    assert.deepEqual(got, {
      rrefs: [upR],
      paths: [store.outPath(upR)],
      path: store.outPath(upR),
      file: path.join(store.outPath(upR), 'v.txt'),
      text: 'upstream',
      same: true,
      plain: 5,
      dref: drefOf(up),
    });
  });

  it('accepts an instantiated Graph and several targets', async () => {
    const a = counted('a');
    const b = counted('b', { a });
    const c = counted('c', { a });
    const r = await realize(instantiate([b, c]), { store });
    assert.deepEqual(
      r.targets.map((t) => t.name),
      ['b', 'c'],
    );
    assert.equal(calls.get('a'), 1);
    assert.equal(r.builds, 3);
  });

  it('refuses a cyclic graph with E_CYCLE before building anything', async () => {
    const aCfg: Record<string, unknown> = {};
    const a = counted('a', aCfg);
    const b = counted('b', { a });
    (a.config as Record<string, unknown>).dep = b;
    await assert.rejects(realize(b, { store }), isCode('E_CYCLE'));
    assert.equal(calls.size, 0);
  });
});

describe('realize: RRefs commit to the output tree', () => {
  /** Same name, config and version, so the same DRef; only the build (and so the tree) differs. */
  const variant = (build: (out: string) => void): Stage =>
    stage({ name: 'v', config: { fixed: true }, version: '1', build: ({ out }) => build(out) });

  const pair = async (b1: (out: string) => void, b2: (out: string) => void): Promise<[RRef, RRef]> => {
    const s1 = variant(b1);
    const s2 = variant(b2);
    assert.equal(drefOf(s1), drefOf(s2));
    const r1 = one(await realize(s1, { store }));
    const r2 = one(await realize(s2, { store, force: true }));
    return [r1, r2];
  };

  it('outputs differing only in a file name get different RRefs', async () => {
    const [r1, r2] = await pair(
      (o) => fs.writeFileSync(path.join(o, 'a'), 'x'),
      (o) => fs.writeFileSync(path.join(o, 'b'), 'x'),
    );
    assert.notEqual(r1, r2);
    assert.equal(rzOf(parseRef(r1).kind === 'rz' ? (parseRef(r1) as { dref: DRef }).dref : ('' as DRef)).length, 2);
  });

  it('outputs differing only in the exec bit get different RRefs', async () => {
    const [r1, r2] = await pair(
      (o) => fs.writeFileSync(path.join(o, 'a'), 'x', { mode: 0o644 }),
      (o) => {
        fs.writeFileSync(path.join(o, 'a'), 'x');
        fs.chmodSync(path.join(o, 'a'), 0o755);
      },
    );
    assert.notEqual(r1, r2);
    assert.equal(mode(path.join(store.outPath(r1), 'a')), 0o444);
    assert.equal(mode(path.join(store.outPath(r2), 'a')), 0o555);
  });

  it('outputs differing only in a symlink target get different RRefs', async () => {
    const files = (o: string) => {
      fs.writeFileSync(path.join(o, 'a'), '1');
      fs.writeFileSync(path.join(o, 'b'), '1');
    };
    const [r1, r2] = await pair(
      (o) => {
        files(o);
        fs.symlinkSync('a', path.join(o, 'l'));
      },
      (o) => {
        files(o);
        fs.symlinkSync('b', path.join(o, 'l'));
      },
    );
    assert.notEqual(r1, r2);
    assert.equal(fs.readlinkSync(path.join(store.outPath(r2), 'l')), 'b');
  });

  it('outputs differing only in file content get different RRefs', async () => {
    const [r1, r2] = await pair(
      (o) => fs.writeFileSync(path.join(o, 'a'), 'x'),
      (o) => fs.writeFileSync(path.join(o, 'a'), 'y'),
    );
    assert.notEqual(r1, r2);
  });

  it('identical outputs merge: a deterministic build forced twice is still one realization', async () => {
    let n = 0;
    const s = stage({
      name: 'det',
      config: {},
      build: (ctx) => {
        n++;
        fixedBuild(ctx);
      },
    });
    const r1 = one(await realize(s, { store }));
    const r2 = one(await realize(s, { store, force: true }));
    const r3 = one(await realize(s, { store, force: true }));
    assert.equal(n, 3);
    assert.equal(r1, r2);
    assert.equal(r2, r3);
    assert.deepEqual(rzOf(drefOf(s)), [r1]);
    assert.deepEqual(rzDirsOf(drefOf(s)).length, 1);
    assert.deepEqual(tmpEntries(), []);
  });

  it('identical outputs of one n: 3 build merge into one realization', async () => {
    const s = stage({ name: 'det3', config: {}, n: 3, matcher: all(), build: fixedBuild });
    const r = await realize(s, { store });
    assert.equal(r.builds, 1);
    assert.equal(r.targets[0]!.rrefs.length, 1);
    assert.equal(rzOf(drefOf(s)).length, 1);
  });

  it('different outputs of one n: 3 build give 3 realizations', async () => {
    let n = 0;
    const s = stage({
      name: 'rnd3',
      config: {},
      n: 3,
      matcher: all(),
      build: (ctx) => {
        n++;
        randomBuild(ctx);
      },
    });
    const r = await realize(s, { store });
    assert.equal(n, 1);
    assert.equal(r.builds, 1);
    assert.equal(r.targets[0]!.rrefs.length, 3);
    assert.equal(new Set(r.targets[0]!.rrefs).size, 3);
    assert.deepEqual([...rzOf(drefOf(s))].sort(), [...r.targets[0]!.rrefs].sort());
    // latest() on the same derivation picks exactly one of them, without building.
    const s1 = stage({
      name: 'rnd3',
      config: {},
      n: 3,
      build: (ctx) => {
        n++;
        randomBuild(ctx);
      },
    });
    const r1 = await realize(s1, { store });
    assert.equal(n, 1);
    assert.ok(r.targets[0]!.rrefs.includes(one(r1)), 'expected: r.targets[0]!.rrefs.includes(one(r1))');
  });
});

describe('realize: upstream choice is part of the downstream identity', () => {
  const up = (matcher?: Parameters<typeof stage>[0]['matcher']): Stage =>
    stage({ name: 'up', config: {}, n: 2, build: randomBuild, ...(matcher ? { matcher } : {}) });
  let downBuilds = 0;
  const downBuild = ({ out }: BuildContext<unknown>) => {
    downBuilds++;
    fs.writeFileSync(path.join(out, 'd'), 'same output');
  };
  const down = (u: Stage): Stage => stage({ name: 'down', config: { u }, build: downBuild });
  beforeEach(() => {
    downBuilds = 0;
  });

  it('choosing another upstream realization with exact() gives a new downstream RRef', async () => {
    const first = await realize(down(up(all())), { store });
    const [u1, u2] = first.plan[0]!.rrefs as [RRef, RRef];
    assert.ok(u1 && u2 && u1 !== u2, 'expected: u1 && u2 && u1 !== u2');
    const dA = one(await realize(down(up(exact([u1]))), { store }));
    const dB = one(await realize(down(up(exact([u2]))), { store }));
    assert.equal(downBuilds, 3);
    assert.notEqual(dA, dB);
    assert.notEqual(dA, one(first));
    assert.deepEqual(store.readMeta(dA).context, { [drefOf(up())]: [u1] });
    assert.deepEqual(store.readMeta(dB).context, { [drefOf(up())]: [u2] });
    // The outputs are identical; only the context differs.
    assert.equal(store.readMeta(dA).tree, store.readMeta(dB).tree);
    // Choosing u1 again is cached.
    const again = await realize(down(up(exact([u1]))), { store });
    assert.equal(one(again), dA);
    assert.equal(again.builds, 0);
    assert.equal(downBuilds, 3);
  });

  it('force-building a non-deterministic upstream with latest() gives a new downstream RRef', async () => {
    const u = stage({ name: 'up1', config: {}, build: randomBuild });
    const d = down(u);
    const r1 = await realize(d, { store });
    const r2 = await realize(d, { store, force: ['up1'] });
    assert.notEqual(r2.plan[0]!.rrefs[0], r1.plan[0]!.rrefs[0]);
    assert.notEqual(one(r2), one(r1));
    assert.equal(downBuilds, 2);
    assert.deepEqual(
      r2.plan.map((p) => p.action),
      ['force', 'build'],
    );
    assert.deepEqual(store.readMeta(one(r2)).context, { [drefOf(u)]: [r2.plan[0]!.rrefs[0]] });
    assert.equal(rzOf(drefOf(d)).length, 2);
  });

  it('force-building a deterministic upstream keeps its RRef, so the downstream stays cached', async () => {
    const u = stage({ name: 'up2', config: {}, build: fixedBuild });
    const d = down(u);
    const r1 = await realize(d, { store });
    const r2 = await realize(d, { store, force: ['up2'] });
    assert.deepEqual(
      r2.plan.map((p) => p.action),
      ['force', 'cached'],
    );
    assert.equal(one(r2), one(r1));
    assert.equal(downBuilds, 1);
    assert.equal(r2.builds, 1);
  });
});

describe('realize: failures store nothing', () => {
  it('a broken promise throws E_PROMISE_BROKEN and leaves nothing in the store', async () => {
    const s = stage({
      name: 'liar',
      config: {},
      outputs: ['x'],
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'y'), '');
      },
    });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_PROMISE_BROKEN')(e);
      assert.deepEqual((e as CairnError).details.missing, ['x']);
      return true;
    });
    assert.deepEqual(rzOf(drefOf(s)), []);
    assert.deepEqual(rzDirsOf(drefOf(s)), []);
    assert.deepEqual(tmpEntries(), []);
    assert.deepEqual(storeIndex(store).all(), []);
    assert.equal(fs.existsSync(path.join(store.root, 'failed')), false);
  });

  it('with n: 2, one output breaking the promise stores neither output', async () => {
    const s = stage({
      name: 'half',
      config: {},
      n: 2,
      outputs: ['x', 'sub/y'],
      build: ({ outs }) => {
        fs.mkdirSync(path.join(outs[0]!, 'sub'));
        fs.writeFileSync(path.join(outs[0]!, 'x'), '');
        fs.writeFileSync(path.join(outs[0]!, 'sub', 'y'), '');
        fs.writeFileSync(path.join(outs[1]!, 'x'), '');
      },
    });
    await assert.rejects(realize(s, { store }), isCode('E_PROMISE_BROKEN'));
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(rzDirsOf(drefOf(s)), []);
    assert.deepEqual(tmpEntries(), []);
  });

  it('a promise kept by a directory or by a symlink inside the output is kept', async () => {
    const s = stage({
      name: 'kept',
      config: {},
      outputs: ['dir', 'link'],
      build: ({ out }) => {
        fs.mkdirSync(path.join(out, 'dir'));
        fs.symlinkSync('dir', path.join(out, 'link'));
      },
    });
    const r = await realize(s, { store });
    assert.ok(
      fs.lstatSync(path.join(store.outPath(one(r)), 'link')).isSymbolicLink(),
      "expected: fs.lstatSync(path.join(store.outPath(one(r)), 'link')).isSymbolicLink()",
    );
  });

  it('a build that throws gives E_BUILD_FAILED, stores nothing and leaves tmp empty', async () => {
    let downstream = 0;
    const s = stage({
      name: 'boom',
      config: {},
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'partial'), 'x');
        throw new Error('kaboom');
      },
    });
    const d = stage({
      name: 'after',
      config: { s },
      build: () => {
        downstream++;
      },
    });
    await assert.rejects(realize(d, { store }), (e: unknown) => {
      isCode('E_BUILD_FAILED')(e);
      assert.match((e as Error).message, /kaboom/);
      assert.equal((e as CairnError).details.stage, 'boom');
      return true;
    });
    assert.equal(downstream, 0);
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(rzDirsOf(drefOf(s)), []);
    assert.deepEqual(tmpEntries(), []);
    assert.equal(fs.existsSync(path.join(store.root, 'failed')), false);
  });

  it('an async build that rejects, or throws a non-Error, also gives E_BUILD_FAILED', async () => {
    const s1 = stage({
      name: 'rej',
      config: {},
      build: async () => {
        await sleep(1);
        throw new Error('later');
      },
    });
    await assert.rejects(realize(s1, { store }), isCode('E_BUILD_FAILED'));
    /* eslint-disable @typescript-eslint/only-throw-error -- a non-Error throw is the case tested */
    const s2 = stage({
      name: 'str',
      config: {},
      build: () => {
        throw 'just a string';
      },
    });
    /* eslint-enable @typescript-eslint/only-throw-error */
    await assert.rejects(
      realize(s2, { store }),
      (e: unknown) => isCode('E_BUILD_FAILED')(e) && /just a string/.test((e as Error).message),
    );
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(tmpEntries(), []);
  });

  it('with keepFailed the build directory is kept under STORE/failed/', async () => {
    const s = stage({
      name: 'keep',
      config: {},
      build: ({ out, log }) => {
        log('about to fail');
        fs.writeFileSync(path.join(out, 'partial.txt'), 'half done');
        throw new Error('nope');
      },
    });
    let kept = '';
    await assert.rejects(realize(s, { store, keepFailed: true }), (e: unknown) => {
      isCode('E_BUILD_FAILED')(e);
      kept = String((e as CairnError).details.kept);
      return true;
    });
    assert.equal(path.dirname(kept), path.join(store.root, 'failed'));
    assert.deepEqual(fs.readdirSync(path.join(store.root, 'failed')), [path.basename(kept)]);
    // The layout inside the kept directory is not part of the contract; its content is.
    const files = filesUnder(kept);
    const partial = files.filter((f) => path.basename(f) === 'partial.txt');
    assert.equal(partial.length, 1, `kept files: ${files.join(', ')}`);
    assert.equal(fs.readFileSync(path.join(kept, partial[0]!), 'utf8'), 'half done');
    const logs = files.filter((f) => path.basename(f) === 'build.log');
    assert.equal(logs.length, 1, `kept files: ${files.join(', ')}`);
    const log = fs.readFileSync(path.join(kept, logs[0]!), 'utf8');
    assert.match(log, /about to fail/);
    assert.match(log, /build failed: nope/);
    assert.deepEqual(tmpEntries(), []);
    assert.deepEqual(storeIndex(store).all(), []);
  });

  it('with keepFailed a broken promise is kept too', async () => {
    const s = stage({
      name: 'keep2',
      config: {},
      outputs: ['must'],
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'other'), '1');
      },
    });
    await assert.rejects(realize(s, { store, keepFailed: true }), isCode('E_PROMISE_BROKEN'));
    const failed = fs.readdirSync(path.join(store.root, 'failed'));
    assert.equal(failed.length, 1);
    const files = filesUnder(path.join(store.root, 'failed', failed[0]!));
    assert.equal(files.filter((f) => path.basename(f) === 'other').length, 1, `kept files: ${files.join(', ')}`);
    assert.deepEqual(tmpEntries(), []);
    assert.deepEqual(storeIndex(store).all(), []);
  });

  it('after a failure, a fixed build of the same derivation succeeds', async () => {
    let fail = true;
    const s = stage({
      name: 'flaky',
      config: {},
      version: '1',
      build: ({ out }) => {
        if (fail) throw new Error('x');
        fs.writeFileSync(path.join(out, 'ok'), '');
      },
    });
    await assert.rejects(realize(s, { store }), isCode('E_BUILD_FAILED'));
    fail = false;
    const r = await realize(s, { store });
    assert.equal(r.builds, 1);
    assert.deepEqual(rzOf(drefOf(s)), [one(r)]);
  });
});

describe('realize: realizations are read-only', () => {
  it('files are 0444, executables 0555, directories 0555 (checked on the mode bits, even as root)', async () => {
    const s = stage({
      name: 'ro',
      config: {},
      n: 2,
      matcher: all(),
      build: ({ outs }) => {
        for (const [i, o] of outs.entries()) {
          fs.writeFileSync(path.join(o, 'plain'), String(i), { mode: 0o666 });
          fs.chmodSync(path.join(o, 'plain'), 0o666);
          fs.writeFileSync(path.join(o, 'private'), 'p');
          fs.chmodSync(path.join(o, 'private'), 0o600);
          fs.writeFileSync(path.join(o, 'tool'), '#!/bin/sh\n');
          fs.chmodSync(path.join(o, 'tool'), 0o777);
          fs.writeFileSync(path.join(o, 'setuid'), '#!/bin/sh\n');
          fs.chmodSync(path.join(o, 'setuid'), 0o4755);
          fs.mkdirSync(path.join(o, 'sub', 'deeper'), { recursive: true, mode: 0o777 });
          fs.chmodSync(path.join(o, 'sub'), 0o777);
          fs.writeFileSync(path.join(o, 'sub', 'deeper', 'f'), 'f');
          fs.symlinkSync('../plain', path.join(o, 'sub', 'link'));
        }
      },
    });
    const r = await realize(s, { store });
    assert.equal(r.targets[0]!.rrefs.length, 2);
    for (const rref of r.targets[0]!.rrefs) {
      const out = store.outPath(rref);
      const expect: Record<string, number> = {
        '.': 0o555,
        plain: 0o444,
        private: 0o444,
        tool: 0o555,
        setuid: 0o555,
        sub: 0o555,
        'sub/deeper': 0o555,
        'sub/deeper/f': 0o444,
      };
      for (const [rel, m] of Object.entries(expect))
        assert.equal(mode(path.join(out, rel)).toString(8), m.toString(8), `${rel} of ${rref}`);
      const walk = (p: string): void => {
        const st = fs.lstatSync(p);
        if (st.isSymbolicLink()) return;
        if (st.isDirectory()) {
          assert.equal(st.mode & 0o7777, 0o555, p);
          for (const n of fs.readdirSync(p)) walk(path.join(p, n));
        } else assert.ok([0o444, 0o555].includes(st.mode & 0o7777), `${p} has mode ${(st.mode & 0o7777).toString(8)}`);
      };
      walk(out);
      assert.equal(mode(store.rzDir(rref)), 0o555);
      assert.equal(mode(path.join(store.rzDir(rref), 'meta.json')), 0o444);
      assert.equal(mode(path.join(store.rzDir(rref), 'build.log')), 0o444);
    }
    if (process.getuid?.() === 0) {
      // Root can write anyway; the mode bits above are what the store promises.
      assert.equal(process.getuid(), 0);
    }
  });

  it('a hard link to a file outside the output is copied, so sealing never touches the outside file', async () => {
    const outside = path.join(dir, 'outside.txt');
    fs.writeFileSync(outside, 'outside');
    fs.chmodSync(outside, 0o644);
    const s = stage({
      name: 'hl',
      config: { outside },
      build: ({ out, config }) => {
        fs.linkSync(config.outside, path.join(out, 'h'));
      },
    });
    const r = await realize(s, { store });
    const inside = path.join(store.outPath(one(r)), 'h');
    assert.equal(mode(outside), 0o644);
    assert.equal(mode(inside), 0o444);
    assert.equal(fs.readFileSync(inside, 'utf8'), 'outside');
    assert.notEqual(fs.statSync(inside).ino, fs.statSync(outside).ino);
    fs.appendFileSync(outside, ' changed');
    assert.equal(fs.readFileSync(inside, 'utf8'), 'outside');
  });
});

describe('realize: unsafe outputs are refused with E_UNSAFE_OUTPUT', () => {
  const refused = async (name: string, build: (out: string) => void): Promise<void> => {
    const s = stage({ name, config: {}, build: ({ out }) => build(out) });
    await assert.rejects(realize(s, { store }), isCode('E_UNSAFE_OUTPUT'));
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(rzDirsOf(drefOf(s)), []);
    assert.deepEqual(tmpEntries(), []);
  };

  it('an absolute symlink', async () => {
    await refused('abs', (o) => fs.symlinkSync('/etc/hostname', path.join(o, 'l')));
  });

  it("a symlink to '../x'", async () => {
    await refused('up', (o) => fs.symlinkSync('../x', path.join(o, 'l')));
  });

  it("a nested symlink to '../../x'", async () => {
    await refused('nested', (o) => {
      fs.mkdirSync(path.join(o, 'd'));
      fs.symlinkSync('../../x', path.join(o, 'd', 'l'));
    });
  });

  it('the tricky pair s -> . and t -> s/../x', async () => {
    await refused('tricky', (o) => {
      fs.symlinkSync('.', path.join(o, 's'));
      fs.symlinkSync('s/../x', path.join(o, 't'));
    });
  });

  it('a symlink escaping even when other files were already sealed', async () => {
    await refused('late', (o) => {
      for (const n of ['a', 'b', 'c']) {
        fs.mkdirSync(path.join(o, n));
        fs.writeFileSync(path.join(o, n, 'f'), n);
      }
      // 'zzz' sorts last, so a, b and c are sealed (made read-only) before the refusal.
      fs.symlinkSync('../../..', path.join(o, 'zzz'));
    });
  });

  it('a FIFO (made with mkfifo)', async () => {
    await refused('fifo', (o) => {
      const r = spawnSync('mkfifo', [path.join(o, 'pipe')]);
      assert.equal(r.status, 0, String(r.stderr));
    });
  });

  it('safe symlinks (s -> ., sub/l -> ../f) are accepted and stored as symlinks', async () => {
    const s = stage({
      name: 'safe',
      config: {},
      build: ({ out }) => {
        fs.writeFileSync(path.join(out, 'f'), 'f');
        fs.symlinkSync('.', path.join(out, 's'));
        fs.mkdirSync(path.join(out, 'sub'));
        fs.symlinkSync('../f', path.join(out, 'sub', 'l'));
      },
    });
    const out = store.outPath(one(await realize(s, { store })));
    assert.equal(fs.readlinkSync(path.join(out, 's')), '.');
    assert.equal(fs.readFileSync(path.join(out, 'sub', 'l'), 'utf8'), 'f');
  });
});

describe('realize: dryRun and force', () => {
  const chain = () => {
    const a = counted('a');
    const b = counted('b', { a });
    const c = counted('c', { b });
    return { a, b, c };
  };

  it('dryRun builds nothing, writes nothing, and reports what it would do', async () => {
    const { c } = chain();
    const r = await realize(c, { store, dryRun: true });
    assert.equal(r.builds, 0);
    assert.equal(calls.size, 0);
    assert.deepEqual(
      r.plan.map((p) => [p.name, p.action, p.rrefs]),
      [
        ['a', 'build', []],
        ['b', 'build', []],
        ['c', 'build', []],
      ],
    );
    assert.deepEqual(r.targets[0]!.rrefs, []);
    assert.deepEqual(fs.readdirSync(path.join(store.root, 'd')), []);
    assert.deepEqual(tmpEntries(), []);
    assert.deepEqual(storeIndex(store).all(), []);
  });

  it('dryRun after a real run reports everything cached, with the chosen RRefs', async () => {
    const { c } = chain();
    const real = await realize(c, { store });
    const dry = await realize(c, { store, dryRun: true });
    assert.deepEqual(
      dry.plan.map((p) => p.action),
      ['cached', 'cached', 'cached'],
    );
    assert.deepEqual(
      dry.plan.map((p) => p.rrefs),
      real.plan.map((p) => p.rrefs),
    );
    assert.equal(dry.builds, 0);
  });

  it('dryRun with force reports the forced stage and the stages after it', async () => {
    const { c } = chain();
    await realize(c, { store });
    calls.clear();
    const dry = await realize(c, { store, dryRun: true, force: ['b'] });
    assert.deepEqual(
      dry.plan.map((p) => p.action),
      ['cached', 'force', 'build'],
    );
    const dryAll = await realize(c, { store, dryRun: true, force: true });
    assert.deepEqual(
      dryAll.plan.map((p) => p.action),
      ['force', 'force', 'force'],
    );
    assert.equal(calls.size, 0);
    assert.equal(storeIndex(store).all().length, 3);
  });

  it('dryRun on a partly built graph reports cached up to the first missing stage', async () => {
    const { b, c } = chain();
    await realize(b, { store });
    const dry = await realize(c, { store, dryRun: true });
    assert.deepEqual(
      dry.plan.map((p) => p.action),
      ['cached', 'cached', 'build'],
    );
  });

  it('force: true rebuilds every stage (deterministic builds keep their RRefs)', async () => {
    const { c } = chain();
    const r1 = await realize(c, { store });
    const r2 = await realize(c, { store, force: true });
    assert.deepEqual(Object.fromEntries(calls), { a: 2, b: 2, c: 2 });
    assert.equal(r2.builds, 3);
    assert.deepEqual(
      r2.plan.map((p) => p.action),
      ['force', 'force', 'force'],
    );
    assert.deepEqual(
      r2.plan.map((p) => p.rrefs),
      r1.plan.map((p) => p.rrefs),
    );
    assert.equal(storeIndex(store).all().length, 3);
  });

  it("force: ['b'] rebuilds only b", async () => {
    const { c } = chain();
    await realize(c, { store });
    const r = await realize(c, { store, force: ['b'] });
    assert.deepEqual(Object.fromEntries(calls), { a: 1, b: 2, c: 1 });
    assert.equal(r.builds, 1);
    assert.deepEqual(
      r.plan.map((p) => p.action),
      ['cached', 'force', 'cached'],
    );
  });

  it('force also accepts DRefs', async () => {
    const { a, c } = chain();
    await realize(c, { store });
    const r = await realize(c, { store, force: [drefOf(a)] });
    assert.deepEqual(Object.fromEntries(calls), { a: 2, b: 1, c: 1 });
    assert.deepEqual(
      r.plan.map((p) => p.action),
      ['force', 'cached', 'cached'],
    );
  });

  it('force naming no stage of the graph changes nothing', async () => {
    const { c } = chain();
    await realize(c, { store });
    const r = await realize(c, { store, force: ['nope'] });
    assert.equal(r.builds, 0);
  });
});

describe('realize: jobs bounds concurrency', () => {
  const wide = (k: number, state: { running: number; max: number; total: number }): Stage[] =>
    Array.from({ length: k }, (_, i) =>
      stage({
        name: `w${i}`,
        config: { i },
        build: async ({ out }) => {
          state.running++;
          state.total++;
          state.max = Math.max(state.max, state.running);
          await sleep(40);
          fs.writeFileSync(path.join(out, 'i'), String(Math.random()));
          state.running--;
        },
      }),
    );

  for (const jobs of [1, 2, 3]) {
    it(`jobs: ${jobs} never runs more than ${jobs} builds at once, and does run ${jobs} at once`, async () => {
      const state = { running: 0, max: 0, total: 0 };
      const r = await realize(wide(6, state), { store, jobs });
      assert.equal(state.total, 6);
      assert.equal(r.builds, 6);
      assert.equal(state.max, jobs);
      assert.equal(state.running, 0);
    });
  }

  it('jobs: 1 on a diamond still builds each stage once, dependencies first', async () => {
    const order: string[] = [];
    const mk = (name: string, config: Record<string, unknown>) =>
      stage({
        name,
        config,
        build: async ({ name: n, out }) => {
          order.push(`start ${n}`);
          await sleep(5);
          fs.writeFileSync(path.join(out, 'x'), n);
          order.push(`end ${n}`);
        },
      });
    const a = mk('a', {});
    const b = mk('b', { a });
    const c = mk('c', { a });
    const d = mk('d', { b, c });
    await realize(d, { store, jobs: 1 });
    assert.equal(order.length, 8);
    for (let i = 0; i < 8; i += 2) assert.equal(order[i]!.replace('start', 'end'), order[i + 1]);
    assert.equal(order[0], 'start a');
    assert.equal(order[7], 'end d');
  });
});

describe('realize: build logs and metadata', () => {
  it('stores ctx.log lines and ctx.exec output in build.log', async () => {
    const s = stage({
      name: 'logger',
      config: {},
      build: async ({ out, log, exec }) => {
        log('hello from ctx.log');
        // The programs read their (empty) stdin first; see the EPIPE test below for why.
        const r = await exec('sh', ['-c', 'cat >/dev/null; echo from-stdout; echo from-stderr >&2']);
        log(`exec stdout was ${r.stdout.trim()}`);
        const cat = await exec('cat', [], { input: 'piped input' });
        fs.writeFileSync(path.join(out, 'cat'), cat.stdout);
      },
    });
    const r = await realize(s, { store });
    const rref = one(r);
    const p = parseRef(rref) as { dref: string; rhash: string };
    const file = path.join(store.root, 'd', p.dref, 'r', p.rhash, 'build.log');
    const text = fs.readFileSync(file, 'utf8');
    for (const want of [
      'hello from ctx.log',
      'from-stdout',
      'from-stderr',
      'exec stdout was from-stdout',
      '$ sh -c',
      'piped input',
    ]) {
      assert.ok(text.includes(want), `build.log lacks ${JSON.stringify(want)}:\n${text}`);
    }
    assert.ok(
      text.indexOf('hello from ctx.log') < text.indexOf('from-stdout'),
      "expected: text.indexOf('hello from ctx.log') < text.indexOf('from-stdout')",
    );
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'cat'), 'utf8'), 'piped input');
  });

  it('ctx.exec rejects on a non-zero exit with E_BUILD_FAILED, and the failure reaches realize', async () => {
    let inner: unknown;
    const s = stage({
      name: 'exitcode',
      config: {},
      build: async ({ exec }) => {
        try {
          await exec('sh', ['-c', 'cat >/dev/null; echo bad-thing >&2; exit 3']);
        } catch (e) {
          inner = e;
          throw e;
        }
      },
    });
    await assert.rejects(realize(s, { store }), isCode('E_BUILD_FAILED'));
    isCode('E_BUILD_FAILED')(inner);
    assert.match((inner as Error).message, /bad-thing/);
    assert.equal((inner as CairnError).details.code, 3);
    assert.deepEqual(tmpEntries(), []);
  });

  it('ctx.exec of a missing program rejects with E_BUILD_FAILED and raises no uncaught exception', async () => {
    const s = stage({
      name: 'nocmd',
      config: {},
      build: async ({ exec }) => {
        await exec('cairn-no-such-program-xyz');
      },
    });
    const caught = await uncaughtDuring(async () => {
      await assert.rejects(realize(s, { store }), isCode('E_BUILD_FAILED'));
    });
    assert.deepEqual(
      caught.map((e) => `${(e as NodeJS.ErrnoException).code}: ${(e as Error).message}`),
      [],
    );
  });

  it('ctx.exec of programs that exit without reading stdin raises no uncaught exception (no EPIPE crash)', async () => {
    // Every exec writes (at least an empty) stdin; a child that has already
    // exited makes that write fail with EPIPE on an unhandled stream.
    let runs = 0;
    const s = stage({
      name: 'quick',
      config: {},
      build: async ({ exec, out }) => {
        for (let i = 0; i < 100; i++) {
          await exec('true');
          runs++;
        }
        fs.writeFileSync(path.join(out, 'runs'), String(runs));
      },
    });
    const caught = await uncaughtDuring(async () => {
      const r = await realize(s, { store });
      assert.equal(r.builds, 1);
    });
    assert.equal(runs, 100);
    assert.deepEqual(
      caught.map((e) => `${(e as NodeJS.ErrnoException).code}: ${(e as Error).message}`),
      [],
    );
  });

  it(
    'ctx.exec with input the program never reads resolves and ' + 'raises no uncaught exception (no EPIPE crash)',
    async () => {
      const s = stage({
        name: 'noread',
        config: {},
        build: async ({ exec, out }) => {
          const r = await exec('true', [], { input: 'x'.repeat(8 << 20) });
          fs.writeFileSync(path.join(out, 'stdout'), r.stdout);
        },
      });
      const caught = await uncaughtDuring(async () => {
        const r = await realize(s, { store });
        assert.equal(r.builds, 1);
      });
      assert.deepEqual(
        caught.map((e) => `${(e as NodeJS.ErrnoException).code}: ${(e as Error).message}`),
        [],
      );
    },
  );

  it('meta.json records the chosen upstream RRefs as the context', async () => {
    const u1 = stage({ name: 'u1', config: {}, n: 2, matcher: all(), build: randomBuild });
    const u2 = stage({ name: 'u2', config: {}, build: fixedBuild });
    const d = stage({ name: 'd', config: { u1, u2 }, build: fixedBuild });
    const r = await realize(d, { store });
    const [p1, p2] = r.plan.filter((p) => p.name !== 'd');
    const meta = store.readMeta(one(r));
    assert.deepEqual(meta.context, {
      [drefOf(u1)]: [...r.plan.find((p) => p.name === 'u1')!.rrefs].sort(),
      [drefOf(u2)]: r.plan.find((p) => p.name === 'u2')!.rrefs,
    });
    assert.equal(Object.values(meta.context).flat().length, 3);
    assert.ok(p1 && p2, 'expected: p1 && p2');
    // The index knows the same edges.
    assert.deepEqual(storeIndex(store).depsOf(one(r)).sort(), Object.values(meta.context).flat().sort());
    assert.deepEqual((await store.closure([one(r)])).sort(), [one(r), ...Object.values(meta.context).flat()].sort());
    const fileMeta = JSON.parse(fs.readFileSync(path.join(store.rzDir(one(r)), 'meta.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.deepEqual(fileMeta.context, meta.context);
    assert.equal(fileMeta.format, 'cairn-realization-1');
  });
});

describe('Store.rebuildIndex', () => {
  it('recreates an equivalent index from the files: a cached realize still finds everything', async () => {
    const a = counted('a');
    const b = counted('b', { a });
    const u = stage({ name: 'u', config: {}, n: 3, matcher: all(), build: randomBuild });
    const c = counted('c', { b, u });
    const r1 = await realize(c, { store });
    const before = storeIndex(store)
      .all()
      .map((r) => ({ ...r, seq: 0 }))
      .sort((x, y) => x.rref.localeCompare(y.rref));
    const deps = before.map((r) => storeIndex(store).depsOf(r.rref).sort());
    storeIndex(store).db.exec('DELETE FROM rz; DELETE FROM rz_dep; DELETE FROM drv;');
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(store.rebuildIndex(), { derivations: 4, realizations: 6 });
    const after = storeIndex(store)
      .all()
      .map((r) => ({ ...r, seq: 0 }))
      .sort((x, y) => x.rref.localeCompare(y.rref));
    assert.deepEqual(after, before);
    assert.deepEqual(
      after.map((r) => storeIndex(store).depsOf(r.rref).sort()),
      deps,
    );
    calls.clear();
    const r2 = await realize(c, { store });
    assert.equal(r2.builds, 0);
    assert.equal(calls.size, 0);
    assert.deepEqual(
      r2.plan.map((p) => p.rrefs),
      r1.plan.map((p) => p.rrefs),
    );
  });

  it('works from a deleted index file too', async () => {
    const c = counted('c', { b: counted('b', { a: counted('a') }) });
    const r1 = await realize(c, { store });
    const root = store.root;
    store.close();
    for (const f of fs.readdirSync(root)) if (f.startsWith('index.sqlite')) fs.rmSync(path.join(root, f));
    store = LocalStore.open(root);
    assert.deepEqual(storeIndex(store).all(), []);
    assert.deepEqual(store.rebuildIndex(), { derivations: 3, realizations: 3 });
    const r2 = await realize(c, { store });
    assert.equal(r2.builds, 0);
    assert.deepEqual(r2.targets, r1.targets);
  });

  it('keeps the order of realizations created in the same millisecond, so latest() chooses the same one', async () => {
    // Several outputs of one build are usually committed within a millisecond;
    // pin the clock to make that certain.
    const u = stage({ name: 'u', config: {}, n: 5, build: randomBuild });
    const d = stage({ name: 'd', config: { u }, build: fixedBuild });
    const now = Date.now();
    mock.method(Date, 'now', () => now);
    let r1;
    try {
      r1 = await realize(d, { store });
    } finally {
      mock.restoreAll();
    }
    const latestBefore = r1.plan[0]!.rrefs[0]!;
    const orderBefore = storeIndex(store)
      .realizationsOf(drefOf(u))
      .map((r) => r.rref);
    assert.equal(orderBefore.length, 5);
    storeIndex(store).db.exec('DELETE FROM rz; DELETE FROM rz_dep; DELETE FROM drv;');
    store.rebuildIndex();
    // Candidates reach matchers oldest first; the rebuilt index must give the same order.
    assert.deepEqual(
      storeIndex(store)
        .realizationsOf(drefOf(u))
        .map((r) => r.rref),
      orderBefore,
    );
    const r2 = await realize(d, { store });
    assert.equal(r2.plan[0]!.rrefs[0], latestBefore, 'latest() chose a different realization after rebuildIndex');
    assert.equal(r2.builds, 0);
  });
});

describe('realize: concurrency inside one process', () => {
  it('two concurrent realizes of the same stage build it once and agree', async () => {
    let n = 0;
    const s = stage({
      name: 'once',
      config: {},
      build: async ({ out }) => {
        n++;
        await sleep(20);
        fs.writeFileSync(path.join(out, 'r'), randomBytes(8));
      },
    });
    const [r1, r2] = await Promise.all([realize(s, { store }), realize(s, { store })]);
    assert.equal(n, 1);
    assert.deepEqual(r1.targets, r2.targets);
    assert.equal(r1.builds + r2.builds, 1);
    assert.equal(rzOf(drefOf(s)).length, 1);
  });

  it('when one branch fails, a build already running in another branch finishes and is stored', async () => {
    let slowDone = false;
    const slow = stage({
      name: 'slow',
      config: {},
      build: async ({ out }) => {
        await sleep(30);
        fs.writeFileSync(path.join(out, 'ok'), 'ok');
        slowDone = true;
      },
    });
    const bad = stage({
      name: 'bad',
      config: {},
      build: () => {
        throw new Error('bad branch');
      },
    });
    let after = 0;
    const dependant = stage({
      name: 'dependant',
      config: { bad },
      build: () => {
        after++;
      },
    });
    await assert.rejects(realize([slow, dependant], { store, jobs: 2 }), isCode('E_BUILD_FAILED'));
    assert.equal(slowDone, true);
    assert.equal(rzOf(drefOf(slow)).length, 1);
    assert.equal(after, 0);
    assert.deepEqual(rzOf(drefOf(bad)), []);
    assert.deepEqual(tmpEntries(), []);
    // The finished branch is reused next time.
    const r = await realize(slow, { store });
    assert.equal(r.builds, 0);
  });
});

describe('realize: events', () => {
  it('reports cached, start and built events per derivation', async () => {
    const seen: string[] = [];
    const a = counted('a');
    const b = counted('b', { a });
    const events = {
      cached: (n: { name: string }) => {
        seen.push(`cached ${n.name}`);
      },
      start: (n: { name: string }, why: string) => {
        seen.push(`start ${n.name} ${why}`);
      },
      built: (n: { name: string }, rrefs: readonly string[]) => {
        seen.push(`built ${n.name} ${rrefs.length}`);
      },
    };
    await realize(b, { store, events });
    assert.deepEqual(seen, ['start a missing', 'built a 1', 'start b missing', 'built b 1']);
    seen.length = 0;
    await realize(b, { store, events, force: ['b'] });
    assert.deepEqual(seen, ['cached a', 'start b forced', 'built b 1']);
  });

  it('reports failed with the CairnError', async () => {
    const failed: string[] = [];
    const s = stage({
      name: 'f',
      config: {},
      build: () => {
        throw new Error('x');
      },
    });
    await assert.rejects(
      realize(s, {
        store,
        events: {
          failed: (n, e) => {
            failed.push(`${n.name} ${e.code}`);
          },
        },
      }),
    );
    assert.deepEqual(failed, ['f E_BUILD_FAILED']);
  });
});

describe('realize: latest() with a plain realize reuses', () => {
  it('a stage with latest() is built once even when realized as part of several graphs', async () => {
    const a = counted('a', {}, { matcher: latest() });
    await realize(counted('x', { a }), { store });
    await realize(counted('y', { a }), { store });
    assert.equal(calls.get('a'), 1);
  });
});

describe('realize: derivations written ahead, durability order', () => {
  it(
    'derivations written ahead of a build that never comes (a failure upstream) ' +
      'are indexed, so gc collects them; tmp is left empty',
    async () => {
      // The failing build waits (up to 10 s) for the writer to place every derivation of the chain.
      const written = () => fs.readdirSync(path.join(store.root, 'd')).length;
      const bad = stage({
        name: 'bad',
        config: {},
        build: async () => {
          for (let i = 0; i < 1000 && written() < 6; i++) await sleep(10);
          throw new Error('no');
        },
      });
      const chain: Stage[] = [bad];
      for (let i = 0; i < 5; i++)
        chain.push(stage({ name: `after${i}`, config: { prev: chain[i] }, build: fixedBuild }));
      await assert.rejects(realize(chain[5]!, { store }), isCode('E_BUILD_FAILED'));
      const onDisk = fs.readdirSync(path.join(store.root, 'd')).sort();
      assert.equal(onDisk.length, 6, 'every derivation was written ahead');
      for (const dref of onDisk as DRef[]) {
        assert.ok(storeIndex(store).hasDrv(dref), `${dref} is indexed`);
        assert.ok(fs.existsSync(path.join(store.drvDir(dref), 'drv.json')), `${dref} has drv.json`);
      }
      assert.deepEqual(tmpEntries(), []);
      const report = await collectGarbage(store);
      assert.deepEqual([...report.derivations].sort(), onDisk);
      assert.deepEqual(fs.readdirSync(path.join(store.root, 'd')), []);
    },
  );

  it(
    'a realization is renamed into place only after its content and derivation are fsynced (and, as root, sealed), ' +
      'and indexed only after the renames are',
    async () => {
      // Every event gets a sequence number; an fsync covers the changes made
      // before it started, so `syncedAt` keeps the start of the latest one.
      let seq = 0;
      const fdPath = new Map<number, string>();
      const syncedAt = new Map<string, number>();
      const renamedAt = new Map<string, number>();
      const openReal = fsDefault.openSync;
      mock.method(fsDefault, 'openSync', (p: string | Buffer, ...rest: unknown[]) => {
        const fd = (openReal as (...a: unknown[]) => number)(p, ...rest);
        // Sealed trees are walked with byte paths (names need not be UTF-8).
        fdPath.set(fd, path.resolve(p.toString()));
        return fd;
      });
      const fsyncReal = fsDefault.fsync;
      mock.method(fsDefault, 'fsync', (fd: number, cb: (e: Error | null) => void) => {
        const started = ++seq;
        const p = fdPath.get(fd);
        fsyncReal(fd, (e) => {
          if (!e && p) syncedAt.set(p, Math.max(syncedAt.get(p) ?? 0, started));
          cb(e);
        });
      });
      const synced = (p: string, after = 0): boolean => (syncedAt.get(p) ?? -1) > after;
      const renameReal = fsDefault.renameSync;
      const problems: string[] = [];
      mock.method(fsDefault, 'renameSync', (from: string, to: string) => {
        const m = /\/d\/([^/]+)\/r\/[^/]+$/.exec(to);
        if (m) {
          const drv = path.join(store.root, 'd', m[1]!);
          for (const p of [
            path.join(from, 'out', 'v'),
            path.join(from, 'out'),
            path.join(from, 'meta.json'),
            from,
            path.join(drv, 'drv.json'),
            drv,
          ]) {
            if (!synced(p)) problems.push(`${p} not fsynced before the rename to ${to}`);
          }
          // Root may move a read-only directory, so a kill can never leave a writable realization.
          if (process.getuid?.() === 0 && (fs.statSync(from).mode & 0o222) !== 0)
            problems.push(`${from} still writable when renamed to ${to}`);
        }
        renameReal(from, to);
        renamedAt.set(path.resolve(to), ++seq);
      });
      syncBuiltinESMExports();
      const addReal = storeIndex(store).addRealizations.bind(storeIndex(store));
      mock.method(storeIndex(store), 'addRealizations', (rs: Parameters<typeof addReal>[0]) => {
        for (const r of rs) {
          const drv = path.join(store.root, 'd', r.dref);
          const ref = parseRef(r.rref);
          const rz = path.join(drv, 'r', ref.kind === 'rz' ? ref.rhash : '');
          // The realization's rename into r/, and the derivation's into d/.
          if (!synced(path.dirname(rz), renamedAt.get(rz)))
            problems.push(`${path.dirname(rz)} not fsynced after ${r.rref} was renamed into it, before it was indexed`);
          if (!synced(path.dirname(drv), renamedAt.get(drv)))
            problems.push(`d/ not fsynced after ${r.dref} was renamed into it, before it was indexed`);
        }
        addReal(rs);
      });
      try {
        const build = ({ config, out }: BuildContext<{ i: number }>) => {
          fs.writeFileSync(path.join(out, 'v'), `${config.i}\n`);
        };
        let prev: Stage | null = null;
        for (let i = 0; i < 5; i++) prev = stage({ name: `c${i}`, version: '1', config: { i, prev }, build });
        const leaves = Array.from({ length: 4 }, (_, i) =>
          stage({ name: `l${i}`, version: '1', config: { i }, build }),
        );
        const top = stage({ name: 'top', version: '1', config: { i: 9, leaves, prev }, build });
        const r = await realize(top, { store, jobs: 2 });
        assert.equal(r.builds, 10);
      } finally {
        mock.restoreAll();
        syncBuiltinESMExports();
      }
      assert.deepEqual(problems, []);
    },
  );
});
