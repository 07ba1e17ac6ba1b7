/**
 * `cairn export` and `cairn import`: a closure as a plain tar file, for
 * hosts that cannot reach each other. The archive mirrors the store layout
 * (`d/<dref>/drv.json`, `d/<dref>/r/<rhash>/…`) plus `manifest.json`, the
 * same closure manifest sync gives `cairn store receive`. Import extracts it
 * into a temporary directory in the store and takes it in through the same
 * receive path as sync, all or nothing: one bad hash and nothing enters.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { writeAtomic } from './atomic-file.js';
import { extractTar } from './extract.js';
import { removeTree } from './fsutil.js';
import { receiveClosure, type ReceiveReport } from './receive.js';
import { parseRRef, type RRef } from './refs.js';
import type { LocalStore } from './store.js';
import { manifestPaths, parseManifest, planTransfer, type ClosureManifest } from './sync-plan.js';
import { haveRefs, listClosure } from './sync.js';
import { END, entryHeader, padding } from './tar-format.js';

export interface ExportReport {
  file: string;
  realizations: number;
  derivations: number;
  roots: RRef[];
}

const { O_NOFOLLOW, O_RDONLY } = fs.constants;
const CHUNK = 1 << 20;

/**
 * Writes one tar stream to a descriptor: Cairn's own writer, so names stay
 * bytes. Output is gathered into CHUNK-sized writes, not three per file.
 */
export class TarWriter {
  private readonly buf = Buffer.allocUnsafe(CHUNK);
  private readonly out = Buffer.allocUnsafe(CHUNK);
  private used = 0;
  constructor(private readonly fd: number) {}

  private flush(): void {
    for (let off = 0; off < this.used;) off += fs.writeSync(this.fd, this.out, off, this.used - off);
    this.used = 0;
  }

  private put(b: Buffer): void {
    if (this.used + b.length > CHUNK) this.flush();
    if (b.length >= CHUNK) {
      for (let off = 0; off < b.length;) off += fs.writeSync(this.fd, b, off, b.length - off);
      return;
    }
    b.copy(this.out, this.used);
    this.used += b.length;
  }

  file(name: Buffer, data: Buffer, mode = 0o644): void {
    this.put(entryHeader({ path: name, type: 'file', size: data.length, mode }));
    this.put(data);
    this.put(Buffer.alloc(padding(data.length)));
  }

  /**
   * Adds the tree at `abs` as `name`, in byte order of names, never
   * following a symlink (lstat, O_NOFOLLOW). Modes are 0644/0755 by the exec
   * bit, times and owners zero: the archive is a function of the closure.
   */
  tree(abs: Buffer, name: Buffer): void {
    const st = fs.lstatSync(abs);
    if (st.isDirectory()) {
      this.put(entryHeader({ path: name, type: 'dir', mode: 0o755 }));
      const slash = Buffer.from('/');
      for (const n of fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare)) {
        this.tree(Buffer.concat([abs, slash, n]), Buffer.concat([name, slash, n]));
      }
    } else if (st.isSymbolicLink()) {
      const linkpath = fs.readlinkSync(abs, { encoding: 'buffer' });
      this.put(entryHeader({ path: name, type: 'symlink', mode: 0o777, linkpath }));
    } else if (st.isFile()) {
      const fd = fs.openSync(abs, O_RDONLY | O_NOFOLLOW);
      try {
        const size = fs.fstatSync(fd).size;
        this.put(entryHeader({ path: name, type: 'file', size, mode: st.mode & 0o111 ? 0o755 : 0o644 }));
        for (let done = 0; done < size;) {
          const n = fs.readSync(fd, this.buf, 0, Math.min(CHUNK, size - done), done);
          if (n === 0) throw new CairnError('E_STORE_IO', `${abs.toString()} shrank while being exported`);
          this.put(this.buf.subarray(0, n));
          done += n;
        }
        this.put(Buffer.alloc(padding(size)));
      } finally {
        fs.closeSync(fd);
      }
    } else {
      throw new CairnError('E_STORE_IO', `${abs.toString()} is not a file, directory or symlink; the store is damaged`);
    }
  }

  end(): void {
    this.put(END);
    this.flush();
  }
}

/**
 * Writes the closure of `refs` to `file`. The tar is written beside it
 * under an unpredictable name opened O_CREAT|O_EXCL (never an existing
 * file or a planted link: writeAtomic), then renamed into place, so no half
 * tar is left.
 */
