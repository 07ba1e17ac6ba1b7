/**
 * The Store conformance harness for CacheStore over a file:// cache: a
 * fresh cache directory, key pair and local-copies directory per test; gc
 * is cache gc keeping nothing but temporary roots. Child processes open the
 * same cache with the same keys and local copies (so they share its locks).
 * File modes are not offered: a cache stores only the exec bit.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CacheStore } from '../src/store/cache/cache-store.js';
import { FileBlobStore } from '../src/store/cache/file-blob.js';
import { cacheGc } from '../src/store/cache/gc.js';
import { generateKeyPair, parsePublicKey, parseSecretKey } from '../src/store/cache/sign.js';
import type { ChildStore, StoreHarness, StoreUnderTest } from './store-conformance.js';

function openIn(dir: string): Promise<CacheStore> {
  return CacheStore.open({
    blob: new FileBlobStore(path.join(dir, 'cache')),
    trustedKeys: [parsePublicKey(fs.readFileSync(path.join(dir, 'key.public'), 'utf8'))],
    signingKey: parseSecretKey(fs.readFileSync(path.join(dir, 'key.secret'), 'utf8')),
    localDir: path.join(dir, 'local'),
  });
}

export async function openForChild(dir: string): Promise<ChildStore> {
  const store = await openIn(dir);
  return { store, stage: async () => store.local.makeTempDir('conformance-stage') };
}

export const cacheHarness: StoreHarness = {
  async create(): Promise<StoreUnderTest> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-conformance-cache-'));
    const pair = generateKeyPair('conformance');
    fs.writeFileSync(path.join(dir, 'key.secret'), pair.secret, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'key.public'), pair.public);
    const store = await openIn(dir);
    return {
      store,
      open: () => openIn(dir),
      stage: async () => store.local.makeTempDir('conformance-stage'),
      child: { module: fileURLToPath(import.meta.url), arg: dir },
      gc: async () => (await cacheGc(store.blob, { keepLast: 0 })).deleted,
      dispose: async () => {
        store.close();
        spawnSync('chmod', ['-R', 'u+w', dir]);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
