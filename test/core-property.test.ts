/**
 * Property tests over random stage graphs: random DAGs of 1..30 stages with
 * random JSON configs, stage references placed in different positions.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  canonicalJson,
  instantiate,
  realize,
  stage,
  LocalStore,
  type BuildContext,
  type Json,
  type Stage,
} from '../src/index.js';
import { tempDir } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';

interface NodeDesc {
  data: Json;
  deps: number[];
  place: number;
}
type Desc = NodeDesc[];

const jsonArb = fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>;

/** A random DAG: node i may depend only on nodes < i. */
const dagArb = (maxNodes = 30): fc.Arbitrary<Desc> =>
  fc.integer({ min: 1, max: maxNodes }).chain((n) =>
    fc.tuple(
      ...Array.from({ length: n }, (_, i) =>
        fc.record({
          data: jsonArb,
          deps: fc
            .array(fc.nat(), { maxLength: Math.min(i, 4) })
            .map((ds) => (i === 0 ? [] : [...new Set(ds.map((d) => d % i))])),
          place: fc.nat(2),
        }),
      ),
    ),
  );

/** The one build function all generated stages share (so their code identity is equal). */
function recordingBuild(ctx: BuildContext<unknown>): void {
  const seen = JSON.stringify(ctx.config, (_k, v: unknown) =>
    v !== null && typeof v === 'object' && 'rrefs' in v && typeof (v as { file?: unknown }).file === 'function'
      ? { rrefs: v.rrefs }
      : v,
  );
  fs.writeFileSync(path.join(ctx.out, 'seen.json'), seen);
}

