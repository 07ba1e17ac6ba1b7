/**
 * Ed25519 signatures of binary cache entries (node:crypto), in the manner
 * of Nix's binary cache keys: a key has a NAME, its public half is written
 * `NAME:BASE64(32 bytes)` and its secret half `NAME:BASE64(32-byte seed)`,
 * and a signature is `NAME:BASE64(64 bytes)`. The name tells a verifier
 * which trusted key to try; a signature counts only if it verifies under the
 * trusted key of that name, so a forger who reuses a trusted name fails.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { CairnError } from '../../errors.js';
import { writeFileAtomic } from '../atomic-file.js';

export interface SecretKey {
  name: string;
  key: crypto.KeyObject;
}

export interface PublicKey {
  name: string;
  key: crypto.KeyObject;
  /** `NAME:BASE64`, as written in config.json and .public files. */
  text: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

const b64url = (b: Buffer): string => b.toString('base64url');

function splitKey(text: string, what: string, bytes: number): { name: string; raw: Buffer } {
  const t = text.trim();
  const colon = t.indexOf(':');
  const name = t.slice(0, colon);
  const body = t.slice(colon + 1);
  const raw = colon > 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(body) ? Buffer.from(body, 'base64') : Buffer.alloc(0);
  if (!NAME.test(name) || raw.length !== bytes) {
    throw new CairnError('E_BAD_KEY', `not ${what} (NAME:BASE64 of ${bytes} bytes): ${JSON.stringify(t.slice(0, 80))}`);
  }
  return { name, raw };
}

/** Parses a public key `NAME:BASE64`. */
export function parsePublicKey(text: string): PublicKey {
  const { name, raw } = splitKey(text, 'an ed25519 public key', 32);
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(raw) }, format: 'jwk' });
  return { name, key, text: `${name}:${raw.toString('base64')}` };
}

/** Parses a secret key `NAME:BASE64(seed)`. */
export function parseSecretKey(text: string): SecretKey {
  const { name, raw } = splitKey(text, 'an ed25519 secret key', 32);
  // JWK needs the public half too: derive it from the seed.
  const priv = crypto.createPrivateKey({ key: pkcs8(raw), format: 'der', type: 'pkcs8' });
  return { name, key: priv };
}

/** The PKCS#8 DER of an ed25519 seed: a fixed 16-byte prefix (RFC 8410) and the seed. */
function pkcs8(seed: Buffer): Buffer {
  return Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
}

/** The public key of a secret key, as `NAME:BASE64`. */
export function publicKeyOf(secret: SecretKey): string {
  const jwk = crypto.createPublicKey(secret.key).export({ format: 'jwk' });
  return `${secret.name}:${Buffer.from(jwk.x!, 'base64url').toString('base64')}`;
}

/** A fresh key pair as the two texts of NAME.secret and NAME.public. */
export function generateKeyPair(name: string): { secret: string; public: string } {
  if (!NAME.test(name)) {
    throw new CairnError(
      'E_BAD_KEY',
      `a key name is letters, digits, '.', '_', '+' and '-' (up to 128): ${JSON.stringify(name)}`,
    );
  }
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  const d = Buffer.from(privateKey.export({ format: 'jwk' }).d!, 'base64url');
  const x = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return { secret: `${name}:${d.toString('base64')}\n`, public: `${name}:${x.toString('base64')}\n` };
}

/**
 * Writes PREFIX.secret (mode 0600) and PREFIX.public; refuses to overwrite
 * either, since losing a secret key orphans every signature made with it.
 */
export function writeKeyPair(
  prefix: string,
  name: string,
): { secretFile: string; publicFile: string; publicKey: string } {
  const pair = generateKeyPair(name);
  const secretFile = `${prefix}.secret`;
  const publicFile = `${prefix}.public`;
  for (const f of [secretFile, publicFile]) {
    if (fs.existsSync(f) || isLink(f))
      throw new CairnError('E_BAD_KEY', `${f} exists already; not overwriting a key`, { file: f });
  }
  writeFileAtomic(secretFile, pair.secret, { mode: 0o600, fsync: true });
  writeFileAtomic(publicFile, pair.public, { mode: 0o644, fsync: true });
  return { secretFile, publicFile, publicKey: pair.public.trim() };
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Reads a secret key file. */
export function readSecretKeyFile(file: string): SecretKey {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CairnError('E_BAD_KEY', `cannot read the secret key ${file}: ${(e as Error).message}`, { file });
  }
  return parseSecretKey(text);
}

/**
 * A trusted key given on the command line: the key text itself, or the
 * name of a .public file holding it.
 */
export function readTrustedKey(arg: string): PublicKey {
  if (!arg.includes(':') || fs.existsSync(arg)) {
    let text: string;
    try {
      text = fs.readFileSync(arg, 'utf8');
    } catch (e) {
      throw new CairnError(
        'E_BAD_KEY',
        `${arg} is neither NAME:BASE64 nor a readable key file: ${(e as Error).message}`,
      );
    }
    return parsePublicKey(text);
  }
  return parsePublicKey(arg);
}

/** Signs `message`: `NAME:BASE64(signature)`. */
export function sign(secret: SecretKey, message: string): string {
  return `${secret.name}:${crypto.sign(null, Buffer.from(message), secret.key).toString('base64')}`;
}

export type Verdict = 'ok' | 'unsigned' | 'untrusted' | 'bad-signature';

/**
 * Whether `signatures` make `message` trustworthy: 'ok' once one of them
 * verifies under the trusted key of its name. Otherwise why not: none at
 * all, none by a trusted name, or one by a trusted name that fails (the
 * message or the signature was changed).
 */
export function checkSignatures(
  message: string,
  signatures: readonly string[],
  trusted: readonly PublicKey[],
): Verdict {
  if (signatures.length === 0) return 'unsigned';
  let forged = false;
  for (const s of signatures) {
    const colon = s.indexOf(':');
    if (colon <= 0) continue;
    const name = s.slice(0, colon);
    const sig = Buffer.from(s.slice(colon + 1), 'base64');
    for (const k of trusted) {
      if (k.name !== name) continue;
      if (sig.length === 64 && crypto.verify(null, Buffer.from(message), k.key, sig)) return 'ok';
      forged = true;
    }
  }
  return forged ? 'bad-signature' : 'untrusted';
}

const VERDICT_CODE = {
  unsigned: 'E_CACHE_UNSIGNED',
  untrusted: 'E_CACHE_UNTRUSTED',
  'bad-signature': 'E_CACHE_BAD_SIGNATURE',
} as const;

/** The error for a verdict other than 'ok'. */
export function verdictError(verdict: Exclude<Verdict, 'ok'>, what: string): CairnError {
  const why = {
    unsigned: 'carries no signature',
    untrusted: 'is signed only by keys that are not trusted',
    'bad-signature': 'has a signature by a trusted key that does not verify: it was tampered with',
  }[verdict];
  return new CairnError(VERDICT_CODE[verdict], `${what} ${why}; not used`, { entry: what });
}
