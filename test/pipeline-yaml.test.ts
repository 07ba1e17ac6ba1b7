/**
 * cairn.yaml pipelines through the CLI, with real python3 scripts: the
 * 4-stage example (prepare -> train (n: 3, best by a metric) -> evaluate ->
 * report), caching and exactly-what-changed rebuilds, params picked by key,
 * the workspace a command sees, DRefs independent of the checkout's path,
 * schema errors, and export/import of a pipeline's results.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { LocalStore } from '../src/index.js';
import { cairn, expectError, isolateModuleCache, ok, repoRoot, storePerTest } from './helpers.js';
import type { DRef, RRef } from '../src/store/refs.js';

isolateModuleCache(after, 'cairn-yaml-cache');

let dir: string;
let store: LocalStore;
storePerTest('cairn-yaml', (t) => ({ dir, store } = t));

const storeDir = (): string => path.join(dir, 'store');

/** A copy of examples/yaml at DIR/NAME. */
function project(name = 'proj'): string {
  const p = path.join(dir, name);
  fs.cpSync(path.join(repoRoot, 'examples', 'yaml'), p, { recursive: true });
  return p;
}

interface Plan {
  name: string;
  action: string;
  dref: DRef;
  rrefs: RRef[];
}
interface Result {
  builds: number;
  plan: Plan[];
  targets: { dref: DRef; rrefs: RRef[] }[];
}

function realize(proj: string, args: string[] = [], file = 'cairn.yaml', s = storeDir()): Result {
  return JSON.parse(ok(cairn(s, ['realize', path.join(proj, file), '--json', ...args])).stdout) as Result;
}

/** Stage name -> action of a realize. */
const actions = (r: Result): Record<string, string> => Object.fromEntries(r.plan.map((p) => [p.name, p.action]));
const built = (r: Result): string[] =>
  r.plan
    .filter((p) => p.action !== 'cached')
    .map((p) => p.name)
    .sort();
const readJson = (p: string): Record<string, unknown> =>
  JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;
interface TrainMetrics {
  acc: number;
  run: string;
}

