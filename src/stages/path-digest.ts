/**
 * The content hash of a host file or directory a machine step depends on
 * (`dependOnFile`, `upload`): a file's is the sha256 of its bytes (as it
 * always was, so recorded hashes stay valid); a directory's covers every
 * entry's name (bytes), kind, exec bit and content, and symlink targets
 * (links inside the tree are not followed). Synchronous: it runs when a
 * pipeline is described and when a state's freshness is checked.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { joinPath } from '../store/fsutil.js';

/** The digest of `p` (the top is followed if it is a link, as reading a file would), or null when it cannot be read. */
export function pathSha256(p: string): string | null {
  try {
    const st = fs.statSync(p);
    if (st.isFile()) return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    if (st.isDirectory()) return dirDigest(Buffer.from(p));
    return null;
  } catch {
    return null;
  }
}

function dirDigest(dir: Buffer): string {
  const h = createHash('sha256').update('cairn-dir-1\0');
  const names = fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare);
  for (const name of names) {
    const p = joinPath(dir, name);
    const st = fs.lstatSync(p);
    let kind: string;
    let body: string;
    if (st.isDirectory()) [kind, body] = ['d', dirDigest(p)];
    else if (st.isSymbolicLink()) [kind, body] = ['l', fs.readlinkSync(p, { encoding: 'buffer' }).toString('hex')];
    else if (st.isFile())
      [kind, body] = [st.mode & 0o111 ? 'x' : 'f', createHash('sha256').update(fs.readFileSync(p)).digest('hex')];
    else [kind, body] = ['o', String(st.mode & 0o170000)];
    h.update(`${name.length}:`).update(name).update(`\0${kind}\0${body}\n`);
  }
  return h.digest('hex');
}
