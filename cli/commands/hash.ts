/** `cairn hash`: the hash to declare for a local file or directory. */
import * as fs from 'node:fs';
import { CairnError } from '../../src/errors.js';
import { out, type CliContext } from '../context.js';

export function registerHash(ctx: CliContext): void {
  ctx.program
    .command('hash')
    .description('print the hash to declare for fetchlocal or a catalog: sha256 of a file, tree-sha256 of a directory')
    .argument('<path>')
    .option('--type <type>', 'sha256, sha512 or tree-sha256 (default: by what the path is)')
    .action(async (p: string, o: { type?: string }) => {
      const { hashPath, parseHash } = await import('../../src/stages/builtins/hashes.js');
      let isDir: boolean;
      try {
        isDir = fs.statSync(p).isDirectory();
      } catch {
        throw new CairnError('E_USAGE', `${p} does not exist`);
      }
      const type = o.type ?? (isDir ? 'tree-sha256' : 'sha256');
      parseHash('0'.repeat(type === 'sha512' ? 128 : 64), type);
      const h = await hashPath(p, type as 'sha256');
      out(`${h.type}:${h.hex}`);
    });
}
