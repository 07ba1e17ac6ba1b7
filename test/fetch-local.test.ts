/**
 * fetchlocal and the declared-hash rules: files with sha256/sha512 (hex,
 * prefixed, SRI), directories with tree-sha256 (hashPath), mismatches that
 * store nothing, and a hash of the wrong kind for what is on disk.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fetchlocal, fetchurl, hashPath, parseHash, realize, LocalStore, type Stage } from '../src/index.js';
import { isCode, sha256, drefOf, one, storePerTest } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';

let dir: string;
let store: LocalStore;
storePerTest('cairn-fetch-local', (t) => ({ dir, store } = t));

const nothingStored = (s: Stage): void => {
  const dref = drefOf(s);
  assert.deepEqual(storeIndex(store).realizationsOf(dref), [], 'no realization may be indexed');
  let dirs: string[] = [];
  try {
    dirs = fs.readdirSync(path.join(store.root, 'd', dref, 'r'));
  } catch {
    /* none */
  }
  assert.deepEqual(dirs, [], 'no realization directory may exist');
  let tmp: string[] = [];
  try {
    tmp = fs.readdirSync(path.join(store.root, 'tmp'));
  } catch {
    /* none */
  }
  assert.deepEqual(tmp, [], 'STORE/tmp must be empty');
};

