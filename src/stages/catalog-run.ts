import * as fs from 'node:fs';
import * as path from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { CairnError } from '../errors.js';
import type { RRef } from '../store/refs.js';
import type { Store } from '../store/store.js';
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
  /** Absolute path: the fetched file, or the unpacked directory. */
  path: string;
  fetched: { rref: RRef; path: string };
  unpacked?: { rref: RRef; path: string };
}

export async function fetchEntry(store: Store, cat: Catalog, entry: CatalogEntry, opts: { unpack?: boolean; outLink?: string; events?: RealizeEvents } = {}): Promise<Manifest> {
  const target = entryStage(entry, { unpack: opts.unpack });
  const graph = instantiate(target);
  const result = await realize(graph, { store, outLink: opts.outLink, events: opts.events });
  const fetchPlan = result.plan[0]!;
  const fetchRref = fetchPlan.rrefs[0]!;
  const file = JSON.parse(graph.nodes.get(fetchPlan.dref)!.drvJson).config.file as string;
  const fetched = { rref: fetchRref, path: path.join(store.outPath(fetchRref), file) };
  const finalRref = result.targets[0]!.rrefs[0]!;
  const unpacked = opts.unpack ? { rref: finalRref, path: store.outPath(finalRref) } : undefined;
  return {
    catalog: cat.name,
    catalog_file: cat.file,
    version: entry.version,
    hash: entry.hash,
    entry: entry.fields,
    store: store.root,
    rref: finalRref,
    path: unpacked?.path ?? fetched.path,
    fetched,
    ...(unpacked ? { unpacked } : {}),
  };
}

export function writeManifest(file: string, m: Manifest): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, stringify(m));
  fs.renameSync(tmp, file);
}

export interface ActionContext {
  manifest: Manifest;
  manifestPath: string;
  storePath: string;
  catalog: Catalog;
  entry: CatalogEntry;
}

export type ActionFn = (ctx: ActionContext) => unknown;

/**
 * Runs a catalog action. It is declared in the catalog's `actions` (a shell
 * command, an argv list, or `{ module, export }` naming a TS/JS function),
 * or exported under its name by `<catalog>.actions.ts` or `actions.ts` next
 * to the catalog. Commands get the manifest path and the store path in
 * their environment (CAIRN_MANIFEST, CAIRN_STORE_PATH, CAIRN_RREF,
 * CAIRN_VERSION, CAIRN_CATALOG, CAIRN_STORE); functions get an
 * ActionContext. Returns the exit status.
 */
export async function runAction(name: string, ctx: ActionContext): Promise<number> {
  const dir = path.dirname(ctx.catalog.file);
  const env = {
    ...process.env,
    CAIRN_MANIFEST: ctx.manifestPath,
    CAIRN_STORE_PATH: ctx.storePath,
    CAIRN_RREF: ctx.manifest.rref,
    CAIRN_VERSION: ctx.manifest.version,
    CAIRN_CATALOG: ctx.catalog.file,
    CAIRN_STORE: ctx.manifest.store,
  };
  const spec = ctx.catalog.actions[name];
  if (typeof spec === 'string' || Array.isArray(spec)) {
    const r = typeof spec === 'string'
      ? await execa(spec, { shell: '/bin/sh', cwd: dir, env, stdio: 'inherit', reject: false })
      : await execa(spec[0]!, spec.slice(1), { cwd: dir, env, stdio: 'inherit', reject: false });
    if (r.failed && r.exitCode === undefined) throw new CairnError('E_USAGE', `action ${name} could not run: ${r.shortMessage}`);
    return r.exitCode ?? 1;
  }
  const candidates = spec && typeof spec === 'object'
    ? [path.resolve(dir, spec.module)]
    : [path.join(dir, `${path.basename(ctx.catalog.file).replace(/\.ya?ml$/, '')}.actions.ts`), path.join(dir, 'actions.ts')];
  const moduleFile = candidates.find((f) => fs.existsSync(f));
  if (!moduleFile) {
    const declared = Object.keys(ctx.catalog.actions);
    throw new CairnError('E_USAGE', `catalog ${ctx.catalog.name} has no action ${name} (declared: ${declared.join(', ') || 'none'}; no ${candidates.map((c) => path.basename(c)).join(' or ')} next to it)`, { action: name });
  }
  const mod = await importModule(moduleFile);
  const fn = mod[spec && typeof spec === 'object' ? spec.export ?? name : name];
  if (typeof fn !== 'function') throw new CairnError('E_USAGE', `${moduleFile} does not export a function ${name}`, { action: name });
  const r = await (fn as ActionFn)(ctx);
  return typeof r === 'number' ? r : 0;
}
