import * as http from 'node:http';
import * as https from 'node:https';
import type { Readable } from 'node:stream';
import { CairnError } from '../../errors.js';
import type { BlobStore } from './blob.js';
import { checkBlobKey, mapBounded } from './blob-key.js';
import {
  guardedBody,
  isNetworkError,
  isTransientStatus,
  retryPolicy,
  withRetries,
  type BlobStoreOptions,
  type RetryPolicy,
  type Verdict,
} from './retry.js';

/** Redirects followed per request (a CDN or an S3 website endpoint may send one or two). */
const MAX_REDIRECTS = 5;

/** An answer that is neither the object nor "no such object". */
class HttpStatusError extends Error {
  constructor(
    readonly status: number,
    url: string,
  ) {
    super(`HTTP ${status} for ${url}`);
    this.name = 'HttpStatusError';
  }
}

function bad(url: string, why: string): never {
  throw new CairnError('E_BAD_CACHE_URL', `bad cache URL ${JSON.stringify(url)}: ${why}`, { url });
}

/**
 * A read-only BlobStore over plain HTTP(S): any static file server (nginx,
 * a CDN, an S3 website) in front of a cache directory. GET reads, HEAD
 * answers `has` (in parallel, `concurrency` at a time, on kept-alive
 * connections); 404 and 410 mean "no such object". Writes are refused with
 * E_CACHE_READ_ONLY; listing reads JSON directory listings (see `list`).
 * `user:password@` in the URL is sent as Basic authentication and
 * kept out of `url` and `identity`.
 */
export class HttpBlobStore implements BlobStore {
  readonly url: string;
  readonly identity: string;
  readonly writable = false;
  private readonly base: URL;
  private readonly auth: string | undefined;
  private readonly policy: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly agents: { http: http.Agent; https: https.Agent };

  constructor(url: string, opts: BlobStoreOptions = {}) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      bad(url, 'not a URL');
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') bad(url, 'expected http:// or https://');
    if (u.search || u.hash || /[?#]/.test(url)) bad(url, 'a cache URL has no query or fragment');
    if (u.pathname.split('/').some((s) => s === '..' || s === '.') || /\/\.\.?(\/|$)/.test(url)) {
      bad(url, 'the path holds . or ..');
    }
    this.auth = u.username || u.password ? `Basic ${basicAuth(u)}` : undefined;
    u.username = '';
    u.password = '';
    if (!u.pathname.endsWith('/')) u.pathname += '/';
    this.base = u;
    this.url = u.href;
    this.identity = `http ${u.href}`;
    this.policy = retryPolicy(opts);
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.concurrency = Math.max(1, opts.concurrency ?? 32);
    const agent = { keepAlive: true, maxSockets: this.concurrency };
    this.agents = { http: new http.Agent(agent), https: new https.Agent(agent) };
  }

  async get(key: string): Promise<Buffer | undefined> {
    const target = this.target(key);
    // The body is read inside the attempt, so a connection that breaks
    // mid-body is retried like one that never answered.
    return this.retry('get', key, async () => {
      const res = await this.request('GET', target);
      if (res === undefined) return undefined;
      const parts: Buffer[] = [];
      for await (const c of res) parts.push(c as Buffer);
      return Buffer.concat(parts);
    });
  }

  async getStream(key: string): Promise<Readable | undefined> {
    const target = this.target(key);
    const res = await this.retry('get', key, () => this.request('GET', target));
    if (res === undefined) return undefined;
    return guardedBody(res, this.url, key);
  }

  async has(keys: readonly string[]): Promise<Set<string>> {
    const unique = [...new Set(keys)];
    const targets = unique.map((k) => this.target(k));
    const abort = new AbortController();
    const start = Date.now();
    try {
      const found = await mapBounded(targets, this.concurrency, (t, i) =>
        this.retry(
          'has',
          unique[i],
          async () => {
            const res = await this.request('HEAD', t);
            res?.resume();
            return res !== undefined;
          },
          { signal: abort.signal, start },
        ),
      );
      return new Set(unique.filter((_, i) => found[i]));
    } finally {
      abort.abort();
    }
  }

  async put(key: string): Promise<void> {
    throw this.readOnly('put', key);
  }

  async delete(keys: readonly string[]): Promise<void> {
    throw this.readOnly('delete', keys[0]);
  }

  /**
   * Keys under `prefix`, from the server's JSON directory listings (nginx
   * `autoindex on; autoindex_format json;`, as scripts/nginx.sh serves a
   * file:// cache): realize must list a DRef's realizations to find any.
   * A server that does not list directories that way gives E_CACHE_NO_LIST.
   * Names starting with `.` (a file:// cache's temporary files) are not keys.
   */
  list(prefix: string): AsyncIterable<string> {
    return { [Symbol.asyncIterator]: () => this.walk(prefix)[Symbol.asyncIterator]() };
  }

  private async *walk(prefix: string): AsyncGenerator<string> {
    const keys: string[] = [];
    const dirs = [prefix.slice(0, prefix.lastIndexOf('/') + 1)];
    while (dirs.length > 0) {
      const dir = dirs.pop()!;
      for (const e of await this.listing(dir)) {
        const key = dir + e.name;
        if (e.name.startsWith('.') || e.name.includes('/')) continue;
        if (e.type === 'directory' && (`${key}/`.startsWith(prefix) || prefix.startsWith(`${key}/`))) {
          dirs.push(`${key}/`);
        } else if (e.type === 'file' && key.startsWith(prefix)) keys.push(key);
      }
    }
    yield* keys.sort();
  }

  /** One directory's entries; none when it is missing. */
  private async listing(dir: string): Promise<{ name: string; type: string }[]> {
    const target = new URL(dir.split('/').map(encodeURIComponent).join('/'), this.base);
    const noList = (why: string): CairnError =>
      new CairnError(
        'E_CACHE_NO_LIST',
        `cache ${this.url}: cannot list keys (${JSON.stringify(dir)}): ${why}; ` +
          'serve JSON directory listings (nginx: autoindex_format json) or use the s3:// or file:// URL',
        { url: this.url, prefix: dir },
      );
    const body = await this.retry('list', dir, async () => {
      let res: http.IncomingMessage | undefined;
      try {
        res = await this.request('GET', target);
      } catch (e) {
        // A server that does not list directories answers 403 (nginx with autoindex off).
        if (e instanceof HttpStatusError && e.status === 403) throw noList('the server refuses directory listings');
        throw e;
      }
      if (res === undefined) return undefined;
      const parts: Buffer[] = [];
      for await (const c of res) parts.push(c as Buffer);
      return Buffer.concat(parts);
    });
    if (body === undefined) return [];
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      throw noList('the directory listing is not JSON');
    }
    const ok = (e: unknown): e is { name: string; type: string } =>
      typeof e === 'object' &&
      e !== null &&
      typeof (e as { name?: unknown }).name === 'string' &&
      typeof (e as { type?: unknown }).type === 'string';
    if (!Array.isArray(json) || !json.every(ok)) throw noList('the directory listing is not a list of entries');
    return json;
  }

