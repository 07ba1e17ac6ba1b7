/**
 * Taking a closure into a store from a staging directory that mirrors the
 * store layout (`STAGE/d/<dref>/drv.json`, `STAGE/d/<dref>/r/<rhash>/…`).
 * Sync (rsync into ROOT/incoming/<key>) and import (a tar extracted into
 * ROOT/tmp) share this one path, so what is verified is the same for both:
 *
 *  - a derivation's drv.json must hash to its DRef;
 *  - a realization's directory must hold only out/, meta.json and
 *    build.log; meta.json must name it and hash its own context; out/ must
 *    hash to meta's tree hash and sizes; and (dref, context, tree) must hash
 *    to the RRef's hash, exactly as when it was built;
 *  - every realization in its context must be in the store already or be
 *    accepted in the same batch, and its derivation likewise.
 *
 * A realization that fails is refused (moved to ROOT/quarantine/ when its
 * content is wrong) and so is everything built from it. The rest enters
 * the store the way a build's output does (Store.publish / Store.record):
 * sealed read-only while hashed, then one rename each, dependencies before
 * dependants, then the index rows, so no reader ever sees part of one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { fsyncAll, withRegularFile, type FsPath } from './fsutil.js';
import { addCodeText, codePath, writeCodePointer } from './code-files.js';
import { parseCodeObject } from './code-object.js';
import { shortHash } from './hash.js';
import { parseRef, parseRRef, type DRef, type RRef } from './refs.js';
import {
  contextHash,
  realizationHash,
  type Context,
  type Published,
  type RealizationMeta,
  type LocalStore,
} from './store.js';
import { drvFiles, storeIndex } from './internals.js';
import { dependencyOrder, type ClosureManifest, type ClosureNode } from './sync-plan.js';
import { walkTree } from './tree.js';

export interface Refusal {
  ref: RRef | DRef;
  reason: string;
  kind: 'hash' | 'closure';
}

export interface ReceiveReport {
  /** Realizations that entered the store, in the order they did. */
  received: RRef[];
  /** Realizations of the manifest the store had already. */
  present: RRef[];
  /** Derivations whose drv.json entered the store. */
  drvs: DRef[];
  refused: Refusal[];
}

export interface ReceiveOptions {
  /** Refuse everything if anything is refused (import): the store is left exactly as it was. */
  allOrNothing?: boolean;
}

/** How many realizations are renamed into place before their index rows are written in one round. */
const BATCH = 64;
const ALLOWED = new Set(['out', 'meta.json', 'build.log']);

interface Checked {
  rref: RRef;
  dir: string;
  meta: RealizationMeta;
  toSync: FsPath[];
}

