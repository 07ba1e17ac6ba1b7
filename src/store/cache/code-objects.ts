/**
 * Code objects in a binary cache, so that a host with only the cache can
 * build a derivation (`cairn build-drv DREF --substituter URL`):
 *
 *   c/<hash>.json              a code object (store/code-object.ts), named by its hash: stored once
 *   p/<dref>/<hash>.json       a signed pointer: "code object <hash> defines <dref>"; one object per
 *                              (derivation, code object), so two pushers never overwrite each other's
 *   d/<dref>.json              the derivation itself, as for realizations
 *
 * A code object runs on whoever builds from it, so it is used only through
 * a pointer signed by a trusted key, which covers the derivation's sha256
 * and the code object's sha256 besides its name. A reader checks every
 * byte against what is signed before anything enters its store, and then
 * adds the code object before the derivation that points to it. A pusher
 * writes the code object and the derivation before the pointer, so a
 * pointer never names an object that is not there yet.
 */
import { CairnError } from '../../errors.js';
import { canonicalJson } from '../canonical.js';
import { isCodeName, parseCodeObject } from '../code-object.js';
import { sha256Hex, shortHash } from '../hash.js';
import { parseRef, type DRef } from '../refs.js';
import type { LocalStore } from '../store.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, addCacheTempRoot, mapLimit } from './entries.js';
import { drvKey, drvMatches } from './format.js';
import {
  checkSignatures,
  parsePublicKey,
  publicKeyOf,
  sign,
  verdictError,
  type PublicKey,
  type SecretKey,
} from './sign.js';

export const CODE_POINTER_FORMAT = 'cairn-cache-code-1';
export const codeKey = (hash: string): string => `c/${hash}.json`;
export const codePointerPrefix = (dref: DRef): string => `p/${dref}/`;
export const codePointerKey = (dref: DRef, hash: string): string => `p/${dref}/${hash}.json`;

/** A signed statement that a code object defines a derivation. */
export interface CodePointer {
  format: typeof CODE_POINTER_FORMAT;
  dref: DRef;
  /** sha256 (hex) of the derivation's drv.json. */
  drv: string;
  /** The code object's name. */
  code: string;
  /** sha256 (hex) of the code object's text. */
  codeSha256: string;
  /** When it was written (ms): cache gc's age of an unbuilt derivation; unsigned, as no reader acts on it. */
  created?: number;
  signatures: string[];
}

/** What a pointer's signatures cover: every field but the signatures, as canonical JSON. */
export function pointerFingerprint(p: Omit<CodePointer, 'signatures'>): string {
  const { format, dref, drv, code, codeSha256 } = p;
  return `${CODE_POINTER_FORMAT}:${canonicalJson({ format, dref, drv, code, codeSha256 })}`;
}

const SHA256 = /^[0-9a-f]{64}$/;

/** The (dref, code) a `p/<dref>/<hash>.json` key names, or null for another key. */
export function pointerOfKey(key: string): { dref: DRef; code: string } | null {
  const m = /^p\/([^/]+)\/([^/]+)\.json$/.exec(key);
  if (!m || !isCodeName(m[2]!)) return null;
  try {
    const p = parseRef(m[1]!);
    return p.kind === 'drv' ? { dref: p.dref, code: m[2]! } : null;
  } catch {
    return null;
  }
}

/** Parses a pointer read from `key`: well formed and naming what its key names (signatures checked apart). */
export function parsePointer(text: string, key: string): CodePointer {
  const bad = (why: string): CairnError =>
    new CairnError('E_CACHE_BAD_ENTRY', `code pointer ${key} is malformed: ${why}`, { key });
  const named = pointerOfKey(key);
  if (named === null) throw bad('its key names no derivation and code object');
  let p: CodePointer;
  try {
    p = JSON.parse(text) as CodePointer;
  } catch {
    throw bad('not JSON');
  }
  if (typeof p !== 'object' || p === null || p.format !== CODE_POINTER_FORMAT)
    throw bad(`format is not ${CODE_POINTER_FORMAT}`);
  if (p.dref !== named.dref || p.code !== named.code) throw bad('it names another derivation or code object');
  if (typeof p.drv !== 'string' || !SHA256.test(p.drv)) throw bad('drv is not a sha256');
  if (typeof p.codeSha256 !== 'string' || !SHA256.test(p.codeSha256)) throw bad('codeSha256 is not a sha256');
  if (!Array.isArray(p.signatures) || !p.signatures.every((s) => typeof s === 'string')) throw bad('signatures');
  if (p.created !== undefined && (typeof p.created !== 'number' || !Number.isFinite(p.created))) throw bad('created');
  return p;
}

export interface CodePushReport {
  /** Derivations whose pointer this push wrote. */
  pointers: DRef[];
  /** Code objects uploaded (one the cache had is not uploaded again). */
  code: string[];
}

