import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import type { Readable } from 'node:stream';
import { CairnError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import {
  chmodNoFollow,
  fsyncAll,
  fsyncPath,
  ownerAlive,
  ownerId,
  removeTree,
  tempName,
  displayPath,
  joinPath,
  withRegularFile,
  type FsPath,
} from './fsutil.js';
import { DrvFiles } from './drv-files.js';
import { addCodeText, codePath, readCodePointer, readCodeText } from './code-files.js';
import { shortHash } from './hash.js';
import { StoreIndex, type IndexedRealization } from './index-db.js';
import {
  candidateOf,
  type AddOptions,
  type AddRequest,
  type Added,
  type Candidate,
  type Context,
  type DerivationRecord,
  type HeldLock,
  type LockOptions,
  type RealizationInfo,
  type RealizationMeta,
  type Store,
  type TempRoots,
} from './interface.js';
import { BuildDirs } from './build-dirs.js';
import { withLock } from './locks.js';
import { PRIVATE_DIR_MODE, checkStoreSafety, makeDirs } from './permissions.js';
import { makeRRef, parseRef, parseRRef, type DRef, type RRef } from './refs.js';
import { readOutputFile, openOutputFile } from './read-output.js';
import { settle } from './settle.js';
import { walkTree, type TreeSummary } from './tree.js';
import { removeBuildTree, unmountBelow } from './mounts.js';

/** Bumped whenever the on-disk layout changes incompatibly. */
export const LAYOUT_VERSION = 1;
const STORE_MARKER = 'cairn-store';

export type { Context, RealizationMeta } from './interface.js';

let lastTimestamp = 0;

/**
 * Creation time in milliseconds with microsecond resolution, strictly
 * increasing within a process, so the outputs of one build are ordered.
 * Realizations are ordered by (created, rref) everywhere, an order that the
 * index rebuild reproduces from meta.json alone.
 */
export function creationTime(): number {
  const now = Math.round((performance.timeOrigin + performance.now()) * 1000) / 1000;
  lastTimestamp = Math.max(now, Math.round((lastTimestamp + 0.001) * 1000) / 1000);
  return lastTimestamp;
}

/** A realization moved into place by `Store.publish`, not yet durable or indexed. */
export interface Published {
  meta: RealizationMeta;
  /** An identical realization existed already; `meta` is its. */
  merged: boolean;
  /** The directory whose fsync makes the rename durable. */
  parent: string;
}

/** The RRef hash commits to the derivation, the chosen inputs and the output tree. */
export function realizationHash(dref: DRef, context: Context, tree: string): string {
  return shortHash(canonicalJson({ context, dref, tree }));
}

export function contextHash(context: Context): string {
  return shortHash(canonicalJson(context));
}

export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CAIRN_STORE) return path.resolve(env.CAIRN_STORE);
  const data = env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share');
  return path.join(data, 'cairn');
}

/**
 * The store on disk:
 *
 *     ROOT/store.json                      layout version marker
 *     ROOT/index.sqlite                    rebuildable index (WAL)
 *     ROOT/tmp/<owner>-<random>/           build and staging directories
 *     ROOT/d/<dref>/drv.json               the derivation (canonical config)
 *     ROOT/d/<dref>/r/<rhash>/out/...      a realization's outputs, read-only
 *     ROOT/d/<dref>/r/<rhash>/meta.json    its context, tree hash, sizes, time
 *     ROOT/d/<dref>/r/<rhash>/build.log
 *
 * Everything under `d/` appears by atomic rename from `tmp/` on the same
 * filesystem, so a reader sees a whole realization or none.
 */
export class LocalStore implements Store {
  readonly root: string;
  /** The SQLite index: private to src/store (see internals.ts). */
  private readonly index: StoreIndex;
  /** This process's id in locks, temp roots and temporary directory names. */
  readonly owner = ownerId();
  /** Derivation files (`d/<dref>/drv.json`), written ahead of the builds: private to src/store. */
  private readonly drvs: DrvFiles;
  private tempRootCalls = 0;

  private constructor(root: string, index: StoreIndex) {
    this.root = root;
    this.index = index;
    this.drvs = new DrvFiles(root, this.owner, index);
  }

  get location(): string {
    return this.root;
  }

