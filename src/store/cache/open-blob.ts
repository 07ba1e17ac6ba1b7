import { fileURLToPath } from 'node:url';
import { CairnError } from '../../errors.js';
import type { BlobStore } from './blob.js';
import type { BlobStoreOptions } from './retry.js';

export type { BlobStoreOptions } from './retry.js';

/**
 * The BlobStore a cache URL names: `s3://BUCKET/PREFIX?endpoint=&region=`,
 * `file:///DIR`, or `http(s)://HOST/PATH` (read-only). Each backend is
 * imported only when its scheme is used, so the S3 SDK (a quarter of a
 * second to load) costs nothing to a run that does not use S3.
 */
export async function openBlobStore(url: string, opts: BlobStoreOptions = {}): Promise<BlobStore> {
  if (typeof url !== 'string') {
    throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${String(url)}: not a string`, { url });
  }
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  switch (scheme) {
    case 's3': {
      const { S3BlobStore } = await import('./s3-blob.js');
      return new S3BlobStore(url, opts);
    }
    case 'http':
    case 'https': {
      const { HttpBlobStore } = await import('./http-blob.js');
      return new HttpBlobStore(url, opts);
    }
    case 'file': {
      const { FileBlobStore } = await import('./file-blob.js');
      return new FileBlobStore(fileDir(url));
    }
    default:
      throw new CairnError(
        'E_BAD_CACHE_URL',
        `bad cache URL ${JSON.stringify(url)}: expected s3://, file:// or http(s)://`,
        { url },
      );
  }
}

/** `file:///DIR` (or `file://localhost/DIR`): an absolute local directory, no query or fragment. */
function fileDir(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${JSON.stringify(url)}: not a URL`, { url });
  }
  if ((u.host !== '' && u.host !== 'localhost') || u.search || u.hash || /[?#]/.test(url)) {
    throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${JSON.stringify(url)}: expected file:///ABSOLUTE/DIR`, {
      url,
    });
  }
  if (/\/\.\.?(\/|$)/.test(url.slice('file://'.length))) {
    throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${JSON.stringify(url)}: the path holds . or ..`, { url });
  }
  return fileURLToPath(u);
}
