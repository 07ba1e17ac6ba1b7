import { CairnError } from '../errors.js';
import { canonicalJson, type Json } from '../store/canonical.js';
import { shortHash } from '../store/hash.js';
import { makeDRef, type DRef } from '../store/refs.js';
import { createRequire } from 'node:module';
import { fileInputsDeclared, isStage, type FileInput, type Stage } from './stage.js';
import { codeHash } from './function-source.js';
import type { ResolvedInput } from './inputs/file-imports.js';
import type { HashStats, InputHasher } from './inputs/input-hash.js';

type FileInputsModule = typeof import('./inputs/file-imports.js');
let fileInputsModule: FileInputsModule | undefined;
let preloading: Promise<void> | undefined;

/**
 * The code that hashes and imports file inputs, loaded on first use: most
 * graphs have none, and each ES module costs every CLI start about half a
 * millisecond. realize() and loadStageFile() load it ahead with a dynamic
 * import once a stage has declared file inputs (`preloadFileInputs`); only a
 * library caller of instantiate() alone reaches the synchronous require()
 * of an ES module (Node >= 20.19). The CLI never does: with module hooks
 * registered (stage files that import packages), such a require() waits on
 * the hooks' thread, and a run was seen hanging there.
 */
function fileInputs(): FileInputsModule {
  if (fileInputsModule) return fileInputsModule;
  try {
    fileInputsModule = createRequire(import.meta.url)('./inputs/file-imports.js') as FileInputsModule;
  } catch (e) {
    throw new CairnError(
      'E_UNSUPPORTED_RUNTIME',
      `this Node (${process.version}) cannot load Cairn's file-input code synchronously: ` +
        `await preloadFileInputs() before instantiate(), or use realize()`,
      {},
      { cause: e },
    );
  }
  return fileInputsModule;
}

/**
 * Loads the file-input code ahead (a dynamic import), once any stage has
 * declared file inputs: a flag set by stage(), so graphs without them pay
 * no traversal on the cached-realize path.
 */
export function preloadFileInputs(): Promise<void> {
  if (fileInputsModule || !fileInputsDeclared()) return Promise.resolve();
  return (preloading ??= import('./inputs/file-imports.js').then((m) => {
    fileInputsModule = m;
  }));
}

/** What hashing file inputs has cost this process so far (all zero if no graph had any). */
export function inputHashStats(): HashStats {
  return fileInputsModule
    ? { ...fileInputsModule.userInputHasher().stats }
    : { files: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0 };
}

/** A file input of a derivation: the import derivation holding its content, and its name inside that output. */
export interface FileDep {
  /** The declared path (normalised): the key in `ctx.files`. */
  readonly key: string;
  /** Its spelling in the stage, when different (`data/`). */
  readonly declared: string;
  readonly dref: DRef;
  /** The entry inside the import's output: `out/<entry>`. */
  readonly entry: string;
}

/** One node of the instantiated graph: a stage with its identity fixed. */
export interface Derivation {
  readonly dref: DRef;
  readonly name: string;
  readonly stage: Stage;
  /** Canonical JSON whose hash is the DRef; written to the store as drv.json. */
  readonly drvJson: string;
  /** DRefs this derivation's config references, and its file inputs' imports, sorted, each once. */
  readonly deps: readonly DRef[];
  /** The stage's file inputs (empty for most stages). */
  readonly files: readonly FileDep[];
  /** Set on the derivation that imports a file input: the input it copies. */
  readonly imports?: FileInput;
}

export interface Graph {
  readonly targets: readonly DRef[];
  readonly nodes: ReadonlyMap<DRef, Derivation>;
  /** Every DRef, dependencies before dependants. */
  readonly order: readonly DRef[];
  /** The DRef of every stage object in the graph (several objects may share one). */
  readonly drefOf: ReadonlyMap<Stage, DRef>;
}

/** Bumped if the derivation format changes, so old DRefs are never reused for new meanings. */
const DRV_FORMAT = 'cairn-drv-1';

const codeHashes = new WeakMap<(...args: never) => unknown, string>();

/**
 * The build function's identity: the hash of its normalized original source
 * (code-identity.ts), so that every way of loading the same file (the CLI's
 * sucrase, tsx's esbuild, Node's type stripping, tsc output) and every
 * comment, reformatting or CRLF copy gives the same DRef. Functions it calls
 * are not covered (they are not visible from here); for those, bump the
 * stage's `version` or fold their source into the config.
 */
function codeIdentity(s: Stage): Json {
  if (s.version !== undefined) return { version: s.version };
  let h = codeHashes.get(s.build);
  if (h === undefined) {
    h = codeHash(s.build);
    codeHashes.set(s.build, h);
  }
  return { source: h };
}

