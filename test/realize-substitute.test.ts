/**
 * realize with substituters (issue 16, item 4): two teammates' stores A and
 * B on this machine; A is B's substituter (a real LocalStore, copied from
 * through the verified import path). Faults are injected by wrapping A's
 * Store, never by mocking the realize.
 */
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  best,
  CairnError,
  instantiate,
  latest,
  LocalStore,
  realize,
  stage,
  type RealizeOptions,
  type RRef,
  type Stage,
} from '../src/index.js';
import { loadStageFile } from '../src/stages/load.js';
import { candidateKey, candidateOf, type Candidate, type RealizationInfo, type Store } from '../src/store/interface.js';
import { contextHash } from '../src/store/store.js';
import { localPushTarget, localSubstituter, pushAfterRealize, type Substituter } from '../src/stages/substitute.js';
import { cairn, expectError, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';

let A: LocalStore;
let B: LocalStore;
let cleanup: () => void;
let dir: string;

beforeEach(() => {
  const t = tempDir('cairn-subst');
  dir = t.dir;
  cleanup = t.cleanup;
  A = LocalStore.open(path.join(dir, 'a'));
  B = LocalStore.open(path.join(dir, 'b'));
});
afterEach(() => {
  A.close();
  B.close();
  cleanup();
});

/** Build runs per stage name, across stores. */
const builds = new Map<string, number>();
const built = (name: string): number => builds.get(name) ?? 0;

/** Three stages; every build writes random bytes, so B's own builds could never match A's RRefs. */
function pipeline(tag: string): { src: Stage; mid: Stage; top: Stage } {
  const random = (name: string, config: Record<string, unknown>): Stage =>
    stage({
      name,
      config: { tag, ...config },
      outputs: ['r.bin'],
      build: ({ out }) => {
        builds.set(name, built(name) + 1);
        fs.writeFileSync(path.join(out, 'r.bin'), randomBytes(32));
      },
    });
  const src = random('src', {});
  const mid = random('mid', { src });
  const top = random('top', { src, mid });
  return { src, mid, top };
}

/** A Store that counts the calls made on it, and can be told to fail them. */
function instrumented(store: Store, failWhen: (method: string, n: number) => boolean = () => false) {
  const calls: string[] = [];
  const proxy: Store = new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function' || prop === 'close') return v;
      return (...args: unknown[]) => {
        calls.push(String(prop));
        if (failWhen(String(prop), calls.length)) {
          return Promise.reject(new CairnError('E_STORE_IO', `injected failure of ${String(prop)}\nsecond line`));
        }
        const result = (v as (...a: unknown[]) => unknown).apply(target, args);
        // Candidates read through the store that listed them: here, through this wrapper.
        if (prop !== 'candidatesOfAll') return result;
        return (result as Promise<Map<string, Candidate[]>>).then(
          (m) => new Map([...m].map(([k, cs]) => [k, cs.map((c) => candidateOf(proxy, c))])),
        );
      };
    },
  });
  return { store: proxy, calls };
}

const through = (store: Store, fetch: Substituter['fetch'] = localSubstituter(A).fetch): Substituter => ({
  name: 'team-cache',
  store,
  fetch,
});

/** realize on B with events collected. */
async function realizeB(target: Stage | Stage[], subs: Substituter[], extra: Partial<RealizeOptions> = {}) {
  const warnings: string[] = [];
  const substituted: string[] = [];
  const result = await realize(target, {
    store: B,
    substituters: subs,
    ...extra,
    events: { warning: (l) => warnings.push(l), substituted: (n) => substituted.push(n.name) },
  });
  return { result, warnings, substituted };
}

/** Every realization in B is intact (what `cairn store verify` checks). */
async function assertIntact(store: LocalStore, rrefs: Iterable<RRef>): Promise<void> {
  for (const r of rrefs) assert.equal(await store.inspect(r), null, `${r} is damaged`);
}

const allOf = async (store: LocalStore, stages: Stage[]): Promise<RRef[]> => {
  const g = instantiate(stages);
  const out: RRef[] = [];
  for (const d of g.order) out.push(...(await store.realizationsOf(d)).map((r) => r.rref));
  return out;
};

