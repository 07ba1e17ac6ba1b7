/**
 * `cairn ui`: a local, read-only web view of a store, over node:http.
 *
 * - Static files come from a fixed in-memory table (assets.ts), the data
 *   from a small JSON API: /api/token (a cheap change token the page polls),
 *   /api/view (DAG, experiment tables, disk use) and /api/rz?ref=RREF (one
 *   realization's files, log and config).
 * - Only GET, only the bound host names (http-guard.ts), a strict CSP.
 * - The store is only read, each request in its own short SQLite reads: no
 *   lock is held between requests, so a realize running meanwhile neither
 *   fails nor waits. The view is rebuilt only when the change token moves.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadAssets } from './assets.js';
import { allowedHosts, refusal, SECURITY_HEADERS } from './http-guard.js';
import type { UiTargets } from './targets.js';
import { buildView, realizationView, type UiView } from './view.js';
import { CairnError, isCairnError } from '../errors.js';
import { storeChangeToken } from '../store/change-token.js';
import type { LocalStore } from '../store/store.js';

export const DEFAULT_UI_PORT = 8470;

export interface UiServerOptions {
  store: LocalStore;
  targets: UiTargets;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default DEFAULT_UI_PORT, or any free port if that one is taken; 0 for any free port. */
  port?: number;
}

export interface UiServer {
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

const NOT_FOUND_CODES = new Set(['E_NO_SUCH_REF', 'E_NO_SUCH_PATH']);

function send(res: http.ServerResponse, status: number, type: string, body: Buffer | string, cache: boolean): void {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': cache ? 'max-age=300' : 'no-store',
  });
  res.end(body);
}

const sendJson = (res: http.ServerResponse, status: number, value: unknown): void =>
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value), false);

function listen(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => reject(e);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

export async function startUiServer(opts: UiServerOptions): Promise<UiServer> {
  const { store, targets } = opts;
  const host = opts.host ?? '127.0.0.1';
  const assets = loadAssets();
  let cached: { token: string; view: Promise<UiView> } | undefined;

  // One view per change token, shared by every request that asks meanwhile.
  const view = (): Promise<UiView> => {
    const token = storeChangeToken(store);
    if (cached?.token !== token) {
      const p = buildView(store, targets, token);
      cached = { token, view: p };
      p.catch(() => {
        if (cached?.view === p) cached = undefined;
      });
    }
    return cached.view;
  };

  let allowed = new Set<string>();
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const refused = refusal(req.method, req.headers.host, allowed);
    if (refused) {
      res.writeHead(refused.status, {
        ...SECURITY_HEADERS,
        'content-type': 'text/plain; charset=utf-8',
        ...refused.headers,
      });
      res.end(refused.message + '\n');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://ui.invalid');
    const asset = assets.get(url.pathname);
    if (asset) return send(res, 200, asset.type, asset.body, url.pathname.startsWith('/vendor/'));
    try {
      switch (url.pathname) {
        case '/api/token':
          return sendJson(res, 200, { token: storeChangeToken(store) });
        case '/api/view':
          return sendJson(res, 200, await view());
        case '/api/rz':
          return sendJson(res, 200, await realizationView(store, url.searchParams.get('ref') ?? ''));
        default:
          return send(res, 404, 'text/plain; charset=utf-8', 'not found\n', false);
      }
    } catch (e) {
      if (isCairnError(e)) {
        return sendJson(res, NOT_FOUND_CODES.has(e.code) ? 404 : 400, { code: e.code, message: e.message });
      }
      return sendJson(res, 500, { code: 'E_INTERNAL', message: (e as Error)?.message ?? String(e) });
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { code: 'E_INTERNAL', message: String(e) });
      else res.destroy();
    });
  });
  // Requests are small and answered at once: idle connections need not linger.
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;

  try {
    if (opts.port === undefined) {
      try {
        await listen(server, host, DEFAULT_UI_PORT);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
        await listen(server, host, 0);
      }
    } else {
      await listen(server, host, opts.port);
    }
  } catch (e) {
    throw new CairnError(
      'E_UI_LISTEN',
      `cannot listen on ${host}:${opts.port ?? DEFAULT_UI_PORT}: ${(e as Error).message}`,
      { host, port: opts.port ?? DEFAULT_UI_PORT },
      { cause: e },
    );
  }
  const port = (server.address() as AddressInfo).port;
  allowed = allowedHosts(host, port);
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  return {
    url: `http://${shown.includes(':') ? `[${shown}]` : shown}:${port}/`,
    host,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
