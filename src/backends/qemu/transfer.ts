/**
 * Fast file transfers between the host and a QEMU guest over the VM's 9p
 * share (virtio-9p, msize 512000), instead of the serial console.
 *
 * Both directions move one tar stream, written and read with `dd bs=512k`
 * in the guest: 9p without a cache costs one round trip per write(2), so
 * busybox's 4 KiB copies reach ~13 MB/s and a file per round trip makes a
 * tree of small files crawl, while one stream in 512 KiB blocks runs at
 * 140-220 MB/s under TCG.
 *
 * QEMU refuses to migrate (save a state) while a 9p export is mounted, so
 * the share stays mounted between transfers only until the machine is
 * saved: `unmountShare` runs first (mount + unmount cost ~100 ms per
 * transfer under TCG, a tenth of a 50 MB upload).
 *
 * The guest is hostile. It can mount the share at any time and plant
 * anything there (symlinks, device nodes: security_model=none creates them
 * on the host, hence the 0700 parent). So the host never writes into the
 * share: it prepares an upload outside it and renames it in whole; after a
 * download it first renames the tar out of the share, where the guest can
 * no longer reach it, checks that it is a regular file, and extracts it
 * with the store's safe extractor (no device, no absolute name or `..`, no
 * symlink that leads outside the tree, names as bytes) into a fresh
 * directory, which then replaces the destination.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { CairnError } from '../../errors.js';
import type { ExecOptions, ExecResult, TransferProgress } from '../machine.js';
import { extractTar } from '../../store/extract.js';
import { joinPath, removeTree, withRegularFile, type FsPath } from '../../store/fsutil.js';
import { SHARE_TAG } from './vm.js';

const execFileP = promisify(execFile);

type Exec = (cmd: string, opts?: ExecOptions) => Promise<ExecResult>;

export interface TransferChannel {
  exec: Exec;
  /** The host directory behind the guest's share. */
  share: string;
  /** A private host directory on the share's filesystem, outside the share. */
  stage: string;
  /** Set once a transfer has mounted the share in the guest (it stays mounted until unmountShare). */
  used?: boolean;
}