  private readOnly(op: string, key: string | undefined): CairnError {
    return new CairnError('E_CACHE_READ_ONLY', `cache ${this.url} is read-only (http): cannot ${op}`, {
      url: this.url,
      op,
      key,
    });
  }

  private target(key: string): URL {
    const path = checkBlobKey(key).split('/').map(encodeURIComponent).join('/');
    return new URL(path, this.base);
  }

  private retry<T>(
    op: string,
    key: string | undefined,
    attempt: () => Promise<T>,
    shared?: { signal: AbortSignal; start: number },
  ): Promise<T> {
    const what = { url: this.url, op, ...(key === undefined ? {} : { key }) };
    return withRetries(what, this.policy, classifyHttp, attempt, shared ?? {});
  }

  /** One request, following redirects: the response (2xx), undefined (404/410), or a thrown error. */
  private async request(method: 'GET' | 'HEAD', target: URL): Promise<http.IncomingMessage | undefined> {
    let url = target;
    for (let hop = 0; ; hop++) {
      const res = await this.once(method, url);
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) return res;
      res.resume();
      if (status === 404 || status === 410) return undefined;
      const location = res.headers.location;
      if ([301, 302, 303, 307, 308].includes(status) && location && hop < MAX_REDIRECTS) {
        const next = new URL(location, url);
        // Never from https down to http, and credentials never to another origin.
        if (next.protocol === 'https:' || (next.protocol === 'http:' && url.protocol === 'http:')) {
          url = next;
          continue;
        }
      }
      throw new HttpStatusError(status, url.href);
    }
  }

  private once(method: string, url: URL): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const lib = url.protocol === 'https:' ? https : http;
      const headers: Record<string, string> = {};
      if (this.auth && url.origin === this.base.origin) headers.authorization = this.auth;
      const req = lib.request(url, {
        method,
        headers,
        agent: url.protocol === 'https:' ? this.agents.https : this.agents.http,
      });
      // Nothing sent or received for timeoutMs, before or after the headers.
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' }));
      });
      req.on('response', resolve);
      req.on('error', reject);
      req.end();
    });
  }
}

function basicAuth(u: URL): string {
  return Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64');
}

export function classifyHttp(e: unknown): Verdict {
  if (e instanceof HttpStatusError) return isTransientStatus(e.status) ? 'transient' : 'fatal';
  if (isNetworkError(e)) return 'transient';
  return e instanceof TypeError || e instanceof RangeError ? 'fatal' : 'transient';
}
