/**
 * instantiate(): stage objects -> a pure graph of derivations with DRefs.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  all,
  CairnError,
  exact,
  instantiate,
  isCairnError,
  latest,
  parseRef,
  stage,
  type Stage,
} from '../src/index.js';
import { shortHash } from '../src/store/hash.js';
import { repoRoot, tempDir } from './helpers.js';

const code =
  (c: string) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof CairnError, `expected a CairnError, got ${String(e)}`);
    assert.equal(e.code, c, (e as Error).message);
    return true;
  };

const noop = () => {};
const dref = (s: Stage): string => instantiate(s).targets[0]!;
const mk = (name: string, config: unknown, extra: Record<string, unknown> = {}): Stage =>
  stage({ name, config, build: noop, ...extra });

describe('instantiate: identity', () => {
  it('gives the same DRef when the same stage is instantiated again, or rebuilt from the same spec', () => {
    const a = mk('a', { x: 1, list: [1, 2] });
    assert.equal(dref(a), dref(a));
    assert.equal(dref(a), dref(mk('a', { list: [1, 2], x: 1 })));
    const b1 = mk('b', { a, k: 'v' });
    const b2 = mk('b', { k: 'v', a: mk('a', { x: 1, list: [1, 2] }) });
    assert.equal(dref(b1), dref(b2));
  });

  it('DRefs have the form <32-char hash>-<name> and parse as DRefs', () => {
    const d = dref(mk('my-stage_1.2+x', { a: 1 }));
    assert.match(d, /^[0-9a-df-np-sv-z]{32}-my-stage_1\.2\+x$/);
    const p = parseRef(d);
    assert.equal(p.kind, 'drv');
    assert.equal(p.name, 'my-stage_1.2+x');
  });

  it('the DRef is the short hash of the derivation text', () => {
    const g = instantiate(mk('h', { q: [true] }));
    const node = g.nodes.get(g.targets[0]!)!;
    assert.equal(g.targets[0], `${shortHash(node.drvJson)}-h`);
    assert.deepEqual((JSON.parse(node.drvJson) as { config: unknown }).config, { q: [true] });
  });

  it('changes when any part of the config changes', () => {
    const base = dref(mk('a', { x: 1, y: [1, 2], z: { k: 'v' } }));
    const variants = [
      { x: 2, y: [1, 2], z: { k: 'v' } },
      { x: 1, y: [2, 1], z: { k: 'v' } },
      { x: 1, y: [1, 2, 3], z: { k: 'v' } },
      { x: 1, y: [1, 2], z: { k: 'w' } },
      { x: 1, y: [1, 2], z: { k: 'v', extra: null } },
      { x: '1', y: [1, 2], z: { k: 'v' } },
      { x: 1, y: [1, 2], z: {} },
    ];
    const seen = new Set([base]);
    for (const v of variants) {
      const d = dref(mk('a', v));
      assert.notEqual(d, base, JSON.stringify(v));
      seen.add(d);
    }
    assert.equal(seen.size, variants.length + 1, 'all variants are distinct');
  });

  it('changes with the name', () => {
    assert.notEqual(dref(mk('a', { x: 1 })), dref(mk('b', { x: 1 })));
  });

  it('treats -0/0 and 1.0/1 as the same config', () => {
    assert.equal(dref(mk('a', { x: -0 })), dref(mk('a', { x: 0 })));
    assert.equal(dref(mk('a', JSON.parse('{"x":1.0}'))), dref(mk('a', { x: 1 })));
  });

  it('changes when promised outputs change, but not with their order', () => {
    const none = dref(mk('a', {}));
    const ab = dref(mk('a', {}, { outputs: ['a', 'b'] }));
    assert.notEqual(none, ab);
    assert.equal(ab, dref(mk('a', {}, { outputs: ['b', 'a'] })));
    assert.notEqual(ab, dref(mk('a', {}, { outputs: ['a'] })));
  });

  it('changes when the build function source is edited', () => {
    const s1 = stage({
      name: 'a',
      config: {},
      build: ({ log }) => {
        log('one');
      },
    });
    const s2 = stage({
      name: 'a',
      config: {},
      build: ({ log }) => {
        log('two');
      },
    });
    assert.notEqual(dref(s1), dref(s2));
    // new Function gives separate function objects with chosen source text.
    const f1 = new Function('ctx', 'return 1;') as () => void;
    const f2 = new Function('ctx', 'return 2;') as () => void;
    assert.notEqual(
      dref(stage({ name: 'a', config: {}, build: f1 })),
      dref(stage({ name: 'a', config: {}, build: f2 })),
    );
  });

  it('depends on the source text, not on the function object', () => {
    const f1 = new Function('ctx', 'return 1;') as () => void;
    const f1again = new Function('ctx', 'return 1;') as () => void;
    assert.notEqual(f1, f1again);
    assert.equal(
      dref(stage({ name: 'a', config: {}, build: f1 })),
      dref(stage({ name: 'a', config: {}, build: f1again })),
    );
  });

  it('with version, the DRef is independent of the source, and changes with the version', () => {
    const f1 = new Function('ctx', 'return 1;') as () => void;
    const f2 = new Function('ctx', 'return 2;') as () => void;
    const v1a = dref(stage({ name: 'a', config: {}, build: f1, version: 'x' }));
    const v1b = dref(stage({ name: 'a', config: {}, build: f2, version: 'x' }));
    assert.equal(v1a, v1b);
    assert.notEqual(v1a, dref(stage({ name: 'a', config: {}, build: f1, version: 'y' })));
    assert.notEqual(v1a, dref(stage({ name: 'a', config: {}, build: f1 })), 'version and source identities differ');
  });

  it('does not depend on the matcher or on n (they choose among realizations, not what one is)', () => {
    const base = dref(mk('a', { x: 1 }));
    assert.equal(dref(mk('a', { x: 1 }, { matcher: all() })), base);
    assert.equal(dref(mk('a', { x: 1 }, { matcher: latest(3) })), base);
    assert.equal(dref(mk('a', { x: 1 }, { matcher: exact([]) })), base);
  });

  it('a changed dependency changes every dependant DRef, and nothing else', () => {
    const build = (x: number) => {
      const a = mk('a', { x });
      const side = mk('side', { s: 1 });
      const b = mk('b', { a });
      const c = mk('c', { b, side });
      return [a, side, b, c] as const;
    };
    const g1 = build(1).map(dref);
    const g2 = build(2).map(dref);
    assert.notEqual(g1[0], g2[0]);
    assert.equal(g1[1], g2[1]);
    assert.notEqual(g1[2], g2[2]);
    assert.notEqual(g1[3], g2[3]);
  });
});

describe('instantiate: dependencies', () => {
  it('stage references anywhere in the config become dependencies', () => {
    const a = mk('a', { v: 1 });
    const b = mk('b', { v: 2 });
    const c = mk('c', { v: 3 });
    const d = mk('d', { nested: { deep: [{ x: a }] }, list: [b, [c]], again: a });
    const g = instantiate(d);
    const da = g.drefOf.get(a)!;
    const db = g.drefOf.get(b)!;
    const dc = g.drefOf.get(c)!;
    const node = g.nodes.get(g.targets[0]!)!;
    assert.deepEqual(node.deps, [da, db, dc].sort(), 'each dependency once, sorted');
    assert.equal(g.nodes.size, 4);
    const cfg = (JSON.parse(node.drvJson) as { config: unknown }).config;
    assert.deepEqual(cfg, {
      again: { $ref: da },
      list: [{ $ref: db }, [{ $ref: dc }]],
      nested: { deep: [{ x: { $ref: da } }] },
    });
    assert.deepEqual((JSON.parse(node.drvJson) as { deps: unknown }).deps, [da, db, dc].sort());
  });

  it('orders dependencies before dependants, each DRef once', () => {
    const a = mk('a', {});
    const b = mk('b', { a });
    const c = mk('c', { a });
    const d = mk('d', { b, c });
    const g = instantiate(d);
    assert.equal(g.order.length, 4);
    assert.equal(new Set(g.order).size, 4);
    const pos = (s: Stage) => g.order.indexOf(g.drefOf.get(s)!);
    assert.ok(
      pos(a) < pos(b) && pos(a) < pos(c) && pos(b) < pos(d) && pos(c) < pos(d),
      'expected: pos(a) < pos(b) && pos(a) < pos(c) && pos(b) < pos(d) && pos(c) < pos(d)',
    );
    for (const dref of g.order)
      for (const dep of g.nodes.get(dref)!.deps)
        assert.ok(
          g.order.indexOf(dep) < g.order.indexOf(dref),
          'expected: g.order.indexOf(dep) < g.order.indexOf(dref)',
        );
  });

  it('several stage objects with the same identity share one derivation', () => {
    const a1 = mk('a', { x: 1 });
    const a2 = mk('a', { x: 1 });
    const b = mk('b', { one: a1, two: a2 });
    const g = instantiate(b);
    assert.equal(g.nodes.size, 2);
    assert.equal(g.drefOf.get(a1), g.drefOf.get(a2));
    assert.equal(g.nodes.get(g.targets[0]!)!.deps.length, 1);
  });

  it('a literal {$ref} object in a config is not mistaken for a dependency', () => {
    const a = mk('a', {});
    const da = dref(a);
    const real = instantiate(mk('b', { x: a }));
    const fake = instantiate(mk('b', { x: { $ref: da } }));
    assert.notEqual(real.targets[0], fake.targets[0]);
    assert.deepEqual(fake.nodes.get(fake.targets[0]!)!.deps, []);
    assert.equal(fake.nodes.size, 1);
  });

  it('several targets give their DRefs in order and share common dependencies', () => {
    const a = mk('a', {});
    const b = mk('b', { a });
    const c = mk('c', { a });
    const g = instantiate([b, c]);
    assert.deepEqual(g.targets, [dref(b), dref(c)]);
    assert.equal(g.nodes.size, 3);
  });

  it('refuses things that are not stages', () => {
    assert.throws(() => instantiate([{ name: 'x' } as unknown as Stage]), code('E_NOT_A_STAGE'));
    assert.throws(() => stage({ name: 'x', config: {}, build: 'nope' as never }), code('E_NOT_A_STAGE'));
    assert.throws(() => stage(null as never), code('E_NOT_A_STAGE'));
  });

  it('freezes the stage object, but not its config', () => {
    const cfg: Record<string, unknown> = { x: 1 };
    const s = mk('a', cfg);
    assert.ok(Object.isFrozen(s), 'expected: Object.isFrozen(s)');
    assert.throws(() => {
      (s as { name: string }).name = 'b';
    });
    assert.equal(s.config, cfg);
    assert.ok(!Object.isFrozen(s.config), 'expected: !Object.isFrozen(s.config)');
  });

  it('sees config mutations made before instantiation', () => {
    const cfg: Record<string, unknown> = { x: 1 };
    const s = mk('a', cfg);
    const before = dref(s);
    cfg.x = 2;
    assert.notEqual(dref(s), before);
    assert.equal(dref(s), dref(mk('a', { x: 2 })));
  });
});

describe('instantiate: cycles are refused with E_CYCLE', () => {
  it('a -> b -> a, made by mutating a config after creating the stages', () => {
    const aCfg: Record<string, unknown> = { x: 1 };
    const a = mk('a', aCfg);
    const b = mk('b', { a });
    aCfg.dep = b;
    assert.throws(
      () => instantiate(a),
      (e: unknown) => {
        code('E_CYCLE')(e);
        const cycle = (e as CairnError).details.cycle as string[];
        assert.equal(cycle[0], cycle[cycle.length - 1]);
        assert.ok(cycle.includes('a') && cycle.includes('b'), "expected: cycle.includes('a') && cycle.includes('b')");
        return true;
      },
    );
    assert.throws(() => instantiate(b), code('E_CYCLE'));
  });

  it('a stage that references itself', () => {
    const cfg: Record<string, unknown> = {};
    const a = mk('a', cfg);
    cfg.self = [a];
    assert.throws(() => instantiate(a), code('E_CYCLE'));
  });

  it('a longer cycle reached through an acyclic prefix', () => {
    const cCfg: Record<string, unknown> = {};
    const c = mk('c', cCfg);
    const b = mk('b', { c });
    const a = mk('a', { b });
    cCfg.back = { deep: a };
    const top = mk('top', { a, other: mk('leaf', {}) });
    assert.throws(
      () => instantiate(top),
      (e: unknown) => {
        code('E_CYCLE')(e);
        const cycle = (e as CairnError).details.cycle as string[];
        assert.deepEqual(new Set(cycle), new Set(['a', 'b', 'c']));
        return true;
      },
    );
  });

  it('a diamond is not a cycle', () => {
    const a = mk('a', {});
    const b = mk('b', { a });
    const c = mk('c', { a });
    assert.doesNotThrow(() => instantiate(mk('d', { b, c, a })));
  });
});

describe('stage names', () => {
  const hash = 'a'.repeat(32);
  const bad: unknown[] = [
    '',
    'a/b',
    '/a',
    'a/',
    '..',
    'a..b',
    '..a',
    '.hidden',
    '.',
    'a\0b',
    '\0',
    `${hash}-x`,
    `${shortHash('x')}-name`,
    'a b',
    'ä',
    'a:b',
    'a\\b',
    '-a',
    '+a',
    'x'.repeat(101),
    42,
    null,
    undefined,
  ];
  for (const name of bad) {
    it(`refuses ${JSON.stringify(typeof name === 'string' ? name.slice(0, 40) : String(name))} with E_BAD_NAME`, () => {
      assert.throws(() => stage({ name: name as string, config: {}, build: noop }), code('E_BAD_NAME'));
    });
  }

  it('accepts portable names, up to 100 characters', () => {
    for (const name of [
      'a',
      'A',
      '_',
      '0',
      'a.b',
      'a-b',
      'a_b',
      'a+b',
      'x'.repeat(100),
      hash,
      `${hash}x`,
      'v1.2.3-rc+4',
    ]) {
      const s = stage({ name, config: {}, build: noop });
      assert.equal(s.name, name);
      assert.ok(dref(s).endsWith(`-${name}`), 'expected: dref(s).endsWith(`-${name}`)');
    }
  });
});

describe('stage spec validation', () => {
  it('promised outputs must be unique relative paths without . or .. parts (E_DUPLICATE_OUTPUT)', () => {
    for (const outputs of [['a', 'a'], ['/abs'], ['../up'], ['a/../b'], ['a/'], [''], ['./a'], ['a//b'], ['a\0b']]) {
      assert.throws(
        () => stage({ name: 'o', config: {}, build: noop, outputs }),
        code('E_DUPLICATE_OUTPUT'),
        JSON.stringify(outputs),
      );
    }
    assert.deepEqual(
      [...stage({ name: 'o', config: {}, build: noop, outputs: ['b', 'a/c', 'a'] }).outputs],
      ['a', 'a/c', 'b'],
    );
  });

  it(
    'n must be a whole number from 1 to 10000, version a string, ' + 'matcher a matcher or function (E_BAD_STAGE_SPEC)',
    () => {
      for (const n of [0, -1, 1.5, 10_001, NaN])
        assert.throws(() => stage({ name: 'n', config: {}, build: noop, n }), code('E_BAD_STAGE_SPEC'), String(n));
      assert.equal(stage({ name: 'n', config: {}, build: noop, n: 10_000 }).n, 10_000);
      assert.equal(stage({ name: 'n', config: {}, build: noop }).n, 1);
      assert.throws(() => stage({ name: 'v', config: {}, build: noop, version: 1 as never }), code('E_BAD_STAGE_SPEC'));
      assert.throws(
        () => stage({ name: 'm', config: {}, build: noop, matcher: 'latest' as never }),
        code('E_BAD_STAGE_SPEC'),
      );
      assert.equal(stage({ name: 'm', config: {}, build: noop }).matcher.name, 'latest');
    },
  );
});

describe('instantiate: scale', () => {
  it('instantiates a 10,000-stage chain without stack overflow, dependencies first', () => {
    let prev: Stage | null = null;
    const stages: Stage[] = [];
    for (let i = 0; i < 10_000; i++) {
      prev = mk(`s${i}`, { i, prev });
      stages.push(prev);
    }
    const g = instantiate(prev!);
    assert.equal(g.nodes.size, 10_000);
    assert.equal(g.order.length, 10_000);
    assert.equal(g.order[0], g.drefOf.get(stages[0]!));
    assert.equal(g.order[9_999], g.targets[0]);
    for (let i = 1; i < 10_000; i += 997) {
      assert.deepEqual(g.nodes.get(g.drefOf.get(stages[i]!)!)!.deps, [g.drefOf.get(stages[i - 1]!)]);
    }
  });

  it('a 10,000-stage chain closed into a cycle is refused with E_CYCLE, not a stack overflow', () => {
    const firstCfg: Record<string, unknown> = { i: 0 };
    const first = mk('s0', firstCfg);
    let prev: Stage = first;
    for (let i = 1; i < 10_000; i++) prev = mk(`s${i}`, { i, prev });
    firstCfg.back = prev;
    assert.throws(() => instantiate(prev), code('E_CYCLE'));
  });

  it('a wide graph: one stage with 2,000 direct dependencies', () => {
    const deps = Array.from({ length: 2000 }, (_, i) => mk(`d${i}`, { i }));
    const g = instantiate(mk('top', { deps }));
    assert.equal(g.nodes.size, 2001);
    assert.equal(g.nodes.get(g.targets[0]!)!.deps.length, 2000);
    assert.ok(!isCairnError(null), 'expected: !isCairnError(null)');
  });
});

describe('typing of the public API', () => {
  it('a stage with a typed config can be passed to instantiate() and realize() under the strict tsconfig', () => {
    // docs/guide.md section 10 shows `await realize(pipeline, { store })` with a
    // stage whose config is typed; that must compile without casts.
    const { dir, cleanup } = tempDir('cairn-core-types');
    try {
      fs.writeFileSync(
        path.join(dir, 'usage.ts'),
        [
          `import { stage, realize, instantiate, LocalStore, type Stage } from ` +
            `${JSON.stringify(path.join(repoRoot, 'src', 'index.js'))};`,
          `const a = stage({ name: 'a', config: { x: 1 }, build: ({ config, out }) => { void config.x; void out; } });`,
          `const b = stage({ name: 'b', config: { a }, build: ({ config }) => { void config.a.path; } });`,
          `instantiate(b);`,
          `instantiate([a, b]);`,
          `const list: Stage[] = [a, b];`,
          `export async function run(): Promise<void> { await realize(b, ` +
            `{ store: LocalStore.open('/nonexistent') }); void list; }`,
          '',
        ].join('\n'),
      );
      fs.writeFileSync(
        path.join(dir, 'tsconfig.json'),
        JSON.stringify({
          extends: path.join(repoRoot, 'tsconfig.json'),
          compilerOptions: { noEmit: true, rootDir: '/', typeRoots: [path.join(repoRoot, 'node_modules', '@types')] },
          include: [path.join(dir, 'usage.ts')],
        }),
      );
      const r = spawnSync(
        process.execPath,
        [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(dir, 'tsconfig.json')],
        { encoding: 'utf8' },
      );
      const errors = r.stdout
        .split('\n')
        .filter((l) => l.includes('error TS'))
        .map((l) => l.replace(/^.*usage\.ts/, 'usage.ts').slice(0, 160));
      assert.deepEqual(errors, []);
      assert.equal(r.status, 0, r.stdout.slice(0, 2000));
    } finally {
      cleanup();
    }
  });
});
