/**
 * Self-contained derivations (issue 19, item 1): a stage file's code as a
 * store object, `cairn build-drv` on a store with only store objects (no
 * checkout, no stage file), moving derivations between stores with their
 * code, and code that cannot travel.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { drvAndCodeEntries } from './fixtures/torture/support.js';
import { after, describe, it } from 'node:test';
import {
  cairn,
  cairnAsync,
  expectError,
  isolateModuleCache,
  lastLine,
  ok,
  repoRoot,
  tempDir,
  tmpEntries,
} from './helpers.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { PAUSE_AFTER_IMPORT_ENV } from '../src/stages/build-drv.js';
import { TarWriter } from '../src/store/export.js';
import { entryHeader, padding } from '../src/store/tar-format.js';
import { LocalStore } from '../src/store/store.js';
import { collectGarbage } from '../src/store/gc.js';
import { verifyStore } from '../src/store/verify.js';

isolateModuleCache(after, 'cairn-build-drv-cache');
const work = tempDir('cairn-build-drv');
after(() => work.cleanup());
let seq = 0;

/** A project directory with these files (and the repository's node_modules, for packages). */
function project(files: Record<string, string>): string {
  const dir = path.join(work.dir, `proj-${++seq}`);
  fs.mkdirSync(dir);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'));
  return dir;
}
const newStore = (): string => path.join(work.dir, `store-${++seq}`);
/** Another user's cache: nothing compiled or bundled on the "user's machine" is there. */
const otherCache = (): NodeJS.ProcessEnv => ({ XDG_CACHE_HOME: path.join(work.dir, `cache-${++seq}`) });

const HELPER = `export const shout = (s: string): string => s.toUpperCase() + '!';\n`;

// Uses a local module, a pure-JS npm package (yaml) and Node built-ins.
const STAGES = `
import { stage } from 'cairn';
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { shout } from './helper.js';

interface Cfg { n: number }
export const a = stage({
  name: 'a',
  config: { n: 3 } as Cfg,
  build: (ctx) => {
    fs.writeFileSync(path.join(ctx.out, 'a.yaml'), YAML.stringify({ n: ctx.config.n, word: shout('hi') }));
  },
});
export default stage({
  name: 'report',
  config: { a, env: process.env.H19_FLAVOUR ?? 'plain' },
  build: async (ctx) => {
    const doc = YAML.parse(fs.readFileSync(ctx.config.a.file('a.yaml'), 'utf8')) as { n: number; word: string };
    fs.writeFileSync(path.join(ctx.out, 'report.txt'), \`\${doc.word} x\${doc.n * 2} (\${ctx.config.env})\\n\`);
  },
});
`;

interface Realized {
  targets: { dref: string; rrefs: string[] }[];
  plan: { dref: string; name: string; rrefs: string[] }[];
  code?: string;
}

function realizeSelfContained(store: string, dir: string, env: NodeJS.ProcessEnv = {}): Realized {
  return JSON.parse(
    ok(cairn(store, ['realize', '--self-contained', '--json', '-q', path.join(dir, 'stages.ts')], { env })).stdout,
  ) as Realized;
}

/** A tar of derivations for another store (export-drv). */
function exportDrvs(store: string, drefs: string[]): string {
  const file = path.join(work.dir, `drvs-${++seq}.tar`);
  ok(cairn(store, ['export-drv', ...drefs, '-o', file]));
  return file;
}

/** A closure tar of realizations (cairn export), for the inputs. */
function exportClosureOf(store: string, rrefs: string[]): string {
  const file = path.join(work.dir, `closure-${++seq}.tar`);
  ok(cairn(store, ['export', ...rrefs, '-o', file]));
  return file;
}

