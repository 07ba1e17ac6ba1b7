/**
 * File and directory inputs (`files`): content in the identity, exactly the
 * edited stage and its dependants rebuilt, builds that read the hashed bytes
 * from the store, the stat cache (hits, racy files, invalidation by ctime
 * and inode), directory trees with symlinks and byte names, and the errors,
 * through the library and the CLI.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { instantiate, realize, stage, LocalStore, type RealizeResult, type Stage } from '../src/index.js';
import { InputHasher } from '../src/stages/inputs/input-hash.js';
import { openStatCache, RACY_MARGIN_NS } from '../src/stages/inputs/stat-cache.js';
import { cairn, expectError, isCode, isolateModuleCache, lastLine, ok, repoRoot, storePerTest } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';

isolateModuleCache(after, 'cairn-inputs-cache');

let dir: string;
let store: LocalStore;
storePerTest('cairn-inputs', (t) => ({ dir, store } = t));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Long enough for files written before it to be cacheable (no longer racy). */
const pastRacyWindow = () => sleep(Number(RACY_MARGIN_NS / 1_000_000n) + 200);

const write = (rel: string, body: string | Buffer, mode?: number): string => {
  const p = path.join(dir, 'proj', rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, body, mode === undefined ? {} : { mode });
  return p;
};

/** A pipeline: prep(data/) -> train(train.py) -> evaluate; report(prep); other(other.txt). */
function pipeline(ran: string[], base = path.join(dir, 'proj')): { targets: Stage[] } {
  const prep = stage({
    name: 'prep',
    config: {},
    files: ['data/'],
    dir: base,
    build: ({ files, out }) => {
      ran.push('prep');
      fs.writeFileSync(path.join(out, 'rows'), fs.readFileSync(path.join(files['data/']!, 'rows.csv')));
    },
  });
  const train = stage({
    name: 'train',
    config: { prep },
    files: ['train.py'],
    dir: base,
    build: ({ files, config, out }) => {
      ran.push('train');
      fs.writeFileSync(
        path.join(out, 'model'),
        fs.readFileSync(files['train.py']!, 'utf8') + fs.readFileSync(config.prep.file('rows'), 'utf8'),
      );
    },
  });
  const evaluate = stage({
    name: 'evaluate',
    config: { train },
    build: ({ out }) => {
      ran.push('evaluate');
      fs.writeFileSync(path.join(out, 'x'), 'x');
    },
  });
  const report = stage({
    name: 'report',
    config: { prep },
    build: ({ out }) => {
      ran.push('report');
      fs.writeFileSync(path.join(out, 'x'), 'r');
    },
  });
  const other = stage({
    name: 'other',
    config: {},
    files: ['other.txt'],
    dir: base,
    build: ({ out }) => {
      ran.push('other');
      fs.writeFileSync(path.join(out, 'x'), 'o');
    },
  });
  return { targets: [evaluate, report, other] };
}

function project(): void {
  write('train.py', 'print("v1")\n');
  write('other.txt', 'other\n');
  write('data/rows.csv', 'a,b\n1,2\n');
  write('data/sub/more.csv', 'c\n');
}

const actions = (r: RealizeResult): Record<string, string> => Object.fromEntries(r.plan.map((p) => [p.name, p.action]));
const built = (r: RealizeResult): string[] =>
  r.plan
    .filter((p) => p.action !== 'cached')
    .map((p) => p.name)
    .sort();

