/**
 * Canonical JSON and the hashing rules built on it. Every refusal must carry
 * the stable code E_CONFIG_NOT_JSON, and the pinned values at the end guard
 * against accidental changes of the rules that make DRefs and RRefs portable.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { canonicalJson, CairnError, instantiate, isCairnError, realize, stage, LocalStore } from '../src/index.js';
import { base32, shortHash, HASH_CHARS } from '../src/store/hash.js';
import { tempDir } from './helpers.js';

const notJson = (fn: () => unknown, pathIncludes?: string): void => {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CairnError, `expected a CairnError, got ${String(e)}`);
    assert.equal(e.code, 'E_CONFIG_NOT_JSON');
    if (pathIncludes !== undefined)
      assert.ok(
        String(e.details.path).includes(pathIncludes),
        `path ${String(e.details.path)} should include ${pathIncludes}`,
      );
    return true;
  });
};

/** An independent reference serialiser: sorted keys (UTF-16 order), JSON.stringify for leaves. */
function reference(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(reference).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${reference(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** A deep copy whose objects have their keys inserted in a permuted order. */
function permuteKeys(v: unknown, seed: number): unknown {
  if (Array.isArray(v)) return v.map((x, i) => permuteKeys(x, seed + i + 1));
  if (v !== null && typeof v === 'object') {
    const keys = Object.keys(v);
    // Deterministic shuffle (Fisher-Yates with an LCG).
    let s = seed >>> 0;
    for (let i = keys.length - 1; i > 0; i--) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const j = s % (i + 1);
      [keys[i], keys[j]] = [keys[j]!, keys[i]!];
    }
    const out: Record<string, unknown> = {};
    for (const k of keys)
      Object.defineProperty(out, k, {
        value: permuteKeys((v as Record<string, unknown>)[k], s + 7),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    return out;
  }
  return v;
}

describe('canonicalJson: one text per JSON value', () => {
  it('does not depend on the order in which object keys were inserted', () => {
    assert.equal(
      canonicalJson({ b: 1, a: 2, c: { y: [1, { q: 1, p: 2 }], x: null } }),
      canonicalJson({ c: { x: null, y: [1, { p: 2, q: 1 }] }, a: 2, b: 1 }),
    );
    assert.equal(canonicalJson({ b: 1, a: 2 }), '{"a":2,"b":1}');
  });

  it('keeps array order (arrays are sequences, not sets)', () => {
    assert.notEqual(canonicalJson([1, 2]), canonicalJson([2, 1]));
    assert.equal(canonicalJson([2, 1]), '[2,1]');
  });

  it('sorts keys by UTF-16 code unit, so integer-like keys sort as strings', () => {
    assert.equal(canonicalJson({ 9: 'nine', 10: 'ten', a: 0, B: 1 }), '{"10":"ten","9":"nine","B":1,"a":0}');
    // U+1F600 is the surrogate pair D83D DE00, which sorts before U+FFFF by code unit.
    assert.equal(canonicalJson({ '\uffff': 1, '\u{1F600}': 2 }), '{"\u{1F600}":2,"\uffff":1}');
  });

  it('writes -0 as 0, so -0 and 0 are the same config', () => {
    assert.equal(canonicalJson(-0), '0');
    assert.equal(canonicalJson({ x: -0, y: [-0] }), canonicalJson({ x: 0, y: [0] }));
    assert.equal(canonicalJson({ x: -0 }), '{"x":0}');
  });

  it('writes numbers in shortest round-trip form, so 1.0 and 1 agree', () => {
    assert.equal(canonicalJson(1.0), '1');
    assert.equal(canonicalJson(JSON.parse('1.0')), '1');
    assert.equal(canonicalJson(JSON.parse('{"a":1.50}')), '{"a":1.5}');
    assert.equal(canonicalJson(JSON.parse('100e-2')), '1');
    assert.equal(canonicalJson(0.1 + 0.2), '0.30000000000000004');
    assert.equal(canonicalJson(1e21), '1e+21');
    assert.equal(canonicalJson(-1e-7), '-1e-7');
  });

  it('escapes strings exactly as JSON.stringify does', () => {
    const s = 'quote " backslash \\ newline \n tab \t nul \0 lone surrogate \ud800 é';
    assert.equal(canonicalJson(s), JSON.stringify(s));
    assert.equal(canonicalJson({ [s]: s }), `{${JSON.stringify(s)}:${JSON.stringify(s)}}`);
  });

  it('accepts null-prototype objects like plain ones', () => {
    const o = Object.create(null) as Record<string, unknown>;
    o.b = 2;
    o.a = 1;
    assert.equal(canonicalJson(o), '{"a":1,"b":2}');
  });

  it('accepts a value that is shared (not cyclic) in several places', () => {
    const shared = { k: [1, 2] };
    assert.equal(canonicalJson({ a: shared, b: [shared, shared] }), '{"a":{"k":[1,2]},"b":[{"k":[1,2]},{"k":[1,2]}]}');
  });

  it('omits object properties whose value is undefined (the documented exception)', () => {
    assert.equal(canonicalJson({ a: 1, b: undefined }), '{"a":1}');
    assert.equal(canonicalJson({ a: 1, b: undefined }), canonicalJson({ a: 1 }));
  });

  it('gives the same text on every call', () => {
    const v = { z: [1, 'two', { three: 3, four: [null, true, false] }], a: { nested: { deep: -0.5 } } };
    const first = canonicalJson(v);
    for (let i = 0; i < 20; i++) assert.equal(canonicalJson(v), first);
    assert.equal(canonicalJson(structuredClone(v)), first);
  });

  it('property: equals an independent sorted-key serialiser on any JSON value', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        assert.equal(canonicalJson(v), reference(v));
      }),
      { numRuns: 300 },
    );
  });

  it('property: parsing the text gives back the value (modulo -0), and re-canonicalising is the identity', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const text = canonicalJson(v);
        assert.deepEqual(JSON.parse(text), JSON.parse(JSON.stringify(v)));
        assert.equal(canonicalJson(JSON.parse(text)), text);
      }),
      { numRuns: 300 },
    );
  });

  it('property: permuting the insertion order of keys never changes the text', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.nat(), (v, seed) => {
        assert.equal(canonicalJson(permuteKeys(v, seed)), canonicalJson(v));
      }),
      { numRuns: 300 },
    );
  });

  it('property: different JSON values (after normalising -0) give different texts', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.jsonValue(), (a, b) => {
        const same = reference(JSON.parse(JSON.stringify(a))) === reference(JSON.parse(JSON.stringify(b)));
        assert.equal(canonicalJson(a) === canonicalJson(b), same);
      }),
      { numRuns: 300 },
    );
  });
});