  static open(root: string = defaultStoreRoot()): LocalStore {
    const abs = path.resolve(root);
    try {
      makeDirs(path.join(abs, 'tmp'));
      makeDirs(path.join(abs, 'd'));
    } catch (e) {
      throw new CairnError(
        'E_STORE_IO',
        `cannot create the store at ${abs}: ${(e as Error).message}`,
        { root: abs },
        { cause: e },
      );
    }
    // Before anything is read from it: a store someone else can write to
    // could hold a forged realization that the next realize would use.
    checkStoreSafety(abs);
    LocalStore.checkLayout(abs);
    return new LocalStore(abs, new StoreIndex(path.join(abs, 'index.sqlite')));
  }

  private static checkLayout(root: string): void {
    const marker = path.join(root, 'store.json');
    let text: string | undefined;
    try {
      text = fs.readFileSync(marker, 'utf8');
    } catch {
      /* new store */
    }
    if (text === undefined) {
      const tmp = path.join(root, 'tmp', tempName(ownerId(), 'store-json'));
      fs.writeFileSync(tmp, JSON.stringify({ [STORE_MARKER]: true, layout: LAYOUT_VERSION }) + '\n', { mode: 0o444 });
      try {
        // link() fails if another process created the marker first, which is fine.
        fs.linkSync(tmp, marker);
        fsyncPath(root);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      } finally {
        fs.unlinkSync(tmp);
      }
      text = fs.readFileSync(marker, 'utf8');
    }
    let layout: unknown;
    try {
      layout = (JSON.parse(text) as { layout?: unknown }).layout;
    } catch {
      layout = undefined;
    }
    if (layout !== LAYOUT_VERSION) {
      throw new CairnError(
        'E_STORE_VERSION',
        `store ${root} has layout version ${JSON.stringify(layout)}, but this Cairn reads version ${LAYOUT_VERSION}`,
        { root, layout, expected: LAYOUT_VERSION },
      );
    }
  }

  close(): void {
    this.index.close();
  }

  // ---- The Store interface (interface.ts) ----

  candidates(dref: DRef, ctx: string): Promise<Candidate[]> {
    return Promise.resolve(this.index.candidates(dref, ctx).map((r) => this.candidate(r)));
  }

  candidatesOfAll(drefs: readonly DRef[]): Promise<Map<string, Candidate[]>> {
    const out = new Map<string, Candidate[]>();
    for (const [key, rows] of this.index.candidatesByContext(drefs))
      out.set(
        key,
        rows.map((r) => this.candidate(r)),
      );
    return Promise.resolve(out);
  }

  realizationsOf(dref: DRef): Promise<RealizationInfo[]> {
    return Promise.resolve(this.index.realizationsOf(dref).map(toInfo));
  }

  info(rref: RRef): Promise<RealizationInfo | undefined> {
    const row = this.index.get(rref);
    return Promise.resolve(row && toInfo(row));
  }

  meta(rref: RRef): Promise<RealizationMeta> {
    return settle(() => this.readMeta(rref));
  }

  closure(rrefs: Iterable<RRef>): Promise<RRef[]> {
    return Promise.resolve(this.closureSync(rrefs));
  }

  derivation(dref: DRef): Promise<string | undefined> {
    try {
      return Promise.resolve(fs.readFileSync(path.join(this.drvDir(dref), 'drv.json'), 'utf8').replace(/\n$/, ''));
    } catch {
      return Promise.resolve(undefined);
    }
  }

  addCode(text: string): Promise<string> {
    return settle(() => addCodeText(this.root, this.owner, text));
  }

  readCode(hash: string): Promise<string | undefined> {
    return settle(() => readCodeText(this.root, hash));
  }

  derivationCode(dref: DRef): Promise<string | undefined> {
    return Promise.resolve(readCodePointer(this.drvDir(dref)));
  }