describe('file inputs: identity and rebuilds', () => {
  it('editing train.py rebuilds exactly train and its dependants; the others stay cached', async () => {
    project();
    const ran: string[] = [];
    const first = await realize(pipeline(ran).targets, { store });
    assert.deepEqual(built(first), ['evaluate', 'other', 'prep', 'report', 'train']);
    assert.deepEqual(first.inputs.map((i) => [i.name, i.action]).sort(), [
      ['data', 'build'],
      ['other.txt', 'build'],
      ['train.py', 'build'],
    ]);
    ran.length = 0;

    write('train.py', 'print("v2")\n');
    const second = await realize(pipeline(ran).targets, { store });
    assert.deepEqual(actions(second), {
      prep: 'cached',
      train: 'build',
      evaluate: 'build',
      report: 'cached',
      other: 'cached',
    });
    assert.deepEqual(ran.sort(), ['evaluate', 'train']);
    assert.equal(second.builds, 2);
    assert.deepEqual(
      second.inputs.filter((i) => i.action !== 'cached').map((i) => i.name),
      ['train.py'],
    );
    const model = store.outPath(second.plan.find((p) => p.name === 'train')!.rrefs[0]!);
    assert.equal(fs.readFileSync(path.join(model, 'model'), 'utf8'), 'print("v2")\na,b\n1,2\n');

    // Back to v1: the old realizations are chosen again, nothing runs.
    ran.length = 0;
    write('train.py', 'print("v1")\n');
    const third = await realize(pipeline(ran).targets, { store });
    assert.deepEqual(ran, []);
    assert.deepEqual(third.targets, first.targets);
  });

  it('editing a file deep inside a directory input rebuilds the stages that declare the directory', async () => {
    project();
    const ran: string[] = [];
    await realize(pipeline(ran).targets, { store });
    ran.length = 0;
    write('data/sub/more.csv', 'c\nd\n');
    const r = await realize(pipeline(ran).targets, { store });
    assert.deepEqual(built(r), ['evaluate', 'prep', 'report', 'train']);
    ran.length = 0;
    write('data/sub/new.csv', '');
    assert.deepEqual(built(await realize(pipeline(ran).targets, { store })), ['evaluate', 'prep', 'report', 'train']);
  });

  it('touching a file or rewriting the same bytes rebuilds nothing', async () => {
    project();
    const ran: string[] = [];
    const first = await realize(pipeline(ran).targets, { store });
    ran.length = 0;
    const later = new Date(Date.now() + 60_000);
    fs.utimesSync(path.join(dir, 'proj', 'train.py'), later, later);
    write('data/rows.csv', 'a,b\n1,2\n');
    const r = await realize(pipeline(ran).targets, { store });
    assert.deepEqual(ran, []);
    assert.equal(r.builds, 0);
    assert.ok(r.inputs.every((i) => i.action === 'cached'));
    assert.deepEqual(r.targets, first.targets);
  });

  it("the executable bit is part of a file input's identity", async () => {
    project();
    const ran: string[] = [];
    await realize(pipeline(ran).targets, { store });
    ran.length = 0;
    fs.chmodSync(path.join(dir, 'proj', 'train.py'), 0o755);
    assert.deepEqual(built(await realize(pipeline(ran).targets, { store })), ['evaluate', 'train']);
  });

  it('the identity holds names and content, not where the project is: a moved checkout has the same DRefs', () => {
    project();
    const here = instantiate(pipeline([]).targets);
    const moved = path.join(dir, 'elsewhere', 'checkout');
    fs.mkdirSync(path.dirname(moved));
    fs.cpSync(path.join(dir, 'proj'), moved, { recursive: true });
    const there = instantiate(pipeline([], moved).targets);
    assert.deepEqual(there.targets, here.targets);
    const trainDrv = JSON.parse([...here.nodes.values()].find((n) => n.name === 'train')!.drvJson) as Record<
      string,
      unknown
    >;
    assert.deepEqual(Object.keys(trainDrv.files as object), ['train.py']);
    assert.ok(!here.nodes.get(here.targets[0]!)!.drvJson.includes(dir), 'no absolute path in any drv.json');
    for (const n of here.nodes.values()) assert.ok(!n.drvJson.includes(dir), `${n.name}: drv.json names a local path`);
  });

  it('a stage without files keeps the drv.json format it always had (no "files" key)', () => {
    const s = stage({ name: 'plain', config: { a: 1 }, build: () => {} });
    const drv = instantiate(s).nodes.get(instantiate(s).targets[0]!)!.drvJson;
    assert.ok(!drv.includes('"files"'));
    assert.deepEqual(Object.keys(JSON.parse(drv) as object), ['code', 'config', 'deps', 'format', 'name', 'outputs']);
  });

  it("inputs are store objects in the consumer's context, so gc and sync keep them with it", async () => {
    project();
    const r = await realize(pipeline([]).targets, { store });
    const train = r.plan.find((p) => p.name === 'train')!.rrefs[0]!;
    const importOfTrain = r.inputs.find((i) => i.name === 'train.py')!.rrefs[0]!;
    assert.ok((await store.closure([train])).includes(importOfTrain));
    assert.equal(fs.readFileSync(path.join(store.outPath(importOfTrain), 'train.py'), 'utf8'), 'print("v1")\n');
  });
});

