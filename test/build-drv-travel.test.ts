/**
 * What can travel to a builder now (issue 19, what was left): derivations
 * with declared file inputs built from their recorded imports on a store
 * without the checkout, and derivations fetched from a binary cache alone
 * (`cache push` carries code objects; `build-drv --substituter`), hostile
 * cache content refused with nothing stored.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, expectError, isolateModuleCache, ok, repoRoot, tempDir, tmpEntries } from './helpers.js';
import { drvAndCodeEntries } from './fixtures/torture/support.js';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { cacheGc } from '../src/store/cache/gc.js';

isolateModuleCache(after, 'cairn-build-drv-travel-cache');
const work = tempDir('cairn-build-drv-travel');
after(() => work.cleanup());
let seq = 0;

function project(files: Record<string, string>): string {
  const dir = path.join(work.dir, `proj-${++seq}`);
  fs.mkdirSync(dir);
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
  fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}
const newStore = (): string => path.join(work.dir, `store-${++seq}`);
const otherCache = (): NodeJS.ProcessEnv => ({ XDG_CACHE_HOME: path.join(work.dir, `xdg-${++seq}`) });

// Two stages with file inputs (a file, an executable file, a directory); `report` fails while H19_FAIL is set,
// so a realize can leave it unbuilt with its derivation and code in the store.
const FILE_STAGES = `
import { stage } from 'cairn';
import * as fs from 'node:fs';
import * as path from 'node:path';
export const prep = stage({
  name: 'prep',
  config: { n: 2 },
  files: ['data.csv', 'conf/', 'tool.sh'],
  build: (ctx) => {
    const rows = fs.readFileSync(ctx.files['data.csv']!, 'utf8').trim().split('\\n');
    const conf = fs.readFileSync(path.join(ctx.files['conf/']!, 'k.txt'), 'utf8').trim();
    const exec = (fs.statSync(ctx.files['tool.sh']!).mode & 0o100) !== 0;
    fs.writeFileSync(ctx.out + '/prep.txt', \`\${rows.length * ctx.config.n} \${conf} \${exec}\\n\`);
  },
});
export default stage({
  name: 'report',
  config: { prep },
  files: ['data.csv'],
  build: (ctx) => {
    if (process.env.H19_FAIL) throw new Error('asked to fail');
    const a = fs.readFileSync(ctx.config.prep.file('prep.txt'), 'utf8');
    fs.writeFileSync(ctx.out + '/report.txt', a + fs.readFileSync(ctx.files['data.csv']!, 'utf8'));
  },
});
`;
const FILES = {
  'stages.ts': FILE_STAGES,
  'data.csv': 'x,y\n1,2\n3,4\n',
  'conf/k.txt': 'k=v\n',
  'tool.sh': '#!/bin/sh\necho hi\n',
};

interface Plan {
  dref: string;
  name: string;
  rrefs: string[];
}
interface Realized {
  targets: { dref: string; rrefs: string[] }[];
  plan: Plan[];
  inputs?: Plan[];
  code?: string;
}

function realize(store: string, dir: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Realized {
  return JSON.parse(
    ok(cairn(store, ['realize', '--self-contained', '--json', '-q', ...extra, path.join(dir, 'stages.ts')], { env }))
      .stdout,
  ) as Realized;
}

function fileProject(): string {
  const dir = project(FILES);
  fs.chmodSync(path.join(dir, 'tool.sh'), 0o755);
  return dir;
}

describe('file inputs on a builder without the checkout', () => {
  it('build-drv uses the recorded imports: the same RRef as a local realize, the same bytes', () => {
    const dir = fileProject();
    const local = newStore();
    const r = realize(local, dir);
    const report = r.plan.find((p) => p.name === 'report')!;
    const prep = r.plan.find((p) => p.name === 'prep')!;
    assert.equal(r.inputs?.length, 3);
    const drvs = path.join(work.dir, `drvs-${++seq}.tar`);
    ok(cairn(local, ['export-drv', report.dref, prep.dref, '-o', drvs]));
    const importRRefs = r.inputs.flatMap((i) => i.rrefs);
    const closure = path.join(work.dir, `in-${++seq}.tar`);
    ok(cairn(local, ['export', ...importRRefs, '-o', closure]));
    const expected = ok(cairn(local, ['catref', report.rrefs[0]!, 'report.txt'])).stdout;
    fs.rmSync(dir, { recursive: true });

    const remote = newStore();
    ok(cairn(remote, ['import', closure]));
    const env = otherCache();
    // prep first (from the imports alone), then report from prep's realization and its import.
    const p = JSON.parse(ok(cairn(remote, ['build-drv', prep.dref, '--from', drvs, '--json'], { env })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(p.realizations, prep.rrefs);
    const b = JSON.parse(ok(cairn(remote, ['build-drv', report.dref, '--json'], { env })).stdout) as {
      realizations: string[];
      built: boolean;
    };
    assert.equal(b.built, true);
    assert.deepEqual(b.realizations, report.rrefs);
    const got = ok(cairn(remote, ['catref', b.realizations[0]!, 'report.txt'])).stdout;
    assert.equal(got, expected);
    assert.equal(got, '6 k=v true\nx,y\n1,2\n3,4\n');
    ok(cairn(remote, ['store', 'verify']));
  });

  it('an input named by its directory (`.`) keeps its recorded name on the builder', () => {
    const dir = project({
      'data/x.csv': '1,2\n',
      'data/stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
export default stage({
  name: 'whole',
  config: {},
  files: ['.'],
  build: (ctx) => fs.writeFileSync(ctx.out + '/ls', fs.readdirSync(ctx.files['.']!).sort().join(',')),
});
`,
    });
    const local = newStore();
    const r = JSON.parse(
      ok(cairn(local, ['realize', '--self-contained', '--json', '-q', path.join(dir, 'data', 'stages.ts')])).stdout,
    ) as Realized;
    const whole = r.plan[0]!;
    const drvs = path.join(work.dir, `drvs-${++seq}.tar`);
    ok(cairn(local, ['export-drv', whole.dref, '-o', drvs]));
    const closure = path.join(work.dir, `in-${++seq}.tar`);
    ok(cairn(local, ['export', ...r.inputs!.flatMap((i) => i.rrefs), '-o', closure]));
    fs.rmSync(dir, { recursive: true });
    const remote = newStore();
    ok(cairn(remote, ['import', closure]));
    const b = JSON.parse(
      ok(cairn(remote, ['build-drv', whole.dref, '--from', drvs, '--json'], { env: otherCache() })).stdout,
    ) as { realizations: string[] };
    assert.deepEqual(b.realizations, whole.rrefs);
    assert.equal(ok(cairn(remote, ['catref', b.realizations[0]!, 'ls'])).stdout, 'stages.ts,x.csv');
  });

  it('without the imports in the store: an error naming the file inputs, nothing built', () => {
    const dir = fileProject();
    const local = newStore();
    const r = realize(local, dir);
    const prep = r.plan.find((p) => p.name === 'prep')!;
    const drvs = path.join(work.dir, `drvs-${++seq}.tar`);
    ok(cairn(local, ['export-drv', prep.dref, '-o', drvs]));
    fs.rmSync(dir, { recursive: true });
    const remote = newStore();
    const b = cairn(remote, ['build-drv', prep.dref, '--from', drvs], { env: otherCache() });
    expectError(b, 'E_CODE_MISMATCH', remote);
    assert.match(b.stderr, /file inputs .*data\.csv/);
    const rz = path.join(remote, 'd', prep.dref, 'r');
    assert.deepEqual(fs.existsSync(rz) ? fs.readdirSync(rz) : [], []);
  });

  it('an import derivation itself is never built from code: it travels as its realization', () => {
    const dir = fileProject();
    const local = newStore();
    const r = realize(local, dir);
    const imp = r.inputs![0]!;
    // export-drv refuses it (no code object points at an import), so it cannot even be sent.
    expectError(cairn(local, ['export-drv', imp.dref, '-o', path.join(work.dir, `x-${++seq}.tar`)]), 'E_NO_CODE');
  });
});

/** A key pair written by `cairn key generate`: [secret file, public file]. */
function keys(name: string): [string, string] {
  const prefix = path.join(work.dir, `${name}-${++seq}`);
  fs.mkdirSync(prefix);
  ok(cairn(newStore(), ['key', 'generate', path.join(prefix, name)]));
  return [path.join(prefix, `${name}.secret`), path.join(prefix, `${name}.public`)];
}

