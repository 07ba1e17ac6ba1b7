import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import type { RRef } from '../store/refs.js';
import type { FixedOutput } from './builtins/fetch.js';
import type { UnpackLimits } from '../store/extract-plan.js';
import type { LocalStore } from '../store/store.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { entryStage, type Catalog, type CatalogEntry } from './catalog.js';
import { instantiate } from './instantiate.js';
import { importModule } from './load.js';
import { realize, type RealizeEvents } from './realize.js';

/** What `catalog fetch` writes for downstream tools: which entry, and where it is in the store. */
export interface Manifest {
  catalog: string;
  catalog_file: string;
  version: string;
  hash: string;
  entry: Record<string, unknown>;
  store: string;
  /** The final realization: the unpacked one with --unpack, else the fetched file's. */
  rref: RRef;
  /**
   * Absolute path: the fetched file; with --unpack the unpacked directory,
   * or the one file in it when the archive held a single file (an image in
   * a .zip): that file is what a boot or flash action wants.
   */
  path: string;
  fetched: { rref: RRef; path: string };
  /** `file`: the archive's only file, when it held exactly one (directories aside, no links). */
  unpacked?: { rref: RRef; path: string; file?: string };
}

/**
 * The only regular file under `dir` (at any depth), or undefined when there
 * are several, none, or anything else (a symlink, which is not followed).
 * Stops at the second file, so a large tree costs little.
 */
export function soleFile(dir: string): string | undefined {
  let found: string | undefined;
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop()!;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile() && found === undefined) found = p;
      else return undefined;
    }
  }
  return found;
}

export async function fetchEntry(
  store: LocalStore,
  cat: Catalog,
  entry: CatalogEntry,
  opts: { unpack?: boolean; unpackLimits?: UnpackLimits; outLink?: string; events?: RealizeEvents } = {},
): Promise<Manifest> {
  const target = entryStage(entry, { unpack: opts.unpack, unpackLimits: opts.unpackLimits });
  const graph = instantiate(target);
  const result = await realize(graph, { store, outLink: opts.outLink, events: opts.events });
  const fetchPlan = result.plan[0]!;
  const fetchRref = fetchPlan.rrefs[0]!;
  const file = (graph.nodes.get(fetchPlan.dref)!.stage.config as FixedOutput).file;
  const fetched = { rref: fetchRref, path: path.join(store.outPath(fetchRref), file) };
  const finalRref = result.targets[0]!.rrefs[0]!;
  const unpackedDir = opts.unpack ? store.outPath(finalRref) : undefined;
  const sole = unpackedDir === undefined ? undefined : soleFile(unpackedDir);
  const unpacked = unpackedDir
    ? { rref: finalRref, path: unpackedDir, ...(sole !== undefined ? { file: sole } : {}) }
    : undefined;
  return {
    catalog: cat.name,
    catalog_file: cat.file,
    version: entry.version,
    hash: entry.hash,
    entry: entry.fields,
    store: store.location,
    rref: finalRref,
    path: unpacked?.file ?? unpacked?.path ?? fetched.path,
    fetched,
    ...(unpacked ? { unpacked } : {}),
  };
}

export async function writeManifest(file: string, m: Manifest): Promise<void> {
  const { stringify } = await import('yaml');
  writeFileAtomic(file, stringify(m));
}

export interface ActionContext {
  manifest: Manifest;
  manifestPath: string;
  storePath: string;
  catalog: Catalog;
  entry: CatalogEntry;
}

export type ActionFn = (ctx: ActionContext) => unknown;

export type Action =
  | { kind: 'command'; name: string; spec: string | string[] }
  | { kind: 'function'; name: string; module: string; fn: ActionFn };

/**
 * Finds a catalog action, before anything is fetched: declared in the
 * catalog's `actions` (a shell command, an argv list, or `{ module, export }`
 * naming a TS/JS function), or exported under its name by
 * `<catalog>.actions.ts` or `actions.ts` next to the catalog.
 */