/** A small tree: files, an executable, a relative symlink, an empty directory. */
function makeTree(root: string): void {
  fs.mkdirSync(path.join(root, 'sub', 'deeper'), { recursive: true });
  fs.mkdirSync(path.join(root, 'empty'));
  fs.writeFileSync(path.join(root, 'a.txt'), 'alpha\n');
  fs.writeFileSync(path.join(root, 'sub', 'b.bin'), randomBytes(2048));
  fs.writeFileSync(path.join(root, 'sub', 'deeper', 'c.txt'), 'gamma\n');
  fs.writeFileSync(path.join(root, 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  fs.symlinkSync('a.txt', path.join(root, 'link-to-a'));
}

describe('hashPath and parseHash', () => {
  it("hashPath gives the sha256/sha512 of a file's bytes", async () => {
    const f = path.join(dir, 'f.bin');
    const body = randomBytes(3 * 1024 * 1024 + 17);
    fs.writeFileSync(f, body);
    assert.deepEqual(await hashPath(f, 'sha256'), { type: 'sha256', hex: sha256(body) });
    assert.deepEqual(await hashPath(f, 'sha512'), {
      type: 'sha512',
      hex: createHash('sha512').update(body).digest('hex'),
    });
  });

  it('tree-sha256 depends on content, names, the executable bit and links, not on where the tree is', async () => {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'elsewhere', 'b');
    makeTree(a);
    fs.mkdirSync(path.dirname(b));
    fs.cpSync(a, b, { recursive: true, verbatimSymlinks: true });
    const ha = await hashPath(a, 'tree-sha256');
    assert.equal(ha.type, 'tree-sha256');
    assert.match(ha.hex, /^[0-9a-f]{64}$/);
    assert.deepEqual(await hashPath(b, 'tree-sha256'), ha);
    fs.writeFileSync(path.join(b, 'a.txt'), 'ALPHA\n');
    const changed = await hashPath(b, 'tree-sha256');
    assert.notEqual(changed.hex, ha.hex);
    fs.writeFileSync(path.join(b, 'a.txt'), 'alpha\n');
    assert.equal((await hashPath(b, 'tree-sha256')).hex, ha.hex);
    fs.chmodSync(path.join(b, 'run.sh'), 0o644);
    assert.notEqual((await hashPath(b, 'tree-sha256')).hex, ha.hex);
  });

  it('parseHash normalises hex, prefixed and SRI forms', () => {
    const h = sha256('p');
    const b64 = Buffer.from(h, 'hex').toString('base64');
    for (const v of [h, h.toUpperCase(), `sha256:${h}`, `sha256-${b64}`])
      assert.deepEqual(parseHash(v), { type: 'sha256', hex: h });
    const h512 = createHash('sha512').update('p').digest('hex');
    assert.deepEqual(parseHash(h512), { type: 'sha512', hex: h512 });
    assert.deepEqual(parseHash(`sha512-${Buffer.from(h512, 'hex').toString('base64')}`), { type: 'sha512', hex: h512 });
    assert.deepEqual(parseHash(`tree-sha256:${h}`), { type: 'tree-sha256', hex: h });
    assert.deepEqual(parseHash(h, 'tree-sha256'), { type: 'tree-sha256', hex: h });
  });

  it('parseHash refuses malformed hashes with E_BAD_HASH', () => {
    const h = sha256('p');
    for (const [v, t] of [
      ['', undefined],
      [h.slice(1), undefined],
      [`${h}a`, undefined],
      ['x'.repeat(64), undefined],
      [`md5:${h.slice(0, 32)}`, undefined],
      [h, 'md5'],
      [h, 'sha512'],
      [undefined, undefined],
      [42, undefined],
      [`sha256-${Buffer.alloc(31).toString('base64')}`, undefined],
    ] as [unknown, unknown][]) {
      assert.throws(() => parseHash(v, t), isCode('E_BAD_HASH'), `parseHash(${JSON.stringify(v)}, ${String(t)})`);
    }
  });
});

describe('fetchlocal: a file', () => {
  it('copies the file into out/<basename>, checked against its sha256', async () => {
    const src = path.join(dir, 'input.dat');
    const body = randomBytes(10_000);
    fs.writeFileSync(src, body);
    const s = fetchlocal({ path: src, hash: sha256(body) });
    assert.equal(s.name, 'input.dat');
    assert.deepEqual(s.outputs, ['input.dat']);
    const r = await realize(s, { store });
    const rref = one(r);
    assert.deepEqual(fs.readdirSync(store.outPath(rref)), ['input.dat']);
    assert.deepEqual(fs.readFileSync(path.join(store.outPath(rref), 'input.dat')), body);
    // Cached: even if the source changes afterwards, the same derivation is not rebuilt.
    fs.writeFileSync(src, 'changed');
    const again = await realize(fetchlocal({ path: src, hash: sha256(body) }), { store });
    assert.equal(again.builds, 0);
    assert.equal(one(again), rref);
  });

  it('accepts sha512 and SRI hashes, and `file`/`name`', async () => {
    const src = path.join(dir, 'x.txt');
    fs.writeFileSync(src, 'sri!\n');
    const sri = `sha512-${createHash('sha512').update('sri!\n').digest('base64')}`;
    const s = fetchlocal({ path: src, file: 'renamed.txt', name: 'local-x', hash: sri });
    assert.equal(s.name, 'local-x');
    const rref = one(await realize(s, { store }));
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'renamed.txt'), 'utf8'), 'sri!\n');
  });

  it('is fixed-output: the DRef depends on the name and hash, not on where the source lives', () => {
    const h = sha256('same');
    const a = drefOf(fetchlocal({ path: '/one/place/f.txt', hash: h }));
    assert.equal(drefOf(fetchlocal({ path: '/another/place/f.txt', hash: h })), a);
    assert.notEqual(drefOf(fetchlocal({ path: '/one/place/f.txt', hash: sha256('other') })), a);
    assert.notEqual(drefOf(fetchlocal({ path: '/one/place/g.txt', hash: h })), a);
  });

  it('a wrong hash is E_HASH_MISMATCH showing both hashes, and nothing is stored', async () => {
    const src = path.join(dir, 'w.txt');
    fs.writeFileSync(src, 'real content\n');
    const declared = sha256('claimed content\n');
    const s = fetchlocal({ path: src, hash: declared });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_HASH_MISMATCH')(e);
      const msg = (e as Error).message;
      assert.ok(msg.includes(declared), msg);
      assert.ok(msg.includes(sha256('real content\n')), msg);
      return true;
    });
    nothingStored(s);
  });

  it('a file declared with a tree hash is E_BAD_HASH, and nothing is stored', async () => {
    const src = path.join(dir, 'plain.txt');
    fs.writeFileSync(src, 'plain\n');
    const s = fetchlocal({ path: src, hash: `tree-sha256:${sha256('plain\n')}` });
    await assert.rejects(realize(s, { store }), isCode('E_BAD_HASH'));
    nothingStored(s);
  });

  it('refuses malformed hashes with E_BAD_HASH when the stage is created', () => {
    for (const hash of ['', 'abc', 'z'.repeat(64), `md5:${'0'.repeat(32)}`]) {
      assert.throws(() => fetchlocal({ path: '/x/y', hash }), isCode('E_BAD_HASH'), hash);
    }
  });
});

