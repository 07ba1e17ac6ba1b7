/**
 * The file:// BlobStore, keys and the store configuration: atomic puts,
 * batched has, list and delete, and no symlink planted in the cache
 * directory is ever followed.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { openBlobStore } from '../src/store/cache/open-blob.js';
import {
  checkSignatures,
  generateKeyPair,
  parsePublicKey,
  parseSecretKey,
  publicKeyOf,
  readTrustedKey,
  sign,
  writeKeyPair,
} from '../src/store/cache/sign.js';
import { parseStoreConfig, readStoreConfig } from '../src/store/config.js';
import { isCode, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let dir: string;
let blob: FileBlobStore;
beforeEach(() => {
  t = tempDir('cairn-cache-blob');
  dir = path.join(t.dir, 'cache');
  blob = new FileBlobStore(dir);
});
afterEach(() => t.cleanup());

const all = async (prefix: string): Promise<string[]> => {
  const out: string[] = [];
  for await (const k of blob.list(prefix)) out.push(k);
  return out.sort();
};

describe('FileBlobStore', () => {
  test('put, get, getStream, has, list, delete', async () => {
    await blob.put('r/x/1.json', Buffer.from('one'));
    await blob.put('a/big.tar.gz', Readable.from([Buffer.alloc(3 << 20, 7), Buffer.from('end')]));
    assert.equal((await blob.get('r/x/1.json'))?.toString(), 'one');
    assert.equal(await blob.get('r/x/2.json'), undefined);
    const chunks: Buffer[] = [];
    for await (const c of (await blob.getStream('a/big.tar.gz'))!) chunks.push(c as Buffer);
    assert.equal(Buffer.concat(chunks).length, (3 << 20) + 3);
    assert.equal(await blob.getStream('a/none'), undefined);
    const keys = Array.from({ length: 100 }, (_, i) => `r/x/${i}.json`);
    assert.deepEqual([...(await blob.has(keys))], ['r/x/1.json']);
    assert.deepEqual(await all(''), ['a/big.tar.gz', 'r/x/1.json']);
    assert.deepEqual(await all('r/'), ['r/x/1.json']);
    assert.deepEqual(await all('r/y/'), []);
    await blob.delete(['r/x/1.json', 'r/x/missing.json']);
    assert.deepEqual(await all('r/'), []);
    // Replacing an object is whole, and leaves no temporary file behind.
    await blob.put('a/big.tar.gz', Buffer.from('small'));
    assert.equal((await blob.get('a/big.tar.gz'))?.toString(), 'small');
    assert.deepEqual(fs.readdirSync(path.join(dir, '.tmp')), []);
    assert.equal(blob.identity, `file://${fs.realpathSync(dir)}`);
  });

  test('a failed stream leaves neither the object nor a temporary file', async () => {
    const failing = new Readable({
      read() {
        this.push(Buffer.from('part'));
        this.destroy(new Error('network gone'));
      },
    });
    await assert.rejects(blob.put('a/x.tar.gz', failing), isCode('E_CACHE_UNAVAILABLE'));
    assert.equal(await blob.get('a/x.tar.gz'), undefined);
    assert.deepEqual(fs.readdirSync(path.join(dir, '.tmp')), []);
  });

  test('keys are plain relative paths', async () => {
    for (const bad of ['../x', '/etc/passwd', 'a/../b', 'a//b', '.tmp/x', 'a/./b', '', 'a/b/']) {
      await assert.rejects(blob.put(bad, Buffer.from('x')), isCode('E_BAD_ARGUMENT'), bad);
      await assert.rejects(blob.get(bad), isCode('E_BAD_ARGUMENT'), bad);
    }
  });

  test('symlinks planted in the cache are never followed', async () => {
    const outside = path.join(t.dir, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'secret.json'), 'secret');
    fs.mkdirSync(dir, { recursive: true });
    // A directory link: writes through it are refused, reads see nothing.
    fs.symlinkSync(outside, path.join(dir, 'r'));
    await assert.rejects(blob.put('r/secret.json', Buffer.from('x')), isCode('E_CACHE_UNAVAILABLE'));
    assert.equal(fs.readFileSync(path.join(outside, 'secret.json'), 'utf8'), 'secret');
    assert.deepEqual(await all('r/'), []);
    // A file link: get, getStream and has do not see it.
    fs.mkdirSync(path.join(dir, 'a'));
    fs.symlinkSync(path.join(outside, 'secret.json'), path.join(dir, 'a', 'x.tar.gz'));
    assert.equal(await blob.get('a/x.tar.gz'), undefined);
    assert.equal(await blob.getStream('a/x.tar.gz'), undefined);
    assert.equal((await blob.has(['a/x.tar.gz'])).size, 0);
    assert.deepEqual(await all(''), []);
    // Deleting removes the link, never its target, and never deletes through a directory link.
    await blob.delete(['a/x.tar.gz']);
    assert.ok(fs.existsSync(path.join(outside, 'secret.json')));
    await blob.delete(['r/secret.json']);
    assert.ok(fs.existsSync(path.join(outside, 'secret.json')));
    assert.equal(await blob.get('r/secret.json'), undefined);
    assert.equal((await blob.has(['r/secret.json'])).size, 0);
  });

  test('URLs: file:// opens a directory; a relative one is E_BAD_CACHE_URL', async () => {
    assert.equal((await openBlobStore(`file://${dir}`)).url, `file://${dir}`);
    await assert.rejects(openBlobStore('/just/a/path'), isCode('E_BAD_CACHE_URL'));
    assert.throws(() => new FileBlobStore('relative/dir'), isCode('E_BAD_CACHE_URL'));
  });
});

describe('keys and configuration', () => {
  test('key files: NAME:BASE64, secret 0600, never overwritten; a trusted key as text or file', () => {
    const prefix = path.join(t.dir, 'team-1');
    const r = writeKeyPair(prefix, 'team-1');
    assert.equal(fs.statSync(r.secretFile).mode & 0o777, 0o600);
    const secret = parseSecretKey(fs.readFileSync(r.secretFile, 'utf8'));
    assert.equal(publicKeyOf(secret), r.publicKey);
    assert.equal(readTrustedKey(r.publicFile).text, r.publicKey);
    assert.equal(readTrustedKey(r.publicKey).text, r.publicKey);
    assert.throws(() => writeKeyPair(prefix, 'team-1'), isCode('E_BAD_KEY'));
    fs.rmSync(r.secretFile);
    fs.symlinkSync('/nonexistent', r.secretFile);
    assert.throws(() => writeKeyPair(prefix, 'team-1'), isCode('E_BAD_KEY'));
    for (const bad of ['team-1', 'team-1:', ':AAAA', 'bad name:' + 'A'.repeat(44), `x:${'A'.repeat(40)}`]) {
      assert.throws(() => parsePublicKey(bad), isCode('E_BAD_KEY'), bad);
    }
    assert.throws(() => generateKeyPair('../evil'), isCode('E_BAD_KEY'));
  });

  test('signatures: ok, unsigned, untrusted, bad-signature', () => {
    const a = generateKeyPair('team-1');
    const forger = generateKeyPair('team-1');
    const trusted = [parsePublicKey(a.public)];
    const s = sign(parseSecretKey(a.secret), 'message');
    assert.equal(checkSignatures('message', [s], trusted), 'ok');
    assert.equal(checkSignatures('message', [], trusted), 'unsigned');
    assert.equal(checkSignatures('message', [s], [parsePublicKey(generateKeyPair('other').public)]), 'untrusted');
    assert.equal(checkSignatures('messagE', [s], trusted), 'bad-signature');
    assert.equal(
      checkSignatures('message', [sign(parseSecretKey(forger.secret), 'message')], trusted),
      'bad-signature',
    );
    // One good signature among others is enough.
    assert.equal(checkSignatures('message', ['garbage', 'x:AAAA', s], trusted), 'ok');
  });

  test('config.json: optional; unknown keys and wrong types are E_STORE_CONFIG', () => {
    assert.deepEqual(readStoreConfig(t.dir), { trustedPublicKeys: [], substituters: [], builders: [] });
    const c = parseStoreConfig('{"trusted-public-keys": ["k:x"], "substituters": ["file:///c"]}', 'c.json');
    assert.deepEqual(c, { trustedPublicKeys: ['k:x'], substituters: ['file:///c'], builders: [] });
    const ssh = parseStoreConfig('{"builders-ssh": "ssh -F /etc/x", "remote-cairn": "/opt/cairn"}', 'c.json');
    assert.equal(ssh.buildersSsh, 'ssh -F /etc/x');
    assert.equal(ssh.remoteCairn, '/opt/cairn');
    for (const bad of [
      '{"builders-ssh": ["ssh"]}',
      '{"remote-cairn": ""}',
      '{"__proto__": []}',
      '{"toString": []}',
      '[]',
      'nope',
      '{"trusted-keys": []}',
      '{"substituters": "file:///c"}',
      '{"substituters": [1]}',
    ]) {
      assert.throws(() => parseStoreConfig(bad, 'c.json'), isCode('E_STORE_CONFIG'), bad);
    }
    fs.symlinkSync('/etc/hostname', path.join(t.dir, 'config.json'));
    assert.throws(() => readStoreConfig(t.dir), isCode('E_STORE_CONFIG'));
  });
});
