/**
 * The config encoding behind DRefs is unambiguous: a user object that looks
 * like a stage reference (`{"$ref": dref}`) or like the escape wrapper
 * (`{"$lit": …}`) never gets the DRef of something else, existing DRefs of
 * configs without `$`-keys are unchanged, and a config nested too deeply is
 * refused with E_CONFIG_TOO_DEEP, also through the CLI (not exit 70).
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { canonicalJson, instantiate, stage } from '../src/index.js';
import { MAX_DEPTH } from '../src/store/canonical.js';
import { cairn, expectError, isolateModuleCache, isCode, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-config-encoding-cache');

const build = (): void => {};
const dref = (config: unknown, name = 't'): string =>
  instantiate(stage({ name, config, build, version: 'v1' })).targets[0]!;

const leafA = stage({ name: 'pa', config: { n: 1 }, build, version: 'v1' });
const leafB = stage({ name: 'pb', config: { n: 2 }, build, version: 'v1' });
const drefA = instantiate(leafA).targets[0]!;
const drefB = instantiate(leafB).targets[0]!;

describe('config encoding', () => {
  it('keeps the DRefs of configs without $-keys (golden values from before the escape rule)', () => {
    const leaf = stage({ name: 'leaf', config: { n: 1, s: 'x', list: [1, 2.5, null, true] }, build, version: 'v1' });
    const midConfig = { src: leaf, nested: { deps: [leaf], 'we ird': 'k' } };
    const mid = stage({ name: 'mid', config: midConfig, build, version: 'v1' });
    const top = stage({ name: 'top', config: [mid, { a: { b: { c: leaf } } }, 'str'], build, version: 'v1' });
    assert.deepEqual(instantiate(top).order, [
      'xj8kpc7fivh0qfrwgxx2hc7vxgjcfyk4-leaf',
      'rir2g3l9451w2936sfrk6dvd7yy0lpjc-mid',
      '16w9cv6czimf9cah1hkzbzykrys2ywir-top',
    ]);
  });

  it('a literal {"$ref": <a real DRef>} is not the stage it names (the collision of issue 13)', () => {
    // `keep` makes both depend on leafA, so only the encoding of `src` can tell them apart.
    const real = dref({ keep: leafA, src: leafA });
    const literal = dref({ keep: leafA, src: { $ref: drefA } });
    assert.notEqual(literal, real);
    const g = instantiate(stage({ name: 't', config: { src: { $ref: drefA } }, build, version: 'v1' }));
    assert.deepEqual(g.nodes.get(g.targets[0]!)!.deps, [], 'a literal is no dependency');
    // Nor can the escape wrapper be forged, at any level.
    assert.notEqual(dref({ src: { $lit: { $ref: drefA } } }), dref({ src: { $ref: drefA } }));
    assert.notEqual(dref({ $lit: { a: 1 } }), dref({ a: 1 }));
    assert.notEqual(dref({ $lit: { $lit: { a: 1 } } }), dref({ $lit: { a: 1 } }));
  });

  it('property: distinct configs (with $ref/$lit keys and real dependencies) give distinct DRefs', () => {
    // Small alphabets make near-collisions likely: marker keys, the real
    // DRef strings, and the real stages themselves in the same positions.
    const key = fc.constantFrom('$ref', '$lit', '$', 'a', '$x');
    const leaf = fc.constantFrom<unknown>(null, true, 0, 1, '', 'a', drefA, drefB, leafA, leafB);
    const { tree } = fc.letrec<{ tree: unknown }>((tie) => ({
      tree: fc.oneof(
        { depthSize: 'small', withCrossShrink: true },
        leaf,
        fc.array(tie('tree'), { maxLength: 3 }),
        fc.dictionary(key, tie('tree'), { maxKeys: 3 }),
      ),
    }));
    // A key that is obviously injective: stages by their DRef, tagged apart from everything else.
    const meaning = (v: unknown): unknown => {
      if (v === leafA || v === leafB) return ['stage', v === leafA ? drefA : drefB];
      if (Array.isArray(v)) return ['array', v.map(meaning)];
      if (v !== null && typeof v === 'object') {
        return [
          'object',
          Object.keys(v)
            .sort()
            .map((k) => [k, meaning((v as Record<string, unknown>)[k])]),
        ];
      }
      return ['value', v];
    };
    /**
     * A look-alike of `v`: where `flips` says so, a stage becomes the literal
     * `{"$ref": its DRef}`, a literal `{"$ref": d}` becomes the stage, and an
     * object is wrapped in, or unwrapped from, `{"$lit": …}`.
     */
    const lookAlike = (v: unknown, flips: boolean[]): unknown => {
      let i = 0;
      const flip = (): boolean => flips[i++ % flips.length] ?? false;
      const go = (x: unknown): unknown => {
        if (x === leafA || x === leafB) return flip() ? { $ref: x === leafA ? drefA : drefB } : x;
        if (Array.isArray(x)) return x.map(go);
        if (x === null || typeof x !== 'object') return x;
        const o = x as Record<string, unknown>;
        const keys = Object.keys(o);
        if (keys.length === 1 && keys[0] === '$ref' && (o.$ref === drefA || o.$ref === drefB) && flip()) {
          return o.$ref === drefA ? leafA : leafB;
        }
        if (keys.length === 1 && keys[0] === '$lit' && flip()) return go(o.$lit);
        const inner = Object.fromEntries(keys.map((k) => [k, go(o[k])]));
        return flip() ? { $lit: inner } : inner;
      };
      return go(v);
    };
    // Both configs reference both stages, so the dependency lists are equal
    // and only the encoding of the configs can tell them apart.
    const withDeps = (v: unknown): unknown => ({ all: [leafA, leafB], v });
    const check = (a: unknown, b: unknown): void => {
      const same = JSON.stringify(meaning(a)) === JSON.stringify(meaning(b));
      const why = `${JSON.stringify(meaning(a))}\n${JSON.stringify(meaning(b))}`;
      assert.equal(dref(withDeps(a)) === dref(withDeps(b)), same, why);
      assert.equal(dref(withDeps(a)), dref(withDeps(a)), 'the same config gives the same DRef');
    };
    fc.assert(
      fc.property(tree, fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }), (a, flips) => {
        check(a, lookAlike(a, flips));
      }),
      { numRuns: 2000 },
    );
    fc.assert(fc.property(tree, tree, check), { numRuns: 1000 });
  });

  it('a $-key whose value is undefined is omitted like any other key: the same DRef as without it (red team)', () => {
    assert.equal(dref({ a: 1, $x: undefined }), dref({ a: 1 }));
    assert.equal(dref({ a: { $ref: undefined, b: 2 } }), dref({ a: { b: 2 } }));
    assert.notEqual(dref({ a: { $ref: drefA, b: undefined } }), dref({ a: leafA }), 'a literal $ref is still wrapped');
  });

  it('canonicalJson without a substitute (service specs, hashes) writes $-keys plainly, as before', () => {
    assert.equal(canonicalJson({ $ref: 'x', b: 1 }), '{"$ref":"x","b":1}');
  });
});

