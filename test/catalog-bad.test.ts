/**
 * Bad catalogs are refused with E_BAD_CATALOG and `FILE:LINE: reason`, the
 * line being that of the offending entry (checked exactly), before anything
 * is fetched; a device type no entry is for is refused too.
 */
import { describe, it, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cairn, expectError, isolateModuleCache, repoRoot, tempDir, type CliResult } from './helpers.js';

isolateModuleCache(after, 'cairn-catalog-bad-cache');

const fixtures = path.join(repoRoot, 'test', 'fixtures', 'catalog');
const fx = (name: string): string => path.join(fixtures, name);

let dir: string;
let cleanup: () => void;
let store: string;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('cairn-catalog-bad'));
  store = path.join(dir, 'store');
});
afterEach(() => cleanup());

/** The single error line: `cairn: error E_BAD_CATALOG: <file>:<line>: <reason>`. */
function badCatalog(r: CliResult, file: string, line: number, reason: RegExp): string {
  expectError(r, 'E_BAD_CATALOG');
  const errLine = r.stderr.split('\n').find((l) => l.startsWith('cairn: error E_BAD_CATALOG: '));
  assert.ok(errLine, r.stderr);
  const rest = errLine.slice('cairn: error E_BAD_CATALOG: '.length);
  const prefix = `${file}:${line}: `;
  assert.ok(rest.startsWith(prefix), `expected "${prefix}...", got "${rest}"`);
  assert.match(rest.slice(prefix.length), reason);
  return rest.slice(prefix.length);
}

/** The same refusal from list, fetch and run. */
function refusedEverywhere(name: string, line: number, reason: RegExp): void {
  const f = fx(name);
  badCatalog(cairn(store, ['catalog', 'list', f]), f, line, reason);
  badCatalog(cairn(store, ['catalog', 'fetch', f]), f, line, reason);
  badCatalog(cairn(store, ['catalog', 'run', f, 'anything']), f, line, reason);
  assert.equal(
    fs.existsSync(path.join(store, 'd')) && fs.readdirSync(path.join(store, 'd')).length > 0,
    false,
    'nothing may be stored',
  );
}

describe('bad catalogs', () => {
  it('an entry without a hash: its line, and the version', () => {
    refusedEverywhere('missing-hash.yml', 9, /^version 1\.1 has no `hash`/);
  });

  it('an unknown hash_type: its entry line, the type, and what is allowed', () => {
    const reason = badCatalog(
      cairn(store, ['catalog', 'list', fx('unknown-hash-type.yml')]),
      fx('unknown-hash-type.yml'),
      10,
      /unknown hash_type "md5"/,
    );
    assert.match(reason, /sha256/);
    assert.match(reason, /sha512/);
    refusedEverywhere('unknown-hash-type.yml', 10, /^version 2: unknown hash_type/);
  });

  it('a hash_type from defaults applies to the entry (a sha256 hash under sha512 defaults is refused)', () => {
    refusedEverywhere('defaults-hash-type.yml', 6, /^version 1: .*not a sha512 hash/);
  });

  it("two defaults: the second entry's line, naming the first one's line too", () => {
    const reason = badCatalog(
      cairn(store, ['catalog', 'list', fx('two-defaults.yml')]),
      fx('two-defaults.yml'),
      11,
      /__default__/,
    );
    assert.match(reason, /\bline 4\b/);
    refusedEverywhere('two-defaults.yml', 11, /two entries are marked __default__ \(also line 4\)/);
  });

  it("a duplicate version: the second occurrence's line, naming the first", () => {
    refusedEverywhere('duplicate-version.yml', 11, /^version 3\.0 is listed twice \(also on line 5\)/);
  });

  it('an entry without url or mirrors: its line', () => {
    refusedEverywhere('missing-url.yml', 8, /^version 1\.1 has no `url` \(or `mirrors`\)/);
  });

  it('text that is not valid YAML: the line of the syntax error', () => {
    refusedEverywhere('not-yaml.yml', 8, /^not valid YAML/);
  });

  it('the file is named as the user gave it (a relative path stays relative)', () => {
    const rel = path.relative(repoRoot, fx('duplicate-version.yml'));
    badCatalog(cairn(store, ['catalog', 'list', rel], { cwd: repoRoot }), rel, 11, /listed twice/);
  });

  it('more shapes: not a mapping, no name, empty history, unreadable file', () => {
    const write = (n: string, text: string): string => {
      const f = path.join(dir, n);
      fs.writeFileSync(f, text);
      return f;
    };
    const list = write('list.yml', '- a\n- b\n');
    badCatalog(cairn(store, ['catalog', 'list', list]), list, 1, /mapping/);
    const noName = write(
      'noname.yml',
      '# no name\n\nhistory:\n  - version: "1"\n    url: http://127.0.0.1:9/a\n    hash: ' + 'a'.repeat(64) + '\n',
    );
    badCatalog(cairn(store, ['catalog', 'list', noName]), noName, 3, /`name` is missing/);
    const empty = write('empty.yml', 'name: empty\ndefaults: {}\nhistory: []\n');
    badCatalog(cairn(store, ['catalog', 'list', empty]), empty, 3, /`history` must be a non-empty list/);
    const r = cairn(store, ['catalog', 'list', path.join(dir, 'nope.yml')]);
    expectError(r, 'E_BAD_CATALOG');
    assert.match(r.stderr, /nope\.yml: cannot read the catalog/);
  });
});

describe('selection errors', () => {
  it('a device type no entry is for: E_BAD_CATALOG naming the file, the type and the types there are', () => {
    const f = fx('devices.yml');
    for (const args of [
      ['catalog', 'fetch', f, '--device-type', 'beaglebone'],
      ['catalog', 'run', f, 'x', '--device-type', 'beaglebone'],
    ]) {
      const r = cairn(store, args);
      expectError(r, 'E_BAD_CATALOG', store);
      assert.ok(r.stderr.includes(`${f}:6: no entry is for device type beaglebone`), r.stderr);
      assert.match(r.stderr, /raspberry-pi, qemu\/x86_64/);
    }
  });

  it(
    'a device type no entry is for is reported as FILE:LINE: reason, ' +
      'like the other catalog errors (docs/catalogs.md)',
    () => {
      const f = fx('devices.yml');
      const r = cairn(store, ['catalog', 'fetch', f, '--device-type', 'beaglebone']);
      expectError(r, 'E_BAD_CATALOG', store);
      assert.match(
        r.stderr,
        new RegExp(
          `E_BAD_CATALOG: ${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+: no entry is for device type beaglebone`,
        ),
      );
    },
  );

  it('a device type that only shares a name prefix (raspberry) matches nothing', () => {
    const r = cairn(store, ['catalog', 'fetch', fx('devices.yml'), '--device-type', 'raspberry']);
    expectError(r, 'E_BAD_CATALOG', store);
    assert.match(r.stderr, /no entry is for device type raspberry\b/);
  });

  it('--version and --index together are a usage error', () => {
    const r = cairn(store, ['catalog', 'fetch', fx('devices.yml'), '--version', '1.0', '--index', '0']);
    expectError(r, 'E_USAGE', store);
    assert.equal(r.code, 2);
  });

  it('--index that is not a whole number is a usage error', () => {
    const r = cairn(store, ['catalog', 'fetch', fx('devices.yml'), '--index', '1.5']);
    expectError(r, 'E_USAGE', store);
  });
});
