/**
 * Decides, before a single byte is written, whether a tar archive may be
 * extracted and how. Pure: it sees the archive's entries (names as latin1
 * strings, one char per byte) and builds the final tree in memory.
 *
 * Rules (E_UNSAFE_ARCHIVE unless said otherwise):
 * - no absolute names, no '..' components, no devices or fifos;
 * - nothing is written below a symlink the archive plants, nor below a file;
 * - a hard link names an earlier regular file of the archive, by its exact
 *   path (so it cannot pass through a symlink either);
 * - a symlink is judged by where it resolves physically in the final tree,
 *   following the archive's other symlinks and '..' from where they land:
 *   a chain that looks inside on paper but climbs out is refused;
 * - a name that appears twice is refused (two directories merge), so no
 *   entry silently replaces another;
 * - more entries or file bytes than the limits is E_ARCHIVE_TOO_LARGE, found
 *   from the headers, before the data is read.
 * The extractor then creates directories, files and hard links with opens
 * that never reuse an existing name, and symlinks last, so no write passes
 * through a link the archive planted.
 */
import { CairnError } from '../errors.js';
import type { TarEntry } from './tar-format.js';

export interface UnpackLimits {
  /** Most bytes of file data (the sum of regular files' sizes). */
  bytes?: number;
  /** Most entries (files, directories, links). */
  entries?: number;
}

/** Defaults: room for VM disk images, while a small archive cannot fill a disk or an inode table. */
export const DEFAULT_LIMITS: Required<UnpackLimits> = { bytes: 64 * 1024 ** 3, entries: 1_000_000 };

/** Longest name accepted (Linux's PATH_MAX less the NUL): longer cannot be created anyway. */
const NAME_MAX_BYTES = 4095;
/** Symlinks followed while resolving one link, as the kernel's limit. */
const MAX_HOPS = 40;

export type Step =
  | { kind: 'file'; path: string; size: number; exec: boolean }
  | { kind: 'hardlink'; path: string; target: string }
  | null; // nothing to do: a directory (made up front), a symlink (made last), or stripped away

export interface ExtractionPlan {
  /** Every directory, explicit or implied, parents before children. */
  dirs: string[];
  /** Per archive entry, in order. */
  steps: Step[];
  /** Made after everything else. */
  symlinks: { path: string; target: string }[];
  files: number;
  bytes: number;
}

type Node = 'dir' | 'file' | 'symlink';

const show = (p: string): string => JSON.stringify(Buffer.from(p, 'latin1').toString('utf8'));
const unsafe = (entry: string, why: string): CairnError =>
  new CairnError('E_UNSAFE_ARCHIVE', `archive entry ${show(entry)} ${why}`, {
    entry: Buffer.from(entry, 'latin1').toString('utf8'),
  });

/** The name's components after the checks, or null when strip leaves nothing. */
function components(entry: string, name: string, strip: number, what: string): string[] | null {
  if (name.startsWith('/')) throw unsafe(entry, `${what} an absolute path`);
  const parts = name.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw unsafe(entry, `${what} a '..' component`);
  return parts.length > strip ? parts.slice(strip) : null;
}

export class ExtractionPlanner {
  private readonly nodes = new Map<string, Node>();
  private readonly links = new Map<string, string>();
  private readonly steps: Step[] = [];
  private readonly limits: Required<UnpackLimits>;
  private entries = 0;
  private bytes = 0;
  private files = 0;

  constructor(
    private readonly strip = 0,
    limits: UnpackLimits = {},
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
  }

