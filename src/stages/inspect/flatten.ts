/**
 * Flattening configs and metrics into dotted keys, for tables and diffs.
 * Pure: no I/O.
 */

/** A flattened leaf: what a table cell or a diff line shows. */
export type Scalar = string | number | boolean | null;

/** Keys made of plain words join with dots; any other key is quoted, so `a.b` and `{"a.b": …}` never collide. */
const PLAIN_KEY = /^[A-Za-z_$][\w$-]*$/;

export function joinKey(prefix: string, key: string | number): string {
  if (typeof key === 'number') return `${prefix}[${key}]`;
  const part = PLAIN_KEY.test(key) ? key : JSON.stringify(key);
  return prefix === '' ? part : PLAIN_KEY.test(key) ? `${prefix}.${part}` : `${prefix}[${part}]`;
}

const isRef = (v: object): v is { $ref: string } =>
  !Array.isArray(v) && Object.keys(v).length === 1 && typeof (v as { $ref?: unknown }).$ref === 'string';

/**
 * A derivation's config (as drv.json holds it: a dependency is `{"$ref": DRef}`)
 * as dotted keys. A dependency becomes one leaf, shown by `refLabel`; empty
 * objects and arrays are leaves (`{}`, `[]`), so removing every element of a
 * list is still a difference. Iterative: configs may nest 1000 levels.
 */
export function flattenConfig(config: unknown, refLabel: (dref: string) => string): Record<string, Scalar> {
  const out: Record<string, Scalar> = {};
  const stack: [string, unknown][] = [['', config]];
  while (stack.length > 0) {
    const [key, v] = stack.pop()!;
    if (v === null || typeof v !== 'object') {
      out[key === '' ? '(config)' : key] = v === undefined ? null : (v as Scalar);
      continue;
    }
    if (isRef(v)) {
      out[key === '' ? '(config)' : key] = refLabel(v.$ref);
      continue;
    }
    const entries: [string | number, unknown][] = Array.isArray(v)
      ? v.map((x, i): [number, unknown] => [i, x])
      : Object.entries(v as Record<string, unknown>);
    if (entries.length === 0) {
      if (key !== '') out[key] = Array.isArray(v) ? '[]' : '{}';
      continue;
    }
    // Pushed in reverse so keys come out in document order.
    for (let i = entries.length - 1; i >= 0; i--) stack.push([joinKey(key, entries[i]![0]), entries[i]![1]]);
  }
  return out;
}

export interface NumberLeavesLimits {
  /** Keys kept at most (the rest are dropped). */
  maxKeys: number;
  /** Levels descended at most. */
  maxDepth: number;
  /** Longer keys are dropped. */
  maxKeyLength: number;
}

/**
 * The finite numbers of a parsed JSON value, as dotted keys under `prefix`;
 * everything else (strings, booleans, NaN spelt as a string) is not a
 * metric and is left out. Bounded, since the value comes from a build.
 */
export function numberLeaves(value: unknown, prefix: string, limits: NumberLeavesLimits): Record<string, number> {
  const out: Record<string, number> = {};
  let kept = 0;
  const stack: [string, unknown, number][] = [[prefix, value, 0]];
  while (stack.length > 0 && kept < limits.maxKeys) {
    const [key, v, depth] = stack.pop()!;
    if (typeof v === 'number') {
      if (Number.isFinite(v) && key !== '' && key.length <= limits.maxKeyLength) {
        out[key] = v;
        kept++;
      }
      continue;
    }
    if (typeof v !== 'object' || v === null || depth >= limits.maxDepth) continue;
    const entries: [string | number, unknown][] = Array.isArray(v)
      ? v.map((x, i): [number, unknown] => [i, x])
      : Object.entries(v as Record<string, unknown>);
    for (let i = entries.length - 1; i >= 0; i--) stack.push([joinKey(key, entries[i]![0]), entries[i]![1], depth + 1]);
  }
  return out;
}

/** Keys that differ between some of the records (present in one and not another counts). */
export function differingKeys(records: readonly Record<string, Scalar>[]): string[] {
  const keys: string[] = [];
  const seen = new Set<string>();
  for (const r of records) for (const k of Object.keys(r)) if (!seen.has(k) && seen.add(k)) keys.push(k);
  if (records.length < 2) return [];
  return keys.filter((k) => {
    const first = records[0]![k];
    return records.some((r) => !(k in r) || r[k] !== first) || !(k in records[0]!);
  });
}