  /**
   * Stores derivations without building them (each checked against its
   * DRef), each pointing at its code object when `code` is given (which the
   * store must have): what a coordinator sends a builder, and what
   * `realize` records for self-contained code. Durable and indexed on return,
   * unless `settle: false`: then the derivations are made durable and indexed
   * with the realize that follows (its fsync rounds and settleDerivations),
   * and the code pointers are not fsynced one by one (a pointer lost in a
   * crash is written again by the next self-contained realize).
   */
  async addDerivations(list: readonly DerivationRecord[], opts: { settle?: boolean } = {}): Promise<void> {
    for (const d of list) {
      const p = parseRef(d.dref);
      if (p.kind !== 'drv' || p.name !== d.name || `${shortHash(d.drvJson)}-${d.name}` !== d.dref)
        throw new CairnError('E_BAD_ADD', `cannot add ${d.dref}: its drv does not hash to it`, { dref: d.dref });
      if (d.code !== undefined && !fs.existsSync(codePath(this.root, d.code)))
        throw new CairnError('E_BAD_ADD', `cannot add ${d.dref}: the store lacks its code object ${d.code}`, {
          dref: d.dref,
          code: d.code,
        });
    }
    const toSync: string[] = [];
    for (const d of list) {
      toSync.push(...this.drvs.ensure(d.dref, d.name, d.drvJson, d.code));
      // Replaced in a derivation indexed already: made durable here, unless a realize follows.
      if (d.code !== undefined && opts.settle !== false) toSync.push(path.join(this.drvDir(d.dref), 'code'));
    }
    if (opts.settle !== false) {
      await fsyncAll([...new Set(toSync)]);
      await this.drvs.settle();
    }
  }

  // A missing realization rejects, never throws: callers of the interface handle rejections only.
  readFile(rref: RRef, rel: FsPath): Promise<Buffer> {
    return settle(() => readOutputFile(this.existingOut(rref), rel, rref));
  }

  openFile(rref: RRef, rel: FsPath): Promise<Readable> {
    return settle(() => openOutputFile(this.existingOut(rref), rel, rref));
  }

  readLog(rref: RRef): Promise<Buffer> {
    return settle(() => {
      const log = path.join(this.existingRz(rref), 'build.log');
      try {
        return Promise.resolve(withRegularFile(log, (fd) => fs.readFileSync(fd)) ?? Buffer.alloc(0));
      } catch (e) {
        // A realization may have no log (the interface: an empty one).
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return Promise.resolve(Buffer.alloc(0));
        throw e;
      }
    });
  }

  /**
   * Seals each output in place (never following a link), then publishes
   * them and records them: see `publish` and `record`, the two halves.
   * The derivation is written first, so its fsync joins the first output's.
   */
  async add(request: AddRequest, opts: AddOptions = {}): Promise<Added[]> {
    const { dref, name, context, buildMs } = request;
    this.checkAdd(request);
    const published: Published[] = [];
    try {
      const drvSync = this.drvs.ensure(dref, name, request.drv);
      const summaries = [];
      for (const o of request.outputs) summaries.push(await sealStaged(o.dir, dref));
      for (const [i, o] of request.outputs.entries()) {
        const sum = summaries[i]!;
        published.push(
          await this.publish(
            o.dir,
            {
              dref,
              name,
              context,
              tree: sum.treeHash,
              bytes: sum.bytes,
              files: sum.files,
              created: o.created,
              buildMs,
            },
            [...sum.toSync, ...(i === 0 ? drvSync : [])],
          ),
        );
      }
    } catch (e) {
      await this.record(published).catch(() => {});
      throw e;
    }
    const added = published.map((p) => ({ meta: p.meta, merged: p.merged }));
    opts.onReadable?.(added);
    await this.record(published, opts.release);
    return added;
  }

  async addTempRoots(drefs: readonly DRef[], label: string): Promise<TempRoots> {
    // One naming rule for every caller: `<owner>#<label>-<n>`; gc reads the owner part to tell if it is alive.
    const owner = `${this.owner}#${label.replace(/[#\s]/g, '_')}-${++this.tempRootCalls}`;
    this.index.addTempRoots(owner, drefs);
    let released = false;
    return Promise.resolve({
      release: () => {
        if (!released) this.index.dropTempRoots(owner);
        released = true;
        return Promise.resolve();
      },
    });
  }

  withLock<T>(key: string, what: string, fn: (held: HeldLock) => Promise<T>, opts: LockOptions = {}): Promise<T> {
    return withLock(
      {
        owner: this.owner,
        tryLock: (k, o, w, alive) => this.index.tryLock(k, o, w, alive),
        unlock: (k, o) => this.index.unlock(k, o),
        swept: () => this.sweepTemp(),
      },
      key,
      what,
      fn,
      opts,
    );
  }