describe('file inputs: the build sees the bytes that were hashed', () => {
  it('a build that rewrites the original still reads the hashed content from its store copy', async () => {
    write('train.py', 'hashed\n');
    const original = path.join(dir, 'proj', 'train.py');
    const s = stage({
      name: 'sneaky',
      config: {},
      files: ['train.py'],
      dir: path.join(dir, 'proj'),
      build: ({ files, out }) => {
        assert.notEqual(files['train.py'], original);
        fs.writeFileSync(original, 'rewritten during the build\n');
        fs.writeFileSync(path.join(out, 'seen'), fs.readFileSync(files['train.py']!));
      },
    });
    const r = await realize(s, { store });
    assert.equal(fs.readFileSync(path.join(store.outPath(r.targets[0]!.rrefs[0]!), 'seen'), 'utf8'), 'hashed\n');
  });

  it(
    'an input edited between hashing and the import is refused with ' + 'E_INPUT_CHANGED, and nothing is stored for it',
    async () => {
      write('train.py', 'before\n');
      let ran = 0;
      const s = stage({
        name: 'victim',
        config: {},
        files: ['train.py'],
        dir: path.join(dir, 'proj'),
        build: () => {
          ran++;
        },
      });
      const graph = instantiate(s);
      write('train.py', 'after!\n');
      await assert.rejects(
        realize(graph, { store }),
        (e) => isCode('E_INPUT_CHANGED')(e) && /train\.py/.test((e as Error).message),
      );
      assert.equal(ran, 0);
      const importDref = [...graph.nodes.values()].find((n) => n.imports)!.dref;
      assert.deepEqual(storeIndex(store).realizationsOf(importDref), []);
      // Run again (a fresh instantiation): the new content goes through.
      await realize(s, { store });
      assert.equal(ran, 1);
    },
  );

  it('the store copy is read-only and ctx.files also answers to the declared spelling', async () => {
    write('data/x', 'x');
    let seen: Record<string, string> = {};
    const s = stage({
      name: 'spell',
      config: {},
      files: ['./data/'],
      dir: path.join(dir, 'proj'),
      build: ({ files }) => {
        seen = { keys: Object.keys(files).join(','), norm: files.data!, declared: files['./data/']! };
      },
    });
    await realize(s, { store });
    assert.equal(seen.keys, 'data');
    assert.equal(seen.norm, seen.declared);
    assert.equal(path.basename(seen.norm!), 'data');
    assert.equal(fs.statSync(path.join(seen.norm!, 'x')).mode & 0o222, 0);
  });
});