/**
 * Pushes the code objects of those of `drefs` that have one in `local`,
 * with their derivations and signed pointers. Objects the cache has are not
 * uploaded again; a pointer already signed by this key is left as it is.
 */
export async function pushDerivationCode(
  local: LocalStore,
  blob: BlobStore,
  drefs: readonly DRef[],
  key: SecretKey,
  limit = PARALLEL,
): Promise<CodePushReport> {
  const items: { dref: DRef; drvText: string; code: string; text: string }[] = [];
  for (const dref of [...new Set(drefs)].sort()) {
    const code = await local.derivationCode(dref);
    if (code === undefined) continue;
    const drvText = await local.derivation(dref);
    const text = await local.readCode(code);
    if (drvText === undefined || text === undefined) continue;
    items.push({ dref, drvText, code, text });
  }
  if (items.length === 0) return { pointers: [], code: [] };
  // Claimed for the push, so a concurrent cache gc leaves what it uploads before the pointers name it.
  const claim = await addCacheTempRoot(
    blob,
    items.map((i) => i.dref),
    items.flatMap((i) => [codeKey(i.code), drvKey(i.dref)]),
  );
  try {
    return await pushItems(blob, items, key, limit);
  } finally {
    await claim.release().catch(() => undefined);
  }
}

async function pushItems(
  blob: BlobStore,
  items: readonly { dref: DRef; drvText: string; code: string; text: string }[],
  key: SecretKey,
  limit: number,
): Promise<CodePushReport> {
  const there = await blob.has([
    ...new Set(items.flatMap((i) => [codeKey(i.code), drvKey(i.dref), codePointerKey(i.dref, i.code)])),
  ]);
  const codes = [...new Map(items.map((i) => [i.code, i.text]))].filter(([c]) => !there.has(codeKey(c)));
  await mapLimit(codes, limit, ([c, text]) =>
    blob.put(codeKey(c), Buffer.from(text), { contentType: 'application/json' }),
  );
  const drvs = items.filter((i) => !there.has(drvKey(i.dref)));
  await mapLimit(drvs, limit, (i) =>
    blob.put(drvKey(i.dref), Buffer.from(i.drvText), { contentType: 'application/json' }),
  );
  const ours = parsePublicKey(publicKeyOf(key));
  const written = await mapLimit(items, limit, async (i) => {
    const k = codePointerKey(i.dref, i.code);
    const unsigned = {
      format: CODE_POINTER_FORMAT,
      dref: i.dref,
      drv: sha256Hex(i.drvText),
      code: i.code,
      codeSha256: sha256Hex(i.text),
    } as const;
    let others: string[] = [];
    if (there.has(k)) {
      const body = await blob.get(k);
      try {
        const old = parsePointer(body?.toString('utf8') ?? '', k);
        if (pointerFingerprint(old) === pointerFingerprint(unsigned)) {
          if (checkSignatures(pointerFingerprint(old), old.signatures, [ours]) === 'ok') return false;
          // Another key's signature of the same statement stays beside ours (as cache push does for entries).
          others = old.signatures.filter((s) => !s.startsWith(`${key.name}:`));
        }
      } catch {
        /* malformed: replaced */
      }
    }
    const p: CodePointer = {
      ...unsigned,
      created: Date.now(),
      signatures: [...others, sign(key, pointerFingerprint(unsigned))],
    };
    await blob.put(k, Buffer.from(JSON.stringify(p, null, 1) + '\n'), { contentType: 'application/json' });
    return true;
  });
  return { pointers: items.filter((_, n) => written[n]).map((i) => i.dref), code: codes.map(([c]) => c) };
}

export interface FetchedDerivation {
  dref: DRef;
  code: string;
  /** False when the store had the derivation and its code object already. */
  fetched: boolean;
}

/**
 * Makes `dref` and a code object that defines it present in `local`,
 * fetching them from the cache when the store lacks either: the first
 * pointer signed by a trusted key whose derivation and code object match
 * every signed hash. Nothing enters the store unless all of it checks out;
 * the first refusal is the error when no pointer counts.
 */
export async function fetchDerivationCode(
  blob: BlobStore,
  local: LocalStore,
  dref: DRef,
  trusted: readonly PublicKey[],
): Promise<FetchedDerivation> {
  const haveDrv = await local.derivation(dref);
  const haveCode = haveDrv === undefined ? undefined : await local.derivationCode(dref);
  // A damaged local copy counts as missing: the fetched one replaces it (addCodeText).
  if (haveCode !== undefined && (await local.readCode(haveCode).catch(() => undefined)) !== undefined)
    return { dref, code: haveCode, fetched: false };
  const keys: string[] = [];
  for await (const k of blob.list(codePointerPrefix(dref))) if (pointerOfKey(k)?.dref === dref) keys.push(k);
  if (keys.length === 0) {
    throw new CairnError(
      'E_CACHE_MISSING',
      `${blob.url} has no code object for ${dref}: push the derivation with cache push from a store that ` +
        'realized its stage file with self-contained code',
      { url: blob.url, ref: dref },
    );
  }
  let first: unknown;
  for (const k of keys.sort()) {
    try {
      const got = await checkedPointer(blob, k, dref, trusted, haveDrv);
      // Everything checked: the code object enters first, then the derivation pointing to it.
      await local.addCode(got.text);
      await local.addDerivations([{ dref, name: parseRef(dref).name, drvJson: got.drvText, code: got.code }]);
      return { dref, code: got.code, fetched: true };
    } catch (e) {
      if (!(e instanceof CairnError) || e.code === 'E_CACHE_UNAVAILABLE') throw e;
      first ??= e;
    }
  }
  throw first;
}

