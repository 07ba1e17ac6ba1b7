import * as fs from 'node:fs';
import { register } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CairnError } from '../errors.js';
import {
  compileForImport,
  defaultCacheDir,
  localModuleFiles,
  NAMESPACE_PARAM,
  type CompileEnv,
} from './module-compile.js';
import { instantiate, preloadFileInputs } from './instantiate.js';
import { isStage, type Stage } from './stage.js';
import type { ProjectRecord } from './pipeline/project-files.js';

let hooksInstalled = false;
/** Set by a long-lived process (the server's workers): see isolateModules(). */
let isolation: { next: number } | undefined;

function compileEnv(): CompileEnv {
  return { cairnUrl: new URL('../index.js', import.meta.url).href, cacheDir: defaultCacheDir() };
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  register(new URL('./resolve-hook.js', import.meta.url), { data: compileEnv() });
}

/**
 * Makes every later importModule() evaluate the module and its local imports
 * afresh, as a new process would: a server worker runs many commands, and a
 * stage file's top level (which may read files or the environment) must run
 * again each time, with edits to the files it imports seen. It loads the
 * module under a URL query (`?cairn-ns=N`) that the module hooks pass on to
 * every local file it imports (and to their compiled copies); packages and
 * `cairn` itself stay shared.
 * Each namespace's modules stay in memory, which is why workers are recycled.
 */
export function isolateModules(): void {
  isolation = { next: 0 };
  installHooks();
}

/** A module file and the local files it imports, transitively (see localModuleFiles). */
export function moduleFiles(file: string): Promise<string[]> {
  return localModuleFiles(file, compileEnv());
}

/**
 * Imports a module (a stage file, a catalog action file): directly from the compile cache when possible,
 * else through module hooks (and always in a fresh namespace after isolateModules()).
 */
export async function importModule(file: string): Promise<Record<string, unknown>> {
  // The same choice of path in every process, so build functions have the
  // same source text (and DRef) with the server as without it.
  const direct = await compileForImport(file, compileEnv());
  const url = direct ?? pathToFileURL(file).href;
  if (isolation)
    return (await import(`${url}?${NAMESPACE_PARAM}=${process.pid}.${++isolation.next}`)) as Record<string, unknown>;
  if (!direct) installHooks();
  return (await import(url)) as Record<string, unknown>;
}

export interface LoadedStages {
  file: string;
  /** Every exported stage, by export name (arrays are flattened as NAME[i]). */
  exports: Map<string, Stage>;
  /** The stages to realize: the selected ones, or the default export. */
  targets: Stage[];
}

const asStages = (v: unknown): Stage[] | undefined => {
  if (isStage(v)) return [v];
  if (Array.isArray(v) && v.length > 0 && v.every(isStage)) return v;
  return undefined;
};

/**
 * Imports a stage file (TypeScript or JavaScript, no compile step) and picks
 * its targets. An export may be a stage, an array of stages, or a function
 * (possibly async) returning either. Selectors name exports or stage names;
 * with none, the default export is the target.
 */
export async function loadStageFile(file: string, selectors: readonly string[] = []): Promise<LoadedStages> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new CairnError('E_STAGE_FILE', `stage file ${file} does not exist`, { file });
  if (/\.ya?ml$/i.test(abs)) return loadPipelineFile(file, abs, selectors);
  let mod: Record<string, unknown>;
  try {
    mod = await importModule(abs);
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError(
      'E_STAGE_FILE',
      `stage file ${file} failed to load: ${(e as Error)?.message ?? String(e)}`,
      { file },
      { cause: e },
    );
  }
  const { exports, groups } = await collectExports(mod, file);
  // The caller instantiates what this returns, synchronously (see fileInputs in instantiate.ts).
  await preloadFileInputs();
  const available = [...groups.keys()].join(', ') || 'none';
  let targets: Stage[];
  if (selectors.length === 0) {
    const def = groups.get('default');
    if (!def) {
      throw new CairnError(
        'E_NO_TARGET',
        `stage file ${file} has no default export to realize; name one (exports with stages: ${available})`,
        { file, available: [...groups.keys()] },
      );
    }
    targets = def;
  } else {
    targets = selectors.flatMap((sel) => {
      const byExport = groups.get(sel);
      if (byExport) return byExport;
      // A stage name may also name a dependency that is not exported itself.
      const everyStage = instantiate([...exports.values()]);
      const byName = everyStage.order.map((d) => everyStage.nodes.get(d)!.stage).filter((s) => s.name === sel);
      if (byName.length > 0) return byName.slice(0, 1);
      throw new CairnError(
        'E_NO_TARGET',
        `stage file ${file} has no export or stage named ${JSON.stringify(sel)} (exports with stages: ${available})`,
        { file, selector: sel },
      );
    });
  }
  return { file: abs, exports, targets };
}

