/**
 * `cairn realize` with a file:// binary cache (issue 16, items 3 and 4):
 * teammate A builds and pushes with --push-to; teammate B realizes the same
 * pipeline with 0 builds through the cache; an untrusted or tampered cache
 * is one warning and a local build.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { archiveKey } from '../src/store/cache/format.js';
import { LocalStore } from '../src/store/store.js';
import { cairn, expectError, lastLine, ok, repoRoot, tempDir } from './helpers.js';

// These tests tamper with, delete and count archive objects, so every archive is an object here
// (CAIRN_CACHE_INLINE_MAX=0; the CLI processes inherit it). Archives inline in their entries: cache-inline.test.ts.
process.env.CAIRN_CACHE_INLINE_MAX = '0';

const chain = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');
let t: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;
const storeA = (): string => path.join(t.dir, 'a');
const storeB = (): string => path.join(t.dir, 'b');
const url = (): string => `file://${path.join(t.dir, 'cache')}`;

beforeEach(() => {
  t = tempDir('cairn-cache-realize');
  // The cache store's local copies go under XDG_CACHE_HOME: keep them in the test's directory.
  env = { XDG_CACHE_HOME: path.join(t.dir, 'xdg') };
  ok(cairn(storeA(), ['key', 'generate', path.join(t.dir, 'team-1')]));
});
afterEach(() => t.cleanup());

const key = (ext: 'secret' | 'public'): string => path.join(t.dir, `team-1.${ext}`);

function pushFromA(): string {
  const r = ok(cairn(storeA(), ['realize', chain, '--push-to', url(), '--key', key('secret')], { env }));
  assert.match(r.stderr, /3 built/);
  return lastLine(r.stdout);
}

describe('realize through a binary cache', () => {
  test("B realizes A's pipeline with 0 builds through the cache, with A's RRefs", () => {
    const rref = pushFromA();
    const r = ok(cairn(storeB(), ['realize', chain, '--substituter', url(), '--trusted-key', key('public')], { env }));
    assert.match(r.stderr, /0 built \(0 build run\(s\)\), 3 substituted/);
    assert.equal(lastLine(r.stdout), rref);
    const b = LocalStore.open(storeB());
    try {
      assert.ok(b.has(rref as never));
    } finally {
      b.close();
    }
    // Trust and substituters from B's config.json work the same.
    const c = path.join(t.dir, 'c');
    fs.mkdirSync(c);
    const pub = fs.readFileSync(key('public'), 'utf8').trim();
    fs.writeFileSync(
      path.join(c, 'config.json'),
      JSON.stringify({ 'trusted-public-keys': [pub], substituters: [url()] }),
    );
    assert.match(ok(cairn(c, ['realize', chain], { env })).stderr, /3 substituted/);
  });

  test('an untrusted cache: one warning, everything built locally', () => {
    pushFromA();
    const r = ok(cairn(storeB(), ['realize', chain, '--substituter', url()], { env }));
    assert.match(r.stderr, /3 built/);
    // One line: the realize refuses the cache whose listing holds an entry it may not use.
    assert.equal(r.stderr.match(/warning/g)?.length, 1, r.stderr);
    assert.match(r.stderr, /warning: .*E_CACHE_UNTRUSTED/);
  });

  test('a tampered cache: refused with a warning, built locally, nothing from the cache enters', () => {
    const rref = pushFromA();
    // The archive of the first stage replaced by a valid archive of another tree.
    const a = LocalStore.open(storeA());
    let trees: string[];
    try {
      const closure = a.closureSync([rref as never]);
      trees = ['-a', '-b'].map((end) => a.readMeta(closure.find((r) => r.endsWith(end))!).tree);
    } finally {
      a.close();
    }
    const archive = (tree: string): string => path.join(t.dir, 'cache', archiveKey(tree));
    fs.copyFileSync(archive(trees[1]!), archive(trees[0]!));
    const r = ok(cairn(storeB(), ['realize', chain, '--substituter', url(), '--trusted-key', key('public')], { env }));
    assert.match(r.stderr, /warning.*E_SYNC_HASH_MISMATCH/);
    assert.match(r.stderr, /3 built/);
  });

  test('--push-to without --key is refused before anything is built', () => {
    const r = cairn(storeA(), ['realize', chain, '--push-to', url()], { env });
    expectError(r, 'E_USAGE', storeA());
    assert.match(r.stderr, /--key/);
  });
});