interface Pushed {
  pushed: string[];
  codePointers: string[];
  code: string[];
}

interface Unbuilt {
  cache: string;
  url: string;
  report: string;
  prepDref: string;
  prepRRefs: string[];
  code: string;
  pub: string;
  local: string;
  secret: string;
}

/**
 * A coordinator's store with `report` left unbuilt (its build failed), its
 * derivation and code pushed to a fresh file:// cache with prep's
 * realization; the checkout is then deleted.
 */
function pushedUnbuilt(): Unbuilt {
  const dir = fileProject();
  const local = newStore();
  const failed = cairn(local, ['realize', '--self-contained', '-q', path.join(dir, 'stages.ts')], {
    env: { H19_FAIL: '1' },
  });
  expectError(failed, 'E_BUILD_FAILED');
  const plan = realize(local, dir, ['--dry-run']).plan;
  const report = plan.find((p) => p.name === 'report')!.dref;
  const prep = plan.find((p) => p.name === 'prep')!;
  const [secret, pub] = keys('team');
  const cache = path.join(work.dir, `cache-${++seq}`);
  const url = `file://${cache}`;
  const r = JSON.parse(
    ok(cairn(local, ['cache', 'push', url, report, prep.dref, '--key', secret, '--json'])).stdout,
  ) as Pushed;
  assert.deepEqual(r.codePointers.sort(), [prep.dref, report].sort());
  assert.equal(r.code.length, 1);
  fs.rmSync(dir, { recursive: true });
  return { cache, url, report, prepDref: prep.dref, prepRRefs: prep.rrefs, code: r.code[0]!, pub, local, secret };
}

