/**
 * What `cairn ui` refuses before it answers, as pure functions: any method
 * but GET (the view is read-only), and a Host header that is not one of the
 * names the server is bound to, so a web page elsewhere cannot reach it
 * through DNS rebinding (its requests carry the attacker's host name).
 */
import * as os from 'node:os';

/** Headers on every answer: a strict CSP (scripts and styles from this server only, no inline code). */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
};

const isLoopback = (host: string): boolean => host === 'localhost' || host === '::1' || host.startsWith('127.');
const isWildcard = (host: string): boolean => host === '0.0.0.0' || host === '::' || host === '';

/** `host:port` as a Host header spells it (IPv6 in brackets), lower case. */
const hostPort = (host: string, port: number): string =>
  `${host.includes(':') ? `[${host}]` : host}:${port}`.toLowerCase();

/**
 * The Host header values this server answers: the bound host itself, and
 * for a loopback or wildcard binding the loopback names; for a wildcard,
 * also this machine's addresses and name. Without a port too (port 80).
 */
export function allowedHosts(bound: string, port: number): Set<string> {
  const names = new Set<string>([bound]);
  if (isLoopback(bound) || isWildcard(bound)) for (const n of ['127.0.0.1', 'localhost', '::1']) names.add(n);
  if (isWildcard(bound)) {
    names.add(os.hostname());
    for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) names.add(a.address);
  }
  const out = new Set<string>();
  for (const n of names) {
    if (isWildcard(n)) continue;
    out.add(hostPort(n, port));
    if (port === 80) out.add((n.includes(':') ? `[${n}]` : n).toLowerCase());
  }
  return out;
}

export type Refusal = { status: 405 | 421 | 400; message: string; headers?: Record<string, string> };

/** Why a request is refused, or undefined if it may be answered. */
export function refusal(
  method: string | undefined,
  host: string | undefined,
  allowed: ReadonlySet<string>,
): Refusal | undefined {
  if (method !== 'GET') return { status: 405, message: 'read-only: only GET is answered', headers: { allow: 'GET' } };
  if (host === undefined || !allowed.has(host.toLowerCase())) {
    return { status: 421, message: 'this server answers only the host names it is bound to' };
  }
  return undefined;
}