/** The stages a config references directly (not through other stages). */
function referencedStages(config: unknown): Stage[] {
  const found: Stage[] = [];
  const seen = new Set<object>();
  const stack: unknown[] = [config];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v !== 'object' || v === null || seen.has(v)) continue;
    seen.add(v);
    if (isStage(v)) {
      found.push(v);
      continue;
    }
    // Loops, not push(...v): spreading a million-element array as arguments overflows the stack.
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
    } else if (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null) {
      for (const x of Object.values(v)) stack.push(x);
    }
  }
  return found;
}

export interface InstantiateOptions {
  /** Hashes file inputs (default: one backed by the user's stat cache, see inputs/stat-cache.ts). */
  inputs?: InputHasher;
}

const NO_INPUTS: readonly ResolvedInput[] = [];
const NO_FILES: readonly FileDep[] = Object.freeze([]);

/** `"files":{...},` of a drv.json, naming each input's import derivation; empty without inputs. */
function filesField(files: readonly FileDep[]): string {
  if (files.length === 0) return '';
  return `"files":${canonicalJson(Object.fromEntries(files.map((f) => [f.key, f.dref])))},`;
}

/**
 * Instantiates stages into an in-memory graph, building nothing. The only
 * I/O is hashing stages' file inputs (through the stat cache); a graph
 * without file inputs is pure. The traversal is iterative so a 10,000-stage
 * chain cannot overflow the stack, and each stage is visited once, so the
 * cost is O(stages + edges + config size).
 */
export function instantiate(targets: Stage | readonly Stage[], opts: InstantiateOptions = {}): Graph {
  const list = isStage(targets) ? [targets] : [...targets];
  for (const t of list) {
    if (!isStage(t)) throw new CairnError('E_NOT_A_STAGE', `instantiate() was given ${typeof t}, not a stage`);
  }
  const drefOf = new Map<Stage, DRef>();
  const visiting = new Set<Stage>();
  const nodes = new Map<DRef, Derivation>();
  const order: DRef[] = [];
  let fileImports: InstanceType<FileInputsModule['FileImports']> | undefined;
  const importOf = new Map<Stage, FileInput>();

  for (const root of list) {
    if (drefOf.has(root)) continue;
    const stack: { stage: Stage; deps: Stage[]; inputs: readonly ResolvedInput[]; next: number }[] = [];
    const enter = (s: Stage): void => {
      visiting.add(s);
      const deps = referencedStages(s.config);
      const inputs =
        (s.files?.length ?? 0) === 0 ? NO_INPUTS : (fileImports ??= new (fileInputs().FileImports)(opts.inputs)).of(s);
      for (const i of inputs) {
        deps.push(i.stage);
        importOf.set(i.stage, i.input);
      }
      stack.push({ stage: s, deps, inputs, next: 0 });
    };
    enter(root);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (top.next < top.deps.length) {
        const dep = top.deps[top.next++]!;
        if (drefOf.has(dep)) continue;
        if (visiting.has(dep)) {
          const from = stack.findIndex((f) => f.stage === dep);
          const cycle = [...stack.slice(from).map((f) => f.stage.name), dep.name];
          throw new CairnError('E_CYCLE', `stage graph has a cycle: ${cycle.join(' -> ')}`, { cycle });
        }
        enter(dep);
        continue;
      }
      stack.pop();
      visiting.delete(top.stage);
      const s = top.stage;
      const deps = new Set<DRef>();
      const config = canonicalJson(
        s.config,
        (v) => {
          if (!isStage(v)) return undefined;
          const d = drefOf.get(v)!;
          deps.add(d);
          return { $ref: d };
        },
        `stage ${s.name}: config`,
      );
      const files =
        top.inputs.length === 0
          ? NO_FILES
          : top.inputs.map((i): FileDep => ({
              key: i.input.key,
              declared: i.input.declared,
              dref: drefOf.get(i.stage)!,
              entry: i.stage.outputs[0]!,
            }));
      for (const f of files) deps.add(f.dref);
      const sortedDeps = [...deps].sort();
      const drvJson =
        `{"code":${canonicalJson(codeIdentity(s))},"config":${config},"deps":${canonicalJson(sortedDeps)},` +
        `${filesField(files)}"format":"${DRV_FORMAT}","name":${JSON.stringify(s.name)},` +
        `"outputs":${canonicalJson(s.outputs)}}`;
      const dref = makeDRef(shortHash(drvJson), s.name);
      drefOf.set(s, dref);
      if (!nodes.has(dref)) {
        const imports = importOf.get(s);
        nodes.set(dref, {
          dref,
          name: s.name,
          stage: s,
          drvJson,
          deps: sortedDeps,
          files,
          ...(imports ? { imports } : {}),
        });
        order.push(dref);
      }
    }
  }
  fileImports?.done();
  return { targets: list.map((t) => drefOf.get(t)!), nodes, order, drefOf };
}