describe('realize with substituters', () => {
  it("B realizes A's pipeline with 0 builds, in one batch query, with A's RRefs", async () => {
    const { src, mid, top } = pipeline('zero-builds');
    const a = await realize(top, { store: A });
    const counted = instrumented(A);
    const before = built('src') + built('mid') + built('top');
    const { result, warnings, substituted } = await realizeB(top, [through(counted.store)]);
    assert.equal(result.builds, 0);
    assert.equal(built('src') + built('mid') + built('top'), before);
    assert.deepEqual(result.targets, a.targets);
    assert.deepEqual(
      result.plan.map((p) => [p.name, p.action]),
      [
        ['src', 'substituted'],
        ['mid', 'substituted'],
        ['top', 'substituted'],
      ],
    );
    assert.deepEqual(substituted, ['src', 'mid', 'top']);
    assert.deepEqual(warnings, []);
    assert.deepEqual(result.warnings, []);
    // One batch for the whole graph; no per-derivation query.
    assert.deepEqual(
      counted.calls.filter((c) => c !== 'readFile' && c !== 'openFile'),
      ['candidatesOfAll'],
    );
    const rrefs = a.plan.flatMap((p) => p.rrefs);
    for (const r of rrefs) assert.ok(B.has(r), r);
    await assertIntact(B, rrefs);
    assert.deepEqual(
      await B.readFile(a.targets[0]!.rrefs[0]!, 'r.bin'),
      await A.readFile(a.targets[0]!.rrefs[0]!, 'r.bin'),
    );
    // Now B has them: a second run is cached, without the substituter.
    const again = await realize(top, { store: B });
    assert.ok(again.plan.every((p) => p.action === 'cached'));
    void src;
    void mid;
  });

  it('two processes on one store substituting the same graph at once fetch it once and agree', async () => {
    const { top } = pipeline('concurrent');
    const a = await realize(top, { store: A });
    let fetched = 0;
    const counting = through(A, async (into, rrefs) => {
      fetched += rrefs.length;
      await localSubstituter(A).fetch(into, rrefs);
    });
    const B2 = LocalStore.open(B.root);
    try {
      const [one, two] = await Promise.all([
        realize(top, { store: B, substituters: [counting] }),
        realize(top, { store: B2, substituters: [counting] }),
      ]);
      assert.deepEqual(one.targets, a.targets);
      assert.deepEqual(two.targets, a.targets);
      assert.equal(one.builds + two.builds, 0);
      // Each stage fetched once: the other found it under the build lock.
      assert.equal(fetched, 3);
      assert.deepEqual([...one.warnings, ...two.warnings], []);
    } finally {
      B2.close();
    }
  });

  it('asks no substituter when everything is cached locally', async () => {
    const { top } = pipeline('all-local');
    await realize(top, { store: B });
    const counted = instrumented(A);
    const { result, warnings } = await realizeB(top, [through(counted.store)]);
    assert.ok(result.plan.every((p) => p.action === 'cached'));
    assert.deepEqual(counted.calls, []);
    assert.deepEqual(warnings, []);
  });

  it('a dry run says what would be substituted and fetches nothing', async () => {
    const { top } = pipeline('dry');
    await realize(top, { store: A });
    const { result } = await realizeB(top, [localSubstituter(A)], { dryRun: true });
    assert.deepEqual(
      result.plan.map((p) => p.action),
      ['substituted', 'substituted', 'substituted'],
    );
    assert.equal((await allOf(B, [top])).length, 0);
  });

  it("the ML demo: B gets A's best model and builds nothing", async () => {
    const file = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');
    const graph = instantiate((await loadStageFile(file)).targets);
    const a = await realize(graph, { store: A });
    const trainA = a.plan.find((p) => p.name === 'train')!;
    assert.equal((await A.realizationsOf(trainA.dref)).length, 3);
    const { result, warnings } = await realizeB(
      graph.targets.map((d) => graph.nodes.get(d)!.stage),
      [localSubstituter(A)],
    );
    assert.equal(result.builds, 0);
    assert.deepEqual(warnings, []);
    const trainB = result.plan.find((p) => p.name === 'train')!;
    assert.equal(trainB.action, 'substituted');
    assert.deepEqual(trainB.rrefs, trainA.rrefs);
    // Only the chosen model was fetched, not the two A's best() passed over.
    assert.deepEqual(
      (await B.realizationsOf(trainB.dref)).map((r) => r.rref),
      trainA.rrefs,
    );
    assert.deepEqual(result.targets, a.targets);
  });

  it('best() chooses across substituted and local realizations', async () => {
    const scores: number[] = [];
    const data = stage({
      name: 'data',
      config: {},
      outputs: ['d.txt'],
      build: ({ out }) => fs.writeFileSync(path.join(out, 'd.txt'), 'same on every machine\n'),
    });
    const model = (matcher: ReturnType<typeof best>) =>
      stage({
        name: 'model',
        config: { data },
        outputs: ['score.txt'],
        matcher,
        build: ({ out }) => fs.writeFileSync(path.join(out, 'score.txt'), String(scores.shift())),
      });
    const best2 = model(best(2, { file: 'score.txt' }));
    // A trains two models (scores 10 and 30).
    scores.push(10, 30);
    const a = await realize(best2, { store: A });
    // B has trained one of its own (score 20): not enough for best(2) on its own.
    scores.push(20);
    const b1 = await realize(model(latest()), { store: B });
    assert.equal(b1.targets[0]!.dref, a.targets[0]!.dref, 'the matcher is not part of the derivation');
    const mine = b1.targets[0]!.rrefs[0]!;
    const { result, warnings } = await realizeB(best2, [localSubstituter(A)]);
    assert.deepEqual(warnings, []);
    assert.equal(result.builds, 0);
    const byScore = async (r: RRef) => Number((await B.readFile(r, 'score.txt')).toString());
    const chosen = result.targets[0]!.rrefs;
    assert.deepEqual(await Promise.all(chosen.map(byScore)), [30, 20]);
    assert.equal(chosen[1], mine);
    assert.equal(result.plan.find((p) => p.name === 'model')!.action, 'substituted');
    // A's 10 was not chosen, so not fetched.
    assert.equal((await B.realizationsOf(a.targets[0]!.dref)).length, 2);
  });

  it('an unreachable substituter: one warning, everything built locally', async () => {
    const { top } = pipeline('unreachable');
    await realize(top, { store: A });
    const down = instrumented(A, () => true);
    const { result, warnings } = await realizeB(top, [through(down.store)]);
    assert.equal(result.builds, 3);
    assert.ok(result.plan.every((p) => p.action === 'build'));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /^warning: substituter team-cache: asking for candidates: E_STORE_IO: injected failure/);
    assert.ok(!warnings[0]!.includes('\n'));
    assert.deepEqual(result.warnings, warnings);
    // Asked once, not once per stage.
    assert.deepEqual(down.calls, ['candidatesOfAll']);
  });

  it('a substituter that never answers counts as unreachable after the timeout', async () => {
    const { top } = pipeline('hangs');
    const hanging: Store = new Proxy(A, {
      get: (t, p, r) => (p === 'candidatesOfAll' ? () => new Promise(() => {}) : (Reflect.get(t, p, r) as unknown)),
    });
    const { result, warnings } = await realizeB(top, [through(hanging)], { substituterTimeoutMs: 100 });
    assert.equal(result.builds, 3);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /E_SUBSTITUTE: no answer within/);
  });

  it('a substituter failing mid-run: what it gave is kept, the rest is built, one warning', async () => {
    const { src, mid, top } = pipeline('mid-run');
    const a = await realize(top, { store: A });
    let fetches = 0;
    const flaky = through(A, async (into, rrefs) => {
      // The second fetch fails, as a cache that goes down would.
      if (++fetches === 2) throw new CairnError('E_STORE_IO', 'connection reset by peer');
      await localSubstituter(A).fetch(into, rrefs);
    });
    const second = { ...localSubstituter(A), name: 'second' };
    const { result, warnings } = await realizeB(top, [flaky, second]);
    void src;
    void mid;
    // src came from the first; mid's fetch failed there, so the second gave it; top too.
    assert.deepEqual(warnings.length, 1);
    assert.match(warnings[0]!, /^warning: substituter team-cache: fetching .*connection reset by peer/);
    assert.equal(result.builds, 0);
    assert.deepEqual(result.targets, a.targets);
    // With no second substituter, the rest is built locally.
    B.close();
    B = LocalStore.open(path.join(dir, 'b2'));
    fetches = 0;
    const alone = await realizeB(top, [flaky]);
    assert.deepEqual(
      alone.result.plan.map((p) => p.action),
      ['substituted', 'build', 'build'],
    );
    assert.equal(alone.warnings.length, 1);
    assert.equal(alone.result.plan[0]!.rrefs[0], a.plan[0]!.rrefs[0]);
  });

  it("a matcher's file read failing on the substituter: one warning, built locally", async () => {
    const scoreOf = stage({
      name: 'scored',
      config: { k: 'read-fails' },
      outputs: ['score.txt'],
      matcher: best({ file: 'score.txt' }),
      build: ({ out }) => fs.writeFileSync(path.join(out, 'score.txt'), String(Math.random())),
    });
    await realize(scoreOf, { store: A });
    const flaky = instrumented(A, (m) => m === 'readFile');
    const { result, warnings } = await realizeB(scoreOf, [through(flaky.store)]);
    assert.equal(result.builds, 1);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /reading score\.txt of .*injected failure of readFile/);
  });

  it('a tampered realization is refused, built locally with one warning, and nothing bad enters B', async () => {
    const { top } = pipeline('tampered');
    const a = await realize(top, { store: A });
    const midA = a.plan[1]!.rrefs[0]!;
    const file = path.join(A.rzDir(midA), 'out', 'r.bin');
    fs.chmodSync(file, 0o644);
    const bytes = fs.readFileSync(file);
    bytes[0] = bytes[0]! ^ 0xff;
    fs.writeFileSync(file, bytes);
    const { result, warnings } = await realizeB(top, [localSubstituter(A, 'team-cache')]);
    assert.deepEqual(
      result.plan.map((p) => p.action),
      ['substituted', 'build', 'build'],
    );
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /^warning: substituter team-cache: fetching .*E_SYNC_HASH_MISMATCH/);
    assert.ok(!B.has(midA));
    assert.notEqual(result.plan[1]!.rrefs[0], midA);
    await assertIntact(B, await allOf(B, [top]));
    assert.equal((await allOf(B, [top])).length, 3);
  });

  it('a substituter listing realizations of another derivation or context is refused, with one warning', async () => {
    const { src, mid, top } = pipeline('liar');
    const a = await realize(top, { store: A });
    // B has its own src, so mid's context in B differs from A's.
    const bSrc = (await realize(src, { store: B })).targets[0]!.rrefs;
    const midDref = a.plan[1]!.dref;
    const bCtx = contextHash({ [a.plan[0]!.dref]: bSrc });
    const midA = await A.info(a.plan[1]!.rrefs[0]!);
    const topA = await A.info(a.plan[2]!.rrefs[0]!);
    const lying = (offer: RealizationInfo, claim: Partial<RealizationInfo>, ctx = bCtx): Store =>
      new Proxy(A, {
        get: (t, p, r) =>
          p === 'candidatesOfAll'
            ? async () => new Map([[candidateKey(midDref, ctx), [candidateOf(A, { ...offer, ...claim })]]])
            : (Reflect.get(t, p, r) as unknown),
      });
    // mid's realization from A's context, listed under B's.
    const first = await realizeB(top, [through(lying(midA!, { ctx: bCtx }))]);
    assert.equal(first.warnings.length, 1);
    assert.match(first.warnings[0]!, /was offered for context .* but was built from context/);
    assert.deepEqual(
      first.result.plan.map((p) => p.action),
      ['cached', 'build', 'build'],
    );
    assert.notEqual(first.result.plan[1]!.rrefs[0], midA!.rref);
    // top's realization listed as one of mid.
    B.close();
    B = LocalStore.open(path.join(dir, 'b2'));
    const b2Src = (await realize(src, { store: B })).targets[0]!.rrefs;
    const b2Ctx = contextHash({ [a.plan[0]!.dref]: b2Src });
    const again = await realizeB(top, [through(lying(topA!, { dref: midDref, ctx: b2Ctx }, b2Ctx))]);
    assert.equal(again.warnings.length, 1);
    assert.match(again.warnings[0]!, /listing candidates: E_SUBSTITUTE: it lists .*-top as a realization of/);
    assert.ok(!B.has(topA!.rref));
    void mid;
  });

  it('--push-to: pushAfterRealize hands the closure of the targets to the target, which then substitutes', async () => {
    const C = LocalStore.open(path.join(dir, 'c'));
    try {
      const { top } = pipeline('push');
      const a = await realize(top, { store: A });
      const pushed = await pushAfterRealize(A, a, localPushTarget(C));
      assert.deepEqual(pushed, a.targets[0]!.rrefs);
      for (const r of a.plan.flatMap((p) => p.rrefs)) assert.ok(C.has(r), r);
      const { result } = await realizeB(top, [localSubstituter(C)]);
      assert.equal(result.builds, 0);
      assert.deepEqual(result.targets, a.targets);
      // Pushing again moves nothing and fails nothing.
      await pushAfterRealize(A, a, localPushTarget(C));
      assert.deepEqual(await pushAfterRealize(A, { targets: [] }, localPushTarget(C)), []);
    } finally {
      C.close();
    }
  });

  it('with no substituters, realize makes no substituter work at all', async () => {
    const { top } = pipeline('none');
    const r = await realize(top, { store: B, substituters: [] });
    assert.equal(r.builds, 3);
    assert.deepEqual(r.warnings, []);
  });
});

