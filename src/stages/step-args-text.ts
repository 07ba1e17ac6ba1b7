/**
 * A machine step's args as `machine ls` shows them: one short line, secrets
 * in URLs masked (the args are stored as given, and `ls` output ends up in
 * terminals, logs and bug reports).
 */
import type { Json } from '../store/canonical.js';
import { redactUrlsIn } from '../redact-url.js';

/** The args with every URL inside a string masked, for display (`machine ls --json`). */
export function redactArgs(args: Json): Json {
  if (typeof args === 'string') return redactUrlsIn(args);
  if (Array.isArray(args)) return args.map(redactArgs);
  if (args !== null && typeof args === 'object')
    return Object.fromEntries(Object.entries(args).map(([k, v]) => [k, redactArgs(v)]));
  return args;
}

/** A scalar as a word: bare when it reads unambiguously, else JSON-quoted. */
function word(v: Json): string {
  if (typeof v !== 'string') return JSON.stringify(v);
  // A content hash identifies, but its 64 digits say nothing to a reader.
  if (/^[0-9a-f]{64}$/.test(v)) return `${v.slice(0, 12)}…`;
  return /^[\w./:@%+,-]+$/.test(v) ? v : JSON.stringify(v);
}

/**
 * `{ cmd: 'echo hi' }` -> `cmd="echo hi"`; `{ args: ['a', 'b'], debug: true }`
 * -> `debug=true a b` (named values, then the positional words); nested
 * values as compact JSON. At most `max` characters, the rest elided with `…`.
 */
export function formatStepArgs(args: Json, max = 60): string {
  const a = redactArgs(args);
  let parts: string[];
  if (a !== null && typeof a === 'object' && !Array.isArray(a)) {
    const positional = Array.isArray(a.args) ? a.args.map(word) : [];
    const named = Object.entries(a)
      .filter(([k]) => !(k === 'args' && Array.isArray(a.args)))
      .map(([k, v]) => `${k}=${v !== null && typeof v === 'object' ? JSON.stringify(v) : word(v)}`);
    parts = [...named, ...positional];
  } else {
    parts = [a !== null && typeof a === 'object' ? JSON.stringify(a) : word(a)];
  }
  const text = parts.join(' ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
