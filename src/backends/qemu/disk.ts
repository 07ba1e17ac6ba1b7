/**
 * Writable copies of saved disk images. A saved state's disk is read-only
 * forever, so every resumed machine writes to a copy of its own:
 *
 * - `reflink`: an FICLONE copy (XFS with reflink=1, btrfs). Instant, shares
 *   extents, and the copy is a standalone image: no backing chain grows.
 * - `overlay`: a new qcow2 whose backing file is the saved image. Works on
 *   any filesystem; each saved step adds one link to the chain.
 * - `copy`: a full byte copy. Only for comparison (benchmarks).
 *
 * Backing files are recorded *relative* to the image inside the store, so a
 * store can be moved or synced to another host and its chains still resolve.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export type CloneMode = 'reflink' | 'overlay' | 'copy';

const reflinkByDir = new Map<string, boolean>();

/** Whether files in `dir` can be reflinked (tried once per directory and process). */
export function canReflink(dir: string): boolean {
  let ok = reflinkByDir.get(dir);
  if (ok !== undefined) return ok;
  // A fresh private directory (random name, mode 0700), not `.reflink-probe-PID`
  // beside other files: nothing can be planted at the probe's names.
  let probe: string | undefined;
  try {
    probe = fs.mkdtempSync(path.join(dir, '.reflink-probe-'));
    const a = path.join(probe, 'a');
    fs.writeFileSync(a, 'x', { flag: 'wx' });
    fs.copyFileSync(a, path.join(probe, 'b'), fs.constants.COPYFILE_FICLONE_FORCE | fs.constants.COPYFILE_EXCL);
    ok = true;
  } catch {
    ok = false;
  } finally {
    if (probe !== undefined) fs.rmSync(probe, { recursive: true, force: true });
  }
  reflinkByDir.set(dir, ok);
  return ok;
}

/** `auto`: reflink where the filesystem allows it, else an overlay. */
export function chooseCloneMode(requested: CloneMode | 'auto' | undefined, dir: string): CloneMode {
  if (requested && requested !== 'auto') return requested;
  return canReflink(dir) ? 'reflink' : 'overlay';
}

/** The backing file name stored in a qcow2 header, or null (read from the header, no process). */
export function qcow2Backing(file: string): string | null {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(20);
    fs.readSync(fd, h, 0, 20, 0);
    if (h.readUInt32BE(0) !== 0x514649fb) throw new Error(`${file} is not a qcow2 image`);
    const offset = Number(h.readBigUInt64BE(8));
    const size = h.readUInt32BE(16);
    if (offset === 0 || size === 0) return null;
    const name = Buffer.alloc(size);
    fs.readSync(fd, name, 0, size, offset);
    return name.toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** Rewrites the backing file name only (metadata; the data must already match). */
export async function rebaseUnsafe(file: string, backing: string): Promise<void> {
  await execFileP('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', file]);
}

/**
 * Makes `dst` a writable qcow2 whose contents are those of the saved image
 * `src`. Any backing file of the result is an absolute path, valid wherever
 * `dst` is; `storeRelative` turns it back into a relative one on save.
 */
export async function cloneDisk(src: string, dst: string, mode: CloneMode): Promise<void> {
  if (mode === 'overlay') {
    await createOverlay(src, 'qcow2', dst);
    return;
  }
  fs.copyFileSync(src, dst, mode === 'reflink' ? fs.constants.COPYFILE_FICLONE_FORCE : 0);
  fs.chmodSync(dst, 0o644);
  const backing = qcow2Backing(dst);
  if (backing && !path.isAbsolute(backing)) await rebaseUnsafe(dst, path.resolve(path.dirname(src), backing));
}

/**
 * Points a disk's absolute backing file (if any) at the same file, relative
 * to `finalDir`, the directory the image will live in.
 */
export async function makeBackingRelative(file: string, finalDir: string): Promise<void> {
  const backing = qcow2Backing(file);
  if (backing && path.isAbsolute(backing)) await rebaseUnsafe(file, path.relative(finalDir, backing));
}

/** Length of the backing chain below `file` (0 for a standalone image). */
export function chainLength(file: string): number {
  let n = 0;
  for (let f = file, b = qcow2Backing(f); b; b = qcow2Backing(f)) {
    f = path.resolve(path.dirname(f), b);
    n++;
  }
  return n;
}

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;

