/**
 * Matchers: which realizations a stage uses, and how many builds realize
 * runs to satisfy them. Contract: none (null, undefined, []) means "build",
 * still none after building is E_MATCH_UNSATISFIED; anything chosen must be
 * a candidate.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  all,
  best,
  CairnError,
  custom,
  exact,
  instantiate,
  latest,
  only,
  readScore,
  realize,
  some,
  stage,
  LocalStore,
  type BuildContext,
  type Candidate,
  type Matcher,
  type MatcherFn,
  type RRef,
  type Stage,
} from '../src/index.js';
import { runMatcher } from '../src/stages/matchers.js';
import { tempDir, isCode, storePerTest } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';
import type { DRef } from '../src/store/refs.js';

/** Synthetic candidates, oldest first, as realize hands them to matchers. */
const cands = (k: number, root = '/nonexistent'): (Candidate & { path: string })[] =>
  Array.from({ length: k }, (_, i) => {
    const dir = path.join(root, `c${i}`);
    const read = (rel: string | Buffer): Promise<Buffer> => fs.promises.readFile(path.join(dir, rel.toString()));
    return {
      rref: `r${i}` as RRef,
      dref: 'd' as DRef,
      ctx: 'x',
      created: 1000 + i,
      tree: 't',
      bytes: 0,
      files: 0,
      path: dir,
      read,
      open: async (rel: string | Buffer) => fs.createReadStream(path.join(dir, rel.toString())),
    };
  });

