/**
 * Builders that exchange through a binary cache sign what they push with
 * --key, and the coordinator fetches their results trusting that key's
 * public half. The same entries are then substitutes for the next realize
 * with those builders, rather than a reason to refuse the whole cache
 * (E_CACHE_UNTRUSTED, before the fix: every stage built again). A realize
 * without builders keeps the configured trust only. Real Slurm and Swift.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cairnAsync, cairnBin, isolateModuleCache, ok, tempDir } from './helpers.js';
import { buildersCache } from './fixtures/builders/builders-cache.js';
import { ensureSlurm } from './fixtures/slurm.js';
import { writeFanout } from './fixtures/builders/fanout.js';

isolateModuleCache(after, 'cairn-builders-trust-cache');

let t: { dir: string; cleanup: () => void };
let url: string;
let key: string;
let env: NodeJS.ProcessEnv;

before(async () => {
  t = tempDir('cairn-builders-trust');
  env = { SLURM_CONF: ensureSlurm(), TMPDIR: t.dir };
  ({ url, key } = await buildersCache(t.dir, 'cairn-trust'));
});
after(() => t?.cleanup());

interface Result {
  builds: number;
  plan: { name: string; action: string }[];
  warnings?: string[];
}

async function realize(store: string, file: string, extra: string[]): Promise<Result> {
  const r = ok(
    await cairnAsync(
      path.join(t.dir, store),
      ['realize', file, '--json', '--substituter', url, ...extra, '--remote-cairn', `${process.execPath} ${cairnBin}`],
      { env },
    ),
  );
  return JSON.parse(r.stdout) as Result;
}

describe('builders through a cache trust their own key', () => {
  it('a second coordinator substitutes what the builders pushed; one without builders still refuses', async () => {
    const file = writeFanout(t.dir, { salt: `trust-${Date.now()}`, parts: 2, sleepMs: 0 });
    const slurm = ['--builders', 'slurm:cairn', '--key', key];
    const first = await realize('first', file, slurm);
    assert.equal(first.builds, 3);

    const second = await realize('second', file, slurm);
    assert.equal(second.warnings, undefined, 'the builders key is trusted: no warning');
    assert.equal(second.builds, 0, 'nothing is built again');
    assert.deepEqual(
      second.plan.map((p) => p.action),
      ['substituted', 'substituted', 'substituted'],
    );

    // No builders: the store's trusted keys only, as documented (docs/cache.md, "Strict listings").
    const plain = await realize('plain', file, []);
    assert.match(plain.warnings?.join('\n') ?? '', /E_CACHE_UNTRUSTED/);
    assert.equal(plain.builds, 3);
  });
});
