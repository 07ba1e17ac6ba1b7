/**
 * The identity of a user step module (a step the CLI loads from a file).
 *
 * A step's own identity is the source of its `run` function, which does not
 * show what `run` uses from around it: a module-level `const BANNER = 'v1'`,
 * a helper function, a local module it imports. For a step loaded from a
 * file, the whole module and every local file it imports (transitively) are
 * therefore part of the identity: edit any of them and the step runs again;
 * edit it back and the old state is found again. JavaScript and TypeScript
 * files count by their canonical code (comments, whitespace and types left
 * out, as for build functions), other files by their bytes. Packages
 * (`import 'x'`) are not covered. A step with a `version` keeps it: that is
 * the opt-in for "I changed the code, keep my states".
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { moduleCodeHash } from './function-source.js';
import { moduleFiles } from './load.js';
import type { Step } from './machine.js';

const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/** One file's part of the identity: its canonical code when it is a module that parses, else its bytes. */
function fileDigest(file: string): string {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new CairnError('E_NO_SUCH_PATH', `step module: cannot read ${file}: ${(e as Error).message}`, {
      path: file,
    });
  }
  const code = /\.[cm]?[jt]sx?$/.test(file) ? moduleCodeHash(bytes.toString('utf8'), file) : undefined;
  return code !== undefined ? `code:${code}` : `bytes:${sha256(bytes)}`;
}

/**
 * The code identity of `s` as loaded from `file`: the run source (or version)
 * together with the module and its local imports, named relative to the
 * module's directory (so a moved project keeps its states).
 */
export async function stepModuleCode(s: Step<any>, file: string): Promise<string> {
  if (s.code.startsWith('version:')) return s.code;
  const dir = path.dirname(path.resolve(file));
  const parts = (await moduleFiles(file)).map((f) => `${path.relative(dir, f)}\0${fileDigest(f)}`);
  return `module:${sha256([s.code, ...parts].join('\n'))}`;
}