/** `build-drv DREF --substituter URL` on a fresh store (another module cache, no checkout). */
function buildFromCache(u: Unbuilt, store: string, extra: string[] = []): ReturnType<typeof cairn> {
  return cairn(store, ['build-drv', u.report, '--substituter', u.url, '--trusted-key', u.pub, '--json', ...extra], {
    env: otherCache(),
  });
}

describe('a host with only the binary cache', () => {
  it('cache push carries the code object (once); build-drv --substituter fetches derivation, code and inputs', () => {
    const u = pushedUnbuilt();
    const remote = newStore();
    const b = JSON.parse(ok(buildFromCache(u, remote)).stdout) as { realizations: string[]; code: string };
    assert.equal(b.code, u.code);
    // The same RRef as the coordinator's own build once it succeeds.
    const again = JSON.parse(ok(cairn(u.local, ['build-drv', u.report, '--json'], { env: otherCache() })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(b.realizations, again.realizations);
    assert.equal(ok(cairn(remote, ['catref', b.realizations[0]!, 'report.txt'])).stdout, '6 k=v true\nx,y\n1,2\n3,4\n');
    ok(cairn(remote, ['store', 'verify']));
    // A second push sends no code object and no pointer again (content-addressed, signed already).
    const r = JSON.parse(
      ok(cairn(u.local, ['cache', 'push', u.url, u.report, '--key', u.secret, '--json'])).stdout,
    ) as Pushed;
    assert.deepEqual([r.code, r.codePointers], [[], []]);
    // Built once more on the same host: nothing fetched or built again.
    const third = JSON.parse(ok(buildFromCache(u, remote)).stdout) as { built: boolean };
    assert.equal(third.built, false);
  });

  it('cache gc keeps the derivation of an unbuilt pushed derivation while its code pointer is there', () => {
    const u = pushedUnbuilt();
    ok(cairn(u.local, ['cache', 'gc', u.url, '--keep-last', '1']));
    assert.ok(fs.existsSync(path.join(u.cache, 'd', `${u.report}.json`)));
    assert.ok(fs.existsSync(path.join(u.cache, 'c', `${u.code}.json`)));
    ok(buildFromCache(u, newStore()));
  });

  it('cache gc: pointers go with their realizations or once old; code objects and derivations after them', async () => {
    const u = pushedUnbuilt();
    const blob = new FileBlobStore(u.cache);
    const day = 24 * 3600 * 1000;
    const listing = (top: string): string[] =>
      fs.existsSync(path.join(u.cache, top)) ? fs.readdirSync(path.join(u.cache, top)).sort() : [];
    await cacheGc(blob, { olderThanMs: day });
    assert.deepEqual(listing('p'), [u.prepDref, u.report].sort());
    assert.deepEqual(listing('c'), [`${u.code}.json`]);
    // Two days on: prep's realization is old and deleted, its pointer with it; report's (never built) is old too.
    await cacheGc(blob, { olderThanMs: day, now: Date.now() + 2 * day });
    assert.deepEqual(
      listing('p').flatMap((d) => listing(`p/${d}`)),
      [],
    );
    assert.deepEqual([listing('c'), listing('d'), listing('r').flatMap((d) => listing(`r/${d}`))], [[], [], []]);
  });

  it('an unbuilt DRef without a code object is refused by cache push (nothing to push)', () => {
    const dir = fileProject();
    const local = newStore();
    const failed = cairn(local, ['realize', '-q', path.join(dir, 'stages.ts')], { env: { H19_FAIL: '1' } });
    expectError(failed, 'E_BUILD_FAILED');
    const report = realize(local, dir, ['--dry-run']).targets[0]!.dref;
    const [secret] = keys('team');
    const url = `file://${path.join(work.dir, `cache-${++seq}`)}`;
    expectError(cairn(local, ['cache', 'push', url, report, '--key', secret]), 'E_NO_CODE', local);
  });

  it('a pushed DRef with no realization and no code object is refused by cache push', () => {
    const u = pushedUnbuilt();
    const other = newStore();
    const dir = fileProject();
    const plan = realize(other, dir, ['--dry-run']).plan;
    // The store knows nothing of it (a dry run stores nothing).
    expectError(cairn(other, ['cache', 'push', u.url, plan[0]!.dref, '--key', u.secret]), 'E_NO_SUCH_REF');
  });

  /** Runs build-drv against a cache damaged by `damage`, and checks nothing entered the store. */
  function refused(damage: (u: Unbuilt) => void, code: string, pub?: (u: Unbuilt) => string): void {
    const u = pushedUnbuilt();
    damage(u);
    const remote = newStore();
    fs.mkdirSync(remote);
    ok(cairn(remote, ['store', 'verify']));
    const before = drvAndCodeEntries(remote);
    const r = cairn(remote, ['build-drv', u.report, '--substituter', u.url, '--trusted-key', pub?.(u) ?? u.pub], {
      env: otherCache(),
    });
    expectError(r, code, remote);
    assert.deepEqual(drvAndCodeEntries(remote), before);
    assert.deepEqual(tmpEntries(remote), []);
  }
  const codeFile = (u: Unbuilt): string => path.join(u.cache, 'c', `${u.code}.json`);
  const pointerFile = (u: Unbuilt): string => path.join(u.cache, 'p', u.report, `${u.code}.json`);
  const rewrite = (file: string, f: (s: string) => string): void => {
    const text = f(fs.readFileSync(file, 'utf8'));
    fs.rmSync(file);
    fs.writeFileSync(file, text);
  };

  it('a tampered code object (same length) is refused, nothing stored', () => {
    refused((u) => rewrite(codeFile(u), (s) => s.replace('asked to fail', 'asked to FAIL')), 'E_CODE_CORRUPT');
  });

  it('a truncated code object is refused, nothing stored', () => {
    refused((u) => rewrite(codeFile(u), (s) => s.slice(0, s.length >> 1)), 'E_CODE_CORRUPT');
  });

  const OTHER_STAGE = [
    "import { stage } from 'cairn';",
    "export default stage({ name: 'o', config: {}, build: () => {} });",
    '',
  ].join('\n');
  it('another valid code object under the name is refused (it does not hash to its name)', () => {
    refused((u) => {
      const other = newStore();
      const dir = project({
        'stages.ts': OTHER_STAGE,
      });
      const r = realize(other, dir);
      rewrite(codeFile(u), () => fs.readFileSync(path.join(other, 'code', r.code!), 'utf8'));
    }, 'E_CODE_CORRUPT');
  });

  it('a pointer whose code object was switched is refused (its signature no longer verifies)', () => {
    refused(
      (u) =>
        rewrite(pointerFile(u), (s) => s.replace(/"codeSha256": "[0-9a-f]{64}"/, `"codeSha256": "${'0'.repeat(64)}"`)),
      'E_CACHE_BAD_SIGNATURE',
    );
  });

  it('a pointer signed only by an untrusted key is refused', () => {
    refused(
      () => undefined,
      'E_CACHE_UNTRUSTED',
      () => keys('stranger')[1],
    );
  });

  it('a symlink in the cache in place of the code object is not followed', () => {
    refused((u) => {
      const real = path.join(u.cache, 'elsewhere.json');
      fs.renameSync(codeFile(u), real);
      fs.symlinkSync(real, codeFile(u));
    }, 'E_CACHE_MISSING');
  });

  it('cache verify checks code pointers as build-drv would take them', () => {
    const u = pushedUnbuilt();
    const verify = (extra: string[] = []): { codePointers: number; codeProblems: { key: string; code: string }[] } =>
      JSON.parse(cairn(u.local, ['cache', 'verify', u.url, '--trusted-key', u.pub, '--json', ...extra]).stdout) as {
        codePointers: number;
        codeProblems: { key: string; code: string }[];
      };
    assert.deepEqual(verify(), { ...verify(), codePointers: 2, codeProblems: [] });
    rewrite(codeFile(u), (s) => s.replace('asked to fail', 'asked to FAIL'));
    const r = verify();
    assert.deepEqual(
      r.codeProblems.map((p) => [p.key.split('/')[1], p.code]).sort(),
      [
        [u.report, 'E_CODE_CORRUPT'],
        [u.prepDref, 'E_CODE_CORRUPT'],
      ].sort(),
    );
    // --shallow asks only whether the objects are there.
    assert.deepEqual(verify(['--shallow']).codeProblems, []);
    fs.rmSync(codeFile(u));
    assert.equal(verify(['--shallow']).codeProblems.length, 2);
    const text = cairn(u.local, ['cache', 'verify', u.url, '--trusted-key', u.pub, '--shallow']);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /E_CACHE_MISSING/);
    assert.match(text.stdout, /^0 of 2 code pointers are usable$/m);
  });

  it('a symlink in the store in place of the code object is refused, never written through', () => {
    const u = pushedUnbuilt();
    const remote = newStore();
    fs.mkdirSync(remote);
    ok(cairn(remote, ['store', 'verify']));
    const target = path.join(work.dir, `planted-${++seq}`);
    fs.writeFileSync(target, 'planted');
    fs.mkdirSync(path.join(remote, 'code'));
    fs.symlinkSync(target, path.join(remote, 'code', u.code));
    expectError(buildFromCache(u, remote), 'E_CODE_CORRUPT', remote);
    assert.equal(fs.readFileSync(target, 'utf8'), 'planted');
    assert.equal(fs.existsSync(path.join(remote, 'd', u.report)), false);
  });

  it('a damaged code object in the store is replaced by the verified one from the cache', () => {
    const u = pushedUnbuilt();
    const remote = newStore();
    ok(buildFromCache(u, remote));
    const file = path.join(remote, 'code', u.code);
    fs.chmodSync(file, 0o644);
    fs.writeFileSync(file, 'damaged');
    const b = JSON.parse(ok(buildFromCache(u, remote)).stdout) as { built: boolean };
    assert.equal(b.built, false);
    ok(cairn(remote, ['store', 'verify']));
  });
});

describe('a cairn.yaml pipeline on a builder without the checkout', () => {
  it('build-drv rebuilds its stages from the recorded pipeline: the same RRefs, params and deps gone', () => {
    const dir = project({
      'data.txt': 'a\nb\nc\n',
      'params.yaml': 'train:\n  epochs: 3\n  unused: 1\n',
      'cairn.yaml': [
        'stages:',
        '  prepare:',
        '    cmd: wc -l < data.txt > count.txt',
        '    deps: [data.txt]',
        '    outs: [count.txt]',
        '  train:',
        '    cmd: echo "epochs ${train.epochs} $(cat count.txt)" > model.txt',
        '    deps: [count.txt]',
        '    params: [train.epochs]',
        '    outs: [model.txt]',
        '',
      ].join('\n'),
    });
    const local = newStore();
    const r = JSON.parse(
      ok(cairn(local, ['realize', '--self-contained', '--json', '-q', path.join(dir, 'cairn.yaml')])).stdout,
    ) as Realized;
    const code = fs.readFileSync(path.join(local, 'code', r.code!), 'utf8');
    assert.equal((JSON.parse(code) as { bundler: string }).bundler, 'cairn-pipeline-record');
    const prepare = r.plan.find((p) => p.name === 'prepare')!;
    const train = r.plan.find((p) => p.name === 'train')!;
    const drvs = path.join(work.dir, `drvs-${++seq}.tar`);
    ok(cairn(local, ['export-drv', prepare.dref, train.dref, '-o', drvs]));
    const closure = path.join(work.dir, `in-${++seq}.tar`);
    ok(cairn(local, ['export', ...r.inputs!.flatMap((i) => i.rrefs), '-o', closure]));
    fs.rmSync(dir, { recursive: true });

    const remote = newStore();
    ok(cairn(remote, ['import', closure]));
    const env = otherCache();
    const p = JSON.parse(ok(cairn(remote, ['build-drv', prepare.dref, '--from', drvs, '--json'], { env })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(p.realizations, prepare.rrefs);
    const t = JSON.parse(ok(cairn(remote, ['build-drv', train.dref, '--json'], { env })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(t.realizations, train.rrefs);
    assert.equal(ok(cairn(remote, ['catref', t.realizations[0]!, 'model.txt'])).stdout, 'epochs 3 3\n');
  });
});