/** An image's virtual size: from the qcow2 header, or the file size of a raw image. */
function virtualSize(file: string, format: 'qcow2' | 'raw'): bigint {
  if (format === 'raw') return BigInt(fs.statSync(file).size);
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(32);
    fs.readSync(fd, h, 0, 32, 0);
    if (h.readUInt32BE(0) !== 0x514649fb) throw new Error(`${file} is not a qcow2 image`);
    return h.readBigUInt64BE(24);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The bytes of an empty qcow2 v3 image backed by `backing` (an absolute
 * path), laid out as `qemu-img create -f qcow2 -b` lays it out: header,
 * backing-format extension and backing name in cluster 0, the refcount
 * table in cluster 1, its one refcount block (16-bit counts; clusters 0-3
 * used) in cluster 2, and an all-zero L1 table (nothing allocated, every
 * read goes to the backing file) in cluster 3. Null when the L1 table
 * would not fit one cluster (over 4 TiB virtual size).
 */
export function qcow2OverlayBytes(backing: string, backingFormat: 'qcow2' | 'raw', size: bigint): Buffer | null {
  const l2Span = BigInt(CLUSTER) * BigInt(CLUSTER / 8);
  const l1Size = Number((size + l2Span - 1n) / l2Span);
  if (l1Size * 8 > CLUSTER) return null;
  const name = Buffer.from(backing);
  const fmt = Buffer.from(backingFormat);
  const HEADER = 112; // v3 header with the compression type field, as QEMU 7.2 writes it
  const ext = 8 + Math.ceil(fmt.length / 8) * 8 + 8; // backing format + end marker
  const nameAt = HEADER + ext;
  if (nameAt + name.length > CLUSTER) return null;
  const buf = Buffer.alloc(3 * CLUSTER + l1Size * 8);
  buf.writeUInt32BE(0x514649fb, 0); // magic
  buf.writeUInt32BE(3, 4); // version
  buf.writeBigUInt64BE(BigInt(nameAt), 8); // backing_file_offset
  buf.writeUInt32BE(name.length, 16); // backing_file_size
  buf.writeUInt32BE(CLUSTER_BITS, 20);
  buf.writeBigUInt64BE(size, 24);
  buf.writeUInt32BE(0, 32); // no encryption
  buf.writeUInt32BE(l1Size, 36);
  buf.writeBigUInt64BE(BigInt(3 * CLUSTER), 40); // L1 table
  buf.writeBigUInt64BE(BigInt(CLUSTER), 48); // refcount table
  buf.writeUInt32BE(1, 56); // refcount table clusters
  // nb_snapshots, snapshots_offset, incompatible/compatible/autoclear features: 0
  buf.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  buf.writeUInt32BE(HEADER, 100); // header_length; byte 104 (compression type) 0 = zlib
  buf.writeUInt32BE(0xe2792aca, HEADER); // backing file format name extension
  buf.writeUInt32BE(fmt.length, HEADER + 4);
  fmt.copy(buf, HEADER + 8);
  // The end-of-extensions marker (type 0, length 0) is already zeros.
  name.copy(buf, nameAt);
  buf.writeBigUInt64BE(BigInt(2 * CLUSTER), CLUSTER); // refcount table[0] -> refcount block
  for (let c = 0; c < 4; c++) buf.writeUInt16BE(1, 2 * CLUSTER + 2 * c); // clusters 0-3 in use
  return buf;
}

/**
 * Creates `overlay`, an empty qcow2 backed by `base` (absolute path). Written
 * here rather than by `qemu-img create`: a process start costs 15-50 ms on
 * a loaded host, and every restore and every step makes one overlay.
 */
export async function createOverlay(base: string, baseFormat: 'qcow2' | 'raw', overlay: string): Promise<void> {
  const abs = path.resolve(base);
  const bytes = qcow2OverlayBytes(abs, baseFormat, virtualSize(abs, baseFormat));
  if (bytes) fs.writeFileSync(overlay, bytes, { flag: 'wx' });
  else await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', baseFormat, '-b', abs, overlay]);
}