  /** Checks one entry, in archive order; throws on the first bad one. */
  add(e: TarEntry): void {
    this.entries++;
    this.bytes += e.size;
    if (this.entries > this.limits.entries) {
      throw new CairnError('E_ARCHIVE_TOO_LARGE', `the archive holds more than ${this.limits.entries} entries`, {
        limit: 'entries',
        max: this.limits.entries,
      });
    }
    if (this.bytes > this.limits.bytes) {
      throw new CairnError('E_ARCHIVE_TOO_LARGE', `the archive unpacks to more than ${this.limits.bytes} bytes`, {
        limit: 'bytes',
        max: this.limits.bytes,
      });
    }
    if (e.path.length > NAME_MAX_BYTES || e.linkpath.length > NAME_MAX_BYTES) {
      throw new CairnError(
        'E_BAD_ARCHIVE',
        `archive entry ${show(e.path.slice(0, 100))}… has a name longer than ${NAME_MAX_BYTES} bytes`,
      );
    }
    // Only a pax record can carry a NUL; no file name can hold one, so it would fail mid-extraction.
    if (e.path.includes('\0') || e.linkpath.includes('\0')) {
      throw new CairnError('E_BAD_ARCHIVE', `archive entry ${show(e.path.split('\0')[0]!)} has a NUL byte in its name`);
    }
    if (e.type === 'chardev' || e.type === 'blockdev' || e.type === 'fifo') {
      throw unsafe(e.path, `is a ${e.type}, which cannot enter the store`);
    }
    const parts = components(e.path, e.path, this.strip, 'has');
    let target: string | undefined;
    if (e.type === 'symlink') {
      if (e.linkpath.startsWith('/')) throw unsafe(e.path, `is a link to the absolute path ${show(e.linkpath)}`);
      if (e.linkpath === '') throw unsafe(e.path, 'is a link to nothing');
    } else if (e.type === 'hardlink') {
      // Hard link names are archive paths, stripped like entry names.
      const t = components(e.path, e.linkpath, this.strip, 'is a hard link to');
      if (t === null) throw unsafe(e.path, `is a hard link to ${show(e.linkpath)}, which strip removes`);
      target = t.join('/');
    }
    if (parts === null) return void this.steps.push(null);
    const p = parts.join('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      const n = this.nodes.get(parent);
      if (n === 'symlink') throw unsafe(e.path, `would be written through the symlink ${show(parent)}`);
      if (n === 'file') throw unsafe(e.path, `would be written below the file ${show(parent)}`);
      if (n === undefined) this.nodes.set(parent, 'dir');
    }
    const had = this.nodes.get(p);
    const kind: Node = e.type === 'dir' ? 'dir' : e.type === 'symlink' ? 'symlink' : 'file';
    if (had !== undefined && !(had === 'dir' && kind === 'dir')) {
      throw unsafe(e.path, 'appears twice in the archive (or as a directory and a file)');
    }
    this.nodes.set(p, kind);
    if (e.type === 'file') {
      this.files++;
      this.steps.push({ kind: 'file', path: p, size: e.size, exec: (e.mode & 0o111) !== 0 });
    } else if (e.type === 'hardlink') {
      if (this.nodes.get(target!) !== 'file' || target === p) {
        throw unsafe(e.path, `is a hard link to ${show(e.linkpath)}, which is not an earlier regular file`);
      }
      this.files++;
      this.steps.push({ kind: 'hardlink', path: p, target: target! });
    } else {
      if (e.type === 'symlink') this.links.set(p, e.linkpath);
      this.steps.push(null);
    }
  }

  /** After the last entry: judges every symlink in the final tree and returns the plan. */
  finish(): ExtractionPlan {
    for (const [p, target] of this.links) this.resolve(p, target);
    const dirs = [...this.nodes]
      .filter(([, n]) => n === 'dir')
      .map(([p]) => p)
      .sort();
    const symlinks = [...this.links].map(([path, target]) => ({ path, target }));
    return { dirs, steps: this.steps, symlinks, files: this.files, bytes: this.bytes };
  }

  /**
   * Walks `target` from the symlink's directory through the final tree.
   * A name the tree does not hold (or a file used as a directory) is passed
   * lexically, which can only refuse more than the kernel would.
   */
  private resolve(link: string, target: string): void {
    const cur = link.split('/').slice(0, -1);
    const queue = target.split('/');
    let hops = 0;
    while (queue.length > 0) {
      const c = queue.shift()!;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (cur.length === 0) throw unsafe(link, `is a link to ${show(target)}, which resolves outside the output`);
        cur.pop();
        continue;
      }
      cur.push(c);
      const key = cur.join('/');
      if (this.nodes.get(key) !== 'symlink') continue;
      if (++hops > MAX_HOPS) throw unsafe(link, `is a link to ${show(target)}, which loops`);
      cur.pop();
      queue.unshift(...this.links.get(key)!.split('/'));
    }
  }
}

/** Plans a whole entry list at once (for tests and small archives). */
export function planExtraction(entries: Iterable<TarEntry>, strip = 0, limits: UnpackLimits = {}): ExtractionPlan {
  const planner = new ExtractionPlanner(strip, limits);
  for (const e of entries) planner.add(e);
  return planner.finish();
}