  /**
   * What `add` refuses before touching anything (E_BAD_ADD): a derivation
   * that does not hash to its DRef or whose name differs, and a context
   * naming realizations of other derivations or ones the store lacks. A
   * store that took these would hold what `store verify` calls corrupt.
   */
  private checkAdd(request: AddRequest): void {
    const { dref, name, context } = request;
    const p = parseRef(dref);
    const bad = (why: string): never => {
      throw new CairnError('E_BAD_ADD', `cannot add ${dref}: ${why}`, { dref });
    };
    if (p.kind !== 'drv' || p.name !== name) bad(`it is not the DRef of a derivation named ${JSON.stringify(name)}`);
    if (shortHash(request.drv) !== p.dref.slice(0, p.dref.length - name.length - 1)) bad('its drv does not hash to it');
    for (const [dep, rrefs] of Object.entries(context)) {
      for (const r of rrefs) {
        const rp = parseRef(r);
        if (rp.kind !== 'rz' || rp.dref !== dep) bad(`its context lists ${r} under ${dep}`);
        // A dependency added a moment ago may be readable but not yet indexed (see add).
        if (!this.has(r) && !fs.existsSync(this.rzDir(r))) bad(`its context names ${r}, which the store lacks`);
      }
    }
    if (request.outputs.length === 0) bad('no outputs');
  }

  private candidate(row: RealizationInfo): Candidate {
    return candidateOf(this, row);
  }

  // ---- What local builds need besides the interface: directories on the store's filesystem ----

  /** Build directories for one-output builds, made ahead (see BuildDirs); `close()` it after the run. */
  buildDirs(): BuildDirs {
    return new BuildDirs(path.join(this.root, 'tmp'), this.owner);
  }

  /** Where temporary directories live and whose are this process's, for the interrupt guard. */
  tempArea(): { dir: string; owner: string } {
    return { dir: path.join(this.root, 'tmp'), owner: this.owner };
  }

  /** Moves a failed build's directory to ROOT/failed/NAME, for --keep-failed; returns where it went. */
  keepFailedBuild(dir: string, name: string): string {
    const kept = path.join(this.root, 'failed', name);
    makeDirs(path.dirname(kept));
    fs.renameSync(dir, kept);
    return kept;
  }

  /**
   * Writes the derivations the index lacks ahead of their builds, one per
   * turn of the event loop, until `stop()`; `settleDerivations` then
   * indexes those no realization did (see DrvFiles).
   */
  writeAhead(list: readonly { dref: DRef; name: string; drvJson: string }[]): { stop(): void } {
    return this.drvs.writeAhead(list);
  }

  settleDerivations(): Promise<void> {
    return this.drvs.settle();
  }

  private existingRz(rref: RRef): string {
    const dir = this.rzDir(rref);
    if (!fs.existsSync(dir)) return notInStore(rref);
    return dir;
  }

  private existingOut(rref: RRef): string {
    return path.join(this.existingRz(rref), 'out');
  }

  drvDir(dref: DRef): string {
    return this.drvs.dir(dref);
  }
  rzDir(rref: RRef): string {
    const p = parseRRef(rref);
    return path.join(this.root, 'd', p.dref, 'r', p.rhash);
  }
  outPath(rref: RRef): string {
    return path.join(this.rzDir(rref), 'out');
  }

  /** A fresh directory on the store's filesystem, named after its owner so dead owners' leftovers can be swept. */
  makeTempDir(label: string): string {
    const dir = path.join(this.root, 'tmp', tempName(this.owner, label));
    fs.mkdirSync(dir, { mode: PRIVATE_DIR_MODE });
    return dir;
  }

  /**
   * Removes the temporary directories this process made (an interrupted
   * command's resumed disks and memory images: nothing else uses them).
   * Names are bytes. Never throws: what it cannot remove, the next sweep gets.
   */
  removeOwnTemp(): void {
    const tmp = path.join(this.root, 'tmp');
    let names: Buffer[];
    try {
      names = fs.readdirSync(tmp, { encoding: 'buffer' });
    } catch {
      return; // no tmp directory: nothing to remove
    }
    for (const name of names) {
      if (name.toString('latin1').split('-')[0] !== this.owner) continue;
      try {
        removeBuildTree(joinPath(tmp, name));
      } catch {
        /* the next run's sweep gets it */
      }
    }
  }