describe('file inputs: directories', () => {
  it('symlinks are kept as symlinks, executables keep their bit, names are bytes', async () => {
    write('tree/bin/run.sh', '#!/bin/sh\n', 0o755);
    write('tree/a.txt', 'a');
    fs.symlinkSync('../a.txt', path.join(dir, 'proj', 'tree', 'bin', 'link'));
    fs.symlinkSync('missing-but-inside', path.join(dir, 'proj', 'tree', 'dangling'));
    const s = stage({ name: 'tree', config: {}, files: ['tree'], dir: path.join(dir, 'proj'), build: () => {} });
    const r = await realize(s, { store });
    const copy = path.join(store.outPath(r.inputs[0]!.rrefs[0]!), 'tree');
    assert.equal(fs.readlinkSync(path.join(copy, 'bin', 'link')), '../a.txt');
    assert.equal(fs.readlinkSync(path.join(copy, 'dangling')), 'missing-but-inside');
    assert.equal(fs.statSync(path.join(copy, 'bin', 'run.sh')).mode & 0o111, 0o111);
    assert.equal(fs.readFileSync(path.join(copy, 'a.txt'), 'utf8'), 'a');
  });

  it('names that are not UTF-8 are hashed as bytes: two such names never collide', () => {
    const root = path.join(dir, 'bytes');
    fs.mkdirSync(root);
    const h = new InputHasher();
    const nameA = Buffer.concat([Buffer.from(root + '/'), Buffer.from([0x66, 0xff])]);
    fs.writeFileSync(nameA, 'same');
    const one = h.digest(root, 'bytes').hash;
    fs.renameSync(nameA, Buffer.concat([Buffer.from(root + '/'), Buffer.from([0x66, 0xfe])]));
    assert.notEqual(h.digest(root, 'bytes').hash, one, 'U+FFFD must not stand in for different bytes');
  });

  it('a symlink that leaves the input is refused with E_UNSAFE_INPUT naming it', () => {
    write('data/ok.csv', '');
    fs.symlinkSync('../../secret', path.join(dir, 'proj', 'data', 'escape'));
    const s = stage({ name: 'esc', config: {}, files: ['data'], dir: path.join(dir, 'proj'), build: () => {} });
    assert.throws(
      () => instantiate(s),
      (e) => isCode('E_UNSAFE_INPUT')(e) && /escape/.test((e as Error).message),
    );
    fs.unlinkSync(path.join(dir, 'proj', 'data', 'escape'));
    fs.symlinkSync('/etc/passwd', path.join(dir, 'proj', 'data', 'abs'));
    assert.throws(() => instantiate(s), isCode('E_UNSAFE_INPUT'));
    fs.unlinkSync(path.join(dir, 'proj', 'data', 'abs'));
    // Through another link inside the tree: `s -> .` then `s/../x`.
    fs.symlinkSync('.', path.join(dir, 'proj', 'data', 's'));
    fs.symlinkSync('s/../../x', path.join(dir, 'proj', 'data', 'sneaky'));
    assert.throws(() => instantiate(s), isCode('E_UNSAFE_INPUT'));
  });

  it('a fifo inside a directory input is refused with E_UNSAFE_INPUT', () => {
    write('data/ok.csv', '');
    const r = (cmd: string, args: string[]) => import('node:child_process').then((cp) => cp.execFileSync(cmd, args));
    return r('mkfifo', [path.join(dir, 'proj', 'data', 'pipe')]).then(() => {
      const s = stage({ name: 'fifo', config: {}, files: ['data'], dir: path.join(dir, 'proj'), build: () => {} });
      assert.throws(() => instantiate(s), isCode('E_UNSAFE_INPUT'));
    });
  });
});

