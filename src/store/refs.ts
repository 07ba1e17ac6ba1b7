import { CairnError } from '../errors.js';
import { HASH_PATTERN } from './hash.js';

declare const brand: unique symbol;
/**
 * `<hash>-<name>`: the id of a derivation, the hash of its canonical config.
 * Branded: a plain string becomes a DRef only through `parseRef`/`asDRef`
 * (which check it) or `makeDRef`, so an RRef, a path or a name cannot be
 * passed where a DRef is meant. At run time it is a string.
 */
export type DRef = string & { readonly [brand]: 'DRef' };
/** `<hash>-<dref>`: the id of one realization of a derivation (branded like DRef). */
export type RRef = string & { readonly [brand]: 'RRef' };

const NAME = /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}$/;
const LOOKS_HASHED = new RegExp(`^${HASH_PATTERN}-`);
const DREF = new RegExp(`^(${HASH_PATTERN})-(.+)$`);
const RREF = new RegExp(`^(${HASH_PATTERN})-(${HASH_PATTERN}-.+)$`);

/**
 * Names become directory names in the store, so they are kept to a portable
 * alphabet: no `/`, no `..`, no NUL, nothing that starts with a dot. A name
 * may not itself begin with a hash, or a DRef could be misread as an RRef.
 */
export function checkName(name: unknown): string {
  if (typeof name !== 'string' || !NAME.test(name) || name.includes('..') || LOOKS_HASHED.test(name)) {
    const shown = typeof name === 'string' ? JSON.stringify(name) : String(name);
    throw new CairnError(
      'E_BAD_NAME',
      `stage name ${shown} is not allowed: use 1-100 of A-Z a-z 0-9 ` +
        `. _ + -, starting with a letter, digit or _, with no '..'`,
      { name },
    );
  }
  return name;
}

export function isName(name: string): boolean {
  return NAME.test(name) && !name.includes('..') && !LOOKS_HASHED.test(name);
}

/** A DRef from its parts: the hash of a canonical config and a checked name. */
export function makeDRef(hash: string, name: string): DRef {
  return `${hash}-${name}` as DRef;
}

/** A string that must be a DRef (E_BAD_REF otherwise). */
export function asDRef(ref: string): DRef {
  const p = parseRef(ref);
  if (p.kind !== 'drv')
    throw new CairnError('E_BAD_REF', `${ref} is an RRef; a DRef (<hash>-<name>) is needed here`, { ref });
  return p.dref;
}

/** A string that must be an RRef (E_BAD_REF otherwise). */
export function asRRef(ref: string): RRef {
  return parseRRef(ref).rref;
}

export type ParsedRef =
  { kind: 'drv'; dref: DRef; name: string } | { kind: 'rz'; rref: RRef; dref: DRef; rhash: string; name: string };

/** Parses a DRef or RRef, refusing anything that could not name a store path. */
export function parseRef(ref: string): ParsedRef {
  const r = RREF.exec(ref);
  if (r && isName(DREF.exec(r[2]!)![2]!)) {
    const dref = r[2]! as DRef;
    return { kind: 'rz', rref: ref as RRef, dref, rhash: r[1]!, name: DREF.exec(dref)![2]! };
  }
  const d = DREF.exec(ref);
  if (d && isName(d[2]!)) return { kind: 'drv', dref: ref as DRef, name: d[2]! };
  throw new CairnError(
    'E_BAD_REF',
    `${JSON.stringify(ref)} is not a DRef (<hash>-<name>) or an RRef (<hash>-<hash>-<name>)`,
    { ref },
  );
}

/** Whether `ref` is a well-formed DRef or RRef (what parseRef accepts). */
export function isRef(ref: string): boolean {
  const r = RREF.exec(ref);
  if (r && isName(DREF.exec(r[2]!)![2]!)) return true;
  const d = DREF.exec(ref);
  return d !== null && isName(d[2]!);
}

export function parseRRef(ref: string): Extract<ParsedRef, { kind: 'rz' }> {
  const p = parseRef(ref);
  if (p.kind !== 'rz')
    throw new CairnError('E_BAD_REF', `${ref} is a DRef; an RRef (<hash>-<hash>-<name>) is needed here`, { ref });
  return p;
}

export function makeRRef(rhash: string, dref: DRef): RRef {
  return `${rhash}-${dref}` as RRef;
}
