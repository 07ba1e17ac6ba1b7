import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { CairnError } from '../../errors.js';
import { walkTree } from '../../store/tree.js';

/**
 * Declared content hashes. Files use sha256 or sha512 of their bytes;
 * directories use `tree-sha256`, Cairn's NAR-style tree hash (what
 * `cairn hash DIR` prints). Accepted as hex, or as SRI (`sha256-<base64>`).
 */
export type HashType = 'sha256' | 'sha512' | 'tree-sha256';
export interface ContentHash {
  type: HashType;
  hex: string;
}

const HEX_LENGTH: Record<HashType, number> = { sha256: 64, sha512: 128, 'tree-sha256': 64 };

export function isHashType(t: unknown): t is HashType {
  return t === 'sha256' || t === 'sha512' || t === 'tree-sha256';
}

/** Normalises a declared hash to lowercase hex, refusing anything malformed with E_BAD_HASH. */
export function parseHash(value: unknown, type?: unknown): ContentHash {
  if (typeof value !== 'string' || value === '')
    throw new CairnError('E_BAD_HASH', 'a hash is required (sha256 or sha512)');
  let t = type;
  let text = value.trim();
  const sri = /^(sha256|sha512)-([A-Za-z0-9+/]+={0,2})$/.exec(text);
  if (sri) {
    t ??= sri[1];
    if (t !== sri[1])
      throw new CairnError('E_BAD_HASH', `hash ${value} is ${sri[1]}, but hash_type says ${String(type)}`);
    text = Buffer.from(sri[2]!, 'base64').toString('hex');
  }
  const prefixed = /^(sha256|sha512|tree-sha256):([0-9a-fA-F]+)$/.exec(text);
  if (prefixed) {
    t ??= prefixed[1];
    if (t !== prefixed[1])
      throw new CairnError('E_BAD_HASH', `hash ${value} is ${prefixed[1]}, but hash_type says ${String(type)}`);
    text = prefixed[2]!;
  }
  t ??= text.length === 128 ? 'sha512' : 'sha256';
  if (!isHashType(t))
    throw new CairnError('E_BAD_HASH', `unknown hash type ${JSON.stringify(t)}; use sha256 or sha512`, { hashType: t });
  if (!/^[0-9a-fA-F]+$/.test(text) || text.length !== HEX_LENGTH[t]) {
    throw new CairnError('E_BAD_HASH', `${JSON.stringify(value)} is not a ${t} hash (${HEX_LENGTH[t]} hex digits)`, {
      hash: value,
      hashType: t,
    });
  }
  return { type: t, hex: text.toLowerCase() };
}

export const showHash = (h: ContentHash): string => `${h.type}:${h.hex}`;

/** Hashes a file (streamed) or, for `tree-sha256`, a directory tree. */
export async function hashPath(p: string, type: HashType): Promise<ContentHash> {
  if (type === 'tree-sha256') return { type, hex: (await walkTree(p, { seal: false })).treeHash };
  const h = createHash(type);
  for await (const chunk of fs.createReadStream(p, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return { type, hex: h.digest('hex') };
}

/** Throws E_HASH_MISMATCH, showing both hashes, unless `p` has the expected hash. */
export async function checkHash(p: string, expected: ContentHash, what: string): Promise<void> {
  const actual = await hashPath(p, expected.type);
  if (actual.hex !== expected.hex) {
    throw new CairnError('E_HASH_MISMATCH', `${what} has ${showHash(actual)}, but ${showHash(expected)} was declared`, {
      expected: showHash(expected),
      actual: showHash(actual),
    });
  }
}