export async function exportClosure(store: LocalStore, refs: readonly string[], file: string): Promise<ExportReport> {
  if (refs.length === 0) throw new CairnError('E_BAD_ARGUMENT', 'export needs at least one DRef or RRef');
  const { roots, nodes, code } = listClosure(store, refs);
  const manifest = planTransfer(
    roots,
    nodes,
    () => false,
    (d) => code?.[d],
  );
  const dest = path.resolve(file);
  writeClosureTar(store, manifest, dest, file);
  return { file: dest, realizations: manifest.rrefs.length, derivations: manifest.drvs.length, roots };
}

/**
 * Writes what `manifest` names (planned with planTransfer) from `store` as a
 * closure tar at `file`: a transfer file, read once and removed, so not fsynced.
 */
export function writeClosureFile(store: LocalStore, manifest: ClosureManifest, file: string): void {
  writeClosureTar(store, manifest, file, file, false);
}

function writeClosureTar(
  store: LocalStore,
  manifest: ClosureManifest,
  dest: string,
  shown: string,
  fsync = true,
): void {
  try {
    writeAtomic(
      dest,
      (fd) => {
        const w = new TarWriter(fd);
        // Manifest first, so a reader learns what to expect before the data.
        w.file(Buffer.from('manifest.json'), Buffer.from(JSON.stringify(manifest, null, 2) + '\n'));
        const root = Buffer.from(store.root);
        for (const p of manifestPaths(manifest)) w.tree(Buffer.concat([root, Buffer.from(`/${p}`)]), Buffer.from(p));
        w.end();
      },
      { mode: 0o644, fsync },
    );
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError('E_STORE_IO', `cannot write ${shown}: ${(e as Error).message}`, { file: shown }, { cause: e });
  }
}

/**
 * Copies the closure of `rrefs` from one local store into another: what
 * `into` lacks goes through a tar in its temporary area and `importClosure`,
 * so `into` checks every hash and the closure as it would a stranger's
 * archive, and takes all or nothing. A store used as a substituter is
 * trusted no more than an archive.
 */
export async function copyClosure(from: LocalStore, into: LocalStore, rrefs: readonly RRef[]): Promise<ReceiveReport> {
  const none: ReceiveReport = { received: [], present: [], drvs: [], refused: [] };
  if (rrefs.length === 0) return none;
  const { roots, nodes, code } = listClosure(from, rrefs);
  const refs = [...nodes.map((n) => n.rref), ...new Set(nodes.map((n) => parseRRef(n.rref).dref))];
  const have = new Set<string>(haveRefs(into, refs));
  const manifest = planTransfer(
    roots,
    nodes,
    (ref) => have.has(ref),
    (d) => code?.[d],
  );
  if (manifest.rrefs.length === 0 && manifest.drvs.length === 0) return { ...none, present: [...manifest.roots] };
  const dir = into.makeTempDir('copy');
  try {
    const file = path.join(dir, 'closure.tar');
    writeClosureTar(from, manifest, file, file);
    return await importClosure(into, file);
  } finally {
    removeTree(dir);
  }
}

/**
 * Takes in the closure in `file`. Every hash is checked before anything
 * enters the store; a damaged or tampered archive is refused whole
 * (E_SYNC_HASH_MISMATCH, E_BAD_CLOSURE or E_BAD_ARCHIVE) and the store is
 * left as it was.
 */
export async function importClosure(
  store: LocalStore,
  file: string,
  opts: {
    /** Refuses a manifest before anything is received (throws): a builder's result must be what was asked for. */
    check?: (manifest: ClosureManifest) => void;
  } = {},
): Promise<ReceiveReport> {
  if (!fs.existsSync(file)) throw new CairnError('E_NO_SUCH_FILE', `${file} does not exist`, { file });
  const staging = store.makeTempDir('import');
  try {
    // extractTar checks every entry first (no absolute or .. paths, no
    // devices, no links resolving outside, no writes through links) and
    // extracts nothing if one is bad. No size limits: the user chose this
    // closure, which may hold disk images beyond unpack's default.
    const unlimited = { bytes: Number.MAX_SAFE_INTEGER, entries: Number.MAX_SAFE_INTEGER };
    await extractTar(path.resolve(file), 'tar', staging, { limits: unlimited });
    let json: unknown;
    try {
      json = JSON.parse(fs.readFileSync(path.join(staging, 'manifest.json'), 'utf8'));
    } catch {
      throw new CairnError(
        'E_BAD_CLOSURE',
        `${file} has no readable manifest.json; it was not written by cairn export`,
        { file },
      );
    }
    const manifest = parseManifest(json);
    opts.check?.(manifest);
    return await receiveClosure(store, staging, manifest, { allOrNothing: true });
  } finally {
    removeTree(staging);
  }
}
