/**
 * Error codes of library misuse (issue 15, item 6). E_USAGE means "the cairn
 * command line is wrong" and nothing else: the library never raises it, and
 * its messages name no CLI flags (the CLI adds those when it prints).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { LocalStore, stage, realize, latest, addOutLink, ErrorCodes } from '../src/index.js';
import { fetchurl } from '../src/stages/builtins/fetch.js';
import { step, Machine } from '../src/stages/machine.js';
import { parseDuration } from '../src/duration.js';
import { splitCommand } from '../src/store/sync-plan.js';
import { prepareIncoming } from '../src/store/sync.js';
import { importClosure } from '../src/store/export.js';
import { machineBase } from '../src/stages/bases/registry.js';
import { cloneModeFromEnv } from '../src/backends/qemu/qemu-machine.js';
import { loadCatalog } from '../src/stages/catalog.js';
import { findAction } from '../src/stages/catalog-run.js';
import { tempDir, isCode, cairn, expectError, ok, repoRoot } from './helpers.js';

const noop = (): void => undefined;

describe('library misuse has its own codes', () => {
  it('E_BAD_STAGE_SPEC: a stage option of the wrong type or out of range', () => {
    assert.throws(() => stage({ name: 's', config: {}, build: noop, n: 0 }), isCode('E_BAD_STAGE_SPEC'));
    assert.throws(() => fetchurl({ hash: 'a'.repeat(64) }), isCode('E_BAD_STAGE_SPEC'));
  });

  it('E_BAD_ARGUMENT: another library function called with an argument it does not take', () => {
    assert.throws(() => latest(0), isCode('E_BAD_ARGUMENT'));
    assert.throws(() => parseDuration('soon'), isCode('E_BAD_ARGUMENT'));
    assert.throws(() => step({ name: 'x', run: 'not a function' as never }), isCode('E_BAD_ARGUMENT'));
    const base = stage({ name: 'base', config: {}, build: noop });
    assert.throws(() => Machine.of(base).apply({} as never, {}), isCode('E_BAD_ARGUMENT'));
  });

  it('E_BAD_ENV: a CAIRN_* variable with a value it does not take', () => {
    const saved = process.env.CAIRN_DISK_CLONE;
    process.env.CAIRN_DISK_CLONE = 'bogus';
    try {
      assert.throws(() => cloneModeFromEnv(), isCode('E_BAD_ENV'));
    } finally {
      if (saved === undefined) delete process.env.CAIRN_DISK_CLONE;
      else process.env.CAIRN_DISK_CLONE = saved;
    }
  });

  it('E_BAD_COMMAND, E_BAD_SYNC_KEY, E_UNKNOWN_BASE', () => {
    assert.throws(() => splitCommand(''), isCode('E_BAD_COMMAND'));
    assert.throws(() => splitCommand('ssh "x'), isCode('E_BAD_COMMAND'));
    assert.throws(() => machineBase('no-such-base'), isCode('E_UNKNOWN_BASE'));
    const t = tempDir('cairn-codes');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      assert.throws(() => prepareIncoming(store, '../../etc'), isCode('E_BAD_SYNC_KEY'));
      assert.ok(!fs.existsSync(path.join(store.root, 'incoming')), 'refused before any staging directory is made');
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('E_NO_SUCH_FILE: importing an archive that does not exist', async () => {
    const t = tempDir('cairn-codes');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      await assert.rejects(importClosure(store, path.join(t.dir, 'nope.tar')), isCode('E_NO_SUCH_FILE'));
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('E_NO_SUCH_ACTION: a catalog action neither declared nor exported', async () => {
    const cat = loadCatalog(path.join(repoRoot, 'test', 'fixtures', 'catalog', 'devices.yml'));
    await assert.rejects(findAction(cat, 'bogus'), isCode('E_NO_SUCH_ACTION'));
  });

  it('E_REF_IN_USE: removing what others were built from; E_OUT_LINK_NOT_SYMLINK: out-link over a file', async () => {
    const t = tempDir('cairn-codes');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const a = stage({ name: 'a', config: {}, build: ({ out }) => fs.writeFileSync(path.join(out, 'a'), 'a') });
      const b = stage({ name: 'b', config: { a }, build: ({ out }) => fs.writeFileSync(path.join(out, 'b'), 'b') });
      const r = await realize(b, { store });
      const aPlan = r.plan.find((p) => p.name === 'a')!;
      const bRref = r.targets[0]!.rrefs[0]!;
      assert.throws(
        () => store.remove(aPlan.rrefs[0]!),
        (e: unknown) => {
          isCode('E_REF_IN_USE')(e);
          const msg = (e as Error).message;
          assert.match(msg, new RegExp(bRref));
          assert.doesNotMatch(msg, /--force/, 'the library names no CLI flag');
          return true;
        },
      );
      assert.throws(() => store.removeDrv(aPlan.dref), isCode('E_REF_IN_USE'));
      assert.ok(store.has(aPlan.rrefs[0]!), 'refused: still there');

      const file = path.join(t.dir, 'precious');
      fs.writeFileSync(file, 'keep');
      assert.throws(
        () => addOutLink(store, file, bRref),
        (e: unknown) => {
          isCode('E_OUT_LINK_NOT_SYMLINK')(e);
          assert.doesNotMatch((e as Error).message, /--out-link/);
          return true;
        },
      );
      assert.equal(fs.readFileSync(file, 'utf8'), 'keep');
    } finally {
      store.close();
      t.cleanup();
    }
  });

  it('E_UNSUPPORTED_RUNTIME: a Node that cannot require() ES modules, file inputs, no preload', () => {
    // Node >= 20.19 can; --no-experimental-require-module gives the older behaviour.
    const t = tempDir('cairn-codes');
    try {
      fs.writeFileSync(path.join(t.dir, 'f.txt'), 'x');
      const index = path.join(repoRoot, 'dist', 'src', 'index.js');
      const script = [
        `import { stage, instantiate } from ${JSON.stringify(index)};`,
        `const s = stage({ name: 'a', config: {}, files: ['f.txt'], dir: ${JSON.stringify(t.dir)}, build: () => {} });`,
        'try { instantiate(s); console.log("no error"); } catch (e) { console.log(e.code); }',
      ].join('\n');
      const r = spawnSync(process.execPath, ['--no-experimental-require-module', '--input-type=module', '-e', script], {
        encoding: 'utf8',
      });
      assert.equal(r.stdout.trim(), 'E_UNSUPPORTED_RUNTIME', r.stderr);
    } finally {
      t.cleanup();
    }
  });
});

describe('the CLI keeps E_USAGE for wrong command lines, and adds flag hints', () => {
  it('a flag value parsed by a library function is still E_USAGE (exit 2), naming the flag', () => {
    const t = tempDir('cairn-codes');
    try {
      const r = cairn(path.join(t.dir, 'store'), ['store', 'gc', '--older-than', 'soon']);
      expectError(r, 'E_USAGE');
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--older-than: "soon" is not a duration/);
    } finally {
      t.cleanup();
    }
  });

  it('library errors exit 1, with the flag that helps added by the CLI', () => {
    const t = tempDir('cairn-codes');
    try {
      const store = path.join(t.dir, 'store');
      const file = path.join(t.dir, 'precious');
      fs.writeFileSync(file, 'keep');
      const chain = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');
      ok(cairn(store, ['realize', chain, '-q']));
      const r = cairn(store, ['realize', chain, '-q', '--out-link', file]);
      expectError(r, 'E_OUT_LINK_NOT_SYMLINK', store);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /\(give --out-link a path that is free or a symlink\)/);
    } finally {
      t.cleanup();
    }
  });
});

/** Every .ts file under src/. */
function sources(): string[] {
  const root = path.join(repoRoot, 'src');
  return (fs.readdirSync(root, { recursive: true }) as string[])
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(root, f));
}