  /**
   * Removes temporary directories whose owning process has died (after
   * kill -9, say). Each is first claimed by renaming it to a name of our
   * own, so several processes sweeping at once never delete the same tree.
   * Names are bytes (a build may leave names that are not UTF-8). Mounts
   * a killed build left inside (a chroot's /proc) are detached first (see
   * mounts.ts); nothing is ever deleted through one. A leftover that cannot
   * be removed (a mount that stays, an immutable file) is reported with one
   * line on stderr and skipped: it never stops the realize that swept.
   * Returns how many leftovers were removed.
   */
  sweepTemp(): number {
    let removed = 0;
    const tmp = path.join(this.root, 'tmp');
    const stuck = (leftover: FsPath, e: unknown): void => {
      const why = e instanceof CairnError ? `${e.code}: ${e.message}` : (e as Error).message;
      process.stderr.write(`cairn: warning: cannot remove leftover ${displayPath(leftover)} (${why}); skipped\n`);
    };
    for (const name of fs.readdirSync(tmp, { encoding: 'buffer' })) {
      if (ownerAlive(name.toString('latin1').split('-')[0]!)) continue;
      const claimed = path.join(tmp, tempName(this.owner, 'sweep'));
      const leftover = joinPath(tmp, name);
      let err = tryRename(leftover, claimed);
      // The leftover is itself a mount point: detached where it is, then claimed.
      if (err?.code === 'EBUSY' && unmountBelow(leftover).length === 0) err = tryRename(leftover, claimed);
      if (err) {
        if (err.code !== 'ENOENT') stuck(leftover, err);
        continue;
      }
      try {
        removeBuildTree(claimed);
        removed++;
      } catch (e) {
        stuck(claimed, e);
      }
    }
    return removed;
  }

  /**
   * Moves a sealed staging directory (holding `out/` and `build.log`) into
   * place as a realization, in two steps. `publish` fsyncs what the caller
   * lists in `toSync` together with `meta.json` (one round, so about one
   * journal commit), then renames the directory into place: from then on
   * the realization is complete and readable. `record` makes the rename
   * durable (fsync of the parent) and only then enters it into the index,
   * so the index never names a realization that a crash could lose. A
   * caller may start dependent work between the two.
   *
   * If an identical realization already exists, the staging copy is dropped
   * and the existing one is used: identical outputs merge, different ones
   * never overwrite each other because their RRefs differ. A damaged
   * existing copy is quarantined and replaced instead.
   */
  async publish(
    staging: string,
    fields: Omit<RealizationMeta, 'format' | 'rref' | 'ctx'>,
    toSync: readonly FsPath[],
  ): Promise<Published> {
    const meta = this.writeMeta(staging, fields);
    await fsyncAll([...toSync, ...this.metaSyncPaths(staging)]);
    return this.place(staging, meta);
  }

  /** The first step of `publish`: writes `meta.json` into the staging directory. */
  writeMeta(staging: string, fields: Omit<RealizationMeta, 'format' | 'rref' | 'ctx'>): RealizationMeta {
    const rref = makeRRef(realizationHash(fields.dref, fields.context, fields.tree), fields.dref);
    const meta: RealizationMeta = { format: 'cairn-realization-1', rref, ctx: contextHash(fields.context), ...fields };
    fs.writeFileSync(path.join(staging, 'meta.json'), JSON.stringify(meta, null, 2) + '\n', { mode: 0o444 });
    return meta;
  }

  /** What `publish` fsyncs besides the caller's list, for callers that fsync many stagings in one round. */
  metaSyncPaths(staging: string): string[] {
    return [path.join(staging, 'meta.json'), staging];
  }