describe('cairn.yaml: the 4-stage ML pipeline', () => {
  it('realizes; evaluate and report consume the train run with the highest metric; a second run builds nothing', () => {
    const proj = project();
    const r = realize(proj);
    assert.deepEqual(actions(r), { prepare: 'build', train: 'build', evaluate: 'build', report: 'build' });
    const plan = new Map(r.plan.map((p) => [p.name, p]));
    // n: 3 made three realizations of train, one build.
    const runs = store.resolve(plan.get('train')!.dref);
    assert.equal(runs.length, 3);
    const metricsOf = (rr: RRef) =>
      readJson(path.join(store.outPath(rr), 'train_metrics.json')) as unknown as TrainMetrics;
    const metrics = runs.map(metricsOf);
    assert.equal(new Set(metrics.map((m) => m.run)).size, 3, 'three distinct training runs');
    const top = Math.max(...metrics.map((m) => m.acc));
    // The train target's choice is a best-scoring run, and it is what evaluate read.
    const trainOut = store.outPath(plan.get('train')!.rrefs[0]!);
    const chosen = readJson(path.join(trainOut, 'train_metrics.json')) as unknown as TrainMetrics;
    assert.equal(chosen.acc, top);
    const evaluation = readJson(path.join(store.outPath(plan.get('evaluate')!.rrefs[0]!), 'eval.json'));
    assert.equal(evaluation.run, chosen.run);
    const report = fs.readFileSync(path.join(store.outPath(plan.get('report')!.rrefs[0]!), 'report.md'), 'utf8');
    assert.match(report, new RegExp(`model run: ${chosen.run}`));
    // Outs keep their project-relative paths inside the realization.
    assert.ok(fs.statSync(path.join(store.outPath(plan.get('prepare')!.rrefs[0]!), 'data', 'train.csv')).isFile());
    assert.ok(fs.statSync(path.join(store.outPath(plan.get('train')!.rrefs[0]!), 'models', 'model.json')).isFile());

    const again = realize(proj);
    assert.equal(again.builds, 0);
    assert.deepEqual(built(again), []);
    assert.deepEqual(again.targets, r.targets);
  });

  it('editing train.py rebuilds train and its dependants only', () => {
    const proj = project();
    const first = realize(proj);
    fs.appendFileSync(path.join(proj, 'train.py'), '# tuned\n');
    const r = realize(proj);
    assert.deepEqual(built(r), ['evaluate', 'report', 'train']);
    assert.equal(actions(r).prepare, 'cached');
    assert.notEqual(r.plan.find((p) => p.name === 'train')!.dref, first.plan.find((p) => p.name === 'train')!.dref);
  });

  it('a param the stage declares rebuilds it; an unrelated param rebuilds nothing', () => {
    const proj = project();
    realize(proj);
    const params = path.join(proj, 'params.yaml');
    fs.writeFileSync(params, fs.readFileSync(params, 'utf8').replace('notes: first try', 'notes: second try'));
    const r1 = realize(proj);
    assert.equal(r1.builds, 0);
    assert.deepEqual(built(r1), []);
    fs.writeFileSync(params, fs.readFileSync(params, 'utf8').replace('epochs: 15', 'epochs: 16'));
    const r2 = realize(proj);
    assert.deepEqual(built(r2), ['evaluate', 'report', 'train']);
  });

  it('--stage realizes a stage and what it needs; the same YAML gives the same DRefs in any directory', () => {
    const a = project('a');
    const r = realize(a, ['--stage', 'evaluate']);
    assert.deepEqual(r.plan.map((p) => p.name).sort(), ['evaluate', 'prepare', 'train']);
    const drefs = (proj: string): string =>
      ok(cairn(storeDir(), ['instantiate', path.join(proj, 'cairn.yaml')])).stdout;
    const b = project('elsewhere/deeper/b');
    assert.equal(drefs(a), drefs(b));
    assert.equal(drefs(a), drefs(a));
    // And so a copy of the project is fully cached in the same store.
    assert.deepEqual(built(realize(b, ['--stage', 'evaluate'])), []);
    // Spelling and order do not matter: ./x is x, wdir ./ is the project, deps are a set.
    const respelled = fs
      .readFileSync(path.join(a, 'cairn.yaml'), 'utf8')
      .replace(
        'deps: [prepare.py, common.py, data/raw.csv]',
        'deps: [./data/raw.csv, common.py, prepare.py]\n    wdir: ./',
      );
    fs.writeFileSync(path.join(b, 'cairn.yaml'), respelled);
    const sorted = (text: string): string[] => text.trim().split('\n').sort();
    assert.deepEqual(sorted(drefs(b)), sorted(drefs(a)));
    // A dvc.yaml is read the same way.
    fs.copyFileSync(path.join(a, 'cairn.yaml'), path.join(a, 'dvc.yaml'));
    assert.equal(ok(cairn(storeDir(), ['instantiate', path.join(a, 'dvc.yaml')])).stdout, drefs(a));
  });

  it("exports a pipeline's result with its closure; the other store then has the pipeline cached", () => {
    const proj = project();
    const r = realize(proj);
    const report = r.plan.find((p) => p.name === 'report')!.rrefs[0]!;
    const tar = path.join(dir, 'report.tar');
    ok(cairn(storeDir(), ['export', report, '-o', tar]));
    const other = path.join(dir, 'other-store');
    ok(cairn(other, ['import', tar]));
    const there = LocalStore.open(other);
    try {
      assert.match(fs.readFileSync(path.join(there.outPath(report), 'report.md'), 'utf8'), /test accuracy/);
    } finally {
      there.close();
    }
    const again = realize(proj, [], 'cairn.yaml', other);
    assert.equal(again.builds, 0);
    assert.deepEqual(
      again.targets.map((t) => t.rrefs),
      r.targets.map((t) => t.rrefs),
    );
  });
});

/** Writes a one-off project: files by path, cairn.yaml last. */
function tiny(files: Record<string, string>, name = 'tiny'): string {
  const p = path.join(dir, name);
  for (const [rel, body] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(p, rel)), { recursive: true });
    fs.writeFileSync(path.join(p, rel), body);
  }
  return p;
}

