import { createRequire } from 'node:module';
import * as path from 'node:path';
import type { Document, LineCounter } from 'yaml';
import { CairnError } from '../../errors.js';
import { isName } from '../../store/refs.js';
import { all, best, latest, only, some, type Candidate, type Matcher } from '../matchers.js';
import { stage, type Stage } from '../stage.js';
import { badValue, lookup } from './params.js';
import { runPipelineStage, type PipelineConfig } from './run-cmd.js';
import { didYouMean } from './suggest.js';
import { diskProject, type ProjectFiles } from './project-files.js';

/**
 * cairn.yaml: a pipeline of shell-command stages, in the shape of DVC's
 * dvc.yaml. This module only reads and checks the file (and stats the
 * declared deps, and reads the params files): it turns each entry into an
 * ordinary stage(), so identity, matchers, the store, sync and gc treat it
 * like any TypeScript stage. The build is run-cmd.ts.
 *
 * The code identity of every pipeline stage is this version string: what
 * a stage means is all in its config (command, paths, picked params, and
 * upstream DRefs) and its file inputs. Bump it when the workspace the
 * command sees changes meaning.
 */
export const PIPELINE_VERSION = 'cairn-pipeline-1';

const STAGE_KEYS = [
  'cmd',
  'deps',
  'params',
  'outs',
  'metrics',
  'plots',
  'wdir',
  'n',
  'matcher',
  'desc',
  'meta',
  'frozen',
  'always_changed',
];
const TOP_KEYS = ['stages', 'params', 'metrics', 'plots', 'artifacts'];
/** DVC's flags on an out; none changes what a build means (persist: true is refused). */
const OUT_FLAGS = ['cache', 'persist', 'desc', 'remote', 'push', 'type', 'labels', 'meta'];
const DEFAULT_PARAMS = 'params.yaml';

let yamlLib: typeof import('yaml') | undefined;
const yaml = (): typeof import('yaml') => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof import('yaml'));

type Where = readonly (string | number)[];

/** Errors name the file, the line, the stage and the key. */
class Reporter {
  constructor(
    readonly file: string,
    private readonly doc: Document,
    private readonly lc: LineCounter,
  ) {}

  line(where: Where): number | undefined {
    const { isMap, isScalar } = yaml();
    if (where.length > 0) {
      const parent = this.doc.getIn(where.slice(0, -1), true);
      const last = where[where.length - 1];
      if (isMap(parent)) {
        const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === last);
        const r = (pair?.key as { range?: [number, number, number] } | undefined)?.range;
        if (r) return this.lc.linePos(r[0]).line;
      }
    }
    const node = this.doc.getIn(where, true) as { range?: [number, number, number] } | undefined;
    return node?.range ? this.lc.linePos(node.range[0]).line : undefined;
  }

  fail(where: Where, reason: string, extra: Record<string, unknown> = {}): CairnError {
    const line = this.line(where);
    const st = where[0] === 'stages' && typeof where[1] === 'string' ? where[1] : undefined;
    const key = where.slice(st ? 2 : 0).join('.');
    const prefix = `${this.file}${line ? `:${line}` : ''}: ${st ? `stage ${st}: ` : ''}${key && st ? `${key}: ` : ''}`;
    const details = { file: this.file, line, stage: st, key: key || undefined, ...extra };
    return new CairnError('E_BAD_PIPELINE', prefix + reason, details);
  }
}

interface OutDecl {
  path: string;
  where: Where;
}

interface StageDecl {
  name: string;
  cmd: string | string[];
  wdir: string;
  deps: { path: string; where: Where }[];
  /** Read after every out is known (a params file may not be generated). */
  params: Record<string, Record<string, unknown>>;
  rawParams: unknown;
  outs: OutDecl[];
  metrics: OutDecl[];
  n: number;
  matcher: Matcher;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A path of the project: relative to the stage's wdir as written, returned relative to the project root. */
function projectPath(r: Reporter, where: Where, wdir: string, p: unknown, what: string): string {
  if (typeof p !== 'string' || p === '' || p.includes('\0')) {
    throw r.fail(where, `${what} must be a non-empty path, not ${JSON.stringify(p)}`);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(p)) {
    throw r.fail(
      where,
      `${what} ${p} is a URL; remote deps and outs are not supported (fetch it with fetchurl in a TypeScript stage)`,
    );
  }
  if (path.posix.isAbsolute(p)) {
    throw r.fail(where, `${what} ${p} is absolute; paths are relative to the project, so results travel`);
  }
  const n = path.posix.normalize(path.posix.join(wdir, p)).replace(/\/+$/, '');
  if (n === '..' || n.startsWith('../')) throw r.fail(where, `${what} ${p} leaves the project directory`);
  if (n === '.' || n === '') {
    throw r.fail(where, `${what} ${p} is the whole project; name the files and directories it needs`);
  }
  return n;
}

function list(r: Reporter, where: Where, v: unknown): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw r.fail(where, 'must be a list');
  return v;
}