  /**
   * The last step of `publish`: the rename into place, once the staging
   * directory and everything in it (see `metaSyncPaths`) is fsynced.
   */
  async place(staging: string, meta: RealizationMeta): Promise<Published> {
    const rref = meta.rref;
    const rhash = parseRRef(rref).rhash;
    const parent = path.join(this.drvDir(meta.dref), 'r');
    const final = path.join(parent, rhash);
    // Moving a directory to another parent rewrites its '..', which needs
    // write permission on it, except for root: root seals first, so the
    // realization is read-only from the moment it appears. Anyone else
    // seals it right after the rename, and a kill between the two leaves
    // an intact realization with a write bit (verify: writable; the next
    // build of it, or verify --repair, reseals it).
    let sealed = SEAL_BEFORE_RENAME;
    if (sealed) fs.chmodSync(staging, 0o555);
    let err = tryRename(staging, final);
    if (err?.code === 'EACCES' && sealed) {
      // A root without CAP_DAC_OVERRIDE (a restricted container).
      fs.chmodSync(staging, 0o755);
      sealed = false;
      err = tryRename(staging, final);
    }
    if (err?.code === 'ENOENT' && !fs.existsSync(parent)) {
      // d/<dref>/r comes with drv.json (ensureDrv); a damaged store may lack it.
      makeDirs(parent);
      err = tryRename(staging, final);
    }
    if (err) {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      const problem = await this.inspect(rref);
      if (problem === null || problem.kind === 'writable') {
        removeTree(staging);
        if (problem) await this.reseal(rref);
        return { meta: this.readMeta(rref), merged: true, parent };
      }
      // A damaged copy of the same realization: never merge into it.
      this.quarantine(final, rref);
      fs.renameSync(staging, final);
    }
    if (!sealed) fs.chmodSync(final, 0o555);
    return { meta, merged: false, parent };
  }

  /**
   * Makes published realizations durable, then indexes them and their
   * derivations (see `publish`). A derivation the index lacks was placed
   * recently, so `d/` is fsynced too: its entry must be durable before
   * the index names it. `release` is a build lock to release in the same
   * transaction: waiters find the realizations the moment they get the
   * lock, and a build costs one index write less.
   */
  async record(published: readonly Published[], release?: HeldLock): Promise<void> {
    const dirs = new Set(published.map((p) => p.parent));
    if (published.some((p) => !this.index.hasDrv(p.meta.dref))) dirs.add(this.drvs.parent);
    await fsyncAll([...dirs]);
    if (published.length === 0) return;
    this.index.addRealizations(
      published.map((p) => toIndexed(p.meta)),
      release,
    );
    if (release) release.released = true;
  }

  /**
   * Checks one realization on disk against its name: `meta.json` must be
   * whole and consistent (RRef, DRef, name, context hash), the output must
   * hash to its recorded tree and sizes, and those must hash to the RRef.
   * Returns what is wrong, or null. `writable` means the content is intact
   * but write bits are set somewhere (a sealed realization has none).
   */
  async inspect(rref: RRef): Promise<{ kind: 'modified' | 'writable'; detail: string } | null> {
    const p = parseRRef(rref);
    const dir = this.rzDir(rref);
    const modified = (detail: string) => ({ kind: 'modified' as const, detail });
    const odd = unexpectedEntry(dir);
    if (odd) return modified(odd);
    let meta: RealizationMeta;
    try {
      meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8')) as RealizationMeta;
    } catch {
      return modified('meta.json is missing or unreadable');
    }
    if (typeof meta !== 'object' || meta === null || meta.format !== 'cairn-realization-1')
      return modified('meta.json is not realization metadata');
    if (meta.rref !== rref || meta.dref !== p.dref || meta.name !== p.name)
      return modified('meta.json names another realization');
    let ctxOk = false;
    try {
      ctxOk = meta.ctx === contextHash(meta.context);
    } catch {
      /* a damaged context */
    }
    if (!ctxOk) return modified('the context hash in meta.json does not match its context');
    let tree;
    try {
      tree = await walkTree(path.join(dir, 'out'), { seal: false });
    } catch (e) {
      return modified(`output cannot be hashed: ${(e as Error).message}`);
    }
    if (tree.treeHash !== meta.tree) return modified(`output hash is ${tree.treeHash}, expected ${meta.tree}`);
    if (tree.bytes !== meta.bytes || tree.files !== meta.files) return modified('output sizes differ from meta.json');
    if (realizationHash(meta.dref, meta.context, meta.tree) !== p.rhash)
      return modified('context or tree in meta.json do not hash to the RRef');
    const writable = [...tree.writable.map((w) => path.join('out', w))];
    for (const f of ['.', 'meta.json', 'build.log']) {
      try {
        if ((fs.statSync(path.join(dir, f)).mode & 0o222) !== 0) writable.push(f);
      } catch {
        /* a missing log is not a hash problem */
      }
    }
    if (writable.length > 0)
      return { kind: 'writable', detail: `write bits set on ${writable.slice(0, 3).join(', ')}` };
    return null;
  }

