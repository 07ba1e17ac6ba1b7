import { CairnError } from '../../errors.js';

/** At most this many bytes: S3's own limit on a key, prefix included. */
const MAX_KEY_BYTES = 900;
/** Segments the cache format uses (hashes, DRefs, `.json`): nothing a shell, URL or file system reads twice. */
const SEGMENT = /^[A-Za-z0-9_~+=@,:-][A-Za-z0-9._~+=@,:-]*$/;

/**
 * Refuses a key that is not a plain relative path of safe segments. Every
 * backend maps keys onto something that would read `..`, an empty segment
 * or a `%2F` differently (a directory, a URL, an S3 prefix), so the one rule
 * is applied before any of them sees the key.
 */
export function checkBlobKey(key: string): string {
  if (typeof key !== 'string' || key === '' || Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new CairnError('E_BAD_ARGUMENT', `cache key ${JSON.stringify(key)} is empty or too long`, { key });
  }
  for (const seg of key.split('/')) {
    if (!SEGMENT.test(seg) || seg === '.' || seg === '..') {
      throw new CairnError('E_BAD_ARGUMENT', `cache key ${JSON.stringify(key)} is not a relative path of safe names`, {
        key,
      });
    }
  }
  return key;
}

/** Like checkBlobKey for a list prefix, which may also be empty or end in `/`. */
export function checkBlobPrefix(prefix: string): string {
  if (prefix === '') return prefix;
  checkBlobKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
  return prefix;
}

/** Runs `fn` on every item with at most `limit` running at once; the results keep the items' order. */
export async function mapBounded<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        failed = true; // the other workers stop taking new items
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