/** `{a:{a:…}}` or `[[…]]` nested `n` deep, built without recursion. */
const nest = (n: number, kind: 'object' | 'array'): unknown => {
  let v: unknown = 0;
  for (let i = 0; i < n; i++) v = kind === 'object' ? { a: v } : [v];
  return v;
};

describe('deeply nested configs', () => {
  it(`are accepted up to ${MAX_DEPTH} levels and refused beyond with E_CONFIG_TOO_DEEP`, () => {
    assert.match(dref(nest(MAX_DEPTH, 'object')), /-t$/);
    assert.throws(() => dref(nest(MAX_DEPTH + 1, 'array')), isCode('E_CONFIG_TOO_DEEP'));
    assert.throws(() => dref({ x: nest(200_000, 'object') }), isCode('E_CONFIG_TOO_DEEP'));
    assert.throws(() => dref([nest(200_000, 'array')]), isCode('E_CONFIG_TOO_DEEP'));
  });

  it('a wide config (a million-element array) instantiates', () => {
    assert.match(dref(new Array(1_000_000).fill(1)), /-t$/);
  });

  it('cairn instantiate on a stage file with a 200,000-deep config exits with E_CONFIG_TOO_DEEP, not 70', () => {
    const t = tempDir('cairn-deep');
    try {
      for (const kind of ['object', 'array'] as const) {
        const file = path.join(t.dir, `deep-${kind}.ts`);
        fs.writeFileSync(
          file,
          [
            "import { stage } from 'cairn';",
            'let v: unknown = 0;',
            `for (let i = 0; i < 200_000; i++) v = ${kind === 'object' ? '{ a: v }' : '[v]'};`,
            "export default stage({ name: 'deep', config: { v }, build: () => {} });",
            '',
          ].join('\n'),
        );
        const r = cairn(path.join(t.dir, 'store'), ['instantiate', file]);
        expectError(r, 'E_CONFIG_TOO_DEEP');
        assert.notEqual(r.code, 70);
      }
    } finally {
      t.cleanup();
    }
  });
});
