import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import type { BlobStore } from './blob.js';
import { checkBlobKey, checkBlobPrefix, mapBounded } from './blob-key.js';
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
import { resolveS3Credentials, type S3Credentials } from './s3-credentials.js';
import { parseS3Url, type S3Location } from './s3-url.js';

type Sdk = typeof import('@aws-sdk/client-s3');

/** Multipart parts: S3 wants >= 5 MiB and <= 10,000 of them; this many bytes are held per part in flight. */
const MIN_PART = 16 * 1024 * 1024;
const MAX_PARTS = 9_000;
/** Parts in flight at once: memory is this times the part size. */
const PART_CONCURRENCY = 4;
/** A download asks for byte ranges of this size, PART_CONCURRENCY at once after the first. */
const RANGE = 32 * 1024 * 1024;
const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
/** S3's limit on keys per DeleteObjects request. */
const DELETE_BATCH = 1000;
/** Error codes S3 services give for "try again later". */
const TRANSIENT_NAMES = new Set([
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'RequestTimeout',
  'RequestTimeoutException',
  'ThrottlingException',
  'Throttling',
  'TooManyRequestsException',
]);

export interface S3BlobStoreOptions extends BlobStoreOptions {
  /** Credentials to use instead of the AWS environment variables and profile (tests). */
  credentials?: S3Credentials;
}

/**
 * A BlobStore in an S3 bucket under a prefix (AWS S3 or any S3-compatible
 * service: Swift's s3api, Ceph RGW, MinIO, R2). The SDK is imported on first
 * use, so a `cairn` that never touches an s3:// cache never loads it.
 *
 * Every request is one attempt of our own retry loop (the SDK's retries are
 * off), so a whole call, however many requests it makes, shares one
 * time budget and ends in E_CACHE_UNAVAILABLE when that runs out.
 *
 * `has` sends HEAD requests, `concurrency` (32) at a time. A listing under a
 * common prefix would be fewer requests only when most of a prefix's keys
 * are asked about at once; cache keys are content hashes spread over the
 * whole key space, so a listing would return the bucket to answer about a
 * few keys. HEADs cost one small request per key and scale with the
 * question, not with the cache.
 */
export class S3BlobStore implements BlobStore {
  readonly url: string;
  readonly identity: string;
  readonly writable = true;
  readonly location: S3Location;
  private readonly policy: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly credentials: S3Credentials | undefined;
  private client: Promise<{ sdk: Sdk; s3: S3Client }> | undefined;

  constructor(url: string, opts: S3BlobStoreOptions = {}) {
    this.location = parseS3Url(url);
    this.url = this.location.url;
    this.identity = this.location.identity;
    this.policy = retryPolicy(opts);
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.concurrency = Math.max(1, opts.concurrency ?? 32);
    this.credentials = opts.credentials;
  }

  async get(key: string): Promise<Buffer | undefined> {
    const { sdk, s3 } = await this.sdk();
    const Key = this.key(key);
    return this.retry('get', key, async () => {
      try {
        const r = await s3.send(new sdk.GetObjectCommand({ Bucket: this.location.bucket, Key }));
        return Buffer.from(await r.Body!.transformToByteArray());
      } catch (e) {
        if (isMissing(e)) return undefined;
        throw e;
      }
    });
  }

  async getStream(key: string): Promise<Readable | undefined> {
    const { sdk, s3 } = await this.sdk();
    const Key = this.key(key);
    const body = await this.retry('get', key, async () => {
      try {
        const r = await s3.send(new sdk.GetObjectCommand({ Bucket: this.location.bucket, Key }));
        return r.Body as Readable;
      } catch (e) {
        if (isMissing(e)) return undefined;
        throw e;
      }
    });
    if (body === undefined) return undefined;
    return guardedBody(body, this.url, key);
  }