describe('file inputs: errors and declarations', () => {
  it('a missing input is E_INPUT_MISSING naming it', () => {
    const s = stage({ name: 'm', config: {}, files: ['nope/model.bin'], dir: path.join(dir, 'proj'), build: () => {} });
    assert.throws(
      () => instantiate(s),
      (e) => isCode('E_INPUT_MISSING')(e) && /nope\/model\.bin/.test((e as Error).message),
    );
  });

  it('an unreadable file inside an input is E_INPUT_MISSING naming it, not an internal error', () => {
    write('data/ok.csv', '');
    write('data/secret.csv', 'x', 0o600);
    fs.chmodSync(dir, 0o755);
    for (const d of ['proj', 'proj/data']) fs.chmodSync(path.join(dir, d), 0o755);
    // As nobody (root reads everything), through the built library.
    const script =
      `import('${path.join(repoRoot, 'dist', 'src', 'index.js')}').then(({ stage, instantiate }) => {
      const s = stage({ name: 'r', config: {}, files: ['data'], dir: ` +
      `${JSON.stringify(path.join(dir, 'proj'))}, build: () => {} });
      try { instantiate(s); console.log('no error'); } catch (e) { console.log(e.code + ' ' + e.message); }
    });`;
    const r = spawnSync(process.execPath, ['-e', script], {
      uid: 65534,
      gid: 65534,
      encoding: 'utf8',
      env: { PATH: process.env.PATH, CAIRN_STAT_CACHE: 'off' },
    });
    assert.match(r.stdout, /^E_INPUT_MISSING file input data cannot be read: .*secret\.csv/, r.stderr);
  });

  it('bad declarations are E_BAD_STAGE_SPEC at stage()', () => {
    const spec = { name: 'x', config: {}, build: () => {} };
    assert.throws(() => stage({ ...spec, files: 'train.py' as never }), isCode('E_BAD_STAGE_SPEC'));
    assert.throws(() => stage({ ...spec, files: [''] }), isCode('E_BAD_STAGE_SPEC'));
    assert.throws(() => stage({ ...spec, files: ['a\0b'] }), isCode('E_BAD_STAGE_SPEC'));
    assert.throws(() => stage({ ...spec, files: ['data', './data/'] }), isCode('E_BAD_STAGE_SPEC'));
  });

  it('relative paths default to the directory of the module that calls stage(); dir accepts import.meta.url', () => {
    const here = stage({ name: 'h', config: {}, files: ['helpers.ts'], build: () => {} });
    assert.equal(here.files[0]!.path, path.join(repoRoot, 'test', 'helpers.ts'));
    const viaUrl = stage({
      name: 'u',
      config: {},
      files: ['x'],
      dir: pathToFileURL(path.join(dir, 'proj', 'stages.ts')).href,
      build: () => {},
    });
    assert.equal(viaUrl.files[0]!.path, path.join(dir, 'proj', 'x'));
    const abs = stage({ name: 'a', config: {}, files: ['/etc/hostname'], build: () => {} });
    assert.equal(abs.files[0]!.key, '/etc/hostname');
  });

  it('in a CommonJS project (npm init -y) under tsx, require("cairn") works and gives the CLI\'s DRefs', () => {
    // tsx compiles .ts to CommonJS there, so `import { stage } from 'cairn'` is a require(): the package must
    // answer it, and stage() must still find the calling file (its frames are then named by path, not URL).
    const proj = path.join(dir, 'cjs');
    fs.mkdirSync(path.join(proj, 'node_modules'), { recursive: true });
    fs.symlinkSync(repoRoot, path.join(proj, 'node_modules', 'cairn'));
    fs.writeFileSync(path.join(proj, 'package.json'), '{"name": "p", "type": "commonjs"}\n');
    fs.writeFileSync(path.join(proj, 'train.py'), 'print(1)\n');
    fs.writeFileSync(
      path.join(proj, 'stages.ts'),
      [
        "import { stage } from 'cairn';",
        "export const train = stage({ name: 'train', config: {}, files: ['train.py'],",
        '  build: async ({ files, exec }) => {',
        "  await exec('python3', [files['train.py']!]);",
        '} });',
        "export default stage({ name: 'report', config: { train }, build: () => {} });",
        '',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(proj, 'main.ts'),
      [
        "import { instantiate } from 'cairn';",
        "import report from './stages';",
        "console.log(instantiate(report).order.join('\\n'));",
        '',
      ].join('\n'),
    );
    const tsx = spawnSync(process.execPath, ['--import', 'tsx', path.join(proj, 'main.ts')], {
      cwd: repoRoot,
      encoding: 'utf8',
    });
    assert.equal(tsx.status, 0, tsx.stderr);
    const cli = ok(cairn(store.root, ['instantiate', path.join(proj, 'stages.ts')]));
    assert.equal(tsx.stdout, cli.stdout);
    assert.equal(cli.stdout.trim().split('\n').length, 3, 'train.py, train and report');
  });
});

describe('file inputs: the stat cache', () => {
  it(
    'a warm run reads no input; same size and restored mtime with ' + 'new content (ctime or inode differ) are re-read',
    async () => {
      const big = write('big.bin', Buffer.alloc(32 << 20, 7));
      // A whole second, so the mtime can be restored exactly after an edit.
      const then = Math.floor(Date.now() / 1000) - 3600;
      fs.utimesSync(big, then, then);
      const cacheFile = path.join(dir, 'stat.sqlite');
      await pastRacyWindow();
      const s = stage({
        name: 'uses-big',
        config: {},
        files: ['big.bin'],
        dir: path.join(dir, 'proj'),
        build: () => {},
      });
      const run = () => {
        const cache = openStatCache(cacheFile);
        const h = new InputHasher(cache);
        const dref = instantiate(s, { inputs: h }).targets[0]!;
        cache.close();
        return { dref, stats: h.stats };
      };
      const cold = run();
      assert.deepEqual(cold.stats, { files: 1, hashedFiles: 1, hashedBytes: 32 << 20, cacheHits: 0 });
      const warm = run();
      assert.deepEqual(warm.stats, { files: 1, hashedFiles: 0, hashedBytes: 0, cacheHits: 1 });
      assert.equal(warm.dref, cold.dref);

      // Same size, same mtime restored, different bytes, same inode: ctime differs.
      const st = fs.statSync(big, { bigint: true });
      const fd = fs.openSync(big, 'r+');
      fs.writeSync(fd, Buffer.from([8]), 0, 1, 1000);
      fs.closeSync(fd);
      fs.utimesSync(big, then, then);
      const after = fs.statSync(big, { bigint: true });
      assert.deepEqual([after.mtimeNs, after.size, after.ino], [st.mtimeNs, st.size, st.ino]);
      assert.notEqual(after.ctimeNs, st.ctimeNs);
      const edited = run();
      assert.equal(edited.stats.hashedFiles, 1);
      assert.notEqual(edited.dref, cold.dref);

      // Replaced by another file (new inode) of the same size and mtime.
      await pastRacyWindow();
      run();
      const other = path.join(dir, 'proj', 'big.new');
      fs.writeFileSync(other, Buffer.alloc(32 << 20, 9));
      fs.utimesSync(other, then, then);
      fs.renameSync(other, big);
      assert.equal(fs.statSync(big, { bigint: true }).mtimeNs, st.mtimeNs);
      const replaced = run();
      assert.equal(replaced.stats.hashedFiles, 1);
      assert.notEqual(replaced.dref, edited.dref);
    },
  );

  it('a file changed within the racy window is not cached (it is read again next time)', () => {
    write('fresh.txt', 'new');
    const cacheFile = path.join(dir, 'stat.sqlite');
    const s = stage({ name: 'fresh', config: {}, files: ['fresh.txt'], dir: path.join(dir, 'proj'), build: () => {} });
    for (let i = 0; i < 2; i++) {
      const cache = openStatCache(cacheFile);
      const h = new InputHasher(cache);
      instantiate(s, { inputs: h });
      cache.close();
      assert.equal(h.stats.hashedFiles, 1, `run ${i + 1} must read the file`);
    }
  });

  it('a directory of many files: a warm run reads none of them', async () => {
    for (let i = 0; i < 300; i++) write(`many/d${i % 7}/f${i}`, `file ${i}\n`);
    await pastRacyWindow();
    const cacheFile = path.join(dir, 'stat.sqlite');
    const s = stage({ name: 'many', config: {}, files: ['many/'], dir: path.join(dir, 'proj'), build: () => {} });
    const stats = () => {
      const cache = openStatCache(cacheFile);
      const h = new InputHasher(cache);
      const dref = instantiate(s, { inputs: h }).targets[0]!;
      cache.close();
      return { dref, ...h.stats };
    };
    const cold = stats();
    assert.equal(cold.hashedFiles, 300);
    const warm = stats();
    assert.deepEqual(
      { ...warm, dref: cold.dref },
      { dref: cold.dref, files: 300, hashedFiles: 0, hashedBytes: 0, cacheHits: 300 },
    );
    assert.equal(warm.dref, cold.dref);
  });
});

describe('file inputs: the CLI', () => {
  const stageFile = (root: string): string => {
    const f = path.join(root, 'stages.ts');
    fs.writeFileSync(
      f,
      `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
export const prep = stage({ name: 'prep', config: {}, files: ['data/'], build: ({ files, out }) => {
  fs.writeFileSync(path.join(out, 'n'), String(fs.readdirSync(files.data).length));
} });
export const train = stage({ name: 'train', config: { prep }, files: ['train.py'], build: ({ files, config, out }) => {
  fs.writeFileSync(path.join(out, 'model'), fs.readFileSync(files['train.py'], ` +
        `'utf8') + fs.readFileSync(config.prep.file('n'), 'utf8'));
} });
export default stage({ name: 'evaluate', config: { train }, build: ({ config, out }) => {
  fs.copyFileSync(config.train.file('model'), path.join(out, 'score'));
} });
`,
    );
    return f;
  };

  it(
    'realize resolves files next to the stage file from any cwd, ' + 'reports hashing, and rebuilds only what changed',
    async () => {
      const proj = path.join(dir, 'proj');
      project();
      const file = stageFile(proj);
      const storeDir = path.join(dir, 'cli-store');
      const cwd = path.join(dir, 'elsewhere');
      fs.mkdirSync(cwd);
      await pastRacyWindow();
      const json = (args: string[]) =>
        JSON.parse(ok(cairn(storeDir, ['realize', '--json', ...args, file], { cwd })).stdout) as {
          plan: { name: string; action: string }[];
          inputs: { name: string; action: string }[];
          hashed: { files: number; hashedFiles: number; hashedBytes: number; cacheHits: number };
          builds: number;
        };
      const first = json([]);
      assert.deepEqual(
        first.plan.map((p) => p.action),
        ['build', 'build', 'build'],
      );
      assert.equal(first.hashed.files, 3);
      assert.equal(first.hashed.hashedFiles, 3);
      const second = json([]);
      assert.equal(second.builds, 0);
      assert.deepEqual(second.hashed, { files: 3, hashedFiles: 0, hashedBytes: 0, cacheHits: 3 });

      write('train.py', 'print("v2")\n');
      const third = json([]);
      assert.deepEqual(
        third.plan.map((p) => [p.name, p.action]),
        [
          ['prep', 'cached'],
          ['train', 'build'],
          ['evaluate', 'build'],
        ],
      );
      assert.deepEqual(third.inputs.map((p) => [p.name, p.action]).sort(), [
        ['data', 'cached'],
        ['train.py', 'build'],
      ]);
      assert.equal(third.hashed.hashedFiles, 1);
      const rref = lastLine(ok(cairn(storeDir, ['realize', '-q', file], { cwd })).stdout);
      assert.equal(ok(cairn(storeDir, ['catref', rref, 'score'])).stdout, 'print("v2")\n2');

      // The library, loading the same file, computes the same DRefs as the CLI.
      const { loadStageFile } = await import('../src/index.js');
      const lib = instantiate((await loadStageFile(file)).targets);
      const cli = ok(cairn(storeDir, ['instantiate', file], { cwd }))
        .stdout.trim()
        .split('\n');
      assert.deepEqual(cli, lib.order);
    },
  );

  it('a graph without file inputs never opens the stat cache', () => {
    const cache = path.join(dir, 'xdg');
    ok(
      cairn(path.join(dir, 'cli-store'), ['realize', '-q', path.join(repoRoot, 'test', 'fixtures', 'chain.ts')], {
        env: { XDG_CACHE_HOME: cache, CAIRN_TEST_COUNTER: path.join(dir, 'counter') },
      }),
    );
    assert.ok(fs.existsSync(path.join(cache, 'cairn', 'modules')), 'the module cache is in XDG_CACHE_HOME');
    assert.ok(!fs.existsSync(path.join(cache, 'cairn', 'stat-cache.sqlite')));
  });

  it('a missing input fails with E_INPUT_MISSING naming it; --dry-run lists the imports', () => {
    const proj = path.join(dir, 'proj');
    fs.mkdirSync(proj);
    const file = stageFile(proj);
    const storeDir = path.join(dir, 'cli-store');
    const r = cairn(storeDir, ['realize', file]);
    expectError(r, 'E_INPUT_MISSING');
    assert.match(r.stderr, /file input train\.py does not exist/);
    project();
    const dry = ok(cairn(storeDir, ['realize', '--dry-run', file]));
    assert.match(dry.stdout, /^import \S+-data$/m);
    assert.match(dry.stdout, /^import \S+-train\.py$/m);
    assert.match(dry.stdout, /3 to build, 0 cached, 2 file input\(s\) to import/);
  });
});
