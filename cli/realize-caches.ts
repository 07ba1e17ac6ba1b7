/**
 * The binary caches of `cairn realize`: which URLs it substitutes from
 * (`--substituter URL`, repeatable, replacing the store configuration's
 * `substituters`; `--no-substituters` for none) and where `--push-to URL`
 * sends what it made. `cacheSubstituter` and `cachePushTarget` are the one
 * place a URL becomes a Substituter or a PushTarget
 * (src/store/cache/cache-substituter.ts: the cache's Store, pullClosure and
 * pushClosure over `openBlobStore(url)`); the backend modules are imported
 * only when a cache is used.
 */
import { CairnError } from '../src/errors.js';
import { redactUrl } from '../src/redact-url.js';
import type { PushTarget, Substituter } from '../src/stages/substitute.js';
import { readStoreConfig } from '../src/store/config.js';

export interface RealizeCacheFlags {
  /** --substituter, in the order given. */
  substituter?: string[];
  /** false with --no-substituters. */
  substituters?: boolean;
  pushTo?: string;
  /** --trusted-key, in addition to the configuration's trusted keys. */
  trustedKey?: string[];
  /** --key: the secret key file that signs what --push-to uploads. */
  key?: string;
}

/** What opening a cache needs besides its URL. */
export interface CacheAccess {
  /** The local store's root, whose configuration holds the trusted keys. */
  storeRoot: string;
  trustedKeys: readonly string[];
  /** A secret key file, for pushing. */
  key?: string;
}

/** The substituter URLs of this realize: the flags', else the configuration's. */
export function substituterUrls(flags: RealizeCacheFlags, storeRoot: string): string[] {
  if (flags.substituters === false) return [];
  if (flags.substituter !== undefined && flags.substituter.length > 0) return [...new Set(flags.substituter)];
  return [...new Set(readStoreConfig(storeRoot).substituters)];
}

/** The kinds of cache URL issue 16 names: `file:///DIR`, `s3://BUCKET/PREFIX`, `http(s)://…` (read-only). */
function cacheKind(url: string): 'file' | 's3' | 'http' {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CairnError(
      'E_USAGE',
      `${redactUrl(url)} is not a URL: a binary cache is file:///DIR, s3://BUCKET/PREFIX or http(s)://…`,
      {
        url: redactUrl(url),
      },
    );
  }
  if (u.protocol === 'file:') return 'file';
  if (u.protocol === 's3:') return 's3';
  if (u.protocol === 'http:' || u.protocol === 'https:') return 'http';
  throw new CairnError(
    'E_USAGE',
    `${redactUrl(url)}: a binary cache is file:///DIR, s3://BUCKET/PREFIX or http(s)://…`,
    {
      url: redactUrl(url),
    },
  );
}

/**
 * The binary cache at `url` as a substituter; signatures are checked against
 * the trusted keys (the store configuration's and --trusted-key). The URL and
 * the keys are checked now; the cache is first asked when a stage misses.
 */
export async function cacheSubstituter(url: string, access: CacheAccess): Promise<Substituter> {
  cacheKind(url);
  const { parsePublicKey, readTrustedKey } = await import('../src/store/cache/sign.js');
  const trusted = [
    ...readStoreConfig(access.storeRoot).trustedPublicKeys.map(parsePublicKey),
    ...access.trustedKeys.map(readTrustedKey),
  ];
  const blob = await (await import('../src/store/cache/open-blob.js')).openBlobStore(url);
  const sub = await import('../src/store/cache/cache-substituter.js');
  // Warnings and progress name it: never with the URL's secrets.
  return sub.cacheSubstituter(redactUrl(url), blob, trusted);
}

/**
 * The access of a realize whose builders exchange through the cache: the
 * builders' results are fetched trusting --key's public half
 * (cacheDataPlane), so its substituters trust that key too. Without it, the
 * next realize refused the whole cache over the builders' own entries
 * (E_CACHE_UNTRUSTED) and built everything again.
 */
export async function trustingBuilderKey(access: CacheAccess): Promise<CacheAccess> {
  if (access.key === undefined) return access;
  const path = await import('node:path');
  const { readSecretKeyFile, publicKeyOf } = await import('../src/store/cache/sign.js');
  const publicKey = publicKeyOf(readSecretKeyFile(path.resolve(access.key)));
  return { ...access, trustedKeys: [...access.trustedKeys, publicKey] };
}

/** The binary cache at `url` as a push target, signing with --key; an http(s) cache is read-only. */
export async function cachePushTarget(url: string, access: CacheAccess): Promise<PushTarget> {
  if (cacheKind(url) === 'http') {
    throw new CairnError(
      'E_USAGE',
      `--push-to ${redactUrl(url)}: an http(s) cache is read-only; push to its s3:// or file:// URL`,
      {
        url: redactUrl(url),
      },
    );
  }
  if (access.key === undefined) {
    throw new CairnError('E_USAGE', `--push-to ${redactUrl(url)} needs --key FILE, the secret key that signs`, {
      url: redactUrl(url),
    });
  }
  const { readSecretKeyFile } = await import('../src/store/cache/sign.js');
  const key = readSecretKeyFile(access.key);
  const blob = await (await import('../src/store/cache/open-blob.js')).openBlobStore(url);
  const sub = await import('../src/store/cache/cache-substituter.js');
  return sub.cachePushTarget(redactUrl(url), blob, key);
}

/**
 * The data plane of Slurm builders: the first substituter (its URL goes to
 * the jobs as given, so a job opens the same cache with the credentials its
 * environment carries), signed with --key; this side fetches the jobs'
 * results trusting that key's public half besides the configured keys.
 */
export async function cacheDataPlane(
  urls: readonly string[],
  access: CacheAccess,
): Promise<import('../src/stages/builders/slurm.js').CacheDataPlane> {
  const url = urls[0];
  if (url === undefined || access.key === undefined) {
    throw new CairnError(
      'E_USAGE',
      'a slurm builder exchanges inputs and results through a binary cache: give --substituter URL and --key FILE',
    );
  }
  const path = await import('node:path');
  const { readSecretKeyFile, publicKeyOf } = await import('../src/store/cache/sign.js');
  const keyFile = path.resolve(access.key);
  const publicKey = publicKeyOf(readSecretKeyFile(keyFile));
  const push = await cachePushTarget(url, access);
  const fetch = await cacheSubstituter(url, { ...access, trustedKeys: [...access.trustedKeys, publicKey] });
  return { url, keyFile, publicKey, push, fetch };
}
