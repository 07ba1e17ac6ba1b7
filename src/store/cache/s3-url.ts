import { CairnError } from '../../errors.js';

/** Where an `s3://` cache lives, parsed and checked. */
export interface S3Location {
  bucket: string;
  /** '' or a key prefix ending in '/'. */
  prefix: string;
  /** Origin of a custom endpoint (path-style addressing), or undefined for AWS itself. */
  endpoint: string | undefined;
  region: string;
  /** The URL again, canonical and without credentials: for messages. */
  url: string;
  /** Endpoint + bucket + prefix: the key of any local memo about this cache. */
  identity: string;
}

const BUCKET = /^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/;
const PREFIX_SEGMENT = /^[A-Za-z0-9_~+=@,:-][A-Za-z0-9._~+=@,:-]*$/;
const REGION = /^[a-z0-9-]{1,64}$/;
const PARAMS = new Set(['endpoint', 'region']);

function bad(url: string, why: string): never {
  throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${JSON.stringify(url)}: ${why}`, { url });
}

/**
 * Parses `s3://BUCKET/PREFIX?endpoint=URL&region=R`. Anything it cannot
 * read one way only is refused rather than guessed: credentials in the URL
 * (they would end up in logs and memo keys), unknown or repeated
 * parameters (a typo of `endpoint` would silently send the cache to AWS),
 * `.`/`..`/empty prefix segments, an endpoint with a path, query or
 * credentials. The region defaults to AWS_REGION, AWS_DEFAULT_REGION, then
 * us-east-1.
 */
export function parseS3Url(url: string, env: NodeJS.ProcessEnv = process.env): S3Location {
  if (typeof url !== 'string' || !url.startsWith('s3://')) bad(String(url), 'expected s3://BUCKET[/PREFIX]');
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    bad(url, 'not a URL');
  }
  if (u.username || u.password) bad(url, 'credentials do not belong in the URL (use AWS_* variables or a profile)');
  if (u.port) bad(url, 'a bucket has no port (put host and port in ?endpoint=)');
  if (u.hash) bad(url, 'a fragment has no meaning here');
  const bucket = u.hostname;
  if (!BUCKET.test(bucket) || bucket.includes('..')) bad(url, `${JSON.stringify(bucket)} is not a bucket name`);

  // The path is read from the raw URL: URL would already have resolved `..`.
  const rawPath = url.slice(5 + bucket.length).replace(/[?#].*$/s, '');
  const segs = rawPath.split('/').slice(1);
  if (segs.length > 0 && segs[segs.length - 1] === '') segs.pop();
  for (const s of segs) {
    let d: string;
    try {
      d = decodeURIComponent(s);
    } catch {
      bad(url, 'bad percent-encoding in the prefix');
    }
    if (d !== s || !PREFIX_SEGMENT.test(s) || s === '.' || s === '..') {
      bad(url, `prefix segment ${JSON.stringify(s)} is empty, . or .., or holds characters a key may not`);
    }
  }
  const prefix = segs.length ? segs.join('/') + '/' : '';

  const seen = new Set<string>();
  for (const k of u.searchParams.keys()) {
    if (!PARAMS.has(k)) bad(url, `unknown parameter ${JSON.stringify(k)} (known: endpoint, region)`);
    if (seen.has(k)) bad(url, `parameter ${k} given twice`);
    seen.add(k);
  }
  let endpoint: string | undefined;
  const ep = u.searchParams.get('endpoint');
  if (ep !== null) {
    let e: URL;
    try {
      e = new URL(ep);
    } catch {
      bad(url, `endpoint ${JSON.stringify(ep)} is not a URL`);
    }
    if (e.protocol !== 'http:' && e.protocol !== 'https:') bad(url, 'the endpoint must be http:// or https://');
    if (e.username || e.password) bad(url, 'credentials do not belong in the endpoint');
    if ((e.pathname !== '/' && e.pathname !== '') || e.search || e.hash) {
      bad(url, 'the endpoint is a scheme, host and port only');
    }
    endpoint = e.origin;
  }
  const region = u.searchParams.get('region') ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1';
  if (!REGION.test(region)) bad(url, `${JSON.stringify(region)} is not a region name`);

  const query = [endpoint ? `endpoint=${endpoint}` : '', `region=${region}`].filter(Boolean);
  const where = endpoint ?? `https://s3.${region}.amazonaws.com`;
  return {
    bucket,
    prefix,
    endpoint,
    region,
    url: `s3://${bucket}/${prefix}?${query.join('&')}`,
    identity: `s3 ${where} ${bucket}/${prefix}`,
  };
}