/** outs, metrics and plots: `- path` or `- path: {cache: false, ...}`. */
function parseOuts(r: Reporter, where: Where, wdir: string, v: unknown, anyFlags: boolean): OutDecl[] {
  return list(r, where, v).map((item, i) => {
    const at = [...where, i];
    if (isObject(item)) {
      const keys = Object.keys(item);
      if (keys.length !== 1) throw r.fail(at, 'an entry is a path, or a mapping of one path to its flags');
      const flags = item[keys[0]!];
      if (flags !== null && !isObject(flags)) throw r.fail(at, `the flags of ${keys[0]} must be a mapping`);
      for (const [k, x] of Object.entries(flags ?? {})) {
        if (!anyFlags && !OUT_FLAGS.includes(k)) {
          throw r.fail([...at, keys[0]!, k], `unknown flag ${k}${didYouMean(k, OUT_FLAGS)}`);
        }
        if (k === 'persist' && x === true) {
          throw r.fail(
            [...at, keys[0]!, k],
            'persist: true is not supported: every build starts from an empty workspace',
          );
        }
      }
      return { path: projectPath(r, at, wdir, keys[0], 'out'), where: at };
    }
    return { path: projectPath(r, at, wdir, item, 'out'), where: at };
  });
}

/** Reads params files once per load; values parsed as YAML 1.2 (JSON is YAML too), as DVC does. */
function paramsReader(r: Reporter, project: ProjectFiles): (file: string, where: Where) => Record<string, unknown> {
  const cache = new Map<string, Record<string, unknown>>();
  return (file, where) => {
    const hit = cache.get(file);
    if (hit) return hit;
    if (!/\.(ya?ml|json)$/i.test(file)) {
      throw r.fail(where, `params file ${file}: only YAML and JSON params files are supported`);
    }
    let text: string;
    try {
      text = project.read(file);
    } catch (e) {
      throw r.fail(where, `params file ${file} cannot be read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    const doc = yaml().parseDocument(text, { merge: true });
    if (doc.errors.length > 0) {
      throw r.fail(where, `params file ${file} is not valid YAML: ${doc.errors[0]!.message.split('\n')[0]}`);
    }
    const v = doc.toJS() as unknown;
    if (!isObject(v)) throw r.fail(where, `params file ${file} must hold a mapping`);
    cache.set(file, v);
    return v;
  };
}

/** Every dotted key of a params document, for did-you-mean. */
function dottedKeys(v: unknown, prefix = ''): string[] {
  if (!isObject(v)) return [];
  return Object.entries(v).flatMap(([k, x]) => [prefix + k, ...dottedKeys(x, `${prefix}${k}.`)]);
}

type ReadParams = ReturnType<typeof paramsReader>;

type Picked = Record<string, Record<string, unknown>>;

function parseParams(r: Reporter, where: Where, wdir: string, v: unknown, read: ReadParams): Picked {
  const out: Picked = {};
  const pick = (file: string, key: string | null, at: Where): void => {
    const doc = read(file, at);
    const picked = (out[file] ??= {});
    if (key === null) {
      // the whole file, DVC's `- file.yaml:`
      const bad = badValue(doc);
      if (bad) throw r.fail(at, `${file}: ${bad}`);
      Object.assign(picked, doc);
      return;
    }
    if (typeof key !== 'string' || key === '') {
      throw r.fail(at, `a param is a dotted key such as train.lr, not ${JSON.stringify(key)}`);
    }
    const value = lookup(doc, key);
    if (value === undefined) throw r.fail(at, `${file} has no param ${key}${didYouMean(key, dottedKeys(doc))}`);
    const bad = badValue(value, key);
    if (bad) throw r.fail(at, `${file}: ${bad}`);
    picked[key] = value;
  };
  for (const [i, item] of list(r, where, v).entries()) {
    const at = [...where, i];
    if (typeof item === 'string') pick(projectPath(r, at, wdir, DEFAULT_PARAMS, 'params file'), item, at);
    else if (isObject(item)) {
      for (const [file, keys] of Object.entries(item)) {
        const f = projectPath(r, [...at, file], wdir, file, 'params file');
        if (keys === null || (Array.isArray(keys) && keys.length === 0)) pick(f, null, [...at, file]);
        else if (Array.isArray(keys)) keys.forEach((k, j) => pick(f, k as string, [...at, file, j]));
        else throw r.fail([...at, file], 'the keys of a params file are a list (or nothing, for the whole file)');
      }
    } else throw r.fail(at, 'a params entry is a key (from params.yaml) or a mapping of a params file to its keys');
  }
  return out;
}

/** A metric out of a realization: a dotted key of a JSON or YAML file, or a file holding just a number. */
function metricScore(stageName: string, file: string, key: string | undefined): (c: Candidate) => Promise<number> {
  return async (c) => {
    let text: string;
    try {
      text = (await c.read(file)).toString('utf8');
    } catch {
      throw new CairnError('E_MATCH_INVALID', `stage ${stageName}: ${c.rref} has no metrics file ${file}`, {
        rref: c.rref,
        file,
      });
    }
    let v: unknown;
    try {
      if (key === undefined) v = text.trim() === '' ? NaN : Number(text.trim());
      else v = lookup(/\.json$/i.test(file) ? JSON.parse(text) : yaml().parse(text), key);
    } catch {
      v = undefined;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      const what = `${file}${key ? ` key ${key}` : ''}`;
      throw new CairnError('E_MATCH_INVALID', `stage ${stageName}: ${what} of ${c.rref} is not a finite number`, {
        rref: c.rref,
        file,
        key,
      });
    }
    return v;
  };
}

/**
 * DVC's templating in commands: `${train.lr}` is the value of that key of
 * params.yaml, and `\${` is a literal `${` for the shell. The value goes
 * into the command, so into the identity, as an explicit param would.
 */
function interpolate(r: Reporter, where: Where, cmd: string, paramsFile: string, read: ReadParams): string {
  return cmd.replace(/\\\$\{|\$\{([^}]*)\}/g, (m, key: string | undefined) => {
    if (key === undefined) return '${';
    const k = key.trim();
    if (!/^[A-Za-z_][\w.-]*$/.test(k)) {
      throw r.fail(where, `\${${key}} is not a param key; write \\\${ for the shell's \${`);
    }
    const doc = read(paramsFile, where);
    const v = lookup(doc, k);
    if (v === undefined) {
      throw r.fail(
        where,
        `\${${k}}: ${paramsFile} has no param ${k}${didYouMean(k, dottedKeys(doc))} (write \\\${ for the shell's \${)`,
      );
    }
    if (typeof v === 'object' && v !== null) {
      throw r.fail(
        where,
        `\${${k}} is a ${Array.isArray(v) ? 'list' : 'mapping'}; only single values can be put in a command`,
      );
    }
    const bad = badValue(v, k);
    if (bad) throw r.fail(where, bad);
    return typeof v === 'string' ? v : JSON.stringify(v);
  });
}

const MATCHER_FORMS =
  'latest, latest(N), all, some(N), only, best, {best: METRIC}, ' +
  'or {best: {metric: METRIC, file: FILE, lowest: true, n: N}}';

function parseMatcher(
  r: Reporter,
  where: Where,
  name: string,
  wdir: string,
  v: unknown,
  metrics: OutDecl[],
  outs: OutDecl[],
): Matcher {
  if (v === undefined || v === null) return latest();
  const count = (x: unknown, at: Where): number => {
    if (!Number.isInteger(x) || (x as number) < 1) {
      throw r.fail(at, `needs a whole number >= 1, not ${JSON.stringify(x)}`);
    }
    return x as number;
  };
  let kind: string;
  let arg: unknown;
  if (typeof v === 'string') {
    const m = /^\s*([a-z]+)\s*(?:\(\s*(\d+)\s*\))?\s*$/.exec(v);
    if (!m) throw r.fail(where, `unknown matcher ${JSON.stringify(v)}; use ${MATCHER_FORMS}`);
    kind = m[1]!;
    arg = m[2] === undefined ? undefined : Number(m[2]);
  } else if (isObject(v) && Object.keys(v).length === 1) {
    kind = Object.keys(v)[0]!;
    arg = v[kind];
  } else throw r.fail(where, `a matcher is ${MATCHER_FORMS}`);
  const at = typeof v === 'string' ? where : [...where, kind];
  switch (kind) {
    case 'latest':
      return latest(arg === undefined ? 1 : count(arg, at));
    case 'some':
      return some(arg === undefined ? 1 : count(arg, at));
    case 'all':
    case 'only':
      if (arg !== undefined && arg !== null) throw r.fail(at, `${kind} takes no argument`);
      return kind === 'all' ? all() : only();
    case 'best': {
      const spec: Record<string, unknown> = typeof arg === 'string' ? { metric: arg } : isObject(arg) ? arg : {};
      if (typeof v === 'string' && arg !== undefined) spec.n = arg;
      else if (arg !== undefined && !isObject(arg) && typeof arg !== 'string') {
        throw r.fail(at, `best takes a metric key or {metric, file, lowest, n}`);
      }
      for (const k of Object.keys(spec)) {
        if (!['metric', 'file', 'lowest', 'n'].includes(k)) {
          throw r.fail([...at, k], `unknown key ${k}${didYouMean(k, ['metric', 'file', 'lowest', 'n'])}`);
        }
      }
      const n = spec.n === undefined ? 1 : count(spec.n, [...at, 'n']);
      if (spec.lowest !== undefined && typeof spec.lowest !== 'boolean') {
        throw r.fail([...at, 'lowest'], 'must be true or false');
      }
      if (spec.metric !== undefined && (typeof spec.metric !== 'string' || spec.metric === '')) {
        throw r.fail([...at, 'metric'], 'must be a key such as acc or test.acc');
      }
      let file: string;
      if (spec.file !== undefined) {
        file = projectPath(r, [...at, 'file'], wdir, spec.file, 'metrics file');
        if (![...metrics, ...outs].some((o) => o.path === file)) {
          throw r.fail([...at, 'file'], `${spec.file as string} is not one of the stage's metrics or outs`);
        }
      } else if (metrics.length === 1) file = metrics[0]!.path;
      else
        throw r.fail(
          at,
          metrics.length === 0
            ? 'best needs a metrics file: declare one under metrics'
            : 'the stage has several metrics files; say which with {best: {metric, file}}',
        );
      const metric = spec.metric;
      if (metric === undefined && /\.(json|ya?ml)$/i.test(file)) {
        throw r.fail(at, `say which metric of ${file} to maximise: matcher: {best: METRIC}`);
      }
      const m = best(n, { fn: metricScore(name, file, metric), lowest: spec.lowest === true });
      return {
        ...m,
        name: `best(${n > 1 ? `${n}, ` : ''}${metric ?? file}${spec.lowest === true ? ', lowest' : ''})`,
        score: { file, key: metric, lowest: spec.lowest === true },
      };
    }
    default:
      throw r.fail(
        at,
        `unknown matcher ${kind}${didYouMean(kind, ['latest', 'some', 'all', 'only', 'best'])}; use ${MATCHER_FORMS}`,
      );
  }
}

function parseStage(r: Reporter, name: string, spec: unknown): StageDecl {
  const w: Where = ['stages', name];
  if (!isName(name)) {
    throw r.fail(
      w,
      `stage name ${JSON.stringify(name)} is not allowed: ` +
        'use 1-100 of A-Z a-z 0-9 . _ + -, starting with a letter, digit or _',
    );
  }
  if (!isObject(spec)) throw r.fail(w, 'a stage is a mapping with at least cmd');
  for (const k of Object.keys(spec)) {
    if (k === 'foreach' || k === 'matrix' || k === 'do') {
      throw r.fail([...w, k], `${k} is not supported yet; write each stage out`);
    }
    if (!STAGE_KEYS.includes(k)) throw r.fail([...w, k], `unknown key ${k}${didYouMean(k, STAGE_KEYS)}`);
  }
  if (spec.frozen === true) {
    throw r.fail([...w, 'frozen'], 'frozen: true is not supported (pin a result with a named root instead)');
  }
  if (spec.always_changed === true) {
    throw r.fail(
      [...w, 'always_changed'],
      'always_changed: true is not supported (force a rebuild of the stage when realizing instead)',
    );
  }
  const cmd = spec.cmd;
  if (cmd === undefined || cmd === null) throw r.fail(w, 'cmd is missing');
  const okCmd = (c: unknown): boolean => typeof c === 'string' && c.trim() !== '' && !c.includes('\0');
  if (!(okCmd(cmd) || (Array.isArray(cmd) && cmd.length > 0 && cmd.every(okCmd)))) {
    throw r.fail([...w, 'cmd'], 'must be a command, or a list of commands run one after another');
  }
  let wdir = '.';
  const isRoot = typeof spec.wdir === 'string' && path.posix.normalize(spec.wdir).replace(/(.)\/+$/, '$1') === '.';
  if (spec.wdir !== undefined && !isRoot) wdir = projectPath(r, [...w, 'wdir'], '.', spec.wdir, 'wdir');
  const n = spec.n ?? 1;
  if (!Number.isInteger(n) || (n as number) < 1 || (n as number) > 10_000) {
    throw r.fail([...w, 'n'], `must be a whole number from 1 to 10000, not ${JSON.stringify(n)}`);
  }
  const deps = list(r, [...w, 'deps'], spec.deps).map((d, i) => {
    const where = [...w, 'deps', i];
    return { path: projectPath(r, where, wdir, d, 'dep'), where };
  });
  const seen = new Set<string>();
  for (const d of deps) {
    if (seen.has(d.path)) throw r.fail(d.where, `dep ${d.path} is listed twice`);
    seen.add(d.path);
  }
  const outs = [
    ...parseOuts(r, [...w, 'outs'], wdir, spec.outs, false),
    ...parseOuts(r, [...w, 'plots'], wdir, spec.plots, true),
  ];
  const metrics = parseOuts(r, [...w, 'metrics'], wdir, spec.metrics, false);
  return {
    name,
    cmd: cmd as string | string[],
    wdir,
    deps,
    outs,
    metrics,
    n: n as number,
    params: {},
    rawParams: spec.params,
    matcher: parseMatcher(r, [...w, 'matcher'], name, wdir, spec.matcher, metrics, outs),
  };
}

/** Its parent directories, nearest first: `a/b/c` -> `a/b`, `a`. */
const ancestors = (p: string): string[] => {
  const out: string[] = [];
  for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) out.push(p.slice(0, i));
  return out;
};

export interface LoadedPipeline {
  file: string;
  /** The project directory (cairn.yaml's): every path is relative to it. */
  root: string;
  /** Every stage by name, in the order of the file. */
  stages: Map<string, Stage>;
}

/**
 * Reads a cairn.yaml (or a dvc.yaml that uses only what Cairn supports)
 * into stages. Errors are E_BAD_PIPELINE, naming the file, the line, the
 * stage and the key.
 */
export function loadPipeline(file: string, files?: ProjectFiles): LoadedPipeline {
  const abs = path.resolve(file);
  const root = path.dirname(abs);
  const project = files ?? diskProject(root);
  let text: string;
  try {
    text = project.read(path.basename(abs));
  } catch (e) {
    throw new CairnError(
      'E_STAGE_FILE',
      `pipeline file ${file} cannot be read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
      { file },
    );
  }
  const lc = new (yaml().LineCounter)();
  const doc = yaml().parseDocument(text, { lineCounter: lc, merge: true });
  const r = new Reporter(file, doc, lc);
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0]?.line;
    throw new CairnError(
      'E_BAD_PIPELINE',
      `${file}${line ? `:${line}` : ''}: not valid YAML: ${e.message.split('\n')[0]}`,
      { file, line },
    );
  }
  const top = doc.toJS() as unknown;
  if (!isObject(top)) throw r.fail([], 'a pipeline file is a mapping with stages');
  for (const k of Object.keys(top)) {
    if (k === 'vars') throw r.fail([k], 'vars (templating) is not supported yet');
    if (!TOP_KEYS.includes(k)) throw r.fail([k], `unknown top-level key ${k}${didYouMean(k, TOP_KEYS)}`);
  }
  if (!isObject(top.stages) || Object.keys(top.stages).length === 0) {
    throw r.fail(['stages'], 'stages must be a mapping of stage names to stages');
  }
  const decls = Object.entries(top.stages).map(([name, spec]) => parseStage(r, name, spec));

  // Who makes each out; outs may neither repeat nor nest.
  const owner = new Map<string, { stage: string; out: OutDecl }>();
  for (const d of decls) {
    for (const o of [...d.outs, ...d.metrics]) {
      const prev = owner.get(o.path);
      if (prev) {
        throw r.fail(
          o.where,
          prev.stage === d.name
            ? `out ${o.path} is listed twice`
            : `out ${o.path} is also declared by stage ${prev.stage}`,
        );
      }
      owner.set(o.path, { stage: d.name, out: o });
    }
  }
  for (const [p, { out }] of owner) {
    for (const a of ancestors(p)) {
      const outer = owner.get(a);
      if (outer) throw r.fail(out.where, `out ${p} is inside out ${a} of stage ${outer.stage}; outs may not overlap`);
    }
  }
  // Params (and ${key} in commands) are read from the project now, so a generated params file cannot work.
  const readProject = paramsReader(r, project);
  const read = (file: string, where: Where): Record<string, unknown> => {
    const made = [file, ...ancestors(file)].map((p) => owner.get(p)).find((o) => o !== undefined);
    if (made) {
      throw r.fail(
        where,
        `params file ${file} is an out of stage ${made.stage}; ` +
          'params are read from the project when the pipeline is loaded, so they cannot be generated',
      );
    }
    return readProject(file, where);
  };
  for (const d of decls) {
    const w: Where = ['stages', d.name];
    d.params = parseParams(r, [...w, 'params'], d.wdir, d.rawParams, read);
    const defaults = projectPath(r, w, d.wdir, DEFAULT_PARAMS, 'params file');
    d.cmd =
      typeof d.cmd === 'string'
        ? interpolate(r, [...w, 'cmd'], d.cmd, defaults, read)
        : d.cmd.map((c, i) => interpolate(r, [...w, 'cmd', i], c, defaults, read));
  }
  const outsUnder = (dir: string): string[] => [...owner.keys()].filter((p) => p.startsWith(`${dir}/`));

  // Each dep is another stage's out (or inside one), else a file or directory of the project.
  const byName = new Map(decls.map((d) => [d.name, d]));
  const upstream = new Map<string, Map<string, string>>(); // stage -> dep path -> producing stage
  const fileDeps = new Map<string, string[]>();
  for (const d of decls) {
    const ups = new Map<string, string>();
    const files: string[] = [];
    for (const dep of d.deps) {
      const made = [dep.path, ...ancestors(dep.path)].map((p) => owner.get(p)).find((o) => o !== undefined);
      if (made) {
        if (made.stage === d.name) throw r.fail(dep.where, `dep ${dep.path} is an out of this same stage`);
        ups.set(dep.path, made.stage);
        continue;
      }
      const inside = outsUnder(dep.path);
      if (inside.length > 0) {
        const by = owner.get(inside[0]!)!.stage;
        throw r.fail(
          dep.where,
          `dep ${dep.path} contains ${inside[0]}, an out of stage ${by}; ` +
            'depend on that out, and on the other files by name',
        );
      }
      if (!project.exists(dep.path)) {
        throw r.fail(
          dep.where,
          `dep ${dep.path} is neither a file in the project nor an out of a stage` + didYouMean(dep.path, owner.keys()),
        );
      }
      files.push(dep.path);
    }
    upstream.set(d.name, ups);
    fileDeps.set(d.name, files);
  }

  // Dependency order; a cycle is named with its path.
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, trail: string[]): void => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') {
      const cycle = [...trail.slice(trail.indexOf(name)), name];
      throw r.fail(['stages', name], `the stages form a cycle: ${cycle.join(' -> ')}`, { cycle });
    }
    state.set(name, 'visiting');
    for (const up of new Set(upstream.get(name)!.values())) visit(up, [...trail, name]);
    state.set(name, 'done');
    order.push(name);
  };
  for (const d of decls) visit(d.name, []);

  const made = new Map<string, Stage<PipelineConfig<Stage>>>();
  for (const name of order) {
    const d = byName.get(name)!;
    const config: PipelineConfig<Stage> = {
      cmd: d.cmd,
      wdir: d.wdir,
      outs: d.outs.map((o) => o.path).sort(),
      metrics: d.metrics.map((o) => o.path).sort(),
      params: d.params,
      deps: Object.fromEntries([...upstream.get(name)!].map(([p, s]) => [p, made.get(s)!])),
    };
    made.set(
      name,
      stage<PipelineConfig<Stage>>({
        name,
        config,
        build: runPipelineStage as never,
        version: PIPELINE_VERSION,
        outputs: [...config.outs, ...config.metrics],
        n: d.n,
        matcher: d.matcher,
        files: fileDeps.get(name)!,
        dir: root,
      }),
    );
  }
  return { file: abs, root, stages: new Map(decls.map((d) => [d.name, made.get(d.name)! as Stage])) };
}