describe('cairn realize: --substituter, --no-substituters, --push-to', () => {
  isolateModuleCache(after);
  const chain = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');
  const storeB = (): string => path.join(dir, 'b');
  const config = (json: unknown): void => fs.writeFileSync(path.join(storeB(), 'config.json'), JSON.stringify(json));

  it("uses the store configuration's substituters by default; --no-substituters ignores them", () => {
    config({ substituters: ['ftp://cache.example/team'] });
    const r = cairn(storeB(), ['realize', '-q', chain]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /ftp:\/\/cache\.example\/team/);
    const none = ok(cairn(storeB(), ['realize', '-q', '--no-substituters', chain]));
    assert.match(lastLine(none.stdout), /^[0-9a-z]{32}-[0-9a-z]{32}-c$/);
  });

  it('--substituter replaces the configured ones, and secrets in a URL are never printed', () => {
    config({ substituters: ['ftp://configured.example/x'] });
    const r = cairn(storeB(), ['realize', '-q', '--substituter', 'gopher://user:s3cret@h/c?token=s3cret', chain]);
    expectError(r, 'E_USAGE');
    assert.doesNotMatch(r.stderr, /s3cret/);
    assert.doesNotMatch(r.stderr, /configured\.example/);
  });

  it('a config.json that is not JSON, or whose substituters are not strings, is E_STORE_CONFIG', () => {
    fs.writeFileSync(path.join(storeB(), 'config.json'), '{ not json');
    expectError(cairn(storeB(), ['realize', '-q', chain]), 'E_STORE_CONFIG');
    config({ substituters: [42] });
    expectError(cairn(storeB(), ['realize', '-q', chain]), 'E_STORE_CONFIG');
    // A link is not followed.
    fs.rmSync(path.join(storeB(), 'config.json'));
    fs.writeFileSync(path.join(dir, 'elsewhere.json'), JSON.stringify({ substituters: ['ftp://x/y'] }));
    fs.symlinkSync(path.join(dir, 'elsewhere.json'), path.join(storeB(), 'config.json'));
    expectError(cairn(storeB(), ['realize', '-q', chain]), 'E_STORE_CONFIG');
  });

  it('--push-to refuses a read-only http(s) cache before building anything', () => {
    const r = cairn(storeB(), ['realize', '--push-to', 'http://127.0.0.1:9/cache', chain]);
    expectError(r, 'E_USAGE', storeB());
    assert.match(r.stderr, /read-only/);
    assert.doesNotMatch(r.stderr, /building/);
  });
});