/** Deep copy with object keys inserted in reverse order. */
const reverseKeys = (v: Json): Json => {
  if (Array.isArray(v)) return v.map(reverseKeys);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, Json> = {};
    for (const k of Object.keys(v).reverse())
      Object.defineProperty(out, k, {
        value: reverseKeys(v[k]!),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    return out;
  }
  return v;
};

/** Builds fresh stage objects from a description. */
function makeStages(
  desc: Desc,
  opts: { reverse?: boolean; tweak?: number; build?: (ctx: BuildContext<unknown>) => void } = {},
): Stage[] {
  const stages: Stage[] = [];
  desc.forEach((d, i) => {
    const deps = d.deps.map((j) => stages[j]!);
    let data = opts.reverse ? reverseKeys(d.data) : d.data;
    if (opts.tweak === i) data = { changed: data };
    const config: Record<string, unknown> =
      d.place === 0
        ? { data, deps }
        : d.place === 1
          ? { nested: { list: [{ deps }] }, data }
          : { data, ...Object.fromEntries(deps.map((s, k) => [`dep${k}`, s])) };
    stages.push(stage({ name: `s${i}`, config, build: opts.build ?? recordingBuild }));
  });
  return stages;
}

/** Indices that depend on k, directly or transitively, plus k itself. */
function affected(desc: Desc, k: number): Set<number> {
  const out = new Set([k]);
  for (let i = k + 1; i < desc.length; i++) if (desc[i]!.deps.some((d) => out.has(d))) out.add(i);
  return out;
}

describe('property: instantiate over random DAGs', () => {
  it('re-instantiating fresh stage objects gives the same DRefs', () => {
    fc.assert(
      fc.property(dagArb(), (desc) => {
        const g1 = instantiate(makeStages(desc));
        const g2 = instantiate(makeStages(desc));
        assert.deepEqual(g2.targets, g1.targets);
        assert.deepEqual([...g2.order], [...g1.order]);
        assert.equal(g1.nodes.size, desc.length);
      }),
      { numRuns: 100 },
    );
  });

  it('the insertion order of config keys does not change any DRef', () => {
    fc.assert(
      fc.property(dagArb(), (desc) => {
        assert.deepEqual(
          instantiate(makeStages(desc, { reverse: true })).targets,
          instantiate(makeStages(desc)).targets,
        );
      }),
      { numRuns: 100 },
    );
  });

  it('dependencies are exactly the referenced stages, and order puts them first', () => {
    fc.assert(
      fc.property(dagArb(), (desc) => {
        const stages = makeStages(desc);
        const g = instantiate(stages);
        assert.equal(new Set(g.order).size, g.order.length);
        assert.equal(g.order.length, desc.length);
        desc.forEach((d, i) => {
          const node = g.nodes.get(g.targets[i]!)!;
          assert.deepEqual([...node.deps], [...new Set(d.deps.map((j) => g.targets[j]!))].sort());
          for (const dep of node.deps)
            assert.ok(g.order.indexOf(dep) < g.order.indexOf(node.dref), 'dependency after dependant');
        });
        // Instantiating only the last stage reaches exactly its ancestors.
        const last = desc.length - 1;
        const ancestors = new Set([last]);
        for (let i = last; i >= 0; i--) if (ancestors.has(i)) for (const d of desc[i]!.deps) ancestors.add(d);
        assert.equal(instantiate(stages[last]!).nodes.size, ancestors.size);
      }),
      { numRuns: 100 },
    );
  });

  it('changing one config changes the DRef of that stage and of exactly its transitive dependants', () => {
    fc.assert(
      fc.property(dagArb(), fc.nat(), (desc, pick) => {
        const k = pick % desc.length;
        const before = instantiate(makeStages(desc)).targets;
        const after = instantiate(makeStages(desc, { tweak: k })).targets;
        const hit = affected(desc, k);
        desc.forEach((_, i) => {
          if (hit.has(i)) assert.notEqual(after[i], before[i], `s${i} should change when s${k} changes`);
          else assert.equal(after[i], before[i], `s${i} should not change when s${k} changes`);
        });
      }),
      { numRuns: 100 },
    );
  });

  it('two single-stage configs share a DRef exactly when their canonical JSON is equal', () => {
    fc.assert(
      fc.property(jsonArb, jsonArb, (a, b) => {
        const da = instantiate(stage({ name: 'x', config: a, build: recordingBuild })).targets[0];
        const db = instantiate(stage({ name: 'x', config: b, build: recordingBuild })).targets[0];
        assert.equal(da === db, canonicalJson(a) === canonicalJson(b));
      }),
      { numRuns: 200 },
    );
  });
});

describe('property: realize over random DAGs', () => {
  const { dir, cleanup } = tempDir('cairn-core-property');
  after(cleanup);
  let run = 0;

  it('builds each stage once, is fully cached the second time, and records the chosen inputs as context', async () => {
    await fc.assert(
      fc.asyncProperty(dagArb(), async (desc) => {
        const store = LocalStore.open(path.join(dir, `store-${run++}`));
        try {
          const calls = new Map<string, number>();
          const build = (ctx: BuildContext<unknown>) => {
            calls.set(ctx.name, (calls.get(ctx.name) ?? 0) + 1);
            recordingBuild(ctx);
          };
          // One build function object for all stages, defined per run: identity is its source text.
          const stages = makeStages(desc, { build });
          const r1 = await realize(stages, { store, jobs: 4 });
          assert.equal(r1.builds, desc.length);
          assert.equal(calls.size, desc.length);
          for (const [, c] of calls) assert.equal(c, 1);
          assert.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), []);

          const rref = r1.targets.map((t) => {
            assert.equal(t.rrefs.length, 1);
            return t.rrefs[0]!;
          });
          desc.forEach((d, i) => {
            const meta = store.readMeta(rref[i]!);
            const expected: Record<string, string[]> = {};
            for (const j of d.deps) expected[r1.targets[j]!.dref] = [rref[j]!];
            assert.deepEqual(meta.context, expected);
            assert.equal(meta.dref, r1.targets[i]!.dref);
            // The build saw the same upstream realizations.
            const seen = fs.readFileSync(path.join(store.outPath(rref[i]!), 'seen.json'), 'utf8');
            for (const j of d.deps) assert.ok(seen.includes(rref[j]!), `s${i} did not see ${rref[j]}`);
          });

          // Cached: fresh stage objects, keys in another order, no builds, same RRefs.
          const r2 = await realize(makeStages(desc, { build, reverse: true }), { store });
          assert.equal(r2.builds, 0);
          assert.deepEqual(r2.targets, r1.targets);
          assert.ok(
            r2.plan.every((p) => p.action === 'cached'),
            'second run is all cached',
          );
          for (const [, c] of calls) assert.equal(c, 1);

          // The index can be rebuilt from the files alone.
          storeIndex(store).db.exec('DELETE FROM rz; DELETE FROM rz_dep; DELETE FROM drv;');
          assert.deepEqual(store.rebuildIndex(), { derivations: desc.length, realizations: desc.length });
          const r3 = await realize(makeStages(desc, { build }), { store });
          assert.equal(r3.builds, 0);
          assert.deepEqual(r3.targets, r1.targets);
        } finally {
          store.close();
        }
      }),
      { numRuns: 12 },
    );
  });

  it('forcing one stage of a deterministic graph rebuilds only it and keeps every RRef', async () => {
    await fc.assert(
      fc.asyncProperty(dagArb(15), fc.nat(), async (desc, pick) => {
        const store = LocalStore.open(path.join(dir, `store-${run++}`));
        try {
          const calls = new Map<string, number>();
          const build = (ctx: BuildContext<unknown>) => {
            calls.set(ctx.name, (calls.get(ctx.name) ?? 0) + 1);
            recordingBuild(ctx);
          };
          const stages = makeStages(desc, { build });
          const r1 = await realize(stages, { store });
          const k = pick % desc.length;
          calls.clear();
          const r2 = await realize(stages, { store, force: [`s${k}`] });
          assert.deepEqual([...calls.entries()], [[`s${k}`, 1]]);
          assert.deepEqual(r2.targets, r1.targets);
          assert.equal(storeIndex(store).all().length, desc.length);
        } finally {
          store.close();
        }
      }),
      { numRuns: 10 },
    );
  });
});
