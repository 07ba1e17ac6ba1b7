/**
 * Loads a stage code object (code-bundle.ts) back into stages, on a host
 * that may have no checkout: the bundle is written, with its `cairn` imports
 * pointed at the running Cairn, into the user's module cache and imported
 * from there, with source maps on so that build functions keep the code
 * identity they had where they were bundled (see function-source.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CairnError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import type { CodeObject } from '../store/code-object.js';
import { collectExports } from './load.js';
import { defaultCacheDir } from './module-compile.js';
import type { Stage } from './stage.js';

/** The bundle with every import of `cairn` pointed at `cairnUrl` (offsets from es-module-lexer). */
async function linkBundle(bundle: string, cairnUrl: string): Promise<string> {
  const lexer = await import('es-module-lexer');
  await lexer.init;
  const [imports] = lexer.parse(bundle);
  let out = bundle;
  // Last first, so earlier offsets stay valid.
  for (const i of [...imports].sort((a, b) => b.s - a.s)) {
    if (i.d !== -1 || (i.n !== 'cairn' && !i.n?.startsWith('cairn/'))) continue;
    if (i.n !== 'cairn')
      throw new CairnError('E_CODE_CORRUPT', `a stage code object imports ${i.n}; only 'cairn' itself is supported`);
    out = out.slice(0, i.s) + cairnUrl + out.slice(i.e);
  }
  return out;
}

/** Every stage a code object exports, by export name (see collectExports). */
export async function loadCodeObject(obj: CodeObject, hash: string): Promise<Map<string, Stage>> {
  process.setSourceMapsEnabled(true);
  const code = await linkBundle(obj.bundle, new URL('../index.js', import.meta.url).href);
  const file = path.join(defaultCacheDir(), `code-${hash}.mjs`);
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== code) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    writeFileAtomic(file, code);
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw notPortable(obj, e) ?? loadFailed(obj, hash, e);
  }
  try {
    return (await collectExports(mod, obj.entry)).exports;
  } catch (e) {
    throw notPortable(obj, (e as { cause?: unknown }).cause ?? e) ?? e;
  }
}

function loadFailed(obj: CodeObject, hash: string, e: unknown): CairnError {
  return new CairnError(
    'E_STAGE_FILE',
    `code object ${hash} (stage file ${obj.entry}) failed to load: ${(e as Error)?.message ?? String(e)}`,
    { code: hash, file: obj.entry },
    { cause: e },
  );
}

/**
 * E_CODE_NOT_PORTABLE when `e` is a file of the checkout (next to the stage
 * file where it was bundled) that is missing here, or a local module the
 * bundle did not include; else undefined.
 */
export function notPortable(obj: CodeObject, e: unknown): CairnError | undefined {
  const err = e as NodeJS.ErrnoException & { url?: string };
  const dir = path.dirname(obj.entry);
  const missing = err?.code === 'ENOENT' && typeof err.path === 'string' ? err.path : undefined;
  if (missing !== undefined && (missing === dir || missing.startsWith(dir + path.sep))) {
    return new CairnError(
      'E_CODE_NOT_PORTABLE',
      `the stage code reads ${missing}, a file of the checkout where it was bundled (${dir}), which this host ` +
        `lacks: declare it as a file input of the stage (files: [...]) so it travels as a store object`,
      { path: missing, checkout: dir },
      { cause: e },
    );
  }
  if (err?.code === 'ERR_MODULE_NOT_FOUND') {
    return new CairnError(
      'E_CODE_NOT_PORTABLE',
      `the stage code imports a module its bundle does not hold (${err.message}): ` +
        'import local modules by a literal path so they are bundled',
      { checkout: dir },
      { cause: e },
    );
  }
  return undefined;
}