/**
 * The stages a module exports: by export name (arrays flattened as NAME[i]),
 * and as the groups each export gave. Exported functions are called (their
 * result awaited) as loadStageFile describes.
 */
export async function collectExports(
  mod: Record<string, unknown>,
  file: string,
): Promise<{ exports: Map<string, Stage>; groups: Map<string, Stage[]> }> {
  const exports = new Map<string, Stage>();
  const groups = new Map<string, Stage[]>();
  for (const [key, raw] of Object.entries(mod)) {
    let value = raw;
    if (typeof value === 'function' && !isStage(value)) {
      try {
        value = await (value as () => unknown)();
      } catch (e) {
        if (e instanceof CairnError) throw e;
        throw new CairnError(
          'E_STAGE_FILE',
          `stage file ${file}: export ${key}() threw: ${(e as Error)?.message ?? String(e)}`,
          { file, export: key },
          { cause: e },
        );
      }
    }
    const stages = asStages(value);
    if (!stages) continue;
    groups.set(key, stages);
    stages.forEach((s, i) => exports.set(stages.length === 1 ? key : `${key}[${i}]`, s));
  }
  return { exports, groups };
}

export const PIPELINE_RECORD_FORMAT = 'cairn-pipeline-record-1';

export interface PipelineRecord {
  format: typeof PIPELINE_RECORD_FORMAT;
  /** The pipeline file's absolute path where it was recorded. */
  file: string;
  files: ProjectRecord;
}

const isStrings = (v: unknown, of: 'string' | 'boolean'): boolean =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === of);

/**
 * The stages of a recorded pipeline, every one (build-drv picks the
 * derivation it builds): what the module a cairn.yaml's code object holds
 * calls (pipeline/pipeline-code.ts), through Cairn's index. Here, in a
 * module every CLI start loads already, so it costs no module of its own.
 */
export async function loadPipelineRecord(record: unknown): Promise<Stage[]> {
  const r = record as Partial<PipelineRecord> | null;
  if (
    typeof r !== 'object' ||
    r === null ||
    r.format !== PIPELINE_RECORD_FORMAT ||
    typeof r.file !== 'string' ||
    !r.file.startsWith('/') ||
    !isStrings(r.files?.texts, 'string') ||
    !isStrings(r.files?.exists, 'boolean')
  ) {
    throw new CairnError('E_CODE_CORRUPT', `a pipeline code object holds no ${PIPELINE_RECORD_FORMAT} record`);
  }
  const [{ loadPipeline }, { recordedProject }] = await Promise.all([
    import('./pipeline/load-yaml.js'),
    import('./pipeline/project-files.js'),
  ]);
  return [...loadPipeline(r.file, recordedProject(r.files!)).stages.values()];
}

/**
 * A cairn.yaml pipeline (or a dvc.yaml): every stage is a target unless
 * selectors name stages, as `dvc repro` reproduces the whole pipeline.
 */
async function loadPipelineFile(file: string, abs: string, selectors: readonly string[]): Promise<LoadedStages> {
  // Loaded on first use: TypeScript stage files never need the YAML parser.
  const { loadPipeline } = await import('./pipeline/load-yaml.js');
  const { stages } = loadPipeline(file);
  await preloadFileInputs();
  const targets =
    selectors.length === 0
      ? [...stages.values()]
      : selectors.map((sel) => {
          const s = stages.get(sel);
          if (!s) {
            const names = [...stages.keys()].join(', ');
            throw new CairnError(
              'E_NO_TARGET',
              `pipeline ${file} has no stage ${JSON.stringify(sel)} (stages: ${names})`,
              { file, selector: sel },
            );
          }
          return s;
        });
  return { file: abs, exports: stages, targets };
}
