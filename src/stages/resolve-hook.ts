/**
 * Module hooks installed by the stage loader, so stage files need no
 * compile step and no local install of Cairn:
 *
 * - `import ... from 'cairn'` resolves to the Cairn that is loading the file;
 * - `.ts`/`.mts` files are turned into JavaScript by sucrase (types are
 *   stripped, nothing else changes), and the result is cached on disk by
 *   content hash, so a cached realize never loads a transpiler at all;
 * - `./x.js` and `./x` also find `./x.ts`, as TypeScript's own resolution does.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

let target = '';
let cacheDir = '';

export function initialize(data: { target: string; cacheDir?: string }): void {
  target = data.target;
  cacheDir = data.cacheDir ?? path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cairn', 'ts');
}

interface Resolved { url: string; format?: string | null; shortCircuit?: boolean }
interface Loaded { format: string; source?: string | Buffer; shortCircuit?: boolean }
type NextResolve = (specifier: string, context: unknown) => Promise<Resolved>;
type NextLoad = (url: string, context: unknown) => Promise<Loaded>;

const TS = /\.(ts|mts)$/;

export async function resolve(specifier: string, context: { parentURL?: string }, next: NextResolve): Promise<Resolved> {
  if (specifier === 'cairn') return { url: target, shortCircuit: true, format: 'module' };
  try {
    return await next(specifier, context);
  } catch (e) {
    const relative = specifier.startsWith('./') || specifier.startsWith('../') || specifier.startsWith('file:');
    if (!relative || (e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
    const candidates = specifier.endsWith('.js') ? [specifier.slice(0, -3) + '.ts'] : [specifier + '.ts', specifier + '/index.ts'];
    for (const c of candidates) {
      try { return await next(c, context); } catch { /* try the next one */ }
    }
    throw e;
  }
}

const require = createRequire(import.meta.url);
let transpile: ((source: string) => string) | undefined;
let transpilerId: string | undefined;

/** Names the transpiler version in cache keys, without loading the transpiler itself. */
function transpilerVersion(): string {
  transpilerId ??= `sucrase-${(require('sucrase/package.json') as { version: string }).version}`;
  return transpilerId;
}

function transpiler(): (source: string) => string {
  if (!transpile) {
    const sucrase = require('sucrase') as { transform(code: string, opts: object): { code: string } };
    transpile = (source) => sucrase.transform(source, { transforms: ['typescript'], disableESTransforms: true }).code;
  }
  return transpile;
}

export async function load(url: string, context: unknown, next: NextLoad): Promise<Loaded> {
  if (!url.startsWith('file:') || !TS.test(url)) return next(url, context);
  const file = fileURLToPath(url);
  const source = fs.readFileSync(file, 'utf8');
  const key = createHash('sha256').update(`cairn-ts-1\0${transpilerVersion()}\0${source}`).digest('hex');
  const cached = path.join(cacheDir, `${key}.mjs`);
  try {
    return { format: 'module', source: fs.readFileSync(cached, 'utf8'), shortCircuit: true };
  } catch { /* not cached yet */ }
  const code = transpiler()(source) + `\n//# sourceURL=${url}\n`;
  try {
    fs.mkdirSync(cacheDir, { recursive: true });
    const tmp = `${cached}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, code);
    fs.renameSync(tmp, cached);
  } catch { /* the cache is an optimisation; a read-only home still works */ }
  return { format: 'module', source: code, shortCircuit: true };
}