/** A code pointer `cache verify` finds wrong: its key, the code a reader would refuse it with, and why. */
export interface CodeProblem {
  key: string;
  code: string;
  detail: string;
}

/**
 * What a reader would refuse among the cache's code pointers: each must be
 * well formed, signed by a trusted key (when keys are given), and name a
 * derivation and code object that exist and match its hashes (only their
 * existence with `shallow`).
 */
export async function verifyCodePointers(
  blob: BlobStore,
  opts: { trustedKeys?: readonly PublicKey[]; shallow?: boolean } = {},
): Promise<{ pointers: number; problems: CodeProblem[] }> {
  const keys: string[] = [];
  for await (const k of blob.list('p/')) keys.push(k);
  const problems: CodeProblem[] = [];
  await mapLimit(keys.sort(), PARALLEL, async (key) => {
    try {
      const named = pointerOfKey(key);
      if (named === null) throw new CairnError('E_CACHE_BAD_ENTRY', `${key} is not a code pointer's key`, { key });
      if (opts.shallow) {
        const body = await blob.get(key);
        const p = parsePointer(body?.toString('utf8') ?? '', key);
        if (opts.trustedKeys !== undefined) {
          const verdict = checkSignatures(pointerFingerprint(p), p.signatures, opts.trustedKeys);
          if (verdict !== 'ok') throw verdictError(verdict, `${blob.url}: code pointer ${key}`);
        }
        const there = await blob.has([drvKey(p.dref), codeKey(p.code)]);
        for (const k of [drvKey(p.dref), codeKey(p.code)]) if (!there.has(k)) throw gone(blob, k);
      } else await checkedPointer(blob, key, named.dref, opts.trustedKeys, undefined);
    } catch (e) {
      if (!(e instanceof CairnError) || e.code === 'E_CACHE_UNAVAILABLE') throw e;
      problems.push({ key, code: e.code, detail: e.message });
    }
  });
  return { pointers: keys.length, problems: problems.sort((a, b) => (a.key < b.key ? -1 : 1)) };
}

/**
 * The pointer at `key`, trusted (unless `trusted` is undefined: verify without keys), with its derivation
 * and code object, each checked against what is signed.
 */
async function checkedPointer(
  blob: BlobStore,
  key: string,
  dref: DRef,
  trusted: readonly PublicKey[] | undefined,
  haveDrv: string | undefined,
): Promise<{ code: string; text: string; drvText: string }> {
  const body = await blob.get(key);
  if (body === undefined) throw gone(blob, key);
  const p = parsePointer(body.toString('utf8'), key);
  const verdict = trusted === undefined ? 'ok' : checkSignatures(pointerFingerprint(p), p.signatures, trusted);
  if (verdict !== 'ok') throw verdictError(verdict, `${blob.url}: code pointer ${key}`);
  let drvText = haveDrv;
  if (drvText === undefined) {
    const d = await blob.get(drvKey(dref));
    if (d === undefined) throw gone(blob, drvKey(dref));
    drvText = d.toString('utf8').replace(/\n$/, '');
    if (!drvMatches(dref, drvText, shortHash))
      throw mismatch(blob, `${drvKey(dref)} does not hash to its DRef`, { dref });
  }
  if (sha256Hex(drvText) !== p.drv) throw mismatch(blob, `${drvKey(dref)} is not the signed derivation`, { dref });
  const c = await blob.get(codeKey(p.code));
  if (c === undefined) throw gone(blob, codeKey(p.code));
  // Its name, size, fields and canonical form (E_CODE_CORRUPT), then the signed sha256.
  parseCodeObject(c, p.code);
  if (sha256Hex(c) !== p.codeSha256) throw mismatch(blob, `${codeKey(p.code)} is not the signed code object`, { dref });
  return { code: p.code, text: c.toString('utf8'), drvText };
}

const gone = (blob: BlobStore, key: string): CairnError =>
  new CairnError('E_CACHE_MISSING', `${blob.url} lacks ${key}, which a code pointer names`, {
    url: blob.url,
    keys: [key],
  });

const mismatch = (blob: BlobStore, why: string, data: Record<string, unknown>): CairnError =>
  new CairnError('E_SYNC_HASH_MISMATCH', `${blob.url}: ${why}`, { url: blob.url, ...data });
