/**
 * The binary caches of `cairn realize`: which URLs it substitutes from
 * (`--substituter URL`, repeatable, replacing the store configuration's
 * `substituters`; `--no-substituters` for none) and where `--push-to URL`
 * sends what it made. `cacheSubstituter` and `cachePushTarget` are the one
 * place a URL becomes a Substituter or a PushTarget: the cache backend
 * (src/store/cache/) is connected there.
 */
import { CairnError } from '../src/errors.js';
import { redactUrl } from '../src/redact-url.js';
import type { PushTarget, Substituter } from '../src/stages/substitute.js';
import { LazyStore } from '../src/store/cache/lazy-store.js';
import type { PublicKey } from '../src/store/cache/sign.js';
import { configuredSubstituters } from '../src/store/substituter-config.js';

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
  return [...new Set(configuredSubstituters(storeRoot))];
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

/** The binary cache at `url` as a substituter; signatures are checked against the trusted keys. */
export function cacheSubstituter(url: string, access: CacheAccess): Substituter {
  cacheKind(url);
  const sub = openCacheSubstituter(url, access);
  // Warnings and progress name it: never with the URL's secrets.
  return { name: redactUrl(url), store: sub.store, fetch: (into, rrefs) => sub.fetch(into, rrefs) };
}

/** The binary cache at `url` as a push target; an http(s) cache is read-only. */
export function cachePushTarget(url: string, access: CacheAccess): PushTarget {
  if (cacheKind(url) === 'http') {
    throw new CairnError(
      'E_USAGE',
      `--push-to ${redactUrl(url)}: an http(s) cache is read-only; push to its s3:// or file:// URL`,
      {
        url: redactUrl(url),
      },
    );
  }
  const target = openCachePushTarget(url, access);
  return { name: redactUrl(url), push: (from, rrefs) => target.push(from, rrefs) };
}

/** The trusted keys of a realize: the store configuration's and --trusted-key's (key text or .public file). */
async function trustedKeysOf(access: CacheAccess): Promise<PublicKey[]> {
  const { readStoreConfig } = await import('../src/store/config.js');
  const { parsePublicKey, readTrustedKey } = await import('../src/store/cache/sign.js');
  return [
    ...readStoreConfig(access.storeRoot).trustedPublicKeys.map(parsePublicKey),
    ...access.trustedKeys.map(readTrustedKey),
  ];
}

/**
 * A cache as a substituter: its candidates come from a CacheStore (opened on
 * first use, so an unreachable cache is a warning, not a failure of the
 * set-up), and fetches go through pullClosure: signatures, hashes and the
 * closure checked, all or nothing.
 */
function openCacheSubstituter(url: string, access: CacheAccess): Substituter {
  const opened = (async () => {
    const { openBlobStore } = await import('../src/store/cache/open-blob.js');
    const { CacheStore } = await import('../src/store/cache/cache-store.js');
    const blob = await openBlobStore(url);
    const trustedKeys = await trustedKeysOf(access);
    // An entry that does not count is skipped, and said so once: a poisoned or foreign entry is visible.
    const onRefused = (rref: string, e: CairnError): void => {
      process.stderr.write(`cairn: warning: ${redactUrl(url)}: not using ${rref}: ${e.code}: ${e.message}\n`);
    };
    return { blob, trustedKeys, store: await CacheStore.open({ blob, trustedKeys, onRefused }) };
  })();
  opened.catch(() => undefined);
  return {
    name: url,
    store: new LazyStore(url, async () => (await opened).store),
    fetch: async (into, rrefs) => {
      const { pullClosure } = await import('../src/store/cache/pull.js');
      const { blob, trustedKeys } = await opened;
      await pullClosure(blob, into, rrefs, { trustedKeys });
    },
  };
}

/** A cache as a push target: pushClosure, signed with --key. */
function openCachePushTarget(url: string, access: CacheAccess): PushTarget {
  if (access.key === undefined) {
    throw new CairnError('E_USAGE', `--push-to ${redactUrl(url)} needs --key SECRET_KEY_FILE to sign what it uploads`, {
      url: redactUrl(url),
    });
  }
  const keyFile = access.key;
  return {
    name: url,
    push: async (from, rrefs) => {
      const { openBlobStore } = await import('../src/store/cache/open-blob.js');
      const { readSecretKeyFile } = await import('../src/store/cache/sign.js');
      const { pushClosure } = await import('../src/store/cache/push.js');
      await pushClosure(from, await openBlobStore(url), rrefs, { key: readSecretKeyFile(keyFile) });
    },
  };
}