describe('canonicalJson: refuses what is not JSON, with E_CONFIG_NOT_JSON', () => {
  it('refuses functions, at top level and nested', () => {
    notJson(() => canonicalJson(() => 1));
    notJson(
      () =>
        canonicalJson({
          a: {
            f: function named() {
              return 1;
            },
          },
        }),
      'config.a.f',
    );
    notJson(() => canonicalJson([1, async () => 2]), 'config[1]');
  });

  it('refuses BigInt', () => {
    notJson(() => canonicalJson(1n));
    notJson(() => canonicalJson({ big: 2n ** 70n }), 'config.big');
  });

  it('refuses NaN, Infinity and -Infinity', () => {
    notJson(() => canonicalJson(NaN));
    notJson(() => canonicalJson({ x: Infinity }), 'config.x');
    notJson(() => canonicalJson([-Infinity]), 'config[0]');
    notJson(() => canonicalJson({ x: 0 / 0 }));
  });

  it('refuses symbols as values and as keys', () => {
    notJson(() => canonicalJson(Symbol('s')));
    notJson(() => canonicalJson({ s: Symbol.for('x') }), 'config.s');
    notJson(() => canonicalJson({ a: 1, [Symbol('k')]: 2 }));
  });

  it('refuses undefined at top level and inside arrays', () => {
    notJson(() => canonicalJson(undefined));
    notJson(() => canonicalJson([1, undefined, 3]), 'config[1]');
    notJson(() => canonicalJson({ list: [undefined] }), 'config.list[0]');
  });

  it('refuses holes in sparse arrays instead of silently dropping them', () => {
    // [1, , 3] must not get the identity of [1, 3]: JSON would write [1,null,3].
    // eslint-disable-next-line no-sparse-arrays
    const sparse = [1, , 3];
    notJson(() => canonicalJson(sparse));
    const holey = new Array(3);
    holey[2] = 'x';
    notJson(() => canonicalJson({ holey }));
  });

  it('refuses class instances: Date, Map, Set, RegExp, boxed primitives, user classes', () => {
    class Point {
      constructor(
        public x: number,
        public y: number,
      ) {}
    }
    notJson(() => canonicalJson(new Date(0)));
    notJson(() => canonicalJson({ when: new Date(0) }), 'config.when');
    notJson(() => canonicalJson(new Map([['a', 1]])));
    notJson(() => canonicalJson({ m: new Map() }), 'config.m');
    notJson(() => canonicalJson(new Set([1])));
    notJson(() => canonicalJson(/re/));
    notJson(() => canonicalJson(new Number(1)));
    notJson(() => canonicalJson(new String('s')));
    notJson(() => canonicalJson(new Point(1, 2)));
    notJson(() => canonicalJson(new Uint8Array(2)));
    notJson(() => canonicalJson(Buffer.from('x')));
  });

  it('refuses cycles through objects and through arrays', () => {
    const o: Record<string, unknown> = { a: 1 };
    o.self = o;
    notJson(() => canonicalJson(o), 'config.self');
    const arr: unknown[] = [1];
    arr.push(arr);
    notJson(() => canonicalJson(arr), 'config[1]');
    const x: Record<string, unknown> = {};
    const y: Record<string, unknown> = { x };
    x.y = [y];
    notJson(() => canonicalJson({ root: x }));
  });

  it('refuses the same values in a stage config when the stage is instantiated', () => {
    const bad: unknown[] = [() => 1, 1n, NaN, Infinity, Symbol('s'), [undefined], new Date(0), new Map()];
    for (const v of bad) {
      const s = stage({ name: 'bad', config: { v }, build: () => {} });
      assert.throws(
        () => instantiate(s),
        (e: unknown) => isCairnError(e, 'E_CONFIG_NOT_JSON'),
      );
    }
    const cyc: Record<string, unknown> = {};
    cyc.again = cyc;
    assert.throws(
      () => instantiate(stage({ name: 'cyc', config: cyc, build: () => {} })),
      (e: unknown) => isCairnError(e, 'E_CONFIG_NOT_JSON'),
    );
  });
});

