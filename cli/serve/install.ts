/**
 * Which installation of Cairn this process runs from: the real path of its
 * dist/ directory, and the build id written there by the build. A server
 * serves only clients of its own installation and build, and each
 * installation has its own socket (protocol.ts serverSocketPath), so two
 * projects with their own node_modules/cairn, or a global and a local
 * install, never run each other's commands.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installId } from './protocol.js';

/** dist/, from dist/cli/serve/install.js (the repository root when run from source). */
const DIST = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let cached: { dir: string; id: string } | undefined;

/**
 * The installation: its dist/ directory as the C client sees it (the kernel
 * resolves /proc/self/exe, so: symlinks resolved), and its key in socket names.
 */
export function installation(): { dir: string; id: string } {
  if (!cached) {
    // As bytes: the C client hashes the path's bytes, which need not be UTF-8.
    const real = fs.realpathSync(DIST, { encoding: 'buffer' });
    cached = { dir: real.toString(), id: installId(real) };
  }
  return cached;
}

/** This installation's build (dist/build-id, written by scripts/build-client.sh), read afresh each time. */
export function readBuildId(): string {
  try {
    return fs.readFileSync(path.join(DIST, 'build-id'), 'utf8').trim() || 'none';
  } catch {
    return 'none';
  }
}
