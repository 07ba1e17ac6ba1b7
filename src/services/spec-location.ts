/**
 * Where in an ensemble file a bad field is, so E_SERVICE_INVALID can say
 * `file:line` the way a type checker would. Ensemble files run type-stripped
 * (sucrase keeps line numbers) under their original URL, so the call stack
 * of ensemble() and service() names the user's file and line. A field
 * inside a plain object literal is then found by a lexical search from that
 * line: the service's `name: '…'`, then the key, before the next service.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface SourceLocation {
  file: string;
  line: number;
}

/** Marks ensemble() and service() results with their call site (a symbol: invisible to key checks). */
export const LOCATION = Symbol.for('cairn.services.location');

const OWN_SOURCE = new URL('../', import.meta.url).href;
const OWN_SOURCE_PATH = fileURLToPath(OWN_SOURCE);

/** The first stack frame outside Cairn: the user's call of ensemble() or service(). */
export function callerLocation(): SourceLocation | undefined {
  const saved = Error.prepareStackTrace;
  const holder: { stack?: NodeJS.CallSite[] } = {};
  try {
    Error.prepareStackTrace = (_e, sites) => sites;
    Error.captureStackTrace(holder, callerLocation);
    for (const site of holder.stack ?? []) {
      const name = site.getScriptNameOrSourceURL?.() ?? site.getFileName();
      if (!name || name.startsWith('node:') || name.startsWith(OWN_SOURCE) || name.startsWith(OWN_SOURCE_PATH))
        continue;
      const url = name.replace(/[?#].*$/, '');
      const file = url.startsWith('file:') ? fileURLToPath(url) : path.isAbsolute(url) ? url : undefined;
      if (file) return { file, line: site.getLineNumber() ?? 1 };
    }
  } catch {
    /* an unusual stack: no location */
  } finally {
    Error.prepareStackTrace = saved;
  }
  return undefined;
}

export function locationOf(x: unknown): SourceLocation | undefined {
  return typeof x === 'object' && x !== null ? (x as { [LOCATION]?: SourceLocation })[LOCATION] : undefined;
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const NAME_LINE = /(^|[\s{,])['"]?name['"]?\s*:/;

/**
 * The line of `key` in the service named `service` (either may be absent),
 * searching `lines` from `from` (1-based). Falls back to the service's line,
 * then to `from`.
 */
export function findLine(lines: readonly string[], from: number, service?: string, key?: string): number {
  let at = from;
  if (service !== undefined) {
    const re = new RegExp(`(^|[\\s{,])['"]?name['"]?\\s*:\\s*['"\`]${escape(service)}['"\`]`);
    const i = lines.findIndex((l, n) => n >= from - 1 && re.test(l));
    if (i >= 0) at = i + 1;
  }
  if (key === undefined) return at;
  const re = new RegExp(`(^|[\\s{,])['"]?${escape(key)}['"]?\\s*[:(,}]|^\\s*${escape(key)}\\s*$`);
  for (let n = at - 1; n < lines.length; n++) {
    if (re.test(lines[n]!)) return n + 1;
    // The next service's name: the key is not written after this one's.
    if (service !== undefined && n > at - 1 && NAME_LINE.test(lines[n]!)) break;
  }
  return at;
}

/** `file:line` for a bad field, or undefined when the source cannot be read. */
export function locate(
  base: SourceLocation | undefined,
  service?: string,
  key?: string,
  serviceBase?: SourceLocation,
): SourceLocation | undefined {
  const start = serviceBase ?? base;
  if (!start) return undefined;
  let lines: string[];
  try {
    lines = fs.readFileSync(start.file, 'utf8').split('\n');
  } catch {
    return start;
  }
  return { file: start.file, line: findLine(lines, start.line, serviceBase ? undefined : service, key) };
}