describe('matchers on synthetic candidates', () => {
  it('latest(n): the n newest, newest first; none while fewer than n exist', async () => {
    assert.deepEqual(await latest().select(cands(3)), ['r2' as RRef]);
    assert.deepEqual(await latest(2).select(cands(3)), ['r2' as RRef, 'r1' as RRef]);
    assert.deepEqual(await latest(3).select(cands(3)), ['r2' as RRef, 'r1' as RRef, 'r0' as RRef]);
    assert.equal(await latest(4).select(cands(3)), null);
    assert.equal(await latest().select([]), null);
    assert.equal(latest(3).min, 3);
  });

  it('some(n): the n oldest, so the choice is stable as more appear; none while fewer exist', async () => {
    assert.deepEqual(await some(2).select(cands(2)), ['r0' as RRef, 'r1' as RRef]);
    assert.deepEqual(await some(2).select(cands(5)), ['r0' as RRef, 'r1' as RRef]);
    assert.equal(await some(4).select(cands(3)), null);
    assert.deepEqual(await some().select(cands(3)), ['r0' as RRef]);
    assert.equal(some(4).min, 4);
  });

  it('all(): every candidate, oldest first; none when there are none', async () => {
    assert.deepEqual(await all().select(cands(4)), ['r0' as RRef, 'r1' as RRef, 'r2' as RRef, 'r3' as RRef]);
    assert.equal(await runMatcher(all(), []), null);
  });

  it('only(): the one candidate; E_MATCH_AMBIGUOUS when there is more than one', async () => {
    assert.deepEqual(await only().select(cands(1)), ['r0' as RRef]);
    assert.equal(await runMatcher(only(), []), null);
    assert.throws(
      () => only().select(cands(2)),
      (e: unknown) => {
        isCode('E_MATCH_AMBIGUOUS')(e);
        assert.deepEqual((e as CairnError).details.candidates, ['r0' as RRef, 'r1' as RRef]);
        return true;
      },
    );
  });

  it('exact(refs): exactly those, in the given order, when all are candidates; none otherwise', async () => {
    assert.deepEqual(await exact(['r2' as RRef, 'r0' as RRef]).select(cands(3)), ['r2' as RRef, 'r0' as RRef]);
    assert.equal(await exact(['r2' as RRef, 'r9' as RRef]).select(cands(3)), null);
    assert.equal(await exact(['r0' as RRef]).select([]), null);
  });

  it('counts must be whole numbers >= 1 (E_BAD_ARGUMENT)', () => {
    for (const f of [
      () => latest(0),
      () => latest(1.5),
      () => some(-1),
      () => some(0),
      () => best(0, { file: 'x' }),
      () => best(NaN, { file: 'x' }),
    ]) {
      assert.throws(f, isCode('E_BAD_ARGUMENT'));
    }
  });

  describe('best()', () => {
    const { dir, cleanup } = tempDir('cairn-core-best');
    after(cleanup);
    const scored = (scores: (string | null)[], file = 'score.txt'): (Candidate & { path: string })[] => {
      const root = fs.mkdtempSync(path.join(dir, 's-'));
      const c = cands(scores.length, root);
      scores.forEach((s, i) => {
        fs.mkdirSync(c[i]!.path);
        if (s !== null) fs.writeFileSync(path.join(c[i]!.path, file), s);
      });
      return c;
    };

    it('best(n, {file}) chooses the highest scores, best first', async () => {
      const c = scored(['3', '9', '1', '5']);
      assert.deepEqual(await best({ file: 'score.txt' }).select(c), ['r1' as RRef]);
      assert.deepEqual(await best(2, { file: 'score.txt' }).select(c), ['r1' as RRef, 'r3' as RRef]);
      assert.deepEqual(await best(4, { file: 'score.txt' }).select(c), [
        'r1' as RRef,
        'r3' as RRef,
        'r0' as RRef,
        'r2' as RRef,
      ]);
      assert.equal(await best(5, { file: 'score.txt' }).select(c), null);
    });

    it('names itself with its file, key and direction (what exp show and graph print as "chosen by")', () => {
      assert.equal(best({ file: 'score.txt' }).name, 'best(1, score.txt)');
      assert.equal(best(2, { file: 'metrics.json', key: 'acc' }).name, 'best(2, metrics.json:acc)');
      assert.equal(
        best({ file: 'metrics.json', key: 'loss', lowest: true }).name,
        'best(1, metrics.json:loss, lowest)',
      );
      assert.equal(best({ fn: () => 1, lowest: true }).name, 'best(1, fn, lowest)');
    });

    it('lowest: true chooses the lowest scores', async () => {
      const c = scored(['3', '9', '-1', '5']);
      assert.deepEqual(await best(2, { file: 'score.txt', lowest: true }).select(c), ['r2' as RRef, 'r0' as RRef]);
    });

    it('parses whitespace, negatives and exponents; ties go to the older candidate', async () => {
      const c = scored([' 2.5\n', '-1e3', '2.5', '25e-1']);
      assert.deepEqual(await best(3, { file: 'score.txt' }).select(c), ['r0' as RRef, 'r2' as RRef, 'r3' as RRef]);
      assert.deepEqual(await best(1, { file: 'score.txt', lowest: true }).select(c), ['r1' as RRef]);
    });

    it('with key, reads a numeric field of a JSON file', async () => {
      const c = scored(['{"acc":0.5,"loss":3}', '{"acc":0.9,"loss":1}', '{"acc":0.7,"loss":2}'], 'metrics.json');
      assert.deepEqual(await best({ file: 'metrics.json', key: 'acc' }).select(c), ['r1' as RRef]);
      assert.deepEqual(await best({ file: 'metrics.json', key: 'loss', lowest: true }).select(c), ['r1' as RRef]);
      assert.equal(await readScore(c[2]!, 'metrics.json', 'acc'), 0.7);
    });

    it('with a function, sync or async', async () => {
      const c = cands(4);
      const score = (x: Candidate) => [4, 1, 8, 2][Number(x.rref.slice(1))]!;
      assert.deepEqual(await best(2, { fn: score }).select(c), ['r2' as RRef, 'r0' as RRef]);
      assert.deepEqual(await best(2, { fn: async (x) => score(x), lowest: true }).select(c), [
        'r1' as RRef,
        'r3' as RRef,
      ]);
    });

    it('a missing, empty or non-numeric score is E_MATCH_INVALID', async () => {
      await assert.rejects(
        async () => best({ file: 'score.txt' }).select(scored(['1', null])),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'score.txt' }).select(scored(['1', ''])),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'score.txt' }).select(scored(['1', 'high'])),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'score.txt' }).select(scored(['1', 'NaN'])),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'score.txt' }).select(scored(['1', 'Infinity'])),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'm.json', key: 'k' }).select(scored(['{"k":1}', '{"k":"1"}'], 'm.json')),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        async () => best({ file: 'm.json', key: 'k' }).select(scored(['{"k":1}', 'not json'], 'm.json')),
        isCode('E_MATCH_INVALID'),
      );
    });
  });

  describe('runMatcher checks what a matcher returns', () => {
    it('null, undefined and [] mean none', async () => {
      for (const v of [null, undefined, []])
        assert.equal(
          await runMatcher(
            custom(() => v as never),
            cands(2),
          ),
          null,
        );
    });

    it('an RRef that is not a candidate is E_MATCH_INVALID', async () => {
      await assert.rejects(
        runMatcher(
          custom(() => ['r7' as RRef]),
          cands(2),
        ),
        isCode('E_MATCH_INVALID'),
      );
      await assert.rejects(
        runMatcher(
          custom(() => ['r0' as RRef, 'zzz' as RRef]),
          cands(2),
        ),
        isCode('E_MATCH_INVALID'),
      );
    });

    it('the same RRef twice is E_MATCH_INVALID', async () => {
      await assert.rejects(
        runMatcher(
          custom(() => ['r0' as RRef, 'r0' as RRef]),
          cands(2),
        ),
        isCode('E_MATCH_INVALID'),
      );
    });

    it('something that is not a list is E_MATCH_INVALID', async () => {
      for (const v of ['r0', 42, { rref: 'r0' }, true]) {
        await assert.rejects(
          runMatcher(
            custom(() => v as never),
            cands(2),
          ),
          isCode('E_MATCH_INVALID'),
        );
      }
    });

    it('a valid choice is returned as given, best first', async () => {
      assert.deepEqual(
        await runMatcher(
          custom(async () => ['r1' as RRef, 'r0' as RRef]),
          cands(2),
        ),
        ['r1' as RRef, 'r0' as RRef],
      );
    });
  });
});

