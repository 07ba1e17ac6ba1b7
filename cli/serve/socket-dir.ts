/**
 * Whether the server's socket may be trusted: the socket's directory is a
 * real directory (not a symlink), belongs to this user and is closed to
 * everyone else (no group or other bits), and no directory above it lets
 * another user swap what the path means. In a shared sticky /tmp another
 * user may create `cairn-UID` (or a symlink of that name) first: such a
 * directory is never used. cli/client/cairn.c applies the same rule.
 *
 * Pure rules on lstat results, and a thin shell that resolves the parent
 * (realpath) once and returns the path the caller must use from then on,
 * which has no symlink in it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../src/errors.js';

export interface Facts {
  isDirectory: boolean;
  isSocket: boolean;
  uid: number;
  mode: number;
}

const facts = (st: fs.Stats): Facts => ({
  isDirectory: st.isDirectory(),
  isSocket: st.isSocket(),
  uid: st.uid,
  mode: st.mode,
});

/**
 * An ancestor of the socket's directory (resolved, so not a symlink): its
 * owner could rename what is under it, so it must be root or us; if others
 * may write to it, only the sticky bit keeps them from renaming our entries.
 */
export function ancestorProblem(f: Facts, uid: number): string | undefined {
  if (!f.isDirectory) return 'is not a directory';
  if (f.uid !== 0 && f.uid !== uid) return `belongs to uid ${f.uid}`;
  if ((f.mode & 0o022) !== 0 && (f.mode & 0o1000) === 0) return 'is writable by others and not sticky';
  return undefined;
}

/** The socket's own directory (lstat): a real directory, ours, mode 0700 or stricter. */
export function socketDirProblem(f: Facts, uid: number): string | undefined {
  if (!f.isDirectory) return 'is not a directory (a symlink?)';
  if (f.uid !== uid) return `belongs to uid ${f.uid}, not to you (uid ${uid})`;
  if ((f.mode & 0o077) !== 0) return `has mode ${(f.mode & 0o7777).toString(8)}: group or others have access`;
  return undefined;
}

/** An existing socket file (lstat). */
export function socketFileProblem(f: Facts, uid: number): string | undefined {
  if (!f.isSocket) return 'is not a socket';
  if (f.uid !== uid) return `belongs to uid ${f.uid}, not to you (uid ${uid})`;
  return undefined;
}

const refuse = (what: string, problem: string): never => {
  throw new CairnError('E_SERVER_SOCKET', `the server socket's ${what} ${problem}: not using it`, { path: what });
};

/**
 * Checks the socket's directory and returns the socket path to use (its
 * parent resolved). With `create`, makes the directory (0700) when missing;
 * without, returns null when the directory or its parent does not exist
 * (no server can be there). Throws E_SERVER_SOCKET when the path is not
 * trustworthy.
 */
export function trustedSocketPath(socket: string, create: boolean): string | null {
  const uid = process.getuid!();
  const dir = path.dirname(path.resolve(socket));
  const parent = path.dirname(dir);
  if (create) fs.mkdirSync(parent, { recursive: true, mode: 0o700 });
  let real: string;
  try {
    real = fs.realpathSync(parent);
  } catch (e) {
    if (!create && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  for (let at = real; ; at = path.dirname(at)) {
    const problem = ancestorProblem(facts(fs.lstatSync(at)), uid);
    if (problem) refuse(`ancestor directory ${at}`, problem);
    if (at === '/') break;
  }
  const realDir = path.join(real, path.basename(dir));
  if (create) {
    try {
      fs.mkdirSync(realDir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  let st: fs.Stats;
  try {
    st = fs.lstatSync(realDir);
  } catch (e) {
    if (!create && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const dirProblem = socketDirProblem(facts(st), uid);
  if (dirProblem) refuse(`directory ${realDir}`, dirProblem);
  const real_socket = path.join(realDir, path.basename(socket));
  const sock = fs.lstatSync(real_socket, { throwIfNoEntry: false });
  const fileProblem = sock && socketFileProblem(facts(sock), uid);
  if (fileProblem) refuse(`file ${real_socket}`, fileProblem);
  return real_socket;
}
