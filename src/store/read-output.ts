import * as fs from 'node:fs';
import type { Readable } from 'node:stream';
import { CairnError } from '../errors.js';
import { settle } from './settle.js';
import { displayPath, joinPath, type FsPath } from './fsutil.js';

const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

/**
 * Opens a file of a realization's output by its path relative to `out/`.
 * The output came from a build, so it is judged like any tree from outside:
 * a link is followed only while it really resolves inside the output (the
 * physical path, after every link, must stay under `out/`), and only a
 * regular file is opened. Realizations are sealed and never change, so the
 * check and the open see the same tree.
 */
function openInside(out: string, rel: FsPath, rref: string): number {
  const relB = Buffer.from(rel as string);
  const shown = displayPath(relB);
  const refuse = (why: string, reason: 'outside' | 'missing' | 'not-file' = 'missing'): never => {
    throw new CairnError('E_NO_SUCH_PATH', `${shown} ${why} in ${rref}`, { path: shown, rref, reason });
  };
  if (relB.length === 0 || relB[0] === 0x2f || relB.includes(0))
    refuse('is not a path relative to the output', 'outside');
  let real: Buffer;
  let base: Buffer;
  try {
    // realpath(3): fs.realpathSync's JavaScript walk decodes a Buffer path as UTF-8, losing byte names.
    base = fs.realpathSync.native(out, { encoding: 'buffer' });
    real = fs.realpathSync.native(joinPath(out, relB), { encoding: 'buffer' });
  } catch {
    return refuse('does not exist');
  }
  const inside =
    real.length > base.length + 1 && real[base.length] === 0x2f && real.subarray(0, base.length).equals(base);
  if (!inside) refuse('leaves the output', 'outside');
  let fd: number;
  try {
    fd = fs.openSync(real, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch {
    return refuse('cannot be opened');
  }
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    refuse('is not a regular file', 'not-file');
  }
  return fd;
}

export function readOutputFileSync(out: string, rel: FsPath, rref: string): Buffer {
  const fd = openInside(out, rel, rref);
  try {
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function readOutputFile(out: string, rel: FsPath, rref: string): Promise<Buffer> {
  return settle(() => readOutputFileSync(out, rel, rref));
}

export function openOutputFile(out: string, rel: FsPath, rref: string): Promise<Readable> {
  return settle(() => fs.createReadStream('', { fd: openInside(out, rel, rref), autoClose: true }));
}
