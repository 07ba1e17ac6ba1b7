/**
 * Files and directories to and from an ssh machine, as tar streams over
 * the session's master connection (one ssh session per transfer, no scp:
 * scp follows symlinks in what it sends).
 *
 * Both directions copy the way `cp -R SRC DST` does: a DST that ends in `/`
 * or is an existing directory receives SRC under its own name.
 *
 * Downloads are hostile input: the remote tar is written to a file, then
 * unpacked by extractTar (src/store/extract.ts: no `..`, no absolute names,
 * no link followed or planted before the end, names as bytes, size limits)
 * into a fresh directory beside the destination, checked to hold exactly
 * the one entry asked for, and renamed into place. Nothing the host sends
 * is ever written through a path it chose.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { extractTar } from '../../store/extract.js';
import { removeTree } from '../../store/fsutil.js';
import { shQuote } from './target.js';

type Argv = (extra: readonly string[], remote: string) => string[];
type Lost = () => CairnError | null;

/** The remote name of the last component: refuses `/`, `.`, `..` and empty paths. */
function lastName(p: string, what: string): string {
  const name = path.posix.basename(p.replace(/\/+$/, ''));
  if (name === '' || name === '.' || name === '..')
    throw new CairnError('E_BAD_ARGUMENT', `${what} ${JSON.stringify(p)} must name a file or directory`, { path: p });
  return name;
}

/** Runs ssh with the remote script, feeding `stdin` (a stream) and sending stdout to `stdout`. */
function runScript(
  argv: Argv,
  lost: Lost,
  script: string,
  args: readonly string[],
  io: { stdin?: NodeJS.ReadableStream; stdout?: fs.WriteStream },
  what: string,
): Promise<void> {
  const remote = `sh -c ${shQuote(script)} sh ${args.map(shQuote).join(' ')}`;
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', argv(['-T'], remote), {
      stdio: [io.stdin ? 'pipe' : 'ignore', io.stdout ? 'pipe' : 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err = (err + d).slice(-8192);
    });
    if (io.stdin) {
      child.stdin!.on('error', () => {});
      io.stdin.pipe(child.stdin!);
    }
    const written = io.stdout
      ? new Promise<void>((res, rej) => {
          child.stdout!.pipe(io.stdout!);
          io.stdout!.once('finish', res).once('error', rej);
        })
      : Promise.resolve();
    child.once('error', (e) => reject(new CairnError('E_MACHINE_UNREACHABLE', `cannot run ssh: ${e.message}`)));
    child.once('close', (code) => {
      const gone = code === 255 || code === null ? lost() : null;
      if (gone) return reject(gone);
      if (code !== 0)
        return reject(
          new CairnError(
            'E_MACHINE_EXEC',
            `${what} failed (exit ${code}): ${err.trim().split('\n').slice(-3).join(' | ')}`,
            {
              exitCode: code,
              stderr: err,
            },
          ),
        );
      written.then(resolve, reject);
    });
  });
}

/**
 * The remote half of an upload: unpack into a temp directory beside the
 * target (so the final move is a rename), then move or merge into place.
 * Owners are not kept: the files belong to the login user.
 */
const UPLOAD_SCRIPT = `set -e
dst=$1; name=$2
case "$dst" in */) t="$dst$name" ;; *) if [ -d "$dst" ]; then t="$dst/$name"; else t="$dst"; fi ;; esac
parent=$(dirname -- "$t")
[ -d "$parent" ] || { echo "no such directory: $parent" >&2; exit 2; }
tmp=$(mktemp -d "$parent/.cairn-upload.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
tar -x -f - -C "$tmp" --no-same-owner
if [ -d "$tmp/$name" ] && [ ! -L "$tmp/$name" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
  cp -pR -- "$tmp/$name/." "$t/"
else
  mv -f -- "$tmp/$name" "$t"
fi`;

/** Copies a host file or directory (symlinks in it stay links) to the machine. */
export async function uploadTree(hostPath: string, machinePath: string, argv: Argv, lost: Lost): Promise<void> {
  const src = path.resolve(hostPath);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(src);
  } catch {
    throw new CairnError('E_NO_SUCH_PATH', `upload: cannot read ${src}`, { path: src });
  }
  if (!st.isFile() && !st.isDirectory())
    throw new CairnError('E_BAD_ARGUMENT', `upload: ${src} is not a regular file or a directory`, { path: src });
  const name = path.basename(src);
  // GNU tar archives links as links and reads names as bytes.
  const tar = spawn('tar', ['-c', '-f', '-', '-C', path.dirname(src), '--', name], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let tarErr = '';
  tar.stderr.setEncoding('utf8').on('data', (d: string) => {
    tarErr += d;
  });
  const tarDone = new Promise<number | null>((r) => tar.once('close', r));
  try {
    await runScript(argv, lost, UPLOAD_SCRIPT, [machinePath, name], { stdin: tar.stdout }, `upload ${src}`);
  } finally {
    if (tar.exitCode === null) tar.kill();
  }
  const code = await tarDone;
  if (code !== 0)
    throw new CairnError('E_NO_SUCH_PATH', `upload: tar could not read ${src}: ${tarErr.trim()}`, { path: src });
}

/** The remote half of a download: a tar of one entry, not following a link at its top. */
const DOWNLOAD_SCRIPT = `set -e
p=$1; name=$2
[ -e "$p" ] || [ -L "$p" ] || { echo "no such file or directory: $p" >&2; exit 2; }
cd -- "$(dirname -- "$p")"
exec tar -c -f - -- "$name"`;

/** Copies a machine file or directory to the host, safely (see the module comment). */
export async function downloadTree(machinePath: string, hostPath: string, argv: Argv, lost: Lost): Promise<void> {
  const name = lastName(machinePath, 'download:');
  const dest = path.resolve(hostPath);
  let into: boolean;
  try {
    into = hostPath.endsWith('/') || fs.lstatSync(dest).isDirectory();
  } catch {
    into = false;
  }
  const target = into ? path.join(dest, name) : dest;
  const parent = path.dirname(target);
  if (!fs.existsSync(parent))
    throw new CairnError('E_NO_SUCH_PATH', `download: no directory ${parent}`, { path: parent });
  const work = fs.mkdtempSync(path.join(parent, '.cairn-download-'));
  try {
    const tarFile = path.join(work, 'recv.tar');
    await runScript(
      argv,
      lost,
      DOWNLOAD_SCRIPT,
      [machinePath, name],
      { stdout: fs.createWriteStream(tarFile, { flags: 'wx', mode: 0o600 }) },
      `download ${machinePath}`,
    );
    const tree = path.join(work, 'tree');
    fs.mkdirSync(tree);
    await extractTar(tarFile, 'tar', tree);
    const got = fs.readdirSync(tree, { encoding: 'buffer' });
    if (got.length !== 1 || !got[0]!.equals(Buffer.from(name)))
      throw new CairnError(
        'E_UNSAFE_ARCHIVE',
        `download ${machinePath}: the host sent ${got.length} top-level entries, not just ${JSON.stringify(name)}`,
        { path: machinePath },
      );
    const from = path.join(tree, name);
    const existing = lstatOrNull(target);
    // Never merge what a host sends into a directory the user has; a file replaces a file (or a link, not its target).
    if (existing?.isDirectory() || (existing && fs.lstatSync(from).isDirectory()))
      throw new CairnError('E_BAD_ARGUMENT', `download: ${target} exists; a download does not merge into it`, {
        path: target,
      });
    fs.renameSync(from, target);
  } finally {
    removeTree(work);
  }
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}