/** A real directory (not a symlink to one), or null. */
function isRealDir(p: string): boolean {
  try {
    return fs.lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The staged copy of a realization's directory, if every component of its path is a real directory. */
function stagedDir(staging: string, rref: RRef): string | null {
  const p = parseRRef(rref);
  const parts = [
    path.join(staging, 'd'),
    path.join(staging, 'd', p.dref),
    path.join(staging, 'd', p.dref, 'r'),
    path.join(staging, 'd', p.dref, 'r', p.rhash),
  ];
  return parts.every(isRealDir) ? parts[3]! : null;
}

function isContext(v: unknown): v is Context {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  for (const [dref, rrefs] of Object.entries(v as Record<string, unknown>)) {
    if (!Array.isArray(rrefs)) return false;
    for (const r of rrefs) {
      if (typeof r !== 'string') return false;
      try {
        if (parseRRef(r).dref !== dref) return false;
      } catch {
        return false;
      }
    }
  }
  return true;
}

/**
 * Re-hashes one staged realization against its name, sealing it read-only
 * on the way (the modes rsync or tar gave it do not matter). Returns what is
 * wrong, or its metadata.
 */
async function checkStaged(dir: string, rref: RRef): Promise<{ meta: RealizationMeta; toSync: FsPath[] } | string> {
  const p = parseRRef(rref);
  for (const name of fs.readdirSync(dir)) {
    if (!ALLOWED.has(name)) return `unexpected entry ${JSON.stringify(name)} next to out/`;
  }
  if (!isRealDir(path.join(dir, 'out'))) return 'out/ is missing or not a directory';
  let meta: RealizationMeta;
  try {
    // Read without following a link and never chmod-ed: it may be a hard link to a file
    // outside the store, and writeMeta replaces it with a fresh file anyway.
    const text = withRegularFile(path.join(dir, 'meta.json'), (fd) => fs.readFileSync(fd, 'utf8'));
    if (text === null) return 'meta.json is not a regular file';
    meta = JSON.parse(text) as RealizationMeta;
  } catch {
    return 'meta.json is missing or not JSON';
  }
  if (typeof meta !== 'object' || meta === null || meta.format !== 'cairn-realization-1')
    return 'meta.json is not realization metadata';
  if (meta.rref !== rref || meta.dref !== p.dref || meta.name !== p.name) return 'meta.json names another realization';
  if (!isContext(meta.context)) return 'the context in meta.json is malformed';
  if (meta.ctx !== contextHash(meta.context)) return 'the context hash in meta.json does not match its context';
  if (typeof meta.created !== 'number' || typeof meta.buildMs !== 'number') return 'meta.json lacks its times';
  const log = path.join(dir, 'build.log');
  if (fs.existsSync(log) || isSymlink(log)) {
    // Served by `cairn log`: a symlink here could expose any file.
    if (!sealLog(log)) return 'build.log is not a regular file';
  }
  let tree;
  try {
    tree = await walkTree(path.join(dir, 'out'), { seal: true });
  } catch (e) {
    return `output cannot be hashed: ${(e as Error).message}`;
  }
  if (tree.treeHash !== meta.tree) return `output hashes to ${tree.treeHash}, but meta.json says ${meta.tree}`;
  if (tree.bytes !== meta.bytes || tree.files !== meta.files) return 'output sizes differ from meta.json';
  if (realizationHash(meta.dref, meta.context, meta.tree) !== p.rhash)
    return 'derivation, context and tree do not hash to the RRef';
  return { meta, toSync: tree.toSync };
}

/**
 * Seals a staged build.log read-only. One with other hard links (to a file
 * outside the store, say) is replaced by a copy under a fresh name first:
 * its chmod would change the outside file, and the store's log would share
 * its inode. False when it is not a regular file.
 */
function sealLog(log: string): boolean {
  const r = withRegularFile(log, (fd, st) => {
    if (st.nlink === 1) {
      if ((st.mode & 0o7777) !== 0o444) fs.fchmodSync(fd, 0o444);
    } else {
      writeFileAtomic(log, fs.readFileSync(fd), { mode: 0o444 });
    }
    return true;
  });
  return r === true;
}

function isSymlink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** drv.json must hash to its DRef, as `cairn store verify` checks it. */
function checkDrv(staging: string, dref: DRef): { text: string } | string {
  const file = path.join(staging, 'd', dref, 'drv.json');
  if (!isRealDir(path.join(staging, 'd')) || !isRealDir(path.join(staging, 'd', dref)))
    return 'its directory is missing';
  let text: string;
  try {
    if (!fs.lstatSync(file).isFile()) return 'drv.json is not a regular file';
    text = fs.readFileSync(file, 'utf8').replace(/\n$/, '');
  } catch {
    return 'drv.json is missing';
  }
  if (`${shortHash(text)}-${parseRef(dref).name}` !== dref) return 'drv.json does not hash to the DRef';
  return { text };
}

const drvPresent = (store: LocalStore, dref: DRef): boolean =>
  storeIndex(store).hasDrv(dref) || fs.existsSync(path.join(store.drvDir(dref), 'drv.json'));

/**
 * Receives the closure described by `manifest` from `staging` into `store`.
 * Safe against concurrent realize and gc on the same store: the closure's
 * derivations are declared as temporary roots before anything is checked
 * (the same ordering argument as realize's, see gc.ts), and receives of the
 * same staging directory are serialised by a lock. Throws
 * E_SYNC_HASH_MISMATCH (content refused) or E_BAD_CLOSURE (a dependency
 * neither present nor sent) after taking in everything that was sound.
 */
export async function receiveClosure(
  store: LocalStore,
  staging: string,
  manifest: ClosureManifest,
  opts: ReceiveOptions = {},
): Promise<ReceiveReport> {
  return store.withLock(`receive:${path.basename(staging)}`, `receiving into ${staging}`, async () => {
    const drefs = new Set<DRef>([...manifest.drefs, ...manifest.drvs, ...manifest.rrefs.map((r) => parseRRef(r).dref)]);
    const roots = await store.addTempRoots([...drefs], 'receive');
    try {
      return await receiveLocked(store, staging, manifest, opts);
    } finally {
      await roots.release();
    }
  });
}

async function receiveLocked(
  store: LocalStore,
  staging: string,
  manifest: ClosureManifest,
  opts: ReceiveOptions,
): Promise<ReceiveReport> {
  const refused: Refusal[] = [];
  const refusedSet = new Set<string>();
  const refuse = (ref: RRef | DRef, reason: string, kind: Refusal['kind']): void => {
    if (refusedSet.has(ref)) return;
    refusedSet.add(ref);
    refused.push({ ref, reason, kind });
  };

  // Derivations first: each drv.json checked against its DRef.
  const drvTexts = new Map<DRef, string>();
  for (const dref of new Set(manifest.drvs)) {
    if (drvPresent(store, dref)) continue;
    const r = checkDrv(staging, dref);
    if (typeof r === 'string') refuse(dref, r, 'hash');
    else drvTexts.set(dref, r.text);
  }

  // Their code objects (sent, or already here), each checked against its name.
  const codeTexts = new Map<string, string>();
  const pointers = new Map<DRef, string>();
  for (const [dref, hash] of Object.entries(manifest.code ?? {}) as [DRef, string][]) {
    if (!drvTexts.has(dref)) continue;
    const r = checkCode(store, staging, hash);
    if ('why' in r) {
      if (!r.missing) {
        refuse(dref, r.why, 'hash');
        drvTexts.delete(dref);
      }
      continue;
    }
    if ('text' in r) codeTexts.set(hash, r.text);
    pointers.set(dref, hash);
  }

  // Then every realization, independently of order.
  const present: RRef[] = [];
  const checked = new Map<RRef, Checked>();
  const recovered = new Map<RRef, RealizationMeta>();
  const badContent = new Map<RRef, string>();
  for (const rref of new Set(manifest.rrefs)) {
    if (store.has(rref)) {
      present.push(rref);
      continue;
    }
    const dir = stagedDir(staging, rref);
    if (dir === null) {
      // A receive killed between its rename and its index row left the
      // realization in place: take it if it is intact.
      if (fs.existsSync(store.rzDir(rref))) {
        const problem = await store.inspect(rref);
        if (problem === null || problem.kind === 'writable') {
          if (problem) await store.reseal(rref);
          recovered.set(rref, store.readMeta(rref));
          continue;
        }
      }
      refuse(rref, 'it is not in the staging directory', 'closure');
      continue;
    }
    const r = await checkStaged(dir, rref);
    if (typeof r === 'string') {
      refuse(rref, r, 'hash');
      badContent.set(rref, dir);
    } else {
      checked.set(rref, { rref, dir, ...r });
    }
  }

  // Accept in dependency order: a realization needs its derivation and
  // every realization of its context, in the store or accepted here.
  const nodes: ClosureNode[] = manifest.rrefs.map((rref) => {
    const meta = checked.get(rref)?.meta ?? recovered.get(rref);
    return { rref, deps: meta ? Object.values(meta.context).flat() : [] };
  });
  const accepted = new Set<RRef>();
  const order = dependencyOrder(nodes).filter((r) => checked.has(r) || recovered.has(r));
  const deps = new Map(nodes.map((n) => [n.rref, n.deps] as const));
  for (const rref of order) {
    const dref = parseRRef(rref).dref;
    if (!drvTexts.has(dref) && !drvPresent(store, dref)) {
      refuse(
        rref,
        refusedSet.has(dref)
          ? `its derivation ${dref} was refused`
          : `its derivation ${dref} was neither sent nor present`,
        'closure',
      );
      continue;
    }
    const missing = deps.get(rref)!.find((d) => !accepted.has(d) && !store.has(d));
    if (missing !== undefined) {
      refuse(
        rref,
        refusedSet.has(missing)
          ? `it was built from ${missing}, which was refused`
          : `it was built from ${missing}, which was neither sent nor present`,
        'closure',
      );
      continue;
    }
    accepted.add(rref);
  }

  const all = opts.allOrNothing && refused.length > 0;
  const received: RRef[] = [];
  const drvs: DRef[] = [];
  if (!all) {
    // d/ makes the derivation directories durable: once, in the first round.
    let pendingSync: FsPath[] = drvTexts.size > 0 ? [drvFiles(store).parent] : [];
    for (const [dref, text] of drvTexts) {
      pendingSync.push(...drvFiles(store).ensure(dref, parseRef(dref).name, text));
      drvs.push(dref);
    }
    // Code first, then the pointers to it (durable on their own: see code-files.ts).
    for (const text of codeTexts.values()) addCodeText(store.root, store.owner, text);
    for (const [dref, hash] of pointers) writeCodePointer(store.drvDir(dref), hash);
    const toPublish = order.filter((r) => accepted.has(r));
    for (let i = 0; i < toPublish.length; i += BATCH) {
      const batch = toPublish.slice(i, i + BATCH);
      // One fsync round for the whole batch (about one journal commit),
      // then one rename each, dependencies first, then the index rows:
      // the index never names a realization a crash could lose.
      const metas = new Map<RRef, RealizationMeta>();
      for (const rref of batch) {
        const c = checked.get(rref);
        if (!c) continue;
        pendingSync.push(...c.toSync, ...store.metaSyncPaths(c.dir));
        metas.set(rref, writeMeta(store, c));
      }
      await fsyncAll(pendingSync);
      pendingSync = [];
      const published: Published[] = [];
      for (const rref of batch) {
        const rec = recovered.get(rref);
        published.push(
          rec
            ? { meta: rec, merged: true, parent: path.dirname(store.rzDir(rref)) }
            : await store.place(checked.get(rref)!.dir, metas.get(rref)!),
        );
        received.push(rref);
      }
      await store.record(published);
    }
    if (pendingSync.length > 0) await fsyncAll(pendingSync);
    // Derivations sent without a realization: their files are durable now.
    storeIndex(store).addDrvs(drvs.map((dref) => ({ dref, name: parseRef(dref).name })));
  }
  // Wrong content goes to quarantine for inspection, never into d/. An
  // all-or-nothing receive (import) leaves the store exactly as it was:
  // the archive itself is there to inspect.
  if (!opts.allOrNothing) {
    for (const [rref, dir] of badContent) {
      try {
        store.quarantine(dir, rref);
      } catch {
        /* the staging directory is deleted anyway */
      }
    }
  }
  const report: ReceiveReport = { received, present, drvs, refused };
  if (refused.length > 0) {
    const hash = refused.filter((r) => r.kind === 'hash');
    const shown = (hash.length > 0 ? hash : refused)
      .slice(0, 3)
      .map((r) => `${r.ref}: ${r.reason}`)
      .join('; ');
    const what = all ? 'nothing was taken in' : `${received.length} realization(s) taken in`;
    throw new CairnError(
      hash.length > 0 ? 'E_SYNC_HASH_MISMATCH' : 'E_BAD_CLOSURE',
      `refused ${refused.length} item(s) (${what}): ${shown}${refused.length > 3 ? '; …' : ''}`,
      { refused, received, report },
    );
  }
  return report;
}

/** Writes the checked realization's meta.json afresh (the staged copy may be read-only or carry extra fields). */
function writeMeta(store: LocalStore, c: Checked): RealizationMeta {
  const { meta } = c;
  fs.rmSync(path.join(c.dir, 'meta.json'));
  const written = store.writeMeta(c.dir, {
    dref: meta.dref,
    name: meta.name,
    context: meta.context,
    tree: meta.tree,
    bytes: meta.bytes,
    files: meta.files,
    created: meta.created,
    buildMs: meta.buildMs,
  });
  // Unreachable: the RRef was checked against the same fields.
  if (written.rref !== c.rref) throw new CairnError('E_STORE_IO', `wrote ${written.rref} while receiving ${c.rref}`);
  return written;
}

/**
 * A code object the manifest names: `have` when the store has it already,
 * its text when the staged copy is sound, else why not (`missing`: not sent,
 * which costs the derivation its pointer, never a refusal).
 */
function checkCode(
  store: LocalStore,
  staging: string,
  hash: string,
): { have: true } | { text: string } | { why: string; missing: boolean } {
  if (fs.existsSync(codePath(store.root, hash))) return { have: true };
  let bytes: Buffer | null;
  try {
    bytes = withRegularFile(path.join(staging, 'code', hash), (fd) => fs.readFileSync(fd));
  } catch {
    bytes = null;
  }
  if (bytes === null) return { why: `its code object ${hash} was not sent`, missing: true };
  try {
    parseCodeObject(bytes, hash);
  } catch (e) {
    return { why: (e as Error).message, missing: false };
  }
  return { text: bytes.toString('utf8') };
}
