/**
 * Parameters, DVC style: a stage names keys (`train.lr`) of a params file
 * (`params.yaml` unless it says another). Only the picked values enter the
 * stage's identity, so editing an unrelated key rebuilds nothing; and the
 * command's workspace holds a params file with only those keys, so a script
 * that reads a key it did not declare fails instead of silently depending
 * on a value its identity does not cover.
 */

/** Looks up a dotted key (`train.lr`, `layers.0`); undefined when any part is missing. */
export function lookup(doc: unknown, key: string): unknown {
  let v: unknown = doc;
  for (const part of key.split('.')) {
    if (typeof v !== 'object' || v === null || !Object.prototype.hasOwnProperty.call(v, part)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** A value the identity can hold: no NaN or infinities (YAML's .nan, .inf), no non-string keys. */
export function badValue(v: unknown, at = ''): string | undefined {
  if (typeof v === 'number') {
    return Number.isFinite(v) ? undefined : `${at || 'value'} is ${v}, which is not a JSON number`;
  }
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return undefined;
  if (Array.isArray(v)) {
    for (const [i, x] of v.entries()) {
      const b = badValue(x, `${at}[${i}]`);
      if (b) return b;
    }
    return undefined;
  }
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    for (const [k, x] of Object.entries(v)) {
      const b = badValue(x, at ? `${at}.${k}` : k);
      if (b) return b;
    }
    return undefined;
  }
  return `${at || 'value'} is not a plain YAML value (string, number, boolean, null, list or mapping)`;
}

/** The picked keys as one nested object; a key inside another picked key is already in it. */
export function nest(picked: Record<string, unknown>): Record<string, unknown> {
  const keys = Object.keys(picked).sort((a, b) => a.split('.').length - b.split('.').length || (a < b ? -1 : 1));
  const root: Record<string, unknown> = {};
  const taken: string[] = [];
  for (const key of keys) {
    if (taken.some((t) => key.startsWith(`${t}.`))) continue;
    taken.push(key);
    const parts = key.split('.');
    let o = root;
    for (const p of parts.slice(0, -1)) o = (o[p] ??= {}) as Record<string, unknown>;
    o[parts[parts.length - 1]!] = picked[key];
  }
  return root;
}

/**
 * JSON text, which every YAML and JSON reader takes, with one care: YAML
 * 1.1 readers (PyYAML) read `1e-05` as a string, so exponents get a
 * mantissa with a dot (`1.0e-05`), which JSON and both YAML versions read
 * as a float.
 */
function text(v: unknown, indent: string): string {
  if (typeof v === 'number') {
    const s = String(v);
    return /e/.test(s) && !/[.]/.test(s.split('e')[0]!) ? s.replace('e', '.0e') : s;
  }
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    return v.length === 0 ? '[]' : `[\n${v.map((x) => inner + text(x, inner)).join(',\n')}\n${indent}]`;
  }
  if (typeof v === 'object' && v !== null) {
    const e = Object.entries(v);
    const lines = e.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${text(x, inner)}`);
    return e.length === 0 ? '{}' : `{\n${lines.join(',\n')}\n${indent}}`;
  }
  return JSON.stringify(v);
}

/** The params file a stage's workspace holds: only the keys it picked. */
export function paramsText(picked: Record<string, unknown>): string {
  return `${text(nest(picked), '')}\n`;
}
