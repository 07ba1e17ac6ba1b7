/**
 * Fresh disk images for guests: an ext4 filesystem, empty or filled from a
 * host directory, in a standalone qcow2 file. The machine bases (src/stages/bases)
 * build their base disks with it.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** An ext4 filesystem of `mb` MiB (holding `fromDir`'s files, if given) as a standalone qcow2 image. */
export async function makeExt4Qcow2(out: string, mb: number, tmp: string, fromDir?: string): Promise<void> {
  const raw = path.join(tmp, 'disk.raw');
  await execFileP('qemu-img', ['create', '-q', '-f', 'raw', raw, `${mb}M`]);
  const lazyInit = ['-E', 'lazy_itable_init=0,lazy_journal_init=0'];
  await execFileP('mkfs.ext4', ['-q', '-F', ...lazyInit, ...(fromDir ? ['-d', fromDir] : []), raw]);
  await execFileP('qemu-img', ['convert', '-O', 'qcow2', raw, out]);
  fs.rmSync(raw, { force: true });
}
