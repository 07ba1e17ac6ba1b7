import type { Readable } from 'node:stream';

/**
 * Where a binary cache keeps its objects: a flat namespace of keys (like
 * `nar/<hash>.tar.gz`, `r/<dref>/<rhash>.json`) holding immutable bytes. A
 * whole cache backend is these few calls, as Nix's BinaryCacheStore needs
 * only fileExists, upsertFile and getFile. Implementations: a local
 * directory (`file://`), any S3-compatible service (`s3://`), and plain
 * HTTP(S) (`http(s)://`, read-only).
 *
 * Every call may fail with a transient error (network, 5xx, SlowDown): the
 * implementation retries those with jittered backoff within its budget and
 * then throws `E_CACHE_UNAVAILABLE`; a caller that reads treats that as a
 * miss. A key that does not exist is not an error: `get` gives undefined.
 */
export interface BlobStore {
  /** `s3://bucket/prefix?endpoint=...`, `file:///dir`, `https://host/path`: for messages, without credentials. */
  readonly url: string;
  /**
   * What identifies the place the objects live (endpoint + bucket + prefix,
   * or a directory's real path): the key of any local memo about it, so a
   * memo never outlives or crosses over to another bucket of the same name.
   */
  readonly identity: string;
  /** False for read-only kinds (http): put and delete throw E_CACHE_READ_ONLY. */
  readonly writable: boolean;

  /** The object's bytes, or undefined if it does not exist. */
  get(key: string): Promise<Buffer | undefined>;
  /** The object as a stream (large archives), or undefined if it does not exist. */
  getStream(key: string): Promise<Readable | undefined>;
  /**
   * Optional: the object into the fresh file `dest`, faster than `getStream`
   * where the backend can (S3: large objects in parallel byte ranges); false
   * when it does not exist. Callers go through `fetchObject` (archive.ts).
   */
  download?(key: string, dest: string): Promise<boolean>;
  /** Which of `keys` exist: asked in parallel batches, never one round trip per key in series. */
  has(keys: readonly string[]): Promise<Set<string>>;
  /**
   * Writes an object whole: readers see the old object, none, or the new
   * one, never a part (S3 PUT; a local directory renames a temporary file).
   */
  put(key: string, body: Buffer | Readable, opts?: { contentType?: string; size?: number }): Promise<void>;
  /** Every key under `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<string>;
  /** Deletes the keys that exist; missing ones are not an error. */
  delete(keys: readonly string[]): Promise<void>;
}