export interface TransferResult {
  bytes: number;
  ms: number;
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** Where the guest mounts the share for one transfer. */
const MOUNT = '/tmp/.cairn-xfer';
const HOUR = 3_600_000;

/**
 * A guest command that runs `body` (with `$M` the mount point) under
 * pipefail, mounting the share first unless `marker` (a file the host put
 * in the share) already shows there: a shell test, no process. Exit 90:
 * the share does not mount (a guest without 9p).
 */
function mounted(body: string, marker: string): string {
  return (
    `M=${MOUNT}; [ -e $M/${marker} ] || { mkdir -p $M && umount $M 2>/dev/null; ` +
    `mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ${SHARE_TAG} $M || exit 90; }; ` +
    `set -o pipefail; ${body}`
  );
}

/** Unmounts the share in the guest if a transfer mounted it: before a save, which QEMU refuses while it is mounted. */
export async function unmountShare(ch: TransferChannel | null): Promise<void> {
  if (!ch?.used) return;
  const r = await ch.exec(`umount ${MOUNT}`, { timeoutMs: 60_000 });
  if (r.exitCode !== 0) throw transferError('cannot unmount the file-transfer share before saving', r);
  ch.used = false;
}

/**
 * Runs a transfer command. The console takes one line of at most 4095
 * bytes and the exec wrapper quotes the command once more, so a path long
 * enough to overflow it is refused here instead of hanging the shell.
 */
async function runMounted(ch: TransferChannel, body: string, marker: string): Promise<ExecResult> {
  const cmd = mounted(body, marker);
  ch.used = true;
  if (Buffer.byteLength(cmd) > 2500)
    throw new CairnError('E_BAD_ARGUMENT', 'a machine path too long for the console line (about 1 KB at most)');
  return ch.exec(cmd, { timeoutMs: HOUR });
}

function transferError(what: string, r: ExecResult): CairnError {
  const why =
    r.exitCode === 90
      ? 'the machine cannot mount its file-transfer share (no 9p in its kernel?)'
      : r.stderr.trim() || `exit ${r.exitCode}`;
  return new CairnError('E_MACHINE_TRANSFER', `${what}: ${why}`, { exitCode: r.exitCode });
}

/**
 * Calls `progress` every `everyMs` with the size of `file` (a transfer's
 * tar as the guest writes it) until stopped.
 */
function watchSize(file: string, progress: TransferProgress | undefined, total: number | null): () => void {
  if (!progress) return () => {};
  const timer = setInterval(() => {
    let n = 0;
    try {
      n = fs.lstatSync(file).size;
    } catch {
      return;
    }
    progress(n, total);
  }, 1000);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Copies a host file or directory into the guest with cp-like rules:
 * `guestPath` ending in `/` or naming an existing directory means "into
 * it" (the `/` creates it); otherwise it is the new name. Modes, symlinks
 * and empty directories come along; the guest's root owns the result.
 */
export async function uploadTree(
  ch: TransferChannel,
  hostPath: string,
  guestPath: string,
  progress?: TransferProgress,
): Promise<TransferResult> {
  const t0 = performance.now();
  const src = path.resolve(hostPath);
  const name = path.basename(src);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(src);
  } catch (e) {
    throw new CairnError('E_NO_SUCH_PATH', `upload: cannot read ${hostPath}: ${(e as Error).message}`, {
      path: hostPath,
    });
  }
  if (!name) throw new CairnError('E_BAD_ARGUMENT', 'upload: name a file or directory, not /');
  if (!guestPath) throw new CairnError('E_BAD_ARGUMENT', 'upload: the machine path is empty');
  if (!st.isDirectory() && !st.isFile() && !st.isSymbolicLink())
    throw new CairnError('E_BAD_ARGUMENT', `upload: ${hostPath} is not a file, directory or symlink`);
  const id = randomBytes(8).toString('hex');
  const staged = path.join(ch.stage, id);
  const inShare = path.join(ch.share, id);
  const dst = guestPath.replace(/\/+$/, '') || '/';
  // Quoted once into $d and $n: the whole command must stay one tty line (4095 bytes).
  const vars = `d=${q(dst)}; n=${q(name)}; `;
  const into = guestPath.endsWith('/') ? `mkdir -p "$d" && ` : '';
  try {
    let body: string;
    if (st.isFile()) {
      // A regular file travels as itself: no tar to write on the host nor to unpack under TCG (4x faster).
      fs.copyFileSync(src, staged, fs.constants.COPYFILE_FICLONE);
      body =
        `${vars}${into}if [ -d "$d" ]; then t="$d/$n"; else t="$d"; fi; ` +
        `dd if=$M/${id} of="$t" bs=512k 2>/dev/null && chmod ${(st.mode & 0o7777).toString(8)} "$t"`;
    } else {
      // GNU tar on the host, owners zeroed: the guest's root owns what it unpacks.
      await execFileP(
        'tar',
        ['--create', '--file', staged, '--format=gnu', '--numeric-owner', '--owner=0', '--group=0'].concat([
          '--directory',
          path.dirname(src),
          '--',
          name,
        ]),
        { maxBuffer: 1 << 20 },
      ).catch((e: unknown) => {
        const why = (e as { stderr?: string }).stderr || (e as Error).message;
        throw new CairnError('E_NO_SUCH_PATH', `upload: cannot read ${hostPath}: ${why.trim()}`, { path: hostPath });
      });
      // Not into a directory: unpack next to the new name, then rename, so `upload D /x/g` makes g.
      body =
        `${vars}${into}if [ -d "$d" ]; then dd if=$M/${id} bs=512k 2>/dev/null | tar -x -f - -C "$d"; ` +
        `else p="$(dirname "$d")/.cairn-up-${id}"; mkdir "$p" && ` +
        `dd if=$M/${id} bs=512k 2>/dev/null | tar -x -f - -C "$p" && rm -rf "$d" 2>/dev/null; ` +
        `mv "$p/$n" "$d"; r=$?; rm -rf "$p"; exit $r; fi`;
    }
    const bytes = fs.statSync(staged).size;
    progress?.(0, bytes);
    // Renamed in whole: the host never writes inside the share.
    fs.renameSync(staged, inShare);
    const r = await runMounted(ch, body, id);
    if (r.exitCode !== 0) throw transferError(`upload ${hostPath} to ${guestPath}`, r);
    progress?.(bytes, bytes);
    return { bytes, ms: performance.now() - t0 };
  } finally {
    fs.rmSync(staged, { force: true });
    fs.rmSync(inShare, { force: true });
  }
}

/**
 * Copies a guest file or directory to `hostPath` (see hostDestination:
 * a trailing `/` means "into it"; otherwise what is there is replaced).
 * Only the exec bit of modes is kept (as in store outputs); a device,
 * fifo, absolute or escaping symlink in the guest's tree refuses the whole
 * download (E_UNSAFE_ARCHIVE) and nothing on the host changes.
 */
export async function downloadTree(
  ch: TransferChannel,
  guestPath: string,
  hostPath: string,
  progress?: TransferProgress,
): Promise<TransferResult> {
  const t0 = performance.now();
  const src = guestPath.replace(/\/+$/, '') || '/';
  const name = path.posix.basename(src);
  const dest = hostDestination(hostPath, name, guestPath);
  const id = randomBytes(8).toString('hex');
  const inShare = path.join(ch.share, id);
  const taken = path.join(ch.stage, id);
  const tree = path.join(ch.stage, `${id}.d`);
  const marker = path.join(ch.share, `${id}.m`);
  const stop = watchSize(inShare, progress, null);
  try {
    // An empty marker tells the guest whether the share is mounted (renamed in: the host never writes in the share).
    fs.writeFileSync(taken, '');
    fs.renameSync(taken, marker);
    // The first line says what travels: F (a regular file, as itself, with its exec bit), D (a directory's
    // contents as a tar) or T (anything else, a symlink say, as a tar under its own name).
    // The path is quoted once into $s: the whole command must stay one tty line (4095 bytes).
    const toShare = `| dd of=$M/${id} bs=512k iflag=fullblock 2>/dev/null`;
    const body =
      `s=${q(src)}; if [ -f "$s" ] && [ ! -L "$s" ]; then if [ -x "$s" ]; then echo F x; else echo F -; fi; ` +
      `dd if="$s" of=$M/${id} bs=512k 2>/dev/null; ` +
      `elif [ -d "$s" ] && [ ! -L "$s" ]; then echo D; tar -c -f - -C "$s" . ${toShare}; ` +
      `elif [ -e "$s" ] || [ -L "$s" ]; then echo T; tar -c -f - -C "$(dirname "$s")" "$(basename "$s")" ${toShare}; ` +
      `else echo "no such file or directory in the machine" >&2; exit 2; fi`;
    const r = await runMounted(ch, body, `${id}.m`);
    stop();
    if (r.exitCode !== 0) throw transferError(`download ${guestPath}`, r);
    // The guest's output is not trusted: one of the three answers, exactly.
    const kind = /^(F [x-]|D|T)\n$/.exec(r.stdout)?.[1];
    if (!kind) throw new CairnError('E_MACHINE_TRANSFER', `download ${guestPath}: the machine gave no valid answer`);
    // Out of the guest's reach first; then it must still be a plain file.
    fs.renameSync(inShare, taken);
    const bytes = withRegularFile(taken, (fd, st) => {
      // Only the exec bit is kept, as in store outputs: no setuid bit from a guest.
      if (kind.startsWith('F')) fs.fchmodSync(fd, kind === 'F x' ? 0o755 : 0o644);
      return st.size;
    });
    if (bytes === null)
      throw new CairnError('E_MACHINE_TRANSFER', `download ${guestPath}: the guest left no regular file for it`);
    progress?.(bytes, bytes);
    if (kind.startsWith('F')) {
      replaceWith(taken, dest);
    } else {
      fs.mkdirSync(tree, { mode: 0o700 });
      try {
        await extractTar(taken, 'tar', tree);
      } catch (e) {
        if (e instanceof CairnError) e.message = `download ${guestPath} from the machine: ${e.message}`;
        throw e;
      }
      const got = kind === 'D' ? tree : path.join(tree, name);
      if (!fs.lstatSync(got, { throwIfNoEntry: false }))
        throw new CairnError('E_MACHINE_TRANSFER', `download ${guestPath}: the machine's archive does not hold it`);
      replaceWith(got, dest);
    }
    return { bytes, ms: performance.now() - t0 };
  } finally {
    stop();
    fs.rmSync(marker, { force: true });
    fs.rmSync(inShare, { force: true });
    fs.rmSync(taken, { force: true });
    removeTree(tree);
  }
}

/**
 * The host side of a download: `hostPath` ending in `/` means "into it"
 * (created if missing), under the machine path's name; otherwise it is the
 * destination itself. Unlike cp, an existing directory there is replaced,
 * not entered: running the same download twice gives the same tree.
 */
export function hostDestination(hostPath: string, name: string, guestPath: string): string {
  const abs = path.resolve(hostPath);
  if (!hostPath.endsWith('/')) return abs;
  if (!name || name === '/')
    throw new CairnError('E_BAD_ARGUMENT', `download ${guestPath}: give the host path a name of its own`);
  fs.mkdirSync(abs, { recursive: true });
  return path.join(abs, name);
}

/**
 * Puts the extracted `tree` at `dest`: renamed there when on the same
 * filesystem, else copied to a fresh sibling first; then swapped in, and
 * whatever was at `dest` removed (never following a link).
 */
export function replaceWith(tree: string, dest: string, opts: { copy?: boolean } = {}): void {
  const tag = randomBytes(6).toString('hex');
  const parent = path.dirname(dest);
  const fresh = path.join(parent, `.${path.basename(dest)}.cairn-new-${tag}`);
  const old = path.join(parent, `.${path.basename(dest)}.cairn-old-${tag}`);
  let renamed = false;
  if (!opts.copy) {
    try {
      fs.renameSync(tree, fresh);
      renamed = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    }
  }
  if (!renamed) {
    // The tree (extracted safely, or a sealed store output) holds no device and no link out of it.
    fs.cpSync(tree, fresh, { recursive: true, verbatimSymlinks: true, errorOnExist: true, force: false });
    // A copy of a read-only store tree is the user's to edit.
    userWritable(fresh);
  }
  let moved = false;
  try {
    fs.renameSync(dest, old);
    moved = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      removeTree(fresh);
      throw e;
    }
  }
  fs.renameSync(fresh, dest);
  if (moved) removeTree(old);
}

/** Adds u+w (u+rwx on directories) below `p`, never following a link. */
function userWritable(p: FsPath): void {
  const st = fs.lstatSync(p);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    fs.chmodSync(p, (st.mode & 0o7777) | 0o700);
    for (const name of fs.readdirSync(p, { encoding: 'buffer' })) userWritable(joinPath(p, name));
  } else {
    fs.chmodSync(p, (st.mode & 0o7777) | 0o200);
  }
}