  /**
   * The object into the fresh file `dest`: one ranged GET for an object of at
   * most RANGE bytes; beyond, the rest in RANGE-sized byte ranges,
   * PART_CONCURRENCY at once (as rclone's multi-thread downloads), each
   * retried on its own and pinned to the first answer's ETag, so a replaced
   * object fails rather than mixes. False when it does not exist.
   */
  async download(key: string, dest: string): Promise<boolean> {
    const { sdk, s3 } = await this.sdk();
    const Key = this.key(key);
    const Bucket = this.location.bucket;
    const fh = await fs.promises.open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      const first = await this.retry('get', key, async () => {
        try {
          const r = await s3.send(new sdk.GetObjectCommand({ Bucket, Key, Range: `bytes=0-${RANGE - 1}` }));
          const got = await writeAt(fh, r.Body as Readable, 0);
          // A server that ignores Range sends it all at once.
          const total = r.ContentRange === undefined ? got : Number(/\/(\d+)$/.exec(r.ContentRange)?.[1] ?? got);
          return { total, etag: r.ETag };
        } catch (e) {
          if (isMissing(e)) return undefined;
          if (httpStatus(e) === 416) return { total: 0, etag: undefined }; // an empty object has no byte 0
          throw e;
        }
      });
      if (first === undefined) {
        fs.rmSync(dest, { force: true });
        return false;
      }
      const starts: number[] = [];
      for (let at = RANGE; at < first.total; at += RANGE) starts.push(at);
      await mapBounded(starts, PART_CONCURRENCY, (at) =>
        this.retry('get', key, async () => {
          const Range = `bytes=${at}-${Math.min(at + RANGE, first.total) - 1}`;
          const r = await s3.send(new sdk.GetObjectCommand({ Bucket, Key, Range, IfMatch: first.etag }));
          await writeAt(fh, r.Body as Readable, at);
        }),
      );
      return true;
    } finally {
      await fh.close();
    }
  }

  async has(keys: readonly string[]): Promise<Set<string>> {
    const unique = [...new Set(keys)];
    const full = unique.map((k) => this.key(k));
    if (unique.length === 0) return new Set();
    const { sdk, s3 } = await this.sdk();
    const abort = new AbortController();
    const start = Date.now();
    try {
      const found = await mapBounded(full, this.concurrency, (Key, i) =>
        this.retry(
          'has',
          unique[i],
          async () => {
            try {
              await s3.send(new sdk.HeadObjectCommand({ Bucket: this.location.bucket, Key }));
              return true;
            } catch (e) {
              if (isMissing(e)) return false;
              throw e;
            }
          },
          { signal: abort.signal, start },
        ),
      );
      return new Set(unique.filter((_, i) => found[i]));
    } finally {
      abort.abort(); // the other HEADs of a failed call stop retrying
    }
  }

  async put(key: string, body: Buffer | Readable, opts: { contentType?: string; size?: number } = {}): Promise<void> {
    const Key = this.key(key);
    if (Buffer.isBuffer(body)) return this.putWhole(key, Key, body, opts.contentType);
    const partSize = Math.max(MIN_PART, Math.ceil((opts.size ?? 0) / MAX_PARTS));
    const parts = chunks(body, partSize)[Symbol.asyncIterator]();
    const first = await parts.next();
    if (first.done) return this.putWhole(key, Key, Buffer.alloc(0), opts.contentType);
    const second = await parts.next();
    if (second.done) return this.putWhole(key, Key, first.value, opts.contentType);
    return this.putMultipart(key, Key, first.value, second.value, parts, opts.contentType);
  }

  async *list(prefix: string): AsyncIterable<string> {
    checkBlobPrefix(prefix);
    const { sdk, s3 } = await this.sdk();
    const full = this.location.prefix + prefix;
    let token: string | undefined;
    do {
      const page = await this.retry('list', prefix, () =>
        s3.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.location.bucket,
            Prefix: full,
            ...(token ? { ContinuationToken: token } : {}),
          }),
        ),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key?.startsWith(full)) yield o.Key.slice(this.location.prefix.length);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(keys: readonly string[]): Promise<void> {
    const full = [...new Set(keys)].map((k) => this.key(k));
    if (full.length === 0) return;
    const { sdk, s3 } = await this.sdk();
    for (let i = 0; i < full.length; i += DELETE_BATCH) {
      const batch = full.slice(i, i + DELETE_BATCH);
      await this.retry('delete', undefined, async () => {
        const r = await s3.send(
          new sdk.DeleteObjectsCommand({
            Bucket: this.location.bucket,
            Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
          }),
        );
        const failed = (r.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
        if (failed.length > 0) {
          const e = new Error(`${failed.length} key(s) not deleted, first ${failed[0]!.Key}: ${failed[0]!.Message}`);
          e.name = failed[0]!.Code ?? 'DeleteFailed';
          throw e;
        }
      });
    }
  }

  private key(key: string): string {
    return this.location.prefix + checkBlobKey(key);
  }

  private retry<T>(
    op: string,
    key: string | undefined,
    attempt: () => Promise<T>,
    shared?: { signal: AbortSignal; start: number },
  ): Promise<T> {
    const what = { url: this.url, op, ...(key === undefined ? {} : { key }) };
    return withRetries(what, this.policy, classifyS3, attempt, shared ?? {});
  }

  private async putWhole(key: string, Key: string, body: Buffer, contentType: string | undefined): Promise<void> {
    const { sdk, s3 } = await this.sdk();
    await this.retry('put', key, () =>
      s3.send(
        new sdk.PutObjectCommand({
          Bucket: this.location.bucket,
          Key,
          Body: body,
          ContentLength: body.length,
          ...(contentType ? { ContentType: contentType } : {}),
        }),
      ),
    );
  }

  /**
   * Parts are read from the stream one at a time and uploaded
   * PART_CONCURRENCY at a time, each retried on its own (a part is a buffer,
   * so it can be sent again; the stream cannot). Until CompleteMultipartUpload
   * succeeds no reader sees anything at the key; on any failure the upload is
   * aborted so its parts do not linger as storage the owner pays for.
   */
  private async putMultipart(
    key: string,
    Key: string,
    first: Buffer,
    second: Buffer,
    rest: AsyncIterator<Buffer>,
    contentType: string | undefined,
  ): Promise<void> {
    const { sdk, s3 } = await this.sdk();
    const Bucket = this.location.bucket;
    const created = await this.retry('put', key, () =>
      s3.send(
        new sdk.CreateMultipartUploadCommand({ Bucket, Key, ...(contentType ? { ContentType: contentType } : {}) }),
      ),
    );
    const UploadId = created.UploadId!;
    const etags: string[] = [];
    const inFlight = new Set<Promise<void>>();
    let failure: Error | undefined;
    let total = 0;
    const send = (n: number, body: Buffer): void => {
      total += body.length;
      const p = this.retry('put', `${key} (part ${n})`, () =>
        s3.send(new sdk.UploadPartCommand({ Bucket, Key, UploadId, PartNumber: n, Body: body })),
      ).then(
        (r) => {
          etags[n - 1] = r.ETag!;
        },
        (e: unknown) => {
          failure ??= e instanceof Error ? e : new Error(String(e));
        },
      );
      const tracked = p.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    };
    try {
      send(1, first);
      send(2, second);
      for (let n = 3; failure === undefined; n++) {
        while (inFlight.size >= PART_CONCURRENCY) await Promise.race(inFlight);
        if (failure !== undefined) break;
        const next = await rest.next();
        if (next.done) break;
        send(n, next.value);
      }
      await Promise.all(inFlight);
      if (failure !== undefined) throw failure;
      const Parts = etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 }));
      let tries = 0;
      await this.retry('put', key, async () => {
        try {
          tries++;
          await s3.send(new sdk.CompleteMultipartUploadCommand({ Bucket, Key, UploadId, MultipartUpload: { Parts } }));
        } catch (e) {
          // A retried Complete whose first try did land finds no upload any
          // more: the object being there, whole, is the success it reports.
          if (tries > 1 && (e as { name?: string }).name === 'NoSuchUpload') {
            const head = await s3.send(new sdk.HeadObjectCommand({ Bucket, Key }));
            if (head.ContentLength === total) return;
          }
          throw e;
        }
      });
    } catch (e) {
      await Promise.allSettled(inFlight);
      await s3.send(new sdk.AbortMultipartUploadCommand({ Bucket, Key, UploadId })).catch(() => undefined);
      if (typeof (rest as { return?: unknown }).return === 'function') await rest.return!().catch(() => undefined);
      throw e;
    }
  }

  private sdk(): Promise<{ sdk: Sdk; s3: S3Client }> {
    this.client ??= this.makeClient();
    return this.client;
  }

  private async makeClient(): Promise<{ sdk: Sdk; s3: S3Client }> {
    const credentials = this.credentials ?? resolveS3Credentials(this.url);
    const sdk = await import('@aws-sdk/client-s3');
    const agent = { keepAlive: true, maxSockets: Math.max(this.concurrency, PART_CONCURRENCY) };
    // The SDK warns on every Node below 22 about its releases after January
    // 2027; package-lock pins the release, and a cache command's output is
    // no place for it.
    const warn = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
    const saved = process.env[warn];
    process.env[warn] = 'true';
    try {
      const s3 = new sdk.S3Client({
        region: this.location.region,
        ...(this.location.endpoint ? { endpoint: this.location.endpoint, forcePathStyle: true } : {}),
        credentials,
        maxAttempts: 1,
        // Since 3.729 the SDK sends CRC32 checksums (aws-chunked trailers)
        // unless told otherwise; S3-compatible services (Swift's s3api among
        // them) do not all read those. Checksums only where S3 demands one.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        requestHandler: {
          connectionTimeout: Math.min(this.timeoutMs, 10_000),
          requestTimeout: this.timeoutMs,
          httpAgent: new http.Agent(agent),
          httpsAgent: new https.Agent(agent),
        },
      });
      // DeleteObjects must carry a checksum; the SDK now sends CRC32, but
      // Swift's s3api (and older MinIO, Ceph) insist on Content-MD5.
      s3.middlewareStack.add(
        (next, context) => async (args) => {
          const req = args.request as { body?: unknown; headers?: Record<string, string> };
          if (context.commandName === 'DeleteObjectsCommand' && typeof req.body === 'string' && req.headers) {
            req.headers['content-md5'] = createHash('md5').update(req.body).digest('base64');
          }
          return next(args);
        },
        { step: 'build', name: 'cairnContentMd5' },
      );
      return { sdk, s3 };
    } finally {
      if (saved === undefined) delete process.env[warn];
      else process.env[warn] = saved;
    }
  }
}

