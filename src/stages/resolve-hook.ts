/**
 * Module hooks, installed by the stage loader only for stage files that
 * import npm packages by bare name (see module-compile.ts for why): they
 * resolve `cairn` to the running Cairn, let `./x.js` and `./x` find `./x.ts`,
 * and serve TypeScript files with the same treatment as direct loading.
 */
import { fileURLToPath } from 'node:url';
import { compileForHook, isModuleCode, NAMESPACE_PARAM, type CompileEnv } from './module-compile.js';

let env: CompileEnv;
/** Cairn's own compiled code (dist/), which stays shared across namespaces. */
let cairnRoot: string;

export function initialize(data: CompileEnv): void {
  env = data;
  cairnRoot = new URL('..', env.cairnUrl).href;
}

interface Resolved {
  url: string;
  format?: string | null;
  shortCircuit?: boolean;
}
interface Loaded {
  format: string;
  source?: string | Buffer;
  shortCircuit?: boolean;
}
type NextResolve = (specifier: string, context: unknown) => Promise<Resolved>;
type NextLoad = (url: string, context: unknown) => Promise<Loaded>;

export async function resolve(
  specifier: string,
  context: { parentURL?: string },
  next: NextResolve,
): Promise<Resolved> {
  if (specifier === 'cairn') return { url: env.cairnUrl, shortCircuit: true, format: 'module' };
  return inNamespaceOf(context.parentURL, await resolveLocal(specifier, context, next));
}

async function resolveLocal(specifier: string, context: { parentURL?: string }, next: NextResolve): Promise<Resolved> {
  try {
    return await next(specifier, context);
  } catch (e) {
    const relative = specifier.startsWith('./') || specifier.startsWith('../');
    if (!relative || (e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
    const candidates = specifier.endsWith('.js')
      ? [specifier.slice(0, -3) + '.ts']
      : [specifier + '.ts', specifier + '/index.ts'];
    for (const c of candidates) {
      try {
        return await next(c, context);
      } catch {
        /* try the next one */
      }
    }
    throw e;
  }
}

/**
 * A local file imported from a namespaced module joins its namespace (see
 * load.ts isolateModules). Packages never do, nor does Cairn's own code,
 * which compiled stage files import by absolute URL.
 */
function inNamespaceOf(parentURL: string | undefined, r: Resolved): Resolved {
  if (!parentURL?.startsWith('file:') || !r.url.startsWith('file:') || r.url.includes('/node_modules/')) return r;
  if (r.url.startsWith(cairnRoot)) return r;
  const ns = new URL(parentURL).searchParams.get(NAMESPACE_PARAM);
  if (ns === null) return r;
  const url = new URL(r.url);
  url.searchParams.set(NAMESPACE_PARAM, ns);
  return { ...r, url: url.href };
}

export async function load(url: string, context: { format?: string | null }, next: NextLoad): Promise<Loaded> {
  const { protocol, pathname } = new URL(url);
  if (protocol !== 'file:' || pathname.includes('/node_modules/')) return next(url, context);
  const file = fileURLToPath(url);
  // A local .js file that Node takes for CommonJS (no "type": "module" in
  // its package.json) but that uses import or export is served as the ES
  // module it is, as direct loading does (see isModuleCode).
  const esmInCjs = pathname.endsWith('.js') && context.format === 'commonjs' && (await isModuleCode(file, env));
  if (!esmInCjs && !/\.(ts|mts)$/.test(pathname)) return next(url, context);
  return { format: 'module', source: await compileForHook(file, env), shortCircuit: true };
}
