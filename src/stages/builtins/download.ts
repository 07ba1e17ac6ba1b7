import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError } from '../../errors.js';
import { redactUrl, redactUrlsIn } from '../../redact-url.js';

export interface DownloadOptions {
  /** Total attempts across all URLs (default 6). */
  attempts?: number;
  /** Abort and resume when no data arrives for this long (default 30 s). */
  idleTimeoutMs?: number;
  /** First retry delay; doubles up to 5 s (default 200 ms). */
  backoffMs?: number;
  log?: (line: string) => void;
}

const PERMANENT = new Set([400, 401, 403, 404, 405, 410, 451]);

/**
 * Downloads the first URL that works into `file`, resuming with Range
 * requests after a dropped or stalled connection. Redirects are followed.
 * A URL answering with a permanent error (404, 410, ...) is dropped; other
 * failures (5xx, resets, stalls) are retried on the next URL after a
 * backoff, within a budget of `attempts`. A server that ignores Range is
 * read again from the start. The caller checks the hash.
 *
 * User info in a URL (`https://user:pass@host/...`) is sent as HTTP Basic
 * authentication (node-fetch refuses such URLs otherwise) and dropped on a
 * redirect to another host. Every URL in the log, the error message and its
 * details is redacted (see redactUrl): the log ends up in the store.
 */
export async function download(
  urls: readonly string[],
  file: string,
  opts: DownloadOptions = {},
): Promise<{ url: string; bytes: number; resumed: number }> {
  const attempts = opts.attempts ?? 6;
  const idle = opts.idleTimeoutMs ?? 30_000;
  const log = opts.log ?? (() => {});
  // Loaded here, not at the top: every stage file imports Cairn's index,
  // and most never download anything.
  const { default: fetch } = await import('node-fetch');
  let live = urls.flatMap((u) => {
    if (!u.startsWith('apt:')) return [u];
    const resolved = resolveApt(u);
    if (resolved) log(`${u} is ${redactUrl(resolved)}`);
    return resolved ? [resolved] : [];
  });
  let delay = opts.backoffMs ?? 200;
  let resumed = 0;
  const errors: string[] = [];
  for (let attempt = 0; attempt < attempts && live.length > 0; attempt++) {
    const url = live[attempt % live.length]!;
    const safeUrl = redactUrl(url);
    let have = 0;
    try {
      have = fs.statSync(file).size;
    } catch {
      /* nothing yet */
    }
    const ac = new AbortController();
    let timer = setTimeout(() => ac.abort(), idle);
    const poke = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => ac.abort(), idle);
    };
    try {
      const { href, authorization } = splitUserInfo(url);
      const headers: Record<string, string> = {
        ...(have > 0 ? { Range: `bytes=${have}-` } : {}),
        ...(authorization ? { Authorization: authorization } : {}),
      };
      const res = await fetch(href, { headers, redirect: 'follow', follow: 20, signal: ac.signal });
      if (res.status === 416 && have > 0) {
        // Nothing left to send: the file is complete (the hash will tell).
        log(`${safeUrl}: already complete at ${have} bytes`);
        return { url, bytes: have, resumed };
      }
      if (!res.ok) {
        const why = `${safeUrl}: HTTP ${res.status} ${res.statusText}`;
        errors.push(why);
        if (PERMANENT.has(res.status)) {
          live = live.filter((u) => u !== url);
          log(`${why}; dropping this URL`);
          attempt--; // a dead mirror does not use up the retry budget
          continue;
        }
        throw new Error(why);
      }
      const partial = res.status === 206 && have > 0;
      if (partial) {
        resumed++;
        log(`${safeUrl}: resuming at ${have} bytes`);
      } else have = 0;
      const total = Number(res.headers.get('content-length') ?? NaN) + have;
      const out = fs.createWriteStream(file, { flags: partial ? 'a' : 'w' });
      let got = have;
      let lastShown = Date.now();
      try {
        for await (const chunk of res.body!) {
          poke();
          if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
          got += (chunk as Buffer).length;
          if (Date.now() - lastShown > 1000) {
            lastShown = Date.now();
            log(`${safeUrl}: ${got}${Number.isFinite(total) ? `/${total}` : ''} bytes`);
          }
        }
      } finally {
        await new Promise<void>((r) => out.end(() => r()));
      }
      if (Number.isFinite(total) && got < total) {
        throw new Error(`${safeUrl}: connection closed at ${got} of ${total} bytes`);
      }
      log(`${safeUrl}: ${got} bytes`);
      return { url, bytes: got, resumed };
    } catch (e) {
      // A library's message may quote the URL it was given: mask it too.
      const why = ac.signal.aborted
        ? `${safeUrl}: no data for ${idle} ms`
        : redactUrlsIn(String((e as Error)?.message ?? e));
      if (!errors.includes(why)) errors.push(why);
      log(`attempt ${attempt + 1}/${attempts} failed: ${why}`);
      if (attempt + 1 < attempts) {
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  if (errors.length === 0)
    errors.push('no URL could be resolved (apt: URLs need current package lists: apt-get update)');
  throw new CairnError('E_FETCH_FAILED', `download failed: ${errors.slice(-4).join('; ')}`, {
    urls: urls.map(redactUrl),
    errors,
  });
}

/** `https://u:p@host/x` -> `https://host/x` plus the Basic credentials, as curl and browsers send them. */
function splitUserInfo(url: string): { href: string; authorization?: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return { href: url };
  }
  if (u.username === '' && u.password === '') return { href: url };
  const creds = `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`;
  u.username = '';
  u.password = '';
  return { href: u.href, authorization: `Basic ${Buffer.from(creds).toString('base64')}` };
}

/**
 * `apt:PACKAGE=VERSION` names a Debian package by name, as apt itself does:
 * it is resolved to a download URL through the machine's own apt
 * configuration (its mirrors and proxies), with `apt-get download
 * --print-uris`. The package lists must be current (`apt-get update`).
 * Returns null when apt cannot resolve it (the URL is then skipped).
 */
export function resolveApt(url: string): string | null {
  const spec = url.slice('apt:'.length).replace(/^\/\//, '');
  if (!/^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$/.test(spec)) return null;
  const r = spawnSync('apt-get', ['download', '--print-uris', spec], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const m = /^'([^']+)'/m.exec(r.stdout);
  return m ? m[1]! : null;
}