describe('matchers in realize', () => {
  let store: LocalStore;
  let builds: Map<string, number>;
  storePerTest('cairn-core-matchers', (t) => {
    ({ store } = t);
    builds = new Map();
  });

  /** Every output random: each is its own realization. Counts build calls per stage name. */
  const randomBuild = (ctx: BuildContext<unknown>): void => {
    builds.set(ctx.name, (builds.get(ctx.name) ?? 0) + 1);
    for (const o of ctx.outs) fs.writeFileSync(path.join(o, 'r.bin'), randomBytes(16));
  };
  const fixedBuild = (ctx: BuildContext<unknown>): void => {
    builds.set(ctx.name, (builds.get(ctx.name) ?? 0) + 1);
    for (const o of ctx.outs) fs.writeFileSync(path.join(o, 'f'), 'fixed');
  };
  const rnd = (name: string, matcher: Matcher | MatcherFn, n = 1): Stage =>
    stage({ name, config: {}, n, matcher, build: randomBuild });
  const drefOf = (s: Stage) => instantiate(s).targets[0]!;
  const chosen = async (s: Stage): Promise<RRef[]> => (await realize(s, { store })).targets[0]!.rrefs;

  it('latest(3) on a stage with n: 3 builds once and chooses all three', async () => {
    const s = rnd('l3', latest(3), 3);
    const r = await chosen(s);
    assert.equal(builds.get('l3'), 1);
    assert.equal(r.length, 3);
    assert.equal(new Set(r).size, 3);
    await chosen(s);
    assert.equal(builds.get('l3'), 1, 'satisfied afterwards without building');
  });

  it('latest(2) on a stage with n: 1 builds twice, and the newest comes first', async () => {
    const s = rnd('l2', latest(2));
    const r = await chosen(s);
    assert.equal(builds.get('l2'), 2);
    const order = storeIndex(store)
      .realizationsOf(drefOf(s))
      .map((x) => x.rref);
    assert.deepEqual(r, [...order].reverse());
  });

  it('latest() follows new realizations made by forcing', async () => {
    const s = rnd('lf', latest());
    const first = await chosen(s);
    const forced = (await realize(s, { store, force: true })).targets[0]!.rrefs;
    assert.notDeepEqual(forced, first);
    assert.deepEqual(await chosen(s), forced);
    assert.equal(builds.get('lf'), 2);
  });

  it('some(4) on a stage with n: 1 builds exactly 4 times', async () => {
    const s = rnd('s4', some(4));
    const r = await chosen(s);
    assert.equal(builds.get('s4'), 4);
    assert.equal(r.length, 4);
    assert.equal(storeIndex(store).realizationsOf(drefOf(s)).length, 4);
  });

  it('some(4) on a stage with n: 3 builds twice (6 realizations, 4 chosen)', async () => {
    const s = rnd('s43', some(4), 3);
    const r = await chosen(s);
    assert.equal(builds.get('s43'), 2);
    assert.equal(r.length, 4);
    assert.equal(storeIndex(store).realizationsOf(drefOf(s)).length, 6);
  });

  it('some(2) keeps choosing the two oldest as more realizations appear', async () => {
    const s = rnd('s2', some(2));
    const first = await chosen(s);
    await realize(s, { store, force: true });
    await realize(s, { store, force: true });
    assert.ok(storeIndex(store).realizationsOf(drefOf(s)).length >= 4, 'forcing added realizations');
    assert.deepEqual(await chosen(s), first);
  });

  it('a forced stage builds as if it had no realizations: ceil(min / n) times, at least once', async () => {
    const s = rnd('fl3', latest(3));
    await chosen(s);
    assert.equal(builds.get('fl3'), 3);
    const r = await realize(s, { store, force: true });
    assert.equal(builds.get('fl3'), 6);
    assert.equal(r.builds, 3);
    const order = storeIndex(store)
      .realizationsOf(drefOf(s))
      .map((x) => x.rref);
    assert.equal(order.length, 6);
    assert.deepEqual(r.targets[0]!.rrefs, order.slice(3).reverse(), 'latest(3) now chooses the three new ones');
    const s2 = rnd('fs4', some(4), 3);
    await chosen(s2);
    assert.equal(builds.get('fs4'), 2);
    await realize(s2, { store, force: ['fs4'] });
    assert.equal(builds.get('fs4'), 4, 'ceil(4 / 3) = 2 more builds');
  });

  it(
    'some(3) on a deterministic stage cannot be satisfied: ' + 'E_MATCH_UNSATISFIED after 3 builds that merge',
    async () => {
      const s = stage({ name: 'det', config: {}, matcher: some(3), build: fixedBuild });
      await assert.rejects(realize(s, { store }), (e: unknown) => {
        isCode('E_MATCH_UNSATISFIED')(e);
        assert.equal((e as CairnError).details.realizations, 1);
        return true;
      });
      assert.equal(builds.get('det'), 3);
      assert.equal(storeIndex(store).realizationsOf(drefOf(s)).length, 1);
    },
  );

  it('all() chooses every realization, and a dependant sees them all', async () => {
    const up = rnd('up', all(), 3);
    let seen: readonly string[] = [];
    const down = stage({
      name: 'down',
      config: { up },
      build: ({ config, out }) => {
        seen = config.up.rrefs;
        fs.writeFileSync(path.join(out, 'n'), String(config.up.paths.length));
      },
    });
    const r = await realize(down, { store });
    assert.equal(r.plan[0]!.rrefs.length, 3);
    assert.deepEqual([...seen].sort(), [...r.plan[0]!.rrefs].sort());
    assert.deepEqual(store.readMeta(r.targets[0]!.rrefs[0]!).context[drefOf(up)], [...r.plan[0]!.rrefs].sort());
  });

  it('only() accepts a single realization and is then cached', async () => {
    const s = rnd('o1', only());
    const r1 = await chosen(s);
    const r2 = await chosen(s);
    assert.deepEqual(r1, r2);
    assert.equal(builds.get('o1'), 1);
  });

  it('only() with more than one realization is E_MATCH_AMBIGUOUS', async () => {
    const s = rnd('o2', only(), 2);
    await assert.rejects(realize(s, { store }), isCode('E_MATCH_AMBIGUOUS'));
    assert.equal(builds.get('o2'), 1);
    // Still ambiguous next time, without building.
    await assert.rejects(realize(s, { store }), isCode('E_MATCH_AMBIGUOUS'));
    assert.equal(builds.get('o2'), 1);
  });

  it('exact(refs) chooses exactly the pinned realizations', async () => {
    const s = rnd('ex', all(), 3);
    const three = await chosen(s);
    const pick = [three[2]!, three[0]!];
    const r = await chosen(rnd('ex', exact(pick), 3));
    assert.deepEqual(r, pick);
    assert.equal(builds.get('ex'), 1);
  });

  it('exact() naming a realization that does not exist builds once, then E_MATCH_UNSATISFIED', async () => {
    const s0 = rnd('exm', latest());
    const dref = drefOf(s0);
    const ghost = `${'0'.repeat(32)}-${dref}` as RRef;
    await assert.rejects(realize(rnd('exm', exact([ghost])), { store }), isCode('E_MATCH_UNSATISFIED'));
    assert.equal(builds.get('exm'), 1);
  });

  describe('best() chooses by score', () => {
    const scores = [3, 9, 1, 5];
    const scoredBuild = ({ outs }: BuildContext<unknown>) => {
      outs.forEach((o, i) => {
        fs.writeFileSync(path.join(o, 'score.txt'), String(scores[i]));
        fs.writeFileSync(path.join(o, 'metrics.json'), JSON.stringify({ acc: scores[i]! / 10, loss: 10 - scores[i]! }));
      });
    };
    const scoreOf = (r: RRef) => Number(fs.readFileSync(path.join(store.outPath(r), 'score.txt'), 'utf8'));
    const mk = (matcher: Matcher) =>
      stage({ name: 'model', config: {}, n: 4, outputs: ['score.txt', 'metrics.json'], matcher, build: scoredBuild });

    it('best({file}) chooses the highest score, building once', async () => {
      const r = await chosen(mk(best({ file: 'score.txt' })));
      assert.deepEqual(r.map(scoreOf), [9]);
    });

    it('best(2, {file}) chooses the two highest, best first', async () => {
      assert.deepEqual((await chosen(mk(best(2, { file: 'score.txt' })))).map(scoreOf), [9, 5]);
    });

    it('best(n, {file, lowest}) chooses the lowest', async () => {
      assert.deepEqual((await chosen(mk(best(2, { file: 'score.txt', lowest: true })))).map(scoreOf), [1, 3]);
    });

    it('best({file, key}) reads a JSON field', async () => {
      assert.deepEqual((await chosen(mk(best({ file: 'metrics.json', key: 'loss', lowest: true })))).map(scoreOf), [9]);
      assert.deepEqual((await chosen(mk(best({ file: 'metrics.json', key: 'acc' })))).map(scoreOf), [9]);
    });

    it('best({fn}) scores with a function of the candidate', async () => {
      const r = await chosen(
        mk(best({ fn: async (c) => -Math.abs(Number((await c.read('score.txt')).toString()) - 4) })),
      );
      assert.deepEqual(r.map(scoreOf), [3]);
    });

    it('best(5) over n: 4 builds twice', async () => {
      const s = stage({
        name: 'model5',
        config: {},
        n: 4,
        matcher: best(5, { file: 'score.txt' }),
        build: (ctx) => {
          builds.set('model5', (builds.get('model5') ?? 0) + 1);
          for (const o of ctx.outs) fs.writeFileSync(path.join(o, 'score.txt'), String(Math.random()));
        },
      });
      assert.equal((await chosen(s)).length, 5);
      assert.equal(builds.get('model5'), 2);
    });
  });

  describe('custom matchers', () => {
    it('a plain function is a matcher; it sees the candidates oldest first, reading their own files', async () => {
      const s0 = rnd('c1', some(3));
      const three = await chosen(s0);
      let seen: readonly Candidate[] = [];
      const r = await chosen(
        rnd('c1', (c) => {
          seen = c;
          return [c[1]!.rref];
        }),
      );
      assert.deepEqual(
        seen.map((c) => c.rref),
        three,
      );
      assert.deepEqual(r, [three[1]]);
      for (const c of seen) {
        assert.equal(c.dref, drefOf(s0));
        assert.ok('read' in c && !('path' in c), 'a candidate reads its files; it shows no store path');
        assert.deepEqual(await c.read('r.bin'), fs.readFileSync(path.join(store.outPath(c.rref), 'r.bin')));
        assert.equal(typeof c.created, 'number');
      }
      const created = seen.map((c) => c.created);
      assert.deepEqual(
        created,
        [...created].sort((a, b) => a - b),
      );
    });

    it('an async function works as a matcher', async () => {
      const r = await chosen(
        rnd('c2', async (c) => {
          await new Promise((res) => setImmediate(res));
          return c.length ? [c[0]!.rref] : null;
        }),
      );
      assert.equal(r.length, 1);
      assert.equal(builds.get('c2'), 1);
    });

    it('a matcher that always returns null: one build, then E_MATCH_UNSATISFIED', async () => {
      let asked = 0;
      const s = rnd('never', () => {
        asked++;
        return null;
      });
      await assert.rejects(realize(s, { store }), isCode('E_MATCH_UNSATISFIED'));
      assert.equal(builds.get('never'), 1);
      assert.ok(asked >= 2, `asked ${asked} times: at least before and after building`);
      assert.equal(storeIndex(store).realizationsOf(drefOf(s)).length, 1, 'the build itself was stored');
    });

    it('a matcher that returns [] behaves like null', async () => {
      await assert.rejects(
        realize(
          rnd('empty', () => []),
          { store },
        ),
        isCode('E_MATCH_UNSATISFIED'),
      );
      assert.equal(builds.get('empty'), 1);
    });

    it('a matcher returning an RRef that is not a candidate is E_MATCH_INVALID', async () => {
      const up = rnd('other', latest());
      const [foreign] = await chosen(up);
      const s = rnd('liar', () => [foreign!]);
      await assert.rejects(realize(s, { store }), isCode('E_MATCH_INVALID'));
    });

    it('a matcher returning a candidate twice is E_MATCH_INVALID', async () => {
      await chosen(rnd('dup', latest()));
      await assert.rejects(
        realize(
          rnd('dup', (c) => (c.length ? [c[0]!.rref, c[0]!.rref] : null)),
          { store },
        ),
        isCode('E_MATCH_INVALID'),
      );
    });

    it('a matcher returning something other than a list is E_MATCH_INVALID', async () => {
      await chosen(rnd('str', latest()));
      await assert.rejects(
        realize(rnd('str', ((c: readonly Candidate[]) => c[0]?.rref) as unknown as MatcherFn), { store }),
        isCode('E_MATCH_INVALID'),
      );
    });

    it('a matcher that throws fails realize with its error', async () => {
      await assert.rejects(
        realize(
          rnd('throws', () => {
            throw new CairnError('E_USAGE', 'custom refusal');
          }),
          { store },
        ),
        isCode('E_USAGE'),
      );
    });

    it('custom(fn, {min: 3}) on a stage with n: 1 builds 3 times', async () => {
      const s = rnd(
        'min3',
        custom((c) => (c.length >= 3 ? c.map((x) => x.rref) : null), { min: 3, name: 'three' }),
      );
      const r = await chosen(s);
      assert.equal(builds.get('min3'), 3);
      assert.equal(r.length, 3);
    });

    it('matchers only see realizations built from the currently chosen inputs', async () => {
      const up0 = rnd('u', all(), 2);
      const [a, b] = await chosen(up0);
      const seen: string[][] = [];
      const down = (pick: RRef) =>
        stage({
          name: 'd',
          config: { up: rnd('u', exact([pick]), 2) },
          build: fixedBuild,
          matcher: (c: readonly Candidate[]) => {
            seen.push(c.map((x) => x.rref));
            return c.length ? [c[0]!.rref] : null;
          },
        });
      const dA = await chosen(down(a!));
      const dB = await chosen(down(b!));
      assert.notDeepEqual(dA, dB);
      // After both exist, each context still sees exactly its own one.
      seen.length = 0;
      assert.deepEqual(await chosen(down(a!)), dA);
      assert.deepEqual(await chosen(down(b!)), dB);
      assert.deepEqual(seen, [dA, dB]);
      assert.equal(builds.get('d'), 2);
    });
  });
});