describe('cairn build-drv', () => {
  it('builds from store objects alone, with no stage file anywhere, the same RRef as a local realize', () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    assert.match(r.code ?? '', /^[0-9a-z]{32}$/);
    const report = r.plan.find((p) => p.name === 'report')!;
    const a = r.plan.find((p) => p.name === 'a')!;
    const drvs = exportDrvs(local, [report.dref, a.dref]);
    const inputs = exportClosureOf(local, a.rrefs);
    // The checkout is gone: the stage file, its helper, and the node_modules it bundled from.
    fs.rmSync(dir, { recursive: true });

    const remote = newStore();
    ok(cairn(remote, ['import', inputs]));
    const env = otherCache();
    const res = ok(cairn(remote, ['build-drv', report.dref, '--from', drvs, '--json'], { env }));
    const j = JSON.parse(res.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(j).sort(), ['buildMs', 'built', 'code', 'drv', 'host', 'realizations']);
    assert.equal(j.drv, report.dref);
    assert.deepEqual(j.realizations, report.rrefs, 'same RRef as the local build');
    assert.equal(j.built, true);
    assert.equal(typeof j.host, 'string');
    assert.equal(typeof j.buildMs, 'number');
    const out = ok(cairn(remote, ['catref', report.rrefs[0]!, 'report.txt'])).stdout;
    assert.equal(out, 'HI! x6 (plain)\n');

    // `a` itself, from nothing but its derivation: the same RRef too.
    const fresh = newStore();
    const ra = JSON.parse(ok(cairn(fresh, ['build-drv', a.dref, '--from', drvs, '--json'], { env })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(ra.realizations, a.rrefs);
    // Built again with the same inputs: nothing to build, the same answer.
    const again = JSON.parse(ok(cairn(remote, ['build-drv', report.dref, '--json'], { env })).stdout) as {
      built: boolean;
      realizations: string[];
    };
    assert.equal(again.built, false);
    assert.deepEqual(again.realizations, report.rrefs);
    assert.deepEqual(tmpEntries(remote), []);
    const v = JSON.parse(ok(cairn(remote, ['store', 'verify', '--json'])).stdout) as { problems: unknown[] };
    assert.deepEqual(v.problems, []);
  });

  it("programs start in the build's own scratch directory, not the builder's working directory", () => {
    // A stage that writes a file where its program starts, then copies it out (as tools that write into
    // the current directory are used): on a builder, builds at once must not share one directory.
    const dir = project({
      'stages.ts': `
import { stage } from 'cairn';
export default stage({
  name: 'here',
  config: {},
  build: async ({ exec, out }) => {
    await exec('sh', ['-c', 'echo made > here.txt && cp here.txt "$1/"', 'sh', out]);
  },
});
`,
    });
    const local = newStore();
    // Locally the program starts where cairn does: the project, not the test's directory.
    const r = JSON.parse(
      ok(cairn(local, ['realize', '--self-contained', '--json', '-q', path.join(dir, 'stages.ts')], { cwd: dir }))
        .stdout,
    ) as Realized;
    assert.equal(fs.readFileSync(path.join(dir, 'here.txt'), 'utf8'), 'made\n');
    const here = r.targets[0]!;
    const drvs = exportDrvs(local, [here.dref]);
    const cwd = path.join(work.dir, `builder-home-${++seq}`);
    fs.mkdirSync(cwd);
    const remote = newStore();
    const res = ok(cairn(remote, ['build-drv', here.dref, '--from', drvs], { env: otherCache(), cwd }));
    assert.equal(lastLine(res.stdout), here.rrefs[0], 'the same RRef as the local build');
    assert.deepEqual(fs.readdirSync(cwd), [], 'nothing written where build-drv was started');
    assert.deepEqual(tmpEntries(remote), []);
  });

  it('import-drv from stdin, and export-drv to stdout', () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const a = r.plan.find((p) => p.name === 'a')!;
    const tar = ok(cairn(local, ['export-drv', a.dref])).stdout;
    assert.ok(tar.length > 1024);
    const file = exportDrvs(local, [a.dref]);
    const remote = newStore();
    const imported = ok(cairn(remote, ['import-drv', '-', '--json'], { input: fs.readFileSync(file, 'utf8') }));
    assert.deepEqual((JSON.parse(imported.stdout) as { derivations: string[] }).derivations, [a.dref]);
    assert.equal(lastLine(ok(cairn(remote, ['build-drv', a.dref], { env: otherCache() })).stdout), a.rrefs[0]);
  });

  it('chooses inputs: the only realization, or --input; errors name the DRef', () => {
    const dir = project({
      'stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
export const a = stage({
  name: 'a',
  config: {},
  build: (ctx) => fs.writeFileSync(ctx.out + '/t', String(Math.random())),
});
export const other = stage({ name: 'other', config: {}, build: (ctx) => fs.writeFileSync(ctx.out + '/o', 'o') });
export default stage({
  name: 'b',
  config: { a },
  build: (ctx) => fs.copyFileSync(ctx.config.a.file('t'), ctx.out + '/t'),
});
`,
    });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const a = r.plan.find((p) => p.name === 'a')!;
    const b = r.plan.find((p) => p.name === 'b')!;
    const drvs = exportDrvs(local, [b.dref]);
    const remote = newStore();
    // No realization of a: the error names it.
    const none = cairn(remote, ['build-drv', b.dref, '--from', drvs]);
    expectError(none, 'E_BUILD_INPUT', remote);
    assert.match(none.stderr, new RegExp(a.dref));
    // Two realizations of a (it is not deterministic): which one must be said.
    ok(cairn(local, ['realize', '-q', path.join(dir, 'stages.ts'), '-s', 'a', '-f', 'a']));
    const both = ok(cairn(local, ['lsref', a.dref]))
      .stdout.trim()
      .split(/\s+/)
      .filter((s) => s.includes('-a'));
    assert.equal(both.length, 2, both.join(' '));
    ok(cairn(remote, ['import', exportClosureOf(local, both)]));
    const ambiguous = cairn(remote, ['build-drv', b.dref]);
    expectError(ambiguous, 'E_BUILD_INPUT', remote);
    assert.match(ambiguous.stderr, /2 realizations/);
    const chosen = both.find((x) => !a.rrefs.includes(x))!;
    const built = JSON.parse(ok(cairn(remote, ['build-drv', b.dref, '--input', chosen, '--json'])).stdout) as {
      realizations: string[];
    };
    const rhash = built.realizations[0]!.split('-')[0]!;
    const meta = JSON.parse(fs.readFileSync(path.join(remote, 'd', b.dref, 'r', rhash, 'meta.json'), 'utf8')) as {
      context: Record<string, string[]>;
    };
    assert.deepEqual(meta.context, { [a.dref]: [chosen] });
    // An input that is not a realization of a dependency.
    const otherRref = lastLine(ok(cairn(local, ['realize', '-q', path.join(dir, 'stages.ts'), '-s', 'other'])).stdout);
    ok(cairn(remote, ['import', exportClosureOf(local, [otherRref])]));
    expectError(cairn(remote, ['build-drv', b.dref, '--input', otherRref]), 'E_BUILD_INPUT', remote);
    expectError(cairn(remote, ['build-drv', b.dref, '--input', 'nonsense']), 'E_BAD_REF', remote);
  });

  it('--force builds again where realizations from the same inputs satisfy the matcher', () => {
    const dir = project({
      'stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
export default stage({
  name: 'seeded',
  config: {},
  build: (ctx) => fs.writeFileSync(ctx.out + '/t', String(Math.random())),
});
`,
    });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const dref = r.targets[0]!.dref;
    const remote = newStore();
    type Report = { built: boolean; realizations: string[] };
    const first = JSON.parse(
      ok(cairn(remote, ['build-drv', dref, '--from', exportDrvs(local, [dref]), '--json'])).stdout,
    ) as Report;
    const again = JSON.parse(ok(cairn(remote, ['build-drv', dref, '--json'])).stdout) as Report;
    assert.equal(again.built, false, 'without --force the realization there is reused');
    assert.deepEqual(again.realizations, first.realizations);
    const forced = JSON.parse(ok(cairn(remote, ['build-drv', dref, '--force', '--json'])).stdout) as Report;
    assert.equal(forced.built, true, 'built again');
    assert.equal(forced.realizations.length, 1);
    assert.notDeepEqual(forced.realizations, first.realizations, 'a new realization, chosen by latest');
    const all = ok(cairn(remote, ['lsref', dref]))
      .stdout.trim()
      .split('\n');
    assert.equal(all.length, 2, all.join('\n'));
  });

  it('a derivation with no code object, or code that no longer defines it, is refused by code', () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const local = newStore();
    const plain = JSON.parse(
      ok(cairn(local, ['realize', '--json', '-q', path.join(dir, 'stages.ts')])).stdout,
    ) as Realized;
    const dref = plain.targets[0]!.dref;
    expectError(cairn(local, ['build-drv', dref]), 'E_NO_CODE', local);
    expectError(cairn(local, ['export-drv', dref]), 'E_NO_CODE', local);
    // Top-level code read the environment: the code object, loaded elsewhere, defines another derivation.
    const flavoured = realizeSelfContained(local, dir, { H19_FLAVOUR: 'spicy' });
    const target = flavoured.targets[0]!.dref;
    const drvs = exportDrvs(local, [target]);
    const a = flavoured.plan.find((p) => p.name === 'a')!;
    const remote = newStore();
    ok(cairn(remote, ['import', exportClosureOf(local, a.rrefs)]));
    const r = cairn(remote, ['build-drv', target, '--from', drvs], { env: { H19_FLAVOUR: '' } });
    expectError(r, 'E_CODE_MISMATCH', remote);
    assert.match(r.stderr, /instantiates here to/);
    ok(cairn(remote, ['build-drv', target], { env: { H19_FLAVOUR: 'spicy' } }));
  });
});