describe('cairn.yaml: the workspace a command sees', () => {
  it('holds the declared deps at their paths, a params file of the picked keys only; outs keep their paths', () => {
    const proj = tiny({
      'params.yaml': 'a: {x: 1.0e-7, y: 2}\nb: secret\n',
      'src/lib.py': 'VALUE = 41\n',
      'src/main.py': 'import json, lib\nprint(lib.VALUE + 1)\n',
      'data/d/one.txt': 'one\n',
      'undeclared.txt': 'nope\n',
      'cairn.yaml': [
        'stages:',
        '  s:',
        '    cmd:',
        '      - mkdir -p out && python3 src/main.py > out/answer',
        '      - cat params.yaml > out/params && find data | sort > out/tree',
        '      - test ! -e undeclared.txt && echo "$CAIRN_STAGE $CAIRN_INDEX/$CAIRN_N" > out/env',
        '    deps: [src, data/d]',
        '    params: [a.x]',
        '    outs: [out]',
      ].join('\n'),
    });
    const r = realize(proj);
    const out = path.join(store.outPath(r.targets[0]!.rrefs[0]!), 'out');
    // src/main.py imports its sibling: the workspace is a real tree, not links into the store.
    assert.equal(fs.readFileSync(path.join(out, 'answer'), 'utf8'), '42\n');
    const params = fs.readFileSync(path.join(out, 'params'), 'utf8');
    assert.deepEqual(JSON.parse(params), { a: { x: 1e-7 } });
    assert.match(params, /1\.0e-7/, 'PyYAML reads 1e-7 as a string; 1.0e-7 is a float everywhere');
    const typeOfX = 'import sys, yaml; v = yaml.safe_load(sys.stdin)["a"]["x"]; print(type(v).__name__)';
    const py = spawnSync('python3', ['-c', typeOfX], { input: params, encoding: 'utf8' });
    if (py.status === 0) assert.equal(py.stdout.trim(), 'float');
    assert.equal(fs.readFileSync(path.join(out, 'tree'), 'utf8'), 'data\ndata/d\ndata/d/one.txt\n');
    assert.equal(fs.readFileSync(path.join(out, 'env'), 'utf8'), 's 0/1\n');
  });

  it("${key} in a command is the value from params.yaml (in the identity); \\${ is the shell's", () => {
    const proj = tiny({
      'params.yaml': 'train: {lr: 0.5, epochs: 3}\n',
      'cairn.yaml': 'stages:\n  s:\n    cmd: echo ${train.lr} ${ train.epochs } \\${CAIRN_STAGE} > o\n    outs: [o]\n',
    });
    const r = realize(proj);
    assert.equal(fs.readFileSync(path.join(store.outPath(r.targets[0]!.rrefs[0]!), 'o'), 'utf8'), '0.5 3 s\n');
    fs.writeFileSync(path.join(proj, 'params.yaml'), 'train: {lr: 0.25, epochs: 3}\n');
    assert.notEqual(realize(proj).targets[0]!.dref, r.targets[0]!.dref);
  });

  it('wdir: the command runs there, and paths are relative to it', () => {
    const proj = tiny({
      'data/raw.txt': 'raw\n',
      'src/step.sh': 'cat ../data/raw.txt > ../build/copy.txt; pwd > where\n',
      'src/params.yaml': 'k: v\n',
      'cairn.yaml': [
        'stages:',
        '  a:',
        '    wdir: src',
        '    cmd: sh step.sh && cat params.yaml >> where',
        '    deps: [step.sh, ../data/raw.txt]',
        '    params: [k]',
        '    outs: [../build/copy.txt, where]',
        '  b:',
        '    cmd: cat build/copy.txt src/where > o',
        '    deps: [build/copy.txt, src/where]',
        '    outs: [o]',
      ].join('\n'),
    });
    const r = realize(proj);
    const a = store.outPath(r.plan.find((p) => p.name === 'a')!.rrefs[0]!);
    assert.equal(fs.readFileSync(path.join(a, 'build', 'copy.txt'), 'utf8'), 'raw\n');
    assert.match(fs.readFileSync(path.join(a, 'src', 'where'), 'utf8'), /\/ws-0\/src\n\{\n {2}"k": "v"\n\}\n$/);
    const b = store.outPath(r.plan.find((p) => p.name === 'b')!.rrefs[0]!);
    assert.match(fs.readFileSync(path.join(b, 'o'), 'utf8'), /^raw\n/);
  });

  it('YAML anchors and merge keys (<<) work, as in dvc.yaml files that share settings', () => {
    const proj = tiny({
      'in.txt': 'hi\n',
      'cairn.yaml': [
        'stages:',
        '  a: &a',
        '    cmd: cp in.txt o',
        '    deps: [in.txt]',
        '    outs: [o]',
        '  b:',
        '    <<: *a',
        '    cmd: cp in.txt p && echo b >> p',
        '    outs: [p]',
      ].join('\n'),
    });
    const b = realize(proj).plan.find((p) => p.name === 'b')!;
    assert.equal(fs.readFileSync(path.join(store.outPath(b.rrefs[0]!), 'p'), 'utf8'), 'hi\nb\n');
  });

  it('a command that reads an undeclared file fails; one that misses an out breaks its promise', () => {
    const proj = tiny({
      'secret.txt': 'x\n',
      'cairn.yaml': 'stages:\n  reads:\n    cmd: cat secret.txt > o\n    outs: [o]\n',
    });
    const failed = cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml')]);
    expectError(failed, 'E_BUILD_FAILED', storeDir());
    // The error names the stage's command, not the shell that ran it.
    assert.match(failed.stderr, /failed: `cat secret\.txt > o` exited with 1: .*secret\.txt/);
    fs.writeFileSync(path.join(proj, 'cairn.yaml'), 'stages:\n  lazy:\n    cmd: "true"\n    outs: [model.bin]\n');
    const r = cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml')]);
    expectError(r, 'E_PROMISE_BROKEN', storeDir());
    assert.match(r.stderr, /stage lazy: the command did not create its out model\.bin/);
  });

  it('a command that writes into an input it was given fails the build (root is not stopped by read-only bits)', () => {
    const proj = tiny({
      'data.txt': 'original\n',
      'cairn.yaml':
        'stages:\n  vandal:\n    cmd: "echo changed >> data.txt 2>/dev/null; echo done > o"\n' +
        '    deps: [data.txt]\n    outs: [o]\n',
    });
    const r = cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml')]);
    if (process.getuid?.() === 0) {
      expectError(r, 'E_BUILD_FAILED');
      assert.match(r.stderr, /wrote to its input data\.txt/);
    } else {
      ok(r); // the store copy is read-only, so the append failed and the input is intact
    }
    assert.equal(fs.readFileSync(path.join(proj, 'data.txt'), 'utf8'), 'original\n', "the user's file is untouched");
  });

  it('an out reached through a symlink the command made is refused, and the file it points to stays', () => {
    const outside = path.join(dir, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'b'), 'precious\n');
    const proj = tiny({ 'cairn.yaml': `stages:\n  s:\n    cmd: rmdir a && ln -s ${outside} a\n    outs: [a/b]\n` });
    expectError(cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml')]), 'E_UNSAFE_OUTPUT', storeDir());
    assert.equal(fs.readFileSync(path.join(outside, 'b'), 'utf8'), 'precious\n');
  });

  it('a dep inside an out directory that the chosen realization lacks fails with its name', () => {
    const proj = tiny({
      'cairn.yaml':
        'stages:\n  a:\n    cmd: mkdir d\n    outs: [d]\n  b:\n    cmd: cat d/x > o\n    deps: [d/x]\n    outs: [o]\n',
    });
    const r = cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml')]);
    expectError(r, 'E_BUILD_FAILED', storeDir());
    assert.match(r.stderr, /stage b: dep d\/x is not in \S+-a/);
  });

  it('n: 3 with matcher all gives a dependant every run (CAIRN_DEPS) and the first at the path', () => {
    const proj = tiny({
      'cairn.yaml': [
        'stages:',
        '  gen:',
        '    cmd: echo "$CAIRN_INDEX" > r.txt',
        '    outs: [r.txt]',
        '    n: 3',
        '    matcher: all',
        '  use:',
        '    cmd: >-',
        "      python3 -c \"import json,os; d=json.load(open(os.environ['CAIRN_DEPS'])); print(len(d['r.txt']))\"",
        '      > count',
        '    deps: [r.txt]',
        '    outs: [count]',
      ].join('\n'),
    });
    const r = realize(proj);
    const use = r.plan.find((p) => p.name === 'use')!;
    assert.equal(fs.readFileSync(path.join(store.outPath(use.rrefs[0]!), 'count'), 'utf8'), '3\n');
    assert.equal(r.plan.find((p) => p.name === 'gen')!.rrefs.length, 3);
  });

  it('-v prefixes what each of the n runs prints with its run: gen[0]>, gen[1]>, gen[2]>', () => {
    const proj = tiny({
      'cairn.yaml':
        'stages:\n  gen:\n    cmd: echo "run $CAIRN_INDEX" > r.txt; echo "said $CAIRN_INDEX"\n' +
        '    outs: [r.txt]\n    n: 3\n',
    });
    const r = ok(cairn(storeDir(), ['realize', path.join(proj, 'cairn.yaml'), '-v']));
    for (const i of [0, 1, 2]) assert.match(r.stderr, new RegExp(`^gen\\[${i}\\]> said ${i}$`, 'm'), r.stderr);
  });
});