  /** Clears write bits on a realization whose content is intact. */
  async reseal(rref: RRef): Promise<void> {
    const dir = this.rzDir(rref);
    await walkTree(path.join(dir, 'out'), { seal: true });
    for (const f of ['meta.json', 'build.log']) {
      try {
        fs.chmodSync(path.join(dir, f), 0o444);
      } catch {
        /* no log */
      }
    }
    fs.chmodSync(dir, 0o555);
  }

  /**
   * ROOT/quarantine/, made (or, in an older store, narrowed) to mode 0700:
   * it holds trees as they were refused, before any sealing, so a sync
   * sender's setuid or world-writable files must not be reachable there.
   */
  quarantineDir(): string {
    const q = path.join(this.root, 'quarantine');
    fs.mkdirSync(q, { recursive: true, mode: PRIVATE_DIR_MODE });
    const fd = fs.openSync(q, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
    try {
      if ((fs.fstatSync(fd).mode & 0o077) !== 0) fs.fchmodSync(fd, PRIVATE_DIR_MODE);
    } finally {
      fs.closeSync(fd);
    }
    return q;
  }

  /** Moves a damaged realization out of the way, to ROOT/quarantine/, for inspection. */
  quarantine(dir: string, rref: RRef): void {
    const to = path.join(this.quarantineDir(), `${rref}-${Date.now()}`);
    fs.renameSync(dir, to);
    this.index.removeRealization(rref);
  }

  readMeta(rref: RRef): RealizationMeta {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.rzDir(rref), 'meta.json'), 'utf8')) as RealizationMeta;
    } catch {
      return notInStore(rref);
    }
  }

  has(rref: RRef): boolean {
    return this.index.get(rref) !== undefined;
  }

  /** Resolves a DRef or RRef given on a command line to realizations that exist. */
  resolve(ref: string): RRef[] {
    const p = parseRef(ref);
    if (p.kind === 'rz') {
      if (!this.has(p.rref) && !fs.existsSync(this.rzDir(p.rref))) {
        throw new CairnError('E_NO_SUCH_REF', `realization ${ref} is not in the store`, { ref });
      }
      return [p.rref];
    }
    const rows = this.index.realizationsOf(p.dref);
    if (rows.length === 0 && !fs.existsSync(this.drvDir(p.dref))) {
      throw new CairnError('E_NO_SUCH_REF', `derivation ${ref} is not in the store`, { ref });
    }
    return rows.map((r) => r.rref);
  }

  /** The given realizations and every realization they were built from (`closure`, synchronously). */
  closureSync(rrefs: Iterable<RRef>): RRef[] {
    const seen = new Set<RRef>();
    const stack = [...rrefs];
    while (stack.length > 0) {
      const r = stack.pop()!;
      if (seen.has(r)) continue;
      seen.add(r);
      for (const dep of this.index.depsOf(r)) stack.push(dep);
    }
    return [...seen];
  }

  /** Deletes one realization; refuses while others still name it in their context. */
  remove(rref: RRef, opts: { force?: boolean } = {}): void {
    const users = this.index.dependantsOf(rref).filter((u) => this.has(u));
    if (users.length > 0 && !opts.force) {
      throw new CairnError(
        'E_REF_IN_USE',
        `${rref} is in the context of ${users.length} other realization(s), e.g. ${users[0]}; remove those first`,
        { rref, users },
      );
    }
    const dir = this.rzDir(rref);
    // Rename first, so the realization disappears atomically, then delete.
    const doomed = path.join(this.makeTempDir('rm'), 'rz');
    try {
      fs.renameSync(dir, doomed);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    this.index.removeRealization(rref);
    removeTree(path.dirname(doomed));
  }

  /** Deletes a derivation that has no realizations left. */
  removeDrv(dref: DRef): void {
    const left = this.index.realizationsOf(dref);
    if (left.length > 0) {
      throw new CairnError('E_REF_IN_USE', `derivation ${dref} still has ${left.length} realization(s)`, { dref });
    }
    const doomed = path.join(this.makeTempDir('rm'), 'drv');
    try {
      fs.renameSync(this.drvDir(dref), doomed);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    this.index.removeDrv(dref);
    removeTree(path.dirname(doomed));
  }

  /** Rebuilds the index from the files; returns what it found. */
  rebuildIndex(): { derivations: number; realizations: number } {
    const drvs: { dref: DRef; name: string }[] = [];
    const rzs: IndexedRealization[] = [];
    const dRoot = path.join(this.root, 'd');
    for (const dref of fs.readdirSync(dRoot)) {
      // Junk next to the derivations is `store verify`'s to report, not a reason to give up.
      let p;
      try {
        p = parseRef(dref);
      } catch {
        continue;
      }
      if (p.kind !== 'drv') continue;
      if (fs.existsSync(path.join(dRoot, dref, 'drv.json'))) drvs.push({ dref: p.dref, name: p.name });
      let hashes: string[] = [];
      try {
        hashes = fs.readdirSync(path.join(dRoot, dref, 'r'));
      } catch {
        /* no realizations */
      }
      for (const rhash of hashes) {
        try {
          if (!fs.lstatSync(path.join(dRoot, dref, 'r', rhash)).isDirectory()) continue;
          const meta = this.readMeta(makeRRef(rhash, p.dref));
          rzs.push(toIndexed(meta));
        } catch {
          /* unreadable realizations are verify's business */
        }
      }
    }
    this.index.replaceAll(drvs, rzs);
    return { derivations: drvs.length, realizations: rzs.length };
  }
}

/** What a realization directory holds, and the type of each (never a symlink). */
const RZ_ENTRIES = new Map([
  ['out', 'dir'],
  ['meta.json', 'file'],
  ['build.log', 'file'],
]);

/** The first entry of a realization directory that does not belong there, or null. */
function unexpectedEntry(dir: string): string | null {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    return `directory cannot be read: ${(e as Error).message}`;
  }
  for (const name of names) {
    const want = RZ_ENTRIES.get(name);
    if (want === undefined) return `unexpected entry ${JSON.stringify(name)} next to out/`;
    const st = fs.lstatSync(path.join(dir, name));
    if (want === 'dir' ? !st.isDirectory() : !st.isFile())
      return `${name} is not a ${want === 'dir' ? 'directory' : 'regular file'}`;
  }
  return null;
}