/**
 * The text of the string and template literals passed to `new CairnError(…)`
 * or to a helper that returns one (`bad(…)`, `invalid(…)`, `r.fail(…)`), and
 * of those in a `?:` or a `+` anywhere (messages are put together that way
 * before they are thrown), with `${}` for substitutions, and where each is.
 * Literals in argument arrays of other programs (rsync, docker, tar) are in
 * neither place.
 */
function errorMessages(file: string): { where: string; text: string }[] {
  const sf = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const helpers = new Set<string>();
  const returnsError = (t: ts.TypeNode | undefined): boolean =>
    t !== undefined && /^(CairnError|never)$/.test(t.getText(sf));
  const findHelpers = (n: ts.Node): void => {
    if ((ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n)) && n.name && returnsError(n.type)) {
      helpers.add(n.name.getText(sf));
    }
    if (
      ts.isVariableDeclaration(n) &&
      n.initializer &&
      ts.isArrowFunction(n.initializer) &&
      returnsError(n.initializer.type)
    ) {
      helpers.add(n.name.getText(sf));
    }
    ts.forEachChild(n, findHelpers);
  };
  findHelpers(sf);
  const out: { where: string; text: string }[] = [];
  const at = (n: ts.Node): string =>
    `${path.relative(repoRoot, file)}:${sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1}`;
  const literals = (n: ts.Node): void => {
    if (ts.isStringLiteral(n) || ts.isNoSubstitutionTemplateLiteral(n)) {
      out.push({ where: at(n), text: n.text });
    } else if (ts.isTemplateExpression(n)) {
      out.push({ where: at(n), text: n.head.text + n.templateSpans.map((s) => '${}' + s.literal.text).join('') });
      n.templateSpans.forEach((s) => literals(s.expression));
    } else if (!ts.isArrayLiteralExpression(n)) {
      // an array of words is argv, not a message
      ts.forEachChild(n, literals);
    }
  };
  const visit = (n: ts.Node): void => {
    const callee = ts.isNewExpression(n) || ts.isCallExpression(n) ? n.expression : undefined;
    const name =
      callee && (ts.isIdentifier(callee) ? callee.text : ts.isPropertyAccessExpression(callee) ? callee.name.text : '');
    if (name && ((ts.isNewExpression(n) && name === 'CairnError') || (ts.isCallExpression(n) && helpers.has(name)))) {
      (n.arguments ?? []).forEach(literals);
    } else if (ts.isConditionalExpression(n)) {
      [n.whenTrue, n.whenFalse].forEach(literals);
    } else if (ts.isBinaryExpression(n) && n.operatorToken.kind === ts.SyntaxKind.PlusToken) {
      [n.left, n.right].forEach(literals);
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

describe('the library raises no usage errors and names no CLI flags', () => {
  it('no module under src/ throws E_USAGE (only errors.ts defines it)', () => {
    const hits = sources()
      .filter((f) => path.basename(f) !== 'errors.ts')
      .flatMap((f) =>
        fs
          .readFileSync(f, 'utf8')
          .split('\n')
          .map((l, i) => ({ f, i, l })),
      )
      .filter(({ l }) => l.includes('E_USAGE'))
      .map(({ f, i }) => `${path.relative(repoRoot, f)}:${i + 1}`);
    assert.deepEqual(hits, []);
    assert.match(ErrorCodes.E_USAGE, /command line/);
  });

  it('no library error message names a --flag (a whole `cairn …` command to run is fine)', () => {
    // The word parsers of machine steps (fromCli) speak the steps' own
    // --name=VALUE syntax, which is theirs, not a cairn flag.
    const offenders = sources()
      .flatMap(errorMessages)
      .filter(({ where }) => !where.startsWith('src/stages/machine-steps.ts:'))
      .map(({ where, text }) => ({
        where,
        text: text.replace(/`cairn [^`]*`/g, '').replace(/\bcairn --store \S+ .*$/s, ''),
      }))
      .filter(({ text }) => /(^|[^\w-])--[a-z]/.test(text))
      .map(({ where, text }) => `${where}: ${text}`);
    assert.deepEqual(offenders, []);
  });

  it('the message scan sees the messages it is meant to see', () => {
    // Guards the scan above against finding nothing: known messages are found.
    const msgs = sources()
      .flatMap(errorMessages)
      .map((m) => m.text);
    assert.ok(msgs.some((m) => m.includes('exists and is not a symlink; refusing to replace it')));
    assert.ok(
      msgs.some((m) => m.includes('no such service') || m.includes('excluded service')),
      'through invalid()',
    );
    assert.ok(
      msgs.some((m) => m.includes('always_changed: true is not supported')),
      'through r.fail()',
    );
    assert.ok(
      msgs.some((m) => m.includes('the remote cairn command (${}) was not found')),
      'through ?:',
    );
    assert.ok(
      msgs.some((m) => m.includes('a read-only store file; write results')),
      'through +',
    );
    assert.ok(msgs.length > 300, String(msgs.length));
  });
});
