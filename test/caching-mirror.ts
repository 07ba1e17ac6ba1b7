/**
 * A caching HTTP mirror for tests that run debootstrap or apt-get more than
 * once: it forwards each GET to an upstream Debian mirror the first time and
 * serves later ones from a directory, so a test file downloads the base
 * system once. A request can be held (never answered) to stop a build at a
 * known point, which is how a test interrupts `apt-get install` while it
 * runs, without guessing from timing.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

export interface CachingMirror {
  /** The mirror's URL, to pass as debootstrap's `mirror` (e.g. `http://127.0.0.1:PORT/debian`). */
  url: string;
  /** Requests whose path matches are held unanswered; `onHold` is called with the path. */
  hold(re: RegExp | undefined, onHold?: (p: string) => void): void;
  /** How many requests went upstream (cache misses). */
  upstreamRequests(): number;
  close(): Promise<void>;
}

export async function startCachingMirror(cacheDir: string, upstream = 'http://deb.debian.org'): Promise<CachingMirror> {
  let held: { re: RegExp; onHold?: (p: string) => void } | undefined;
  let misses = 0;
  let seq = 0;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const rel = decodeURIComponent(url.pathname);
    if (req.method !== 'GET' || !/^\/debian\/[A-Za-z0-9+~._/-]+$/.test(rel) || rel.split('/').includes('..')) {
      res.writeHead(404).end();
      return;
    }
    if (held && held.re.test(rel)) {
      held.onHold?.(rel);
      return; // never answered: the client waits until it is killed or the server closes
    }
    const file = path.join(cacheDir, rel);
    if (fs.existsSync(file)) {
      res.writeHead(200, { 'content-length': fs.statSync(file).size });
      fs.createReadStream(file).pipe(res);
      return;
    }
    misses++;
    http
      .get(upstream + rel, (up) => {
        if (up.statusCode !== 200) {
          res.writeHead(up.statusCode ?? 502, { 'content-type': 'text/plain' });
          up.pipe(res);
          return;
        }
        const headers: http.OutgoingHttpHeaders = {};
        if (up.headers['content-length']) headers['content-length'] = up.headers['content-length'];
        res.writeHead(200, headers);
        // Cached only once complete: an interrupted download never becomes a truncated file.
        fs.mkdirSync(path.dirname(file), { recursive: true });
        const part = `${file}.part${++seq}`;
        const sink = fs.createWriteStream(part);
        up.on('data', (d: Buffer) => {
          sink.write(d);
          res.write(d);
        });
        up.on('end', () => {
          res.end();
          sink.end(() => fs.renameSync(part, file));
        });
        up.on('error', () => {
          sink.destroy();
          fs.rmSync(part, { force: true });
          res.destroy();
        });
      })
      .on('error', (e) => {
        res.writeHead(502, { 'content-type': 'text/plain' }).end(String(e));
      });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/debian`,
    hold: (re, onHold) => {
      held = re ? { re, onHold } : undefined;
    },
    upstreamRequests: () => misses,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
