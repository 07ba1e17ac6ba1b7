import { CairnError } from '../errors.js';
import { HASH_PATTERN } from './hash.js';

/** `<hash>-<name>`: the id of a derivation, the hash of its canonical config. */
export type DRef = string;
/** `<hash>-<dref>`: the id of one realization of a derivation. */
export type RRef = string;

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
    throw new CairnError('E_BAD_NAME',
      `stage name ${shown} is not allowed: use 1-100 of A-Z a-z 0-9 . _ + -, starting with a letter, digit or _, with no '..'`,
      { name });
  }
  return name;
}

export function isName(name: string): boolean {
  return NAME.test(name) && !name.includes('..') && !LOOKS_HASHED.test(name);
}

export type ParsedRef =
  | { kind: 'drv'; dref: DRef; name: string }
  | { kind: 'rz'; rref: RRef; dref: DRef; rhash: string; name: string };

/** Parses a DRef or RRef, refusing anything that could not name a store path. */
export function parseRef(ref: string): ParsedRef {
  const r = RREF.exec(ref);
  if (r && isName(DREF.exec(r[2]!)![2]!)) {
    const dref = r[2]!;
    return { kind: 'rz', rref: ref, dref, rhash: r[1]!, name: DREF.exec(dref)![2]! };
  }
  const d = DREF.exec(ref);
  if (d && isName(d[2]!)) return { kind: 'drv', dref: ref, name: d[2]! };
  throw new CairnError('E_BAD_REF', `${JSON.stringify(ref)} is not a DRef (<hash>-<name>) or an RRef (<hash>-<hash>-<name>)`, { ref });
}

export function parseRRef(ref: string): Extract<ParsedRef, { kind: 'rz' }> {
  const p = parseRef(ref);
  if (p.kind !== 'rz') throw new CairnError('E_BAD_REF', `${ref} is a DRef; an RRef (<hash>-<hash>-<name>) is needed here`, { ref });
  return p;
}

export function makeRRef(rhash: string, dref: DRef): RRef {
  return `${rhash}-${dref}`;
}
