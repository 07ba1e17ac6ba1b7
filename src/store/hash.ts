import { createHash } from 'node:crypto';

/**
 * Nix's base32 alphabet (no e, o, u, t), so hashes never spell words and are
 * safe in file names on every filesystem.
 */
const ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

/** Length of every Cairn hash as text: 160 bits in 5-bit digits. */
export const HASH_CHARS = 32;
export const HASH_PATTERN = `[${ALPHABET}]{${HASH_CHARS}}`;

/** Base32 of the first 160 bits of a digest, most significant bit first. */
export function base32(digest: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < 20; i++) {
    acc = (acc << 8) | digest[i]!;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(acc >>> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  return out;
}

/** The short hash used in every DRef and RRef: sha256, truncated to 160 bits, base32. */
export function shortHash(text: string): string {
  return base32(createHash('sha256').update(text).digest());
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