describe('fetchlocal: a directory', () => {
  it('copies the tree into out/<basename>, checked against its tree-sha256', async () => {
    const src = path.join(dir, 'tree');
    makeTree(src);
    const th = await hashPath(src, 'tree-sha256');
    const s = fetchlocal({ path: src, hash: `tree-sha256:${th.hex}` });
    assert.deepEqual(s.outputs, ['tree']);
    const rref = one(await realize(s, { store }));
    const got = path.join(store.outPath(rref), 'tree');
    assert.equal(fs.readFileSync(path.join(got, 'a.txt'), 'utf8'), 'alpha\n');
    assert.deepEqual(fs.readFileSync(path.join(got, 'sub', 'b.bin')), fs.readFileSync(path.join(src, 'sub', 'b.bin')));
    assert.equal(fs.readFileSync(path.join(got, 'sub', 'deeper', 'c.txt'), 'utf8'), 'gamma\n');
    assert.ok(fs.lstatSync(path.join(got, 'run.sh')).mode & 0o100, 'the executable bit is kept');
    assert.equal(fs.readlinkSync(path.join(got, 'link-to-a')), 'a.txt');
    assert.deepEqual(fs.readdirSync(path.join(got, 'empty')), []);
    // What is in the store has the declared tree hash.
    assert.equal((await hashPath(got, 'tree-sha256')).hex, th.hex);
  });

  it('copies a tree holding names that are not UTF-8, as `cairn hash` counts them (red team)', async () => {
    const src = path.join(dir, 'bytes');
    const name = Buffer.from([0x6e, 0xff, 0xfe]);
    const at = (...names: Buffer[]): Buffer =>
      Buffer.concat([Buffer.from(src), ...names.flatMap((n) => [Buffer.from('/'), n])]);
    fs.mkdirSync(at(name), { recursive: true });
    fs.writeFileSync(at(name, name), 'bytes\n');
    fs.symlinkSync(name, at(Buffer.from('link')));
    const th = await hashPath(src, 'tree-sha256');
    const rref = one(await realize(fetchlocal({ path: src, hash: `tree-sha256:${th.hex}` }), { store }));
    const got = path.join(store.outPath(rref), 'bytes');
    assert.equal((await hashPath(got, 'tree-sha256')).hex, th.hex);
    const copied = Buffer.concat([Buffer.from(`${got}/`), name, Buffer.from('/'), name]);
    assert.equal(fs.readFileSync(copied, 'utf8'), 'bytes\n');
  });

  it('accepts the tree hash as bare hex with hashType tree-sha256', async () => {
    const src = path.join(dir, 'tree2');
    makeTree(src);
    const th = await hashPath(src, 'tree-sha256');
    const a = fetchlocal({ path: src, hash: th.hex, hashType: 'tree-sha256' });
    assert.equal(drefOf(a), drefOf(fetchlocal({ path: src, hash: `tree-sha256:${th.hex}` })));
    const rref = one(await realize(a, { store }));
    assert.ok(fs.statSync(path.join(store.outPath(rref), 'tree2')).isDirectory());
  });

  it('a wrong tree hash is E_HASH_MISMATCH, and nothing is stored', async () => {
    const src = path.join(dir, 'tree3');
    makeTree(src);
    const th = await hashPath(src, 'tree-sha256');
    fs.writeFileSync(path.join(src, 'a.txt'), 'tampered\n');
    const s = fetchlocal({ path: src, hash: `tree-sha256:${th.hex}` });
    await assert.rejects(realize(s, { store }), (e: unknown) => {
      isCode('E_HASH_MISMATCH')(e);
      assert.ok((e as Error).message.includes(th.hex), (e as Error).message);
      return true;
    });
    nothingStored(s);
  });

  it('a directory declared with a file hash (sha256 or sha512) is E_BAD_HASH, and nothing is stored', async () => {
    const src = path.join(dir, 'tree4');
    makeTree(src);
    const s = fetchlocal({ path: src, hash: sha256('whatever') });
    await assert.rejects(realize(s, { store }), isCode('E_BAD_HASH'));
    nothingStored(s);
    const s512 = fetchlocal({ path: src, hash: createHash('sha512').update('w').digest('hex') });
    await assert.rejects(realize(s512, { store }), isCode('E_BAD_HASH'));
    nothingStored(s512);
  });

  it('fetchurl refuses a tree hash at creation', () => {
    assert.throws(
      () => fetchurl({ url: 'http://a.example/t', hash: `tree-sha256:${sha256('t')}` }),
      isCode('E_BAD_HASH'),
    );
  });
});
