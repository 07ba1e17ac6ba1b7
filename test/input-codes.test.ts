/**
 * Bad input that used to end in "internal error" (exit 70) gets a stable
 * code: a YAML alias bomb in a catalog is E_BAD_CATALOG, quickly and in
 * bounded memory; `{constructor}`, `{__proto__}`, `{toString}` and
 * `{hasOwnProperty}` in service interpolation are E_SERVICE_INVALID naming
 * the key (never the text of Object.prototype's members). Both through the
 * CLI where there is a CLI path. (Deep configs: test/config-encoding.test.ts.)
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { validateEnsemble } from '../src/services/graph.js';
import { interpolate, interpolateEnv } from '../src/services/interpolate.js';
import { FileContext } from '../src/services/context.js';
import { loadCatalog } from '../src/stages/catalog.js';
import { cairn, expectError, isCode, isolateModuleCache, tempDir } from './helpers.js';

isolateModuleCache(after, 'cairn-input-codes-cache');

let work: { dir: string; cleanup: () => void };
before(() => {
  work = tempDir('cairn-input-codes');
});
after(() => work.cleanup());

/** Nine levels of nine aliases each: 9^9 (387 million) strings if expanded. */
function aliasBomb(): string {
  const lines = ['name: bomb', 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  for (let i = 1; i <= 8; i++)
    lines.push(
      `a${i}: &a${i} [${Array(9)
        .fill(`*a${i - 1}`)
        .join(',')}]`,
    );
  lines.push('history:', '  - version: "1"', '    url: http://127.0.0.1:9/x.img');
  lines.push(`    hash: ${'0'.repeat(64)}`, '    junk: *a8', '');
  return lines.join('\n');
}

describe('a YAML alias bomb in a catalog', () => {
  it('is E_BAD_CATALOG from loadCatalog', () => {
    const file = path.join(work.dir, 'bomb.yml');
    fs.writeFileSync(file, aliasBomb());
    assert.throws(
      () => loadCatalog(file),
      (e: unknown) => isCode('E_BAD_CATALOG')(e) && /alias/.test((e as Error).message),
    );
  });

  it('is E_BAD_CATALOG from catalog list and fetch, within a 64 MiB heap (not exit 70)', () => {
    const file = path.join(work.dir, 'bomb-cli.yml');
    fs.writeFileSync(file, aliasBomb());
    // Expanding the bomb would need gigabytes: with a small heap, an
    // expansion would crash the process instead of answering with a code.
    const env = { NODE_OPTIONS: '--max-old-space-size=64' };
    for (const args of [
      ['catalog', 'list', file],
      ['catalog', 'fetch', file],
    ]) {
      const r = cairn(path.join(work.dir, 'store'), args, { env });
      expectError(r, 'E_BAD_CATALOG');
      assert.notEqual(r.code, 70);
      assert.match(r.stderr, /alias/);
    }
  });
});

const PROTO_KEYS = ['constructor', '__proto__', 'toString', 'hasOwnProperty'];

describe('Object.prototype names in service interpolation', () => {
  it('interpolate refuses them with E_SERVICE_INVALID naming the key, even against an empty context', () => {
    for (const key of PROTO_KEYS) {
      assert.throws(
        () => interpolate(`x={${key}}`, {}, 'service w: env X'),
        (e: unknown) => {
          isCode('E_SERVICE_INVALID')(e);
          assert.match((e as Error).message, new RegExp(`service w: env X uses \\{${key}\\}`));
          return true;
        },
        key,
      );
    }
    // Ordinary keys still interpolate, and a missing one is still E_SERVICE_FAILED.
    assert.equal(interpolate('{a}-{{b}}', { a: '1' }), '1-{b}');
    assert.throws(() => interpolate('{nope}', {}), isCode('E_SERVICE_FAILED'));
  });

  it("only the context's own values count (inherited ones do not; a null-prototype context works)", () => {
    const inherited = Object.create({ user_id: 'inherited' }) as Record<string, string>;
    assert.throws(() => interpolate('{user_id}', inherited), isCode('E_SERVICE_FAILED'));
    assert.deepEqual(
      interpolateEnv({ B: '{a}' }, Object.assign(Object.create(null) as Record<string, string>, { a: '1' }), 's'),
      { B: '1' },
    );
  });

  it('validateEnsemble refuses an env template that uses one, before anything starts', () => {
    for (const key of PROTO_KEYS) {
      const e = { name: 'e', services: [{ name: 'w', image: 'debian:x', env: { X: `{${key}}` } }] };
      assert.throws(
        () => validateEnsemble(e),
        (err: unknown) => isCode('E_SERVICE_INVALID')(err) && (err as Error).message.includes(`{${key}}`),
        key,
      );
    }
  });

  it('context.set refuses them as keys, so the context file never holds one', () => {
    const file = path.join(work.dir, 'ctx.json');
    const ctx = new FileContext(file);
    for (const key of PROTO_KEYS) assert.throws(() => ctx.set(key, 'v'), isCode('E_SERVICE_INVALID'), key);
    assert.equal(fs.existsSync(file), false);
  });

  it('cairn services start on such an ensemble exits with E_SERVICE_INVALID naming the key (not 70)', () => {
    for (const key of PROTO_KEYS) {
      const file = path.join(work.dir, `ens-${key}.ts`);
      fs.writeFileSync(
        file,
        [
          "import { ensemble } from 'cairn';",
          'export default ensemble({',
          "  name: 'cairntest-proto',",
          `  services: [{ name: 'w', image: 'debian:x', env: { X: 'id={${key}}' } }],`,
          '});',
          '',
        ].join('\n'),
      );
      const args = ['services', 'start', '--state-dir', path.join(work.dir, 'state'), file];
      const r = cairn(path.join(work.dir, 'store'), args);
      expectError(r, 'E_SERVICE_INVALID');
      assert.notEqual(r.code, 70);
      assert.ok(r.stderr.includes(`{${key}}`), r.stderr);
    }
  });
});
