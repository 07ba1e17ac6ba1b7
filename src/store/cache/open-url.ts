/**
 * A cache URL to its BlobStore. Only `file:///DIR` is handled here; the
 * S3 and HTTP backends come with `openBlobStore` (open-blob.ts), which
 * replaces this dispatch when both land.
 */
import { fileURLToPath } from 'node:url';
import { CairnError } from '../../errors.js';
import type { BlobStore } from './blob.js';
import { FileBlobStore } from './file-blob.js';

export function openCacheUrl(url: string): BlobStore {
  if (url.startsWith('file://')) {
    let dir: string;
    try {
      dir = fileURLToPath(url);
    } catch (e) {
      throw new CairnError('E_CACHE_BAD_URL', `${url} is not a file:/// URL: ${(e as Error).message}`, { url });
    }
    return new FileBlobStore(dir);
  }
  if (/^(s3|https?):\/\//.test(url)) {
    throw new CairnError('E_CACHE_BAD_URL', `${url}: this build of cairn reads only file:// caches`, { url });
  }
  throw new CairnError(
    'E_CACHE_BAD_URL',
    `${JSON.stringify(url)} is not a cache URL (file:///DIR, s3://BUCKET/PREFIX, https://…)`,
    {
      url,
    },
  );
}