const SEAL_BEFORE_RENAME = process.getuid?.() === 0;

function tryRename(from: FsPath, to: FsPath): NodeJS.ErrnoException | null {
  try {
    fs.renameSync(from, to);
    return null;
  } catch (e) {
    return e as NodeJS.ErrnoException;
  }
}

function notInStore(rref: RRef): never {
  throw new CairnError('E_NO_SUCH_REF', `realization ${rref} is not in the store`, { ref: rref });
}

function toInfo(r: RealizationInfo): RealizationInfo {
  return { rref: r.rref, dref: r.dref, ctx: r.ctx, created: r.created, tree: r.tree, bytes: r.bytes, files: r.files };
}

/**
 * Seals a staged output: `out/` without following links (see tree.ts),
 * and `build.log`, which the build may have swapped for a link: never
 * chmod or keep one.
 */
async function sealStaged(dir: string, dref: DRef): Promise<TreeSummary> {
  const sum = await walkTree(path.join(dir, 'out'), { seal: true });
  try {
    chmodNoFollow(path.join(dir, 'build.log'), 0o444);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') {
      throw new CairnError('E_UNSAFE_OUTPUT', `a build of ${dref} replaced its build.log with a symlink`, {
        dref,
        path: 'build.log',
      });
    }
    if (code !== 'ENOENT') throw e;
  }
  return sum;
}

function toIndexed(meta: RealizationMeta): IndexedRealization & { name: string } {
  return {
    rref: meta.rref,
    dref: meta.dref,
    name: meta.name,
    ctx: meta.ctx,
    created: meta.created,
    tree: meta.tree,
    bytes: meta.bytes,
    files: meta.files,
    deps: Object.values(meta.context).flat(),
  };
}
