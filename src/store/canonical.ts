import { CairnError } from '../errors.js';

/** A JSON value as Cairn hashes it: no undefined, no NaN, no class instances. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * Called for every object before it is canonicalised. Returning a Json value
 * substitutes it (this is how stage references become `{"$ref": dref}`);
 * returning undefined means "not special, canonicalise it normally".
 *
 * A substitute's result is written as it is (a marker), while user objects
 * that could be mistaken for a marker are escaped: see `canonicalJson`.
 */
export type Substitute = (value: object, path: string) => Json | undefined;

/**
 * How deeply a value may nest (objects and arrays). Deeper input is refused
 * with E_CONFIG_TOO_DEEP instead of overflowing the stack here or in any
 * later reader of drv.json; real configs are a few dozen levels deep.
 */
export const MAX_DEPTH = 1000;

/** The key that wraps a user object holding `$`-keys, so it cannot pass for a marker such as `{"$ref": …}`. */
export const LITERAL_KEY = '$lit';

/**
 * Canonical JSON text: object keys sorted by UTF-16 code unit, no whitespace,
 * numbers in ECMAScript's shortest round-trip form (so `1.0` and `1` agree,
 * and `-0` is written `0`). The text is the same in every process on every
 * machine, which is what makes DRefs portable.
 *
 * Anything that JSON.stringify would silently drop or mangle is refused
 * instead, because a config that quietly loses a field would give two
 * different stages the same identity. The one deliberate exception is an
 * object property whose value is `undefined`: it is omitted, exactly as JSON
 * does, so optional fields can be left unset.
 *
 * With a substitute, the encoding is unambiguous (distinct values give
 * distinct text). Substitutes produce markers: objects with one `$`-key,
 * such as `{"$ref": dref}`. A user object with any key that starts with `$`
 * is written wrapped, `{"$lit": {…its keys as written…}}`; a user object
 * without one is written plainly. So every object in the text is exactly
 * one of: plain (no `$`-key: a user object), `{"$lit": X}` (X is a user
 * object, its keys taken literally, its values decoded by the same rule),
 * or a marker (one `$`-key other than `$lit`). These are disjoint, so the
 * text decodes back to one value, which is what makes the encoding
 * injective. User objects without `$`-keys, the common case, are written as
 * before, so their DRefs did not change.
 */
export function canonicalJson(value: unknown, substitute?: Substitute, root = 'config'): string {
  const parts: string[] = [];
  const onPath = new Set<object>();
  const bad = (path: string, what: string): never => {
    throw new CairnError('E_CONFIG_NOT_JSON', `${path} is ${what}, which is not JSON`, { path });
  };
  // `raw`: inside a substitute's marker, written as it is (no substitution, no escaping).
  const walk = (v: unknown, path: string, depth: number, raw: boolean): void => {
    switch (typeof v) {
      case 'string':
        parts.push(JSON.stringify(v));
        return;
      case 'boolean':
        parts.push(v ? 'true' : 'false');
        return;
      case 'number':
        if (!Number.isFinite(v)) bad(path, String(v));
        parts.push(Object.is(v, -0) ? '0' : String(v));
        return;
      case 'bigint':
        return bad(path, 'a BigInt');
      case 'function':
        return bad(path, 'a function');
      case 'symbol':
        return bad(path, 'a symbol');
      case 'undefined':
        return bad(path, 'undefined');
      case 'object':
        break; // below: null, arrays and objects
    }
    if (v === null) {
      parts.push('null');
      return;
    }
    if (depth > MAX_DEPTH) {
      throw new CairnError('E_CONFIG_TOO_DEEP', `${root} nests deeper than ${MAX_DEPTH} levels (objects and arrays)`, {
        root,
        maxDepth: MAX_DEPTH,
      });
    }
    const obj = v;
    if (substitute && !raw) {
      const sub = substitute(obj, path);
      if (sub !== undefined) {
        walk(sub, path, depth, true);
        return;
      }
    }
    if (onPath.has(obj)) bad(path, 'a reference back to one of its own parents (a cycle)');
    onPath.add(obj);
    if (Array.isArray(obj)) {
      parts.push('[');
      // An index loop, not forEach: forEach skips holes, and a sparse array
      // must be refused (its holes are undefined), not silently compacted.
      for (let i = 0; i < obj.length; i++) {
        if (i > 0) parts.push(',');
        walk(obj[i], `${path}[${i}]`, depth + 1, raw);
      }
      parts.push(']');
    } else {
      const proto = Object.getPrototypeOf(obj) as { constructor?: { name?: string } } | null;
      if (proto !== Object.prototype && proto !== null) {
        bad(path, `an instance of ${proto?.constructor?.name ?? 'an unknown class'}`);
      }
      if (Object.getOwnPropertySymbols(obj).length > 0) bad(path, 'an object with symbol keys');
      const keys = Object.keys(obj).sort();
      let wrap = false;
      // A `$`-key whose value is undefined is omitted like any other, so it must not wrap either.
      if (substitute && !raw) {
        for (const k of keys) {
          if (k.charCodeAt(0) === 36 /* $ */ && (obj as Record<string, unknown>)[k] !== undefined) {
            wrap = true;
            break;
          }
        }
      }
      if (wrap) parts.push(`{${JSON.stringify(LITERAL_KEY)}:`);
      parts.push('{');
      let first = true;
      for (const key of keys) {
        const item = (obj as Record<string, unknown>)[key];
        if (item === undefined) continue;
        if (!first) parts.push(',');
        first = false;
        parts.push(JSON.stringify(key), ':');
        walk(
          item,
          /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`,
          depth + 1,
          raw,
        );
      }
      parts.push(wrap ? '}}' : '}');
    }
    onPath.delete(obj);
  };
  walk(value, root, 1, false);
  return parts.join('');
}