describe('a code object that defines another derivation on the builder', () => {
  it('blames the environment, not the file inputs of another stage of the same file', () => {
    // `count` has a file input that no derivation sent to the builder records (it is not being built);
    // `env` read the environment at the top level, and that is why it instantiates to another DRef there.
    const dir = project({
      'stages.ts': `import { stage } from 'cairn';
import * as fs from 'node:fs';
import * as path from 'node:path';
export const count = stage({ name: 'count', config: {}, files: ['data.txt'], build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'n'), '1');
} });
export default stage({ name: 'env', config: { salt: process.env.H19_SALT ?? 'none' }, build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'v'), 'v');
} });
`,
      'data.txt': 'words\n',
    });
    const local = newStore();
    const made = realizeSelfContained(local, dir, { H19_SALT: 'here' });
    const target = made.targets[0]!.dref;
    const remote = newStore();
    const r = cairn(remote, ['build-drv', target, '--from', exportDrvs(local, [target])], { env: { H19_SALT: '' } });
    expectError(r, 'E_CODE_MISMATCH', remote);
    assert.match(r.stderr, /does top-level code read the environment/);
    assert.doesNotMatch(r.stderr, /data\.txt/);
  });
});

describe('code that cannot travel', () => {
  it('a native addon is refused when the code is bundled, naming the package', () => {
    const dir = project({
      'stages.ts': `
import { stage } from 'cairn';
import Database from 'better-sqlite3';
export default stage({ name: 'db', config: {}, build: (ctx) => { new Database(ctx.out + '/x.db').close(); } });
`,
    });
    const store = newStore();
    const r = cairn(store, ['realize', '--self-contained', path.join(dir, 'stages.ts')]);
    expectError(r, 'E_CODE_NATIVE', store);
    assert.match(r.stderr, /better-sqlite3/);
    // Without --self-contained it builds locally as before.
    ok(cairn(store, ['realize', '-q', path.join(dir, 'stages.ts')]));
  });

  it('a file of the checkout read through import.meta.url: an error naming the path where it is missing', () => {
    const dir = project({
      'data.csv': 'x,y\n1,2\n',
      'stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
export default stage({
  name: 'reads-checkout',
  config: {},
  build: (ctx) => fs.copyFileSync(new URL('./data.csv', import.meta.url), ctx.out + '/d.csv'),
});
`,
    });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const dref = r.targets[0]!.dref;
    const drvs = exportDrvs(local, [dref]);
    const text = fs.readFileSync(path.join(local, 'code', r.code!), 'utf8');
    assert.deepEqual((JSON.parse(text) as { notes: unknown[] }).notes, [{ file: 'stages.ts', what: 'import.meta' }]);
    fs.rmSync(dir, { recursive: true });
    const remote = newStore();
    const b = cairn(remote, ['build-drv', dref, '--from', drvs], { env: otherCache() });
    expectError(b, 'E_CODE_NOT_PORTABLE', remote);
    assert.match(b.stderr, new RegExp(path.join(dir, 'data.csv').replace(/[.]/g, '\\.')));
    assert.match(b.stderr, /file input/);
  });

  it('a dynamic import of a local module by a computed name: an error, not a silent local build', () => {
    const dir = project({
      'mod.mjs': `export const v = 42;\n`,
      'stages.ts': `
import { stage } from 'cairn';
import * as fs from 'node:fs';
const which = ['./mod', 'mjs'].join('.');
export default stage({
  name: 'dyn',
  config: {},
  build: async (ctx) => {
    const m = (await import(new URL(which, import.meta.url).href)) as { v: number };
    fs.writeFileSync(ctx.out + '/v', String(m.v));
  },
});
`,
    });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const dref = r.targets[0]!.dref;
    const text = fs.readFileSync(path.join(local, 'code', r.code!), 'utf8');
    assert.ok((JSON.parse(text) as { notes: { what: string }[] }).notes.some((n) => n.what === 'dynamic-import'));
    const drvs = exportDrvs(local, [dref]);
    fs.rmSync(dir, { recursive: true });
    const remote = newStore();
    expectError(
      cairn(remote, ['build-drv', dref, '--from', drvs], { env: otherCache() }),
      'E_CODE_NOT_PORTABLE',
      remote,
    );
  });
});

/** A tar with these entries (files, or a symlink with `link`), written by Cairn's own tar writer. */
function tarOf(entries: { name: string; data?: Buffer | string; link?: string }[]): string {
  const file = path.join(work.dir, `hostile-${++seq}.tar`);
  const fd = fs.openSync(file, 'w');
  try {
    const w = new TarWriter(fd);
    for (const e of entries) {
      if (e.link !== undefined) {
        const h = entryHeader({
          path: Buffer.from(e.name),
          type: 'symlink',
          mode: 0o777,
          linkpath: Buffer.from(e.link),
        });
        fs.writeSync(fd, h);
      } else w.file(Buffer.from(e.name), Buffer.from(e.data ?? ''));
    }
    w.end();
  } finally {
    fs.closeSync(fd);
  }
  void padding;
  return file;
}

describe('derivation exports are checked before anything enters', () => {
  const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
  const local = newStore();
  const r = realizeSelfContained(local, dir);
  const a = r.plan.find((p) => p.name === 'a')!;
  const code = r.code!;
  const drvText = fs.readFileSync(path.join(local, 'd', a.dref, 'drv.json'));
  const codeText = fs.readFileSync(path.join(local, 'code', code));
  const manifest = (drvs: unknown[]): string => JSON.stringify({ format: 'cairn-drvs-1', drvs });
  const good = manifest([{ dref: a.dref, code }]);

  const cases: [string, string, { name: string; data?: Buffer | string; link?: string }[]][] = [
    [
      'a code object that does not hash to its name',
      'E_CODE_CORRUPT',
      [
        { name: 'manifest.json', data: good },
        { name: `d/${a.dref}/drv.json`, data: drvText },
        { name: `code/${code}`, data: codeText.toString().replace('toUpperCase', 'toLowerCase') },
      ],
    ],
    [
      'a drv.json that does not hash to its DRef',
      'E_BAD_DRV_EXPORT',
      [
        { name: 'manifest.json', data: good },
        { name: `d/${a.dref}/drv.json`, data: drvText.toString().replace('"n":3', '"n":4') },
        { name: `code/${code}`, data: codeText },
      ],
    ],
    [
      'an entry the manifest does not name',
      'E_BAD_DRV_EXPORT',
      [
        { name: 'manifest.json', data: good },
        { name: `d/${a.dref}/drv.json`, data: drvText },
        { name: `d/${a.dref}/r/x/out/evil`, data: 'x' },
        { name: `code/${code}`, data: codeText },
      ],
    ],
    [
      'a symlink in place of the code object',
      'E_BAD_DRV_EXPORT',
      [
        { name: 'manifest.json', data: good },
        { name: `d/${a.dref}/drv.json`, data: drvText },
        { name: `code/${code}`, link: `../d/${a.dref}/drv.json` },
      ],
    ],
    [
      'a path leaving the export',
      'E_UNSAFE_ARCHIVE',
      [
        { name: 'manifest.json', data: good },
        { name: `../../escape`, data: 'x' },
      ],
    ],
    [
      'a manifest naming something that is not a DRef',
      'E_BAD_DRV_EXPORT',
      [{ name: 'manifest.json', data: manifest([{ dref: '../../etc', code }]) }],
    ],
    [
      'a code object missing from export and store',
      'E_BAD_DRV_EXPORT',
      [
        { name: 'manifest.json', data: good },
        { name: `d/${a.dref}/drv.json`, data: drvText },
      ],
    ],
    [
      'a code object that is not one (canonical JSON with the wrong format)',
      'E_CODE_CORRUPT',
      [
        { name: 'manifest.json', data: manifest([{ dref: a.dref, code: '0'.repeat(32) }]) },
        { name: `d/${a.dref}/drv.json`, data: drvText },
        { name: `code/${'0'.repeat(32)}`, data: '{"format":"x"}' },
      ],
    ],
  ];
  for (const [what, codeName, entries] of cases) {
    it(`${what}: ${codeName}, and nothing enters the store`, () => {
      const store = newStore();
      ok(cairn(store, ['store', 'verify']));
      const before = drvAndCodeEntries(store);
      const tar = tarOf(entries);
      expectError(cairn(store, ['import-drv', tar]), codeName, store);
      expectError(cairn(store, ['build-drv', a.dref, '--from', tar]), codeName, store);
      assert.deepEqual(drvAndCodeEntries(store), before);
    });
  }

  it('a sound export enters (the cases above differ from it in one thing only)', () => {
    const store = newStore();
    const tar = tarOf([
      { name: 'manifest.json', data: good },
      { name: `d/${a.dref}/drv.json`, data: drvText },
      { name: `code/${code}`, data: codeText },
    ]);
    ok(cairn(store, ['import-drv', tar]));
    assert.ok(fs.existsSync(path.join(store, 'code', code)));
  });
});

describe('code objects in gc and verify', () => {
  it('gc keeps the code objects of live derivations and removes orphaned ones', async () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const root = newStore();
    const first = realizeSelfContained(root, dir);
    ok(cairn(root, ['root', 'add', 'keep', first.targets[0]!.rrefs[0]!]));
    // An edit of the helper: a new code object, and (its build function's callee changed, not the
    // function) the same DRefs, now pointing to the new one. The old object is orphaned.
    fs.writeFileSync(path.join(dir, 'helper.ts'), HELPER.replace("'!'", "'!!'"));
    const second = realizeSelfContained(root, dir);
    assert.notEqual(second.code, first.code);
    // An unrelated graph, not rooted: its derivations and code go with gc.
    const otherStages = STAGES.replace("name: 'report'", "name: 'other-report'").replace('n: 3', 'n: 5');
    const other = project({ 'stages.ts': otherStages, 'helper.ts': '' });
    fs.writeFileSync(path.join(other, 'helper.ts'), HELPER.replace("'!'", "'?'"));
    const third = realizeSelfContained(root, other);
    const store = LocalStore.open(root);
    try {
      // Older than gc's grace period for fresh code objects.
      const old = new Date(Date.now() - 3600_000);
      for (const c of [first.code!, second.code!, third.code!]) fs.utimesSync(path.join(root, 'code', c), old, old);
      const report = await collectGarbage(store);
      assert.deepEqual(report.code.sort(), [first.code!, third.code!].sort());
      assert.ok(fs.existsSync(path.join(root, 'code', second.code!)), 'the live derivations point to it');
      assert.ok(!fs.existsSync(path.join(root, 'code', first.code!)));
      assert.ok(!fs.existsSync(path.join(root, 'code', third.code!)));
      // Fresh ones are kept whatever points to them (a realize is about to point to them).
      const fresh = realizeSelfContained(root, other);
      ok(cairn(root, ['rmref', fresh.targets[0]!.rrefs[0]!]));
      const r2 = await collectGarbage(store);
      assert.ok(!r2.code.includes(fresh.code!));
      assert.ok(fs.existsSync(path.join(root, 'code', fresh.code!)));
      assert.deepEqual((await verifyStore(store)).problems, []);
    } finally {
      store.close();
    }
  });

  it('gc between build-drv --from taking in a derivation and building it takes neither it nor its inputs', async () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const report = r.plan.find((p) => p.name === 'report')!;
    const a = r.plan.find((p) => p.name === 'a')!;
    const drvs = exportDrvs(local, [report.dref]);
    const inputs = exportClosureOf(local, a.rrefs);
    const remote = newStore();
    // The input arrived earlier (as sync push sends it) and has no root on the builder.
    ok(cairn(remote, ['import', inputs]));
    const pause = path.join(work.dir, `pause-${++seq}`);
    const running = cairnAsync(remote, ['build-drv', report.dref, '--from', drvs, '--input', a.rrefs[0]!, '--json'], {
      env: { ...otherCache(), [PAUSE_AFTER_IMPORT_ENV]: pause },
    });
    try {
      for (let i = 0; !fs.existsSync(`${pause}.started`); i++) {
        assert.ok(i < 1200, 'build-drv never reached the point after its import');
        await sleep(50);
      }
      // gc at exactly that point: the derivation is in the store, with no realization and no root.
      const gc = JSON.parse(ok(await cairnAsync(remote, ['store', 'gc', '--json'])).stdout) as {
        realizations: string[];
        derivations: string[];
      };
      assert.deepEqual(gc.derivations, []);
      assert.deepEqual(gc.realizations, []);
    } finally {
      fs.writeFileSync(`${pause}.open`, '');
    }
    const res = JSON.parse(ok(await running).stdout) as { realizations: string[] };
    assert.deepEqual(res.realizations, report.rrefs);
    // The roots go with the build: a later gc may take everything (nothing roots it on the builder).
    const later = JSON.parse(ok(cairn(remote, ['store', 'gc', '--json'])).stdout) as { derivations: string[] };
    assert.ok(later.derivations.includes(report.dref), later.derivations.join(' '));
  });

  it('verify notices a damaged code object and a pointer to a missing one; --repair moves it aside', async () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const root = newStore();
    const r = realizeSelfContained(root, dir);
    const file = path.join(root, 'code', r.code!);
    fs.chmodSync(file, 0o644);
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('toUpperCase', 'toLowerCase'));
    fs.chmodSync(file, 0o444);
    const v = cairn(root, ['store', 'verify', '--json']);
    assert.notEqual(v.code, 0);
    const problems = (JSON.parse(v.stdout) as { problems: { ref: string; kind: string; detail: string }[] }).problems;
    assert.deepEqual(problems, [{ ref: `code/${r.code}`, kind: 'modified', detail: problems[0]!.detail }]);
    expectError(cairn(root, ['build-drv', r.targets[0]!.dref]), 'E_CODE_CORRUPT');
    cairn(root, ['store', 'verify', '--repair']);
    assert.ok(!fs.existsSync(file));
    const after2 = JSON.parse(cairn(root, ['store', 'verify', '--json']).stdout) as {
      problems: { ref: string; kind: string }[];
    };
    assert.deepEqual(
      after2.problems.map((p) => p.kind),
      r.plan.map(() => 'missing'),
    );
    assert.ok(after2.problems.every((p) => r.plan.some((x) => x.dref === p.ref)));
  });
});

describe('closures carry code objects with their derivations (export/import, the receive path of sync)', () => {
  it('a closure taken in elsewhere brings each derivation its code; a tampered code object is refused whole', () => {
    const dir = project({ 'stages.ts': STAGES, 'helper.ts': HELPER });
    const local = newStore();
    const r = realizeSelfContained(local, dir);
    const target = r.targets[0]!;
    const closure = exportClosureOf(local, target.rrefs);
    fs.rmSync(dir, { recursive: true });
    const remote = newStore();
    ok(cairn(remote, ['import', closure]));
    for (const p of r.plan)
      assert.equal(fs.readFileSync(path.join(remote, 'd', p.dref, 'code'), 'utf8'), `${r.code}\n`);
    assert.ok(fs.existsSync(path.join(remote, 'code', r.code!)));
    // Built there again from what came with the closure: the same RRef.
    ok(cairn(remote, ['rmref', target.rrefs[0]!]));
    const again = JSON.parse(ok(cairn(remote, ['build-drv', target.dref, '--json'], { env: otherCache() })).stdout) as {
      realizations: string[];
    };
    assert.deepEqual(again.realizations, target.rrefs);
    assert.deepEqual(
      (JSON.parse(ok(cairn(remote, ['store', 'verify', '--json'])).stdout) as { problems: unknown[] }).problems,
      [],
    );

    // The same archive with one byte of the code object changed.
    const bytes = fs.readFileSync(closure);
    const at = bytes.indexOf('toUpperCase');
    assert.ok(at > 0);
    bytes.write('toLowerCase', at);
    const tampered = path.join(work.dir, `tampered-${++seq}.tar`);
    fs.writeFileSync(tampered, bytes);
    const victim = newStore();
    ok(cairn(victim, ['store', 'verify']));
    const before = drvAndCodeEntries(victim);
    expectError(cairn(victim, ['import', tampered]), 'E_SYNC_HASH_MISMATCH', victim);
    assert.deepEqual(drvAndCodeEntries(victim), before);
  });
});
