/**
 * Code identity (issue 14 item 1): the same stage file gives the same DRefs
 * however it is loaded, comments and line endings do not count, real code
 * changes do.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { canonicalAtOffset, canonicalFromText } from '../src/stages/code-identity.js';
import { instantiate, stage } from '../src/index.js';
import { cairnBin, isolateModuleCache, repoRoot, tempDir } from './helpers.js';

isolateModuleCache(after);

const FIXTURES = path.join(repoRoot, 'test', 'fixtures', 'identity');
const require = createRequire(import.meta.url);
const TSC = path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');

type Drefs = Record<string, string>;

/** Stage name -> DRef, for every stage the default export needs. */
function viaCli(file: string): Drefs {
  const r = spawnSync(process.execPath, [cairnBin, 'instantiate', '--json', file], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { derivations: { name: string; dref: string }[] };
  return Object.fromEntries(out.derivations.map((d) => [d.name, d.dref]));
}

/** The library route: a script that imports the file and calls instantiate(), under NODE_ARGS. */
function viaLibrary(dir: string, file: string, nodeArgs: string[]): Drefs {
  const r = spawnSync(process.execPath, [...nodeArgs, path.join(dir, 'runner.mjs'), file], {
    encoding: 'utf8',
    cwd: repoRoot,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Drefs;
}

const RUNNER = `import { pathToFileURL } from 'node:url';
const { instantiate } = await import(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'index.js'))});
const mod = await import(pathToFileURL(process.argv[2]).href);
const g = instantiate(mod.default);
console.log(JSON.stringify(Object.fromEntries(g.order.map((d) => [g.nodes.get(d).name, d]))));
`;

/**
 * What Node 22+'s type stripping runs: every TypeScript-only token replaced
 * by spaces, line breaks kept (Node 20 here has no type stripping to test).
 */
function stripTypes(text: string): string {
  const parser = require('sucrase/dist/parser/index.js') as {
    parse(
      s: string,
      jsx: boolean,
      ts: boolean,
      flow: boolean,
    ): {
      tokens: { start: number; end: number; isType: boolean; type: number }[];
    };
  };
  const { TokenType } = require('sucrase/dist/parser/tokenizer/types.js') as { TokenType: Record<string, number> };
  const chars = Array.from(text);
  const out = text.split('');
  for (const t of parser.parse(text, false, true, false).tokens) {
    if (!t.isType && t.type !== TokenType.nonNullAssertion) continue;
    for (let i = t.start; i < t.end; i++) if (out[i] !== '\n' && out[i] !== '\r') out[i] = ' ';
  }
  assert.equal(out.length, chars.length);
  // sucrase drops `import type` statements without marking them as types.
  return out.join('').replace(/^import type .*$/gm, (line) => ' '.repeat(line.length));
}

function tsc(dir: string, outDir: string, files: string[], extra: string[] = []): void {
  const args = [
    TSC,
    '--outDir',
    outDir,
    '--module',
    'nodenext',
    '--moduleResolution',
    'nodenext',
    '--target',
    'es2022',
    '--skipLibCheck',
    '--rewriteRelativeImportExtensions',
    ...extra,
    ...files,
  ];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: dir });
  assert.equal(r.status, 0, r.stdout + r.stderr);
}

/** Node's own type stripping, where this Node has it (22.6+). */
const nodeStrips = (): boolean => {
  const r = spawnSync(process.execPath, ['--experimental-strip-types', '-e', '0'], { encoding: 'utf8' });
  return r.status === 0;
};

describe('code identity: one stage file, every loader', () => {
  let t: { dir: string; cleanup: () => void };
  let src: string;
  let cli: Drefs;

  before(() => {
    t = tempDir('cairn-ident');
    src = path.join(t.dir, 'src');
    fs.mkdirSync(path.join(t.dir, 'node_modules'), { recursive: true });
    fs.mkdirSync(src);
    // The file's `import 'cairn'` finds this checkout; ESM throughout.
    fs.symlinkSync(repoRoot, path.join(t.dir, 'node_modules', 'cairn'));
    fs.writeFileSync(path.join(t.dir, 'package.json'), '{"type":"module"}\n');
    fs.writeFileSync(path.join(t.dir, 'runner.mjs'), RUNNER);
    for (const f of ['pipeline.ts', 'helper.ts', 'enums.ts']) {
      fs.copyFileSync(path.join(FIXTURES, f), path.join(src, f));
    }
    cli = viaCli(path.join(src, 'pipeline.ts'));
    assert.deepEqual(Object.keys(cli).sort(), ['all', 'data', 'expr', 'generic', 'made', 'method', 'short']);
  });
  after(() => t.cleanup());

  it('the CLI and the library under tsx give the same DRefs', () => {
    assert.deepEqual(viaLibrary(t.dir, path.join(src, 'pipeline.ts'), ['--import', 'tsx']), cli);
  });

  it('tsc-compiled JavaScript gives the same DRefs, with or without its source maps', () => {
    tsc(t.dir, path.join(t.dir, 'js'), ['src/pipeline.ts', 'src/helper.ts']);
    assert.deepEqual(viaLibrary(t.dir, path.join(t.dir, 'js', 'pipeline.js'), []), cli);
    tsc(t.dir, path.join(t.dir, 'mapped'), ['src/pipeline.ts', 'src/helper.ts'], ['--sourceMap']);
    assert.deepEqual(viaLibrary(t.dir, path.join(t.dir, 'mapped', 'pipeline.js'), ['--enable-source-maps']), cli);
  });

  it("type-stripped JavaScript gives the same DRefs (and Node's own stripping, where this Node has it)", () => {
    const stripped = path.join(t.dir, 'stripped');
    fs.mkdirSync(stripped);
    for (const f of ['pipeline', 'helper']) {
      const text = stripTypes(fs.readFileSync(path.join(src, `${f}.ts`), 'utf8')).replace(
        "'./helper.ts'",
        "'./helper.js'",
      );
      fs.writeFileSync(path.join(stripped, `${f}.js`), text);
    }
    assert.deepEqual(viaLibrary(t.dir, path.join(stripped, 'pipeline.js'), []), cli);
    if (nodeStrips()) {
      const args = ['--experimental-strip-types', '--no-warnings'];
      assert.deepEqual(viaLibrary(t.dir, path.join(src, 'pipeline.ts'), args), cli);
    }
  });

  it('a file with an enum gives the same DRef through the CLI, tsx and tsc', () => {
    const enums = viaCli(path.join(src, 'enums.ts'));
    assert.deepEqual(viaLibrary(t.dir, path.join(src, 'enums.ts'), ['--import', 'tsx']), enums);
    tsc(t.dir, path.join(t.dir, 'ejs'), ['src/enums.ts']);
    assert.deepEqual(viaLibrary(t.dir, path.join(t.dir, 'ejs', 'enums.js'), []), enums);
  });

  /** A copy of pipeline.ts (beside helper.ts) edited by `edit`, instantiated through the CLI and tsx. */
  function variant(name: string, edit: (text: string) => string): { cli: Drefs; tsx: Drefs } {
    const original = fs.readFileSync(path.join(src, 'pipeline.ts'), 'utf8');
    const text = edit(original);
    assert.notEqual(text, original, `${name}: the edit applies`);
    const file = path.join(src, `${name}.ts`);
    fs.writeFileSync(file, text);
    return { cli: viaCli(file), tsx: viaLibrary(t.dir, file, ['--import', 'tsx']) };
  }

  it('a comment or reformatting inside build, and a CRLF copy, keep every DRef', () => {
    const commented = variant('commented', (s) =>
      s
        .replace('const rows: Array<number> = [];', 'const rows: Array<number> = []; /* rows\n   to come */ // more')
        .replace("ctx.log('big')", "// why big?\n      ctx.log( 'big' ) ;")
        .replace('const v = identity', '// the value\n    const   v=identity'),
    );
    assert.deepEqual(commented.cli, cli);
    assert.deepEqual(commented.tsx, cli);
    const crlf = variant('crlf', (s) => s.replace(/\n/g, '\r\n'));
    assert.deepEqual(crlf.cli, cli);
    assert.deepEqual(crlf.tsx, cli);
  });

  it('a real code change gives a new DRef to that stage and its dependants only', () => {
    const changes: [string, (s: string) => string, string][] = [
      ['constant', (s) => s.replace('i < n; i++', 'i < n + 1; i++'), 'data'],
      ['operator', (s) => s.replace('if (ctx.config.k > 1)', 'if (ctx.config.k >= 1)'), 'method'],
      ['identifier', (s) => s.replace('String(v) + s', 'String(v) + v'), 'expr'],
      ['string', (s) => s.replace('\'single\' + "double"', '\'single\' + "Double"'), 'expr'],
      ['template', (s) => s.replace('`n=${n} ', '`n = ${n} '), 'data'],
      ['statement', (s) => s.replace("ctx.log('big')", "ctx.log('big')\n      ctx.log('bigger')"), 'method'],
    ];
    const dependants: Record<string, string[]> = {
      data: ['data', 'method', 'expr', 'short', 'all'],
      method: ['method', 'expr', 'short', 'all'],
      expr: ['expr', 'short', 'all'],
    };
    for (const [name, edit, changed] of changes) {
      const v = variant(`change-${name}`, edit);
      assert.deepEqual(v.tsx, v.cli, `${name}: CLI and tsx agree`);
      for (const [stageName, dref] of Object.entries(cli)) {
        if (dependants[changed]!.includes(stageName)) {
          assert.notEqual(v.cli[stageName], dref, `${name}: ${stageName} changes`);
        } else {
          assert.equal(v.cli[stageName], dref, `${name}: ${stageName} stays`);
        }
      }
    }
  });
});

describe('code identity: in one process', () => {
  const dref = (build: (ctx: { log(m: string): void }) => void): string =>
    instantiate(stage({ name: 's', config: {}, build })).targets[0]!;

  it('functions written differently but with the same code share a DRef; different code does not', () => {
    // These are read from this file through tsx's source map, each at its own place.
    const a = dref((ctx) => {
      ctx.log('one');
    });
    const b = dref((ctx: { log(m: string): void }): void => {
      // a comment, other quotes, a type annotation, no semicolon
      ctx.log('one');
    });
    const c = dref(function (ctx) {
      ctx.log('one');
    });
    const d = dref((ctx) => {
      ctx.log('two');
    });
    assert.equal(b, a);
    assert.notEqual(c, a, 'an arrow function and a function differ in `this`');
    assert.notEqual(d, a);
  });
});

describe('code identity: the normalized form', () => {
  const same = (x: string, y: string): void => {
    const cx = canonicalFromText(x);
    assert.ok(cx !== undefined, x);
    assert.equal(cx, canonicalFromText(y), `${JSON.stringify(x)} and ${JSON.stringify(y)} are the same code`);
  };
  const differ = (x: string, y: string): void => {
    const cx = canonicalFromText(x);
    assert.ok(cx !== undefined && canonicalFromText(y) !== undefined, `${x} / ${y} read`);
    assert.notEqual(cx, canonicalFromText(y), `${JSON.stringify(x)} and ${JSON.stringify(y)} differ`);
  };

  it('ignores comments, whitespace, line endings, optional semicolons and commas, and the function header', () => {
    same('(ctx) => { /* c */ ctx.log(1) // d\n}', '(ctx)=>{ctx.log(1);}');
    same('(ctx) => {\r\n  a()\r\n  b()\r\n}', '(ctx) => { a(); b(); }');
    same('() => `a\r\nb`', '() => `a\nb`');
    same('() => [a, b,]', '() => [a, b]');
    same('() => f(a, b,)', '() => f(a, b)');
    same('x => x', '(x) => x');
    same("() => 'it\\'s' + '\\x41'", '() => "it\'s" + "A"');
    same('async x => x', 'async (x) => x');
    same('build(ctx) { x() }', 'function (ctx) { x() }');
    same('async build(ctx) { x() }', 'async function named(ctx) { x() }');
    same('*g() { yield 1 }', 'function* () { yield 1 }');
    same('() => { let i = 0\ni++ }', '() => { let i = 0; i++; }');
    same('() => { a\n++b }', '() => { a; ++b }');
    same('() => { for (;;) {} }', '() => { for (;;) {}; }');
    // A line break ends `return`, `break`, `continue` and `yield` (tsc then prints the `;`), and so does `}`.
    same('() => { if (x) return\n  y() }', '() => { if (x)\n    return;\n  y(); }');
    same('() => { return }', '() => { return; }');
    same('function* () { for (;;) { yield\n  break\n } }', 'function* () { for (;;) { yield; break; } }');
    same('() => { a\n++b }', '() => { a;\n++b; }');
    // What tsc prints for `(ctx.config as Cfg).n` and `return (\n x )`.
    same('() => (a.b).c', '() => a.b.c');
    same('() => { return (\n  a.b\n) }', '() => { return a.b }');
    same('() => typeof (x)', '() => typeof x');
    // The CLI's compiled copies call a function for import.meta.
    same('() => __cairn_import_meta().url', '() => import.meta.url');
  });

  it('keeps everything that changes what the code does', () => {
    differ('() => 1', '() => 2');
    differ('() => a + b', '() => a - b');
    differ('() => a', '() => b');
    differ("() => 'a'", "() => 'b'");
    differ('() => `${a}`', '() => `${a} `');
    differ('() => /a/g', '() => /a/i');
    differ('async build(ctx) { x() }', 'build(ctx) { x() }');
    differ('function () { x() }', '() => { x() }');
    differ('function* () { x() }', 'function () { x() }');
    // Semicolons and parentheses that matter.
    differ('() => { a;\n(b) }', '() => { a\n(b) }');
    differ('() => { return;\nx }', '() => { return x }');
    differ('() => { return\nx }', '() => { return x }');
    differ('() => { a\n++b }', '() => { a++\nb }');
    differ('() => { a;\n--b }', '() => { a--;\nb }');
    differ('() => { if (x); y() }', '() => { if (x) y() }');
    differ('() => { class A { get; x() {} } }', '() => { class A { get x() {} } }');
    differ('() => [a,,]', '() => [a,]');
    differ('() => (a + b) * c', '() => a + b * c');
    differ('() => new (f())()', '() => new f()()');
    differ('() => (a?.b).c', '() => a?.b.c');
    differ('(x) => x.__cairn_import_meta()', '(x) => x.import.meta');
  });

  it('reads TypeScript originals without their types, at the position V8 gives', () => {
    const ts =
      'const f = async <T,>(ctx: Ctx<T>, n?: number): Promise<void> => { (ctx as any).go(n!) };\n' +
      'const o = { build(ctx: Ctx): void { g<string>(ctx satisfies Ctx) } };\n';
    const arrow = ts.indexOf('async');
    assert.equal(canonicalAtOffset(ts, 'x.ts', arrow), canonicalFromText('async (ctx, n) => { ctx.go(n) }'));
    // A method: V8 points at the parameter list; a source map may point at the name.
    const params = ts.indexOf('(ctx: Ctx)');
    const expected = canonicalFromText('build(ctx) { g(ctx) }');
    assert.equal(canonicalAtOffset(ts, 'x.ts', params), expected);
    assert.equal(canonicalAtOffset(ts, 'x.ts', ts.indexOf('build')), expected);
    assert.equal(canonicalAtOffset(ts, 'x.ts', ts.indexOf('const o')), undefined, 'no function starts there');
  });

  it("gives undefined for what is not a function's source", () => {
    assert.equal(canonicalFromText('function () { [native code] }'), undefined);
    assert.equal(canonicalFromText('class A {}'), undefined);
  });
});