describe('cairn.yaml: schema errors are E_BAD_PIPELINE, naming the stage and key', () => {
  const cases: [string, string, RegExp][] = [
    [
      'unknown key with a hint',
      'stages:\n  a:\n    cmd: x\n    out: [o]\n',
      /:4: stage a: out: unknown key out \(did you mean "outs"\?\)/,
    ],
    ['missing cmd', 'stages:\n  a:\n    outs: [o]\n', /stage a: cmd is missing/],
    ['n of the wrong type', 'stages:\n  a:\n    cmd: x\n    n: three\n', /stage a: n: must be a whole number/],
    ['deps not a list', 'stages:\n  a:\n    cmd: x\n    deps: f\n', /stage a: deps: must be a list/],
    [
      'a cycle',
      'stages:\n  a:\n    cmd: x\n    deps: [b.txt]\n    outs: [a.txt]\n' +
        '  b:\n    cmd: x\n    deps: [a.txt]\n    outs: [b.txt]\n',
      /cycle: a -> b -> a/,
    ],
    [
      'an out of two stages',
      'stages:\n  a:\n    cmd: x\n    outs: [o]\n  b:\n    cmd: x\n    outs: [o]\n',
      /stage b: outs\.0: out o is also declared by stage a/,
    ],
    [
      'nested outs',
      'stages:\n  a:\n    cmd: x\n    outs: [m]\n  b:\n    cmd: x\n    outs: [m/x]\n',
      /out m\/x is inside out m of stage a/,
    ],
    [
      'a dep that is neither a file nor an out',
      'stages:\n  a:\n    cmd: x\n    outs: [model.pkl]\n  b:\n    cmd: x\n    deps: [model.pk]\n',
      /stage b: deps\.0: dep model\.pk is neither a file in the project nor an out of a stage \(did you mean/,
    ],
    ['a dep outside the project', 'stages:\n  a:\n    cmd: x\n    deps: [../etc/passwd]\n', /leaves the project/],
    [
      'a missing param',
      'stages:\n  a:\n    cmd: x\n    params: [train.lrr]\n',
      /params\.yaml has no param train\.lrr \(did you mean "train\.lr"\?\)/,
    ],
    [
      'an unknown ${param} in cmd',
      'stages:\n  a:\n    cmd: echo ${train.lrr}\n',
      /\$\{train\.lrr\}: params\.yaml has no param train\.lrr \(did you mean "train\.lr"\?\)/,
    ],
    [
      'a generated params file',
      'stages:\n  a:\n    cmd: x\n    outs: [p.yaml]\n  b:\n    cmd: x\n    params: [{p.yaml: [k]}]\n',
      /stage b: params\.0\.p\.yaml\.0: params file p\.yaml is an out of stage a/,
    ],
    [
      'an unknown matcher',
      'stages:\n  a:\n    cmd: x\n    matcher: bset\n',
      /unknown matcher bset \(did you mean "best"\?\)/,
    ],
    [
      'best without a metric',
      'stages:\n  a:\n    cmd: x\n    metrics: [m.json]\n    matcher: best\n',
      /say which metric of m\.json/,
    ],
    ['a bad stage name', 'stages:\n  "a b":\n    cmd: x\n', /stage name "a b" is not allowed/],
    ['vars', 'vars: [x]\nstages:\n  a:\n    cmd: x\n', /vars \(templating\) is not supported yet/],
    ['persist', 'stages:\n  a:\n    cmd: x\n    outs:\n      - o: {persist: true}\n', /persist: true is not supported/],
    ['not YAML', 'stages:\n  a: [\n', /not valid YAML/],
  ];
  for (const [what, yaml, message] of cases) {
    it(what, () => {
      const proj = tiny({ 'params.yaml': 'train: {lr: 1}\n', 'cairn.yaml': yaml }, 'bad');
      const r = cairn(storeDir(), ['instantiate', path.join(proj, 'cairn.yaml')]);
      expectError(r, 'E_BAD_PIPELINE');
      assert.match(r.stderr, message);
    });
  }

  it('an unknown --stage is E_NO_TARGET, listing the stages', () => {
    const proj = tiny({ 'cairn.yaml': 'stages:\n  a:\n    cmd: "true"\n' });
    const r = cairn(storeDir(), ['instantiate', path.join(proj, 'cairn.yaml'), '--stage', 'b']);
    expectError(r, 'E_NO_TARGET');
    assert.match(r.stderr, /stages: a/);
  });
});