describe('hashing rules are pinned', () => {
  const { dir, cleanup } = tempDir('cairn-core-canonical');
  after(cleanup);

  /** Reference base32 over the first 160 bits, written with BigInt arithmetic. */
  const refBase32 = (digest: Uint8Array): string => {
    const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
    let n = 0n;
    for (let i = 0; i < 20; i++) n = (n << 8n) | BigInt(digest[i]!);
    let out = '';
    for (let i = 31; i >= 0; i--) out += alphabet[Number((n >> BigInt(i * 5)) & 31n)];
    return out;
  };

  it('base32 matches a reference implementation and uses the 32-char Nix alphabet', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 20, maxLength: 40 }), (bytes) => {
        const b = base32(bytes);
        assert.equal(b, refBase32(bytes));
        assert.equal(b.length, HASH_CHARS);
        assert.match(b, /^[0-9a-df-np-sv-z]{32}$/);
      }),
      { numRuns: 300 },
    );
    assert.equal(shortHash('x'), refBase32(createHash('sha256').update('x').digest()));
  });

  it('shortHash of fixed strings is pinned', () => {
    assert.equal(shortHash(''), 'wfqc8hlqzhf196pvyk49jvxr4hkswhg4');
    assert.equal(shortHash('cairn'), '9achkaaidl1gsk3jk92r48wqzd0w7662');
  });

  const pinned = () =>
    stage({
      name: 'pinned',
      version: '1',
      config: { b: [1, 2.5, 'x', -0], a: { z: null, y: true }, s: 'é\u2028' },
      build: () => {},
    });

  it('the DRef and derivation text of a fixed stage are pinned', () => {
    const g = instantiate(pinned());
    const dref = g.targets[0]!;
    assert.equal(dref, '3drg83cwm1ib55a2nzn191d6avhiyzr5-pinned');
    assert.equal(
      g.nodes.get(dref)!.drvJson,
      '{"code":{"version":"1"},"config":{"a":{"y":true,"z":null},"b":[1,2.5,"x",0],"s":"é\u2028"},' +
        '"deps":[],"format":"cairn-drv-1","name":"pinned","outputs":[]}',
    );
    assert.equal(shortHash(g.nodes.get(dref)!.drvJson), dref.slice(0, 32));
  });

  it('the RRefs of a fixed two-stage graph with a fixed output tree are pinned', async () => {
    const store = LocalStore.open(path.join(dir, 'store'));
    try {
      const down = stage({
        name: 'pinout',
        version: '1',
        config: { up: pinned() },
        build: ({ out }) => {
          fs.writeFileSync(path.join(out, 'a.txt'), 'hello\n');
          fs.mkdirSync(path.join(out, 'sub'));
          fs.writeFileSync(path.join(out, 'sub', 'run.sh'), '#!/bin/sh\n', { mode: 0o755 });
          fs.symlinkSync('../a.txt', path.join(out, 'sub', 'link'));
        },
      });
      const r = await realize(down, { store, jobs: 1 });
      assert.deepEqual(
        r.plan.map((p) => p.rrefs),
        [
          ['87x10zswqw40yyqcxfqi8cr74874gjb5-3drg83cwm1ib55a2nzn191d6avhiyzr5-pinned'],
          ['980ywgsznskg26hf6zpbvj7wahnl0z10-231jsk0w071kmab66sj3bgxip3wzdhh9-pinout'],
        ],
      );
      const meta = store.readMeta(r.targets[0]!.rrefs[0]!);
      assert.equal(meta.tree, 'eb9defb92e7a56088536edd3b5845561d3516ee632f0763754a440ee3cdf01ff');
    } finally {
      store.close();
    }
  });
});