export async function findAction(catalog: Catalog, name: string): Promise<Action> {
  const dir = path.dirname(catalog.file);
  const spec = catalog.actions[name];
  if (typeof spec === 'string' || Array.isArray(spec)) {
    if (Array.isArray(spec) && (spec.length === 0 || !spec.every((x) => typeof x === 'string'))) {
      throw new CairnError(
        'E_BAD_CATALOG',
        `${catalog.file}: action ${name} must be a command, a list of strings, or { module, export }`,
      );
    }
    return { kind: 'command', name, spec };
  }
  const candidates =
    spec && typeof spec === 'object'
      ? [path.resolve(dir, spec.module)]
      : [
          path.join(dir, `${path.basename(catalog.file).replace(/\.ya?ml$/, '')}.actions.ts`),
          path.join(dir, 'actions.ts'),
        ];
  const moduleFile = candidates.find((f) => fs.existsSync(f));
  if (!moduleFile) {
    const declared = Object.keys(catalog.actions);
    throw new CairnError(
      'E_NO_SUCH_ACTION',
      `catalog ${catalog.name} has no action ${name} (declared: ${declared.join(', ') || 'none'}; no ` +
        `${candidates.map((c) => path.basename(c)).join(' or ')} next to it)`,
      { action: name },
    );
  }
  const exported = spec && typeof spec === 'object' ? (spec.export ?? name) : name;
  const fn = (await importModule(moduleFile))[exported];
  if (typeof fn !== 'function')
    throw new CairnError('E_BAD_CATALOG', `${moduleFile} does not export a function ${exported}`, { action: name });
  return { kind: 'function', name, module: moduleFile, fn: fn as ActionFn };
}

/**
 * Runs an action on a fetched entry. Commands run in the catalog's
 * directory with the manifest path and the store path in their environment
 * (CAIRN_MANIFEST, CAIRN_STORE_PATH, CAIRN_RREF, CAIRN_VERSION,
 * CAIRN_CATALOG, CAIRN_STORE); functions get an ActionContext. Returns the
 * exit status (a function's number result, else 0).
 */
export async function runAction(action: Action, ctx: ActionContext): Promise<number> {
  if (action.kind === 'function') {
    let r: unknown;
    try {
      r = await action.fn(ctx);
    } catch (e) {
      throw new CairnError(
        'E_ACTION_FAILED',
        `action ${action.name} (${action.module}) failed: ${(e as Error)?.message ?? String(e)}`,
        { action: action.name },
        { cause: e },
      );
    }
    if (r === undefined || r === null) return 0;
    if (typeof r !== 'number' || !Number.isInteger(r) || r < 0 || r > 255) {
      throw new CairnError(
        'E_ACTION_FAILED',
        `action ${action.name} returned ${JSON.stringify(r)}; an ` +
          `action returns nothing or an exit status from 0 to 255`,
        { action: action.name },
      );
    }
    return r;
  }
  const env = {
    ...process.env,
    CAIRN_MANIFEST: ctx.manifestPath,
    CAIRN_STORE_PATH: ctx.storePath,
    CAIRN_RREF: ctx.manifest.rref,
    CAIRN_VERSION: ctx.manifest.version,
    CAIRN_CATALOG: ctx.catalog.file,
    CAIRN_STORE: ctx.manifest.store,
  };
  const { execa } = await import('execa');
  const opts = { cwd: path.dirname(ctx.catalog.file), env, stdio: 'inherit', reject: false } as const;
  const r =
    typeof action.spec === 'string'
      ? await execa(action.spec, { ...opts, shell: '/bin/sh' })
      : await execa(action.spec[0]!, action.spec.slice(1), opts);
  if (r.exitCode === undefined)
    throw new CairnError('E_ACTION_FAILED', `action ${action.name} could not run: ${r.shortMessage}`, {
      action: action.name,
    });
  return r.exitCode;
}
