/**
 * `cairn exp show` and `cairn exp diff` (issue 20): the experiment table of
 * a pipeline's realizations, with params, metrics, the matcher's choice,
 * age and build time; as text (fitted to a terminal), JSON and CSV.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ExpDiff } from '../src/stages/inspect/diff.js';
import type { ExpTable } from '../src/stages/inspect/experiments.js';
import { csvField, formatExpTable } from '../src/stages/inspect/exp-format.js';
import { flattenConfig } from '../src/stages/inspect/flatten.js';
import { fit, textWidth } from '../src/stages/inspect/text.js';
import { cairn, cairnBin, expectError, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-exp-cache');

const mlDemo = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

const stageOf = (t: ExpTable, name: string): ExpTable['stages'][number] => {
  const s = t.stages.find((x) => x.name === name);
  assert.ok(s, `no stage ${name} in ${t.stages.map((x) => x.name).join(', ')}`);
  return s;
};

describe('exp show on the ML demo', () => {
  const t = tempDir('cairn-exp-ml');
  const store = path.join(t.dir, 'store');
  let report = '';
  before(() => {
    report = lastLine(ok(cairn(store, ['realize', mlDemo, '-q'])).stdout);
  });
  after(() => t.cleanup());

  it('shows the three training realizations with their scores, the best one chosen', () => {
    const table = JSON.parse(ok(cairn(store, ['exp', 'show', mlDemo, '--json'])).stdout) as ExpTable;
    assert.deepEqual(
      table.stages.map((s) => s.name),
      ['dataset', 'train', 'report'],
    );
    const train = stageOf(table, 'train');
    assert.equal(train.rows.length, 3);
    assert.equal(train.scoreKey, 'score');
    assert.equal(train.metricKeys[0], 'score');
    assert.equal(train.chosenBy, 'best(1, score.txt)');
    for (const r of train.rows) {
      assert.equal(typeof r.metrics.score, 'number');
      assert.ok(r.buildMs >= 0 && r.createdAt > Date.now() - 3600_000 && r.createdAt <= Date.now());
    }
    const chosen = train.rows.filter((r) => r.chosen);
    assert.equal(chosen.length, 1);
    const best = Math.max(...train.rows.map((r) => r.metrics.score!));
    assert.equal(chosen[0]!.metrics.score, best);
    // The demo stops training short of convergence: the seeds show in the scores, so best() has a real choice.
    const scores = train.rows.map((r) => r.metrics.score!);
    assert.equal(new Set(scores.map((x) => x.toPrecision(3))).size, 3, `distinct scores: ${scores.join(' ')}`);
    // The chosen one is what the report was built from.
    const meta = ok(cairn(store, ['catref', report, 'report.md'])).stdout;
    assert.match(meta, new RegExp(`Model realization: ${chosen[0]!.rref}`));
    assert.deepEqual(train.paramKeys, [], 'one config: no param tells the rows apart');
    assert.equal(stageOf(table, 'report').target, true);
  });
});

const fixtures = path.join(repoRoot, 'test', 'fixtures', 'inspect');

describe('exp show on a cairn.yaml pipeline', () => {
  const t = tempDir('cairn-exp-yaml');
  const store = path.join(t.dir, 'store');
  const file = path.join(repoRoot, 'examples', 'yaml', 'cairn.yaml');
  after(() => t.cleanup());

  it("reads the metrics files the stages declare; the matcher's metric comes first, the best chosen", () => {
    ok(cairn(store, ['realize', file, '-q']));
    const table = JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json'])).stdout) as ExpTable;
    const train = stageOf(table, 'train');
    assert.equal(train.chosenBy, 'best(acc)');
    assert.equal(train.scoreKey, 'train_metrics.acc');
    assert.equal(train.metricKeys[0], 'train_metrics.acc');
    assert.equal(train.rows.length, 3);
    const best = Math.max(...train.rows.map((r) => r.metrics['train_metrics.acc']!));
    assert.deepEqual(
      train.rows.filter((r) => r.chosen).map((r) => r.metrics['train_metrics.acc']),
      [best],
    );
    assert.equal(typeof stageOf(table, 'evaluate').rows[0]!.metrics['eval.test_acc'], 'number');
    // exp diff reads the declared metrics files too.
    const [a, b] = train.rows as [
      ExpTable['stages'][number]['rows'][number],
      ExpTable['stages'][number]['rows'][number],
    ];
    const d = JSON.parse(ok(cairn(store, ['exp', 'diff', a.rref, b.rref, '--json'])).stdout) as ExpDiff;
    const acc = d.metrics.find((m) => m.key === 'train_metrics.acc');
    assert.ok(acc, JSON.stringify(d.metrics));
    assert.equal(acc.delta, b.metrics['train_metrics.acc']! - a.metrics['train_metrics.acc']!);
    // File inputs' imports are not experiments.
    assert.deepEqual(
      table.stages.map((s) => s.name),
      ['prepare', 'train', 'evaluate', 'report'],
    );
  });
});

describe('exp show and exp diff across two configs', () => {
  const t = tempDir('cairn-exp-configs');
  const store = path.join(t.dir, 'store');
  const file = path.join(fixtures, 'configs.ts');
  let table: ExpTable;
  before(() => {
    ok(cairn(store, ['realize', file, '-q']));
    table = JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json'])).stdout) as ExpTable;
  });
  after(() => t.cleanup());

  it('groups both configs under the stage, with the params that differ as columns', () => {
    const train = stageOf(table, 'train');
    assert.equal(train.drefs.length, 2);
    assert.equal(train.rows.length, 6);
    assert.deepEqual(train.paramKeys, ['epochs', 'opt.name']);
    assert.deepEqual(train.metricKeys, ['acc', 'loss.val']);
    assert.equal(train.scoreKey, 'acc');
    const byDref = (d: string) => train.rows.filter((r) => r.dref === d);
    for (const d of train.drefs) {
      const rows = byDref(d);
      assert.equal(rows.length, 3);
      const chosen = rows.filter((r) => r.chosen);
      assert.equal(chosen.length, 1, 'the best of each config');
      assert.equal(chosen[0]!.metrics.acc, Math.max(...rows.map((r) => r.metrics.acc!)));
    }
    // The dependency shows as name@hash, and is the same in every row (so it is no column).
    assert.match(String(train.rows[0]!.params.data), /^data@[0-9a-z]{7}$/);
  });

  it('prints the differing params and metrics as columns, the chosen rows marked', () => {
    const text = ok(cairn(store, ['exp', 'show', file])).stdout;
    const lines = text.split('\n');
    const header = lines.find((l) => /\bepochs\b/.test(l));
    assert.ok(header, text);
    for (const h of ['rz', 'drv', 'epochs', 'opt.name', 'acc', 'loss.val', 'age', 'build'])
      assert.match(header, new RegExp(`\\b${h.replace('.', '\\.')}\\b`));
    const train = stageOf(table, 'train');
    for (const r of train.rows) {
      const line = lines.find((l) => l.includes(r.rref.slice(0, 8)));
      assert.ok(line, `no line for ${r.rref}`);
      assert.equal(line.startsWith('*'), r.chosen, line);
      assert.match(line, new RegExp(`\\b${r.params.epochs}\\b.*${r.params['opt.name']}`));
    }
  });

  it('--sort orders each stage by a metric or a param, --desc largest first', () => {
    const rows = (args: string[]) =>
      stageOf(JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json', ...args])).stdout) as ExpTable, 'train').rows;
    const acc = rows(['--sort', 'acc', '--desc']).map((r) => r.metrics.acc!);
    assert.deepEqual(
      acc,
      [...acc].sort((a, b) => b - a),
    );
    assert.equal(new Set(acc).size > 1, true);
    const epochs = rows(['--sort', 'epochs']).map((r) => r.params.epochs);
    assert.deepEqual(epochs, [10, 10, 10, 20, 20, 20]);
    const text = ok(cairn(store, ['exp', 'show', file, '--sort', 'acc'])).stdout;
    const shown = text.split('\n').filter((l) => /^\*?\s+[0-9a-z]{8}\s/.test(l) && / 0\.\d+ /.test(l));
    const values = shown.map((l) => Number(/ (0\.\d+) /.exec(l)![1]));
    assert.deepEqual(
      values,
      [...values].sort((a, b) => a - b),
    );
    expectError(cairn(store, ['exp', 'show', file, '--desc']), 'E_USAGE');
  });

  it('--targets shows the targets alone; --all also what was built from other inputs', () => {
    const only = JSON.parse(ok(cairn(store, ['exp', 'show', file, '--targets', '--json'])).stdout) as ExpTable;
    assert.deepEqual(
      only.stages.map((s) => s.name),
      ['train'],
    );
    // A new data realization (every build differs): train's old rows were built from the old one.
    ok(cairn(store, ['realize', file, '-q', '--force', 'data']));
    const now = JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json'])).stdout) as ExpTable;
    const train = stageOf(now, 'train');
    assert.equal(train.rows.length, 6, 'the rows built from the data chosen now');
    assert.equal(train.hidden, 6);
    assert.match(ok(cairn(store, ['exp', 'show', file])).stdout, /6 more built from other inputs not shown/);
    const all = stageOf(
      JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json', '--all'])).stdout) as ExpTable,
      'train',
    );
    assert.equal(all.rows.length, 12);
    assert.equal(all.rows.filter((r) => !r.current).length, 6);
    assert.ok(all.rows.filter((r) => !r.current).every((r) => !r.chosen));
    assert.equal(stageOf(now, 'data').rows.filter((r) => r.chosen).length, 1);
  });

  it('on a terminal, every line fits its width; piped, nothing is cut', () => {
    // A real terminal: script(1) gives the command a pty 60 columns wide.
    const cmd = `stty cols 60 rows 40; exec ${process.execPath} ${cairnBin} --store ${store} exp show ${file}`;
    const r = spawnSync('script', ['-qec', cmd, '/dev/null'], {
      encoding: 'utf8',
      env: { ...process.env, COLUMNS: '' },
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split(/\r?\n/).filter((l) => l !== '');
    assert.ok(
      lines.some((l) => /^\*\s+[0-9a-z]{8}\s/.test(l)),
      r.stdout,
    );
    for (const l of lines) assert.ok(Array.from(l).length <= 60, `${Array.from(l).length} > 60: ${l}`);
    assert.match(r.stdout, /…/, 'something was cut to fit');
    const piped = ok(cairn(store, ['exp', 'show', file])).stdout;
    assert.doesNotMatch(piped, /…/);
    assert.ok(piped.split('\n').some((l) => Array.from(l).length > 60));
  });

  it('--width narrows columns, then drops params before metrics, the score last', () => {
    const text = ok(cairn(store, ['exp', 'show', file, '--width', '40'])).stdout;
    for (const l of text.split('\n')) assert.ok(Array.from(l).length <= 40, l);
    const header = text.split('\n').find((l) => /^ +rz +drv/.test(l))!;
    assert.match(header, /\bacc\b/);
    assert.doesNotMatch(header, /epochs|opt\.name/);
    assert.match(text, /\(3 more columns/);
  });

  it('CSV: a header and one properly quoted line per realization', () => {
    const csv = ok(cairn(store, ['exp', 'show', file, '--csv'])).stdout;
    const lines = csv.split('\r\n');
    assert.equal(lines.at(-1), '');
    assert.equal(
      lines[0],
      'stage,dref,rref,chosen,current,created,build_ms,params.epochs,params.opt.name,metrics.acc,metrics.loss.val',
    );
    const rows = lines.slice(1, -1).map((l) => l.split(','));
    assert.equal(rows.filter((r) => r[0] === 'train').length, 6);
    for (const r of rows) assert.equal(r.length, 11, r.join(','));
  });

  it('exp diff: the changed params of two configs and the metric deltas', () => {
    const train = stageOf(table, 'train');
    const [a, b] = train.drefs as unknown as [string, string];
    const d = JSON.parse(ok(cairn(store, ['exp', 'diff', a, b, '--json'])).stdout) as ExpDiff;
    assert.deepEqual(d.config.added, []);
    assert.deepEqual(d.config.removed, []);
    assert.deepEqual(
      d.config.changed.map((c) => c.key),
      ['epochs', 'opt.name'],
    );
    // Every realization, as the earlier test built more: the newest of each is compared.
    const rows = stageOf(
      JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json', '--all'])).stdout) as ExpTable,
      'train',
    ).rows;
    const newestA = rows.filter((r) => r.dref === a).at(-1)!;
    const newestB = rows.filter((r) => r.dref === b).at(-1)!;
    assert.equal(d.a.rref, newestA.rref, 'a DRef stands for its newest realization');
    const acc = d.metrics.find((m) => m.key === 'acc')!;
    assert.equal(acc.a, newestA.metrics.acc);
    assert.equal(acc.b, newestB.metrics.acc);
    assert.ok(Math.abs(acc.delta! - (acc.b! - acc.a!)) < 1e-12);
    const text = ok(cairn(store, ['exp', 'diff', a, b])).stdout;
    assert.match(text, /~ epochs: (10 -> 20|20 -> 10)/);
    assert.match(text, /~ opt\.name: "(sgd|adam)" -> "(adam|sgd)"/);
    assert.match(text, /acc: [\d.]+ -> [\d.]+ \([+-][\d.]+\)/);
  });

  it('exp diff of two realizations of one config: the same config, the metrics apart', () => {
    const train = stageOf(table, 'train');
    const rows = train.rows.filter((r) => r.dref === train.drefs[0]);
    const d = JSON.parse(ok(cairn(store, ['exp', 'diff', rows[0]!.rref, rows[2]!.rref, '--json'])).stdout) as ExpDiff;
    assert.deepEqual(d.config, { added: [], removed: [], changed: [] });
    assert.equal(d.metrics.find((m) => m.key === 'acc')!.delta, rows[2]!.metrics.acc! - rows[0]!.metrics.acc!);
    assert.match(ok(cairn(store, ['exp', 'diff', rows[0]!.rref, rows[2]!.rref])).stdout, /config:\n {2}\(the same\)/);
  });

  it('works on refs: an RRef is chosen as given, what it was built from below it', () => {
    const train = stageOf(table, 'train');
    const pick = train.rows.find((r) => !r.chosen && r.current)!;
    const t2 = JSON.parse(ok(cairn(store, ['exp', 'show', pick.rref, '--json'])).stdout) as ExpTable;
    const st = stageOf(t2, 'train');
    assert.equal(st.chosenBy, 'given');
    assert.deepEqual(
      st.rows.filter((r) => r.chosen).map((r) => r.rref),
      [pick.rref],
    );
    assert.equal(stageOf(t2, 'data').chosenBy, 'in use');
    assert.equal(stageOf(t2, 'data').rows.filter((r) => r.chosen).length, 1);
  });
});

describe('exp show on hostile outputs and configs', () => {
  const t = tempDir('cairn-exp-hostile');
  const store = path.join(t.dir, 'store');
  const file = path.join(fixtures, 'hostile.ts');
  before(() => {
    ok(cairn(store, ['realize', file, '-q']));
  });
  after(() => t.cleanup());

  it('keeps the numbers, skips the rest, and says why', () => {
    const table = JSON.parse(ok(cairn(store, ['exp', 'show', file, '--json'])).stdout) as ExpTable;
    const evil = stageOf(table, 'evil');
    assert.equal(evil.rows.length, 2);
    const withAcc = evil.rows.find((r) => r.metrics.acc !== undefined)!;
    const other = evil.rows.find((r) => r !== withAcc)!;
    assert.deepEqual(withAcc.metrics, {
      acc: 0.5,
      // Keys that are not plain words are quoted (JSON), so the escape is text.
      '"bad\\u001b[2J"': 1,
      '"<script>"': 2,
      'nested.deep': 3,
      'ok.f1': 0.25,
    });
    assert.ok(
      withAcc.skipped.some((s) => s.startsWith('big.metrics.json: larger than')),
      withAcc.skipped.join('; '),
    );
    assert.ok(
      withAcc.skipped.some((s) => s.startsWith('score.txt: not a number')),
      'Infinity is not a metric',
    );
    assert.deepEqual(other.metrics, { score: 0.75 });
  });

  it('text escapes what a terminal would obey; CSV quotes and defuses formulas', () => {
    const text = ok(cairn(store, ['exp', 'show', file])).stdout;
    assert.doesNotMatch(text, /\u001b/);
    assert.doesNotMatch(text, /\u202e/);
    assert.match(text, /bad\\u001b\[2J/);
    const csv = ok(cairn(store, ['exp', 'show', file, '--csv'])).stdout;
    assert.doesNotMatch(csv, /\u001b/);
    // One config: no param column; the metric keys are quoted when they must be.
    assert.match(csv.split('\r\n')[0]!, /,"metrics\.""<script>""",/);
  });

  it('a matcher that fails on a hostile score file leaves the table whole, nothing chosen, and says why', () => {
    const r = ok(cairn(store, ['exp', 'show', file, '--json'], { env: { EVIL_BEST: '1' } }));
    const evil = stageOf(JSON.parse(r.stdout) as ExpTable, 'evil');
    assert.equal(evil.rows.length, 2);
    assert.ok(evil.rows.every((x) => !x.chosen));
    assert.match(evil.problem ?? '', /best\(1, metrics\.json:acc\) failed/);
    const text = ok(cairn(store, ['exp', 'show', file], { env: { EVIL_BEST: '1' } })).stdout;
    assert.match(text, /none chosen: best\(1, metrics\.json:acc\) failed/);
  });
});

describe('the pure parts of the table', () => {
  it('flattens configs to dotted keys; quoted keys never collide with nested ones', () => {
    const flat = flattenConfig(
      { a: { b: 1 }, 'a.b': 2, list: [1, { x: null }], empty: {}, none: [], dep: { $ref: 'abcdefghij-data' } },
      (d) => `ref:${d}`,
    );
    assert.deepEqual(flat, {
      'a.b': 1,
      '"a.b"': 2,
      'list[0]': 1,
      'list[1].x': null,
      empty: '{}',
      none: '[]',
      dep: 'ref:abcdefghij-data',
    });
  });

  it('CSV fields: quotes doubled, commas and line breaks quoted, formulas defused, numbers left alone', () => {
    assert.equal(csvField('plain'), 'plain');
    assert.equal(csvField('a,b'), '"a,b"');
    assert.equal(csvField('say "hi"'), '"say ""hi"""');
    assert.equal(csvField('two\nlines'), '"two\nlines"');
    assert.equal(csvField('=HYPERLINK("x")'), `"'=HYPERLINK(""x"")"`);
    assert.equal(csvField('@SUM(A1)'), "'@SUM(A1)");
    assert.equal(csvField(-0.5), '-0.5');
    assert.equal(csvField(null), '');
    assert.equal(csvField(true), 'true');
  });

  it('fits wide characters by terminal columns, not by code points', () => {
    assert.equal(textWidth('日本語abc'), 9);
    assert.equal(fit('日本語abc', 5), '日本…');
    assert.equal(textWidth('e\u0301'), 1);
    const row = (params: Record<string, string>, rref: string) => ({
      rref,
      dref: 'd',
      params,
      metrics: { acc: 0.5 },
      chosen: false,
      current: true,
      createdAt: 0,
      buildMs: 10,
      skipped: [],
    });
    const table = {
      stages: [
        {
          dref: 'dddddddd-s',
          drefs: ['dddddddd-s'],
          name: 's',
          paramKeys: ['note'],
          metricKeys: ['acc'],
          chosenBy: 'latest',
          target: true,
          hidden: 0,
          rows: [row({ note: '学習率を下げた実験その一' }, 'aaaaaaaa-x'), row({ note: '短い' }, 'bbbbbbbb-x')],
        },
      ],
    } as unknown as ExpTable;
    const text = formatExpTable(table, { now: 60_000, width: 36 });
    for (const l of text.split('\n')) assert.ok(textWidth(l) <= 36, `${textWidth(l)}: ${l}`);
    assert.match(text, /学習率.*…/);
  });
});

describe('exp show and exp diff refuse what they cannot show', () => {
  const t = tempDir('cairn-exp-refuse');
  const store = path.join(t.dir, 'store');
  after(() => t.cleanup());

  it('a stage file with nothing realized: every stage, no rows, and why', () => {
    const table = JSON.parse(ok(cairn(store, ['exp', 'show', mlDemo, '--json'])).stdout) as ExpTable;
    assert.deepEqual(
      table.stages.map((s) => [s.name, s.rows.length, s.problem]),
      [
        ['dataset', 0, 'not realized'],
        ['train', 0, 'not realized: dataset'],
        ['report', 0, 'not realized: dataset, train'],
      ],
    );
    assert.match(
      ok(cairn(store, ['exp', 'show', mlDemo])).stdout,
      /train · 0 realizations · none chosen: not realized/,
    );
  });

  it('unknown refs, malformed refs, a file mixed with refs', () => {
    const dref = 'a'.repeat(32) + '-train';
    expectError(cairn(store, ['exp', 'show', dref]), 'E_NO_SUCH_REF');
    expectError(cairn(store, ['exp', 'show', `${'b'.repeat(32)}-${dref}`]), 'E_NO_SUCH_REF');
    expectError(cairn(store, ['exp', 'diff', dref, dref]), 'E_NO_SUCH_REF');
    expectError(cairn(store, ['graph', dref]), 'E_NO_SUCH_REF');
    expectError(cairn(store, ['exp', 'diff', 'no/such', dref]), 'E_BAD_REF');
    expectError(cairn(store, ['exp', 'show', mlDemo, dref]), 'E_USAGE');
    expectError(cairn(store, ['exp', 'show', mlDemo, '--json', '--csv']), 'E_USAGE');
    expectError(cairn(store, ['graph', mlDemo, '--format', 'png']), 'E_USAGE');
  });
});
