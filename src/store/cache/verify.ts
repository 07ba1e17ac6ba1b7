/**
 * `cairn cache verify`: what a reader would refuse, for every entry of a
 * cache. Each entry must be well formed, signed by a trusted key (when keys
 * are given), name an archive, log and derivation that exist, have its
 * dependencies in the cache, and (unless `shallow`) its archive must unpack
 * safely to a tree that hashes to the entry's tree hash and sizes. Code
 * pointers are checked as build-drv would take them (code-objects.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { removeTree } from '../fsutil.js';
import type { RRef } from '../refs.js';
import { walkTree } from '../tree.js';
import { fetchObject, unpackTree } from './archive.js';
import type { BlobStore } from './blob.js';
import { PARALLEL, checkTrust, listRRefs, mapLimit, readInfo } from './entries.js';
import { archiveKindOf, blobsOf, depsOf, drvKey, entryKey, parseEntry, type CacheEntry } from './format.js';
import type { PublicKey } from './sign.js';
import { verifyCodePointers, type CodeProblem } from './code-objects.js';

export interface CacheProblem {
  rref: RRef;
  code: string;
  detail: string;
}

export interface CacheVerifyReport {
  entries: number;
  ok: number;
  problems: CacheProblem[];
  /** Code pointers (code-objects.ts) checked, and what a reader would refuse among them. */
  codePointers: number;
  codeProblems: CodeProblem[];
}

export async function verifyCache(
  blob: BlobStore,
  opts: { trustedKeys?: readonly PublicKey[]; shallow?: boolean } = {},
): Promise<CacheVerifyReport> {
  await readInfo(blob);
  const rrefs = await listRRefs(blob);
  const problems: CacheProblem[] = [];
  const entries = new Map<RRef, CacheEntry>();
  const bodies = await mapLimit(rrefs, PARALLEL, (r) => blob.get(entryKey(r)));
  rrefs.forEach((rref, i) => {
    try {
      const e = parseEntry(bodies[i]?.toString('utf8') ?? '', entryKey(rref));
      if (opts.trustedKeys !== undefined) checkTrust(e, opts.trustedKeys, blob.url);
      entries.set(rref, e);
    } catch (err) {
      const c = err instanceof CairnError ? err.code : 'E_CACHE_BAD_ENTRY';
      problems.push({ rref, code: c, detail: (err as Error).message });
    }
  });
  const needs = (e: CacheEntry): string[] => [...blobsOf(e), drvKey(e.dref)];
  const there = await blob.has([...new Set([...entries.values()].flatMap(needs))]);
  const good = new Set<RRef>();
  for (const [rref, e] of entries) {
    const gone = needs(e).filter((k) => !there.has(k));
    const dep = depsOf(e).find((d) => !entries.has(d));
    if (gone.length > 0) problems.push({ rref, code: 'E_CACHE_MISSING', detail: `missing ${gone.join(', ')}` });
    else if (dep !== undefined)
      problems.push({ rref, code: 'E_CACHE_MISSING', detail: `its dependency ${dep} is not usable` });
    else good.add(rref);
  }
  if (!opts.shallow) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-cache-verify-'));
    try {
      const byTree = new Map<string, CacheEntry[]>();
      for (const r of good) {
        const e = entries.get(r)!;
        (byTree.get(e.tree) ?? byTree.set(e.tree, []).get(e.tree)!).push(e);
      }
      let n = 0;
      await mapLimit([...byTree], 4, async ([tree, es]) => {
        const dir = path.join(tmp, String(++n));
        fs.mkdirSync(dir);
        const detail = await checkArchive(blob, tree, es[0]!, dir);
        removeTree(dir);
        if (detail !== null) {
          for (const e of es) {
            good.delete(e.rref);
            problems.push({ rref: e.rref, code: detail.code, detail: detail.detail });
          }
        }
      });
    } finally {
      removeTree(tmp);
    }
  }
  const code = await verifyCodePointers(blob, opts);
  return { entries: rrefs.length, ok: good.size, problems, codePointers: code.pointers, codeProblems: code.problems };
}

async function checkArchive(
  blob: BlobStore,
  tree: string,
  e: CacheEntry,
  dir: string,
): Promise<{ code: string; detail: string } | null> {
  try {
    const kind = archiveKindOf(e.archive);
    const file = path.join(dir, `a.${kind}`);
    if (e.inlineArchive !== null) fs.writeFileSync(file, Buffer.from(e.inlineArchive, 'base64'));
    else {
      if (!(await fetchObject(blob, e.archive, file)))
        return { code: 'E_CACHE_MISSING', detail: `${e.archive} vanished` };
    }
    const into = path.join(dir, 'x');
    fs.mkdirSync(into);
    await unpackTree(file, into, kind);
    const t = await walkTree(path.join(into, 'out'), { seal: false });
    if (t.treeHash !== tree || t.bytes !== e.bytes || t.files !== e.files) {
      return { code: 'E_SYNC_HASH_MISMATCH', detail: `${e.archive} hashes to ${t.treeHash}, not ${tree}` };
    }
    return null;
  } catch (err) {
    return { code: err instanceof CairnError ? err.code : 'E_BAD_ARCHIVE', detail: (err as Error).message };
  }
}