/** A missing object (NoSuchKey on GET, a bare 404 on HEAD); a missing bucket is not a miss but trouble. */
function isMissing(e: unknown): boolean {
  const name = (e as { name?: unknown })?.name;
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || httpStatus(e) === 404;
}

function httpStatus(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

export function classifyS3(e: unknown): Verdict {
  if (e instanceof TypeError || e instanceof RangeError) return 'fatal'; // our bug, not the network's
  if (isNetworkError(e)) return 'transient';
  const name = (e as { name?: unknown })?.name;
  if (typeof name === 'string' && TRANSIENT_NAMES.has(name)) return 'transient';
  const status = httpStatus(e);
  if (status !== undefined) return isTransientStatus(status) ? 'transient' : 'fatal';
  // No status and not a known socket error: a body cut off mid-XML, a
  // connection dropped between requests. Retrying is bounded by the budget.
  return 'transient';
}

/** Writes a body into the file from byte `at` on; how many bytes it had. */
async function writeAt(fh: fs.promises.FileHandle, body: Readable, at: number): Promise<number> {
  let pos = at;
  for await (const chunk of body) {
    const b = chunk as Buffer;
    for (let off = 0; off < b.length;) {
      const { bytesWritten } = await fh.write(b, off, b.length - off, pos);
      off += bytesWritten;
      pos += bytesWritten;
    }
  }
  return pos - at;
}

/** The stream in pieces of exactly `size` bytes (the last one shorter), copying each byte once. */
async function* chunks(stream: Readable, size: number): AsyncGenerator<Buffer> {
  let held: Buffer[] = [];
  let heldLen = 0;
  for await (const c of stream as AsyncIterable<Buffer | string>) {
    let buf = typeof c === 'string' ? Buffer.from(c) : c;
    while (heldLen + buf.length >= size) {
      const take = size - heldLen;
      held.push(buf.subarray(0, take));
      yield Buffer.concat(held, size);
      held = [];
      heldLen = 0;
      buf = buf.subarray(take);
    }
    if (buf.length > 0) {
      held.push(buf);
      heldLen += buf.length;
    }
  }
  if (heldLen > 0) yield Buffer.concat(held, heldLen);
}
