import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { removeTree } from '../../store/fsutil.js';
import type { BuildContext, Dep } from '../stage.js';
import { paramsText } from './params.js';

/**
 * The config of a pipeline stage as its build sees it (stage references
 * resolved). Every path is relative to the project (the directory of
 * cairn.yaml), never absolute, so the DRef is the same in any checkout.
 */
export interface PipelineConfig<D = Dep> {
  cmd: string | string[];
  /** The command's working directory, relative to the project ('.' by default). */
  wdir: string;
  outs: string[];
  metrics: string[];
  /** Picked parameter values by params file: only these enter the identity, and only these the command can read. */
  params: Record<string, Record<string, unknown>>;
  /** Dependencies on other stages' outs, by the path the command reads them at. */
  deps: Record<string, D>;
}

const SLASH = Buffer.from('/');
const join = (dir: Buffer, name: Buffer): Buffer => Buffer.concat([dir, SLASH, name]);

/** A file the workspace links to a store file: checked after the command, which must not have written to it. */
interface Linked {
  at: Buffer;
  mtimeNs: bigint;
  size: bigint;
}

/**
 * Puts `src` (a store path) at `dst` in the workspace. Files are hard links
 * (no data copied; the workspace is on the store's filesystem), directories
 * are real directories mirrored entry by entry, so the command sees an
 * ordinary checkout: `find data` lists the files, and Python's sys.path[0]
 * (the real path of the script) is the workspace, where sibling modules are.
 * Symlinks inside inputs are copied as symlinks (inputs and outputs never
 * hold one that leaves them).
 */
function place(src: Buffer, dst: Buffer, linked: Linked[]): void {
  const st = fs.lstatSync(src, { bigint: true });
  if (st.isSymbolicLink()) {
    fs.symlinkSync(fs.readlinkSync(src, { encoding: 'buffer' }), dst);
  } else if (st.isDirectory()) {
    fs.mkdirSync(dst, { mode: 0o755 });
    for (const name of fs.readdirSync(src, { encoding: 'buffer' })) place(join(src, name), join(dst, name), linked);
  } else {
    try {
      fs.linkSync(src, dst);
    } catch {
      // Another filesystem or a link limit: a clone or a copy does as well.
      fs.copyFileSync(src, dst, fs.constants.COPYFILE_FICLONE);
    }
    linked.push({ at: dst, mtimeNs: st.mtimeNs, size: st.size });
  }
}

/**
 * A command that writes into an input it was given would change a store
 * object in place (as root, whom the read-only bits do not stop): refuse
 * the build rather than publish a result built from damaged inputs.
 */
function checkInputsIntact(stage: string, ws: string, linked: readonly Linked[]): void {
  for (const l of linked) {
    let st: fs.BigIntStats;
    // Removed or renamed: the store copy is untouched.
    try {
      st = fs.lstatSync(l.at, { bigint: true });
    } catch {
      continue;
    }
    if (st.isFile() && (st.mtimeNs !== l.mtimeNs || st.size !== l.size)) {
      const rel = path.relative(ws, l.at.toString());
      throw new CairnError(
        'E_BUILD_FAILED',
        `stage ${stage}: the command wrote to its input ${rel}, ` +
          'a read-only store file; write results to a declared out instead, and run `cairn store verify --repair`',
        { stage, input: rel },
      );
    }
  }
}

const exists = (p: string): boolean => {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
};

/**
 * An out must be reached through real directories of the workspace: a
 * command that replaced a parent with a symlink would otherwise have
 * Cairn move a file from wherever it points into the store.
 */
function throughLink(stage: string, ws: string, out: string): void {
  const parts = out.split('/');
  for (let i = 1; i < parts.length; i++) {
    const dir = path.join(ws, ...parts.slice(0, i));
    let st: fs.Stats;
    try {
      st = fs.lstatSync(dir);
    } catch {
      return;
    } // missing: the promise check says so
    if (!st.isDirectory()) {
      const via = parts.slice(0, i).join('/');
      throw new CairnError(
        'E_UNSAFE_OUTPUT',
        `stage ${stage}: out ${out} is reached through ${via}, ` +
          'which is not a directory of the workspace (a symlink?)',
        { stage, out },
      );
    }
  }
}

const mkdirp = (p: string): void => {
  fs.mkdirSync(p, { recursive: true, mode: 0o755 });
};

/**
 * The build of every cairn.yaml stage. For each of the stage's `n` outputs
 * it assembles a fresh workspace laid out like the project: the declared
 * file deps (the hashed store copies), other stages' outs at their paths
 * (the realizations the matchers chose), and each params file holding only
 * the picked keys. It runs the command there with /bin/sh, then moves each
 * declared out into the realization, where it keeps the same
 * project-relative path. Anything else the command writes is discarded.
 */
export async function runPipelineStage(ctx: BuildContext<PipelineConfig>): Promise<void> {
  const c = ctx.config as unknown as PipelineConfig; // Resolved<> would map Dep itself
  // Every chosen realization of every upstream dep, for `matcher: all` and
  // the like (the workspace holds the first choice).
  const depsFile = path.join(ctx.tmp, 'deps.json');
  fs.writeFileSync(
    depsFile,
    JSON.stringify(
      Object.fromEntries(Object.entries(c.deps).map(([p, d]) => [p, d.paths.map((root) => path.join(root, p))])),
    ),
  );
  const cmds = typeof c.cmd === 'string' ? [c.cmd] : c.cmd;
  for (const [i, out] of ctx.outs.entries()) {
    const ws = path.join(ctx.tmp, `ws-${i}`);
    fs.mkdirSync(ws);
    const linked: Linked[] = [];
    const wsB = Buffer.from(ws);
    const put = (rel: string, src: string): void => {
      // A dep inside a directory dep is already there.
      if (fs.existsSync(path.join(ws, rel))) return;
      mkdirp(path.dirname(path.join(ws, rel)));
      place(Buffer.from(src), join(wsB, Buffer.from(rel)), linked);
    };
    for (const key of Object.keys(ctx.files).sort()) put(key, ctx.files[key]!);
    for (const [rel, dep] of Object.entries(c.deps).sort(([a], [b]) => (a < b ? -1 : 1))) {
      // A dep inside an out directory that the chosen realization lacks.
      if (!exists(dep.file(rel))) {
        throw new CairnError('E_BUILD_FAILED', `stage ${ctx.name}: dep ${rel} is not in ${dep.rrefs[0]}`, {
          stage: ctx.name,
          dep: rel,
        });
      }
      put(rel, dep.file(rel));
    }
    for (const [file, picked] of Object.entries(c.params)) {
      if (ctx.files[file] !== undefined) continue; // the whole file is a dep, and in the identity
      mkdirp(path.dirname(path.join(ws, file)));
      fs.writeFileSync(path.join(ws, file), paramsText(picked));
    }
    // Parents of outs exist, as in a checkout; the outs themselves do not.
    for (const o of [...c.outs, ...c.metrics]) mkdirp(path.dirname(path.join(ws, o)));
    const cwd = path.join(ws, c.wdir);
    mkdirp(cwd);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CAIRN_STAGE: ctx.name,
      CAIRN_INDEX: String(i),
      CAIRN_N: String(ctx.outs.length),
      CAIRN_PROJECT: ws,
      CAIRN_DEPS: depsFile,
    };
    for (const k of ['PWD', 'OLDPWD', 'INIT_CWD']) delete env[k];
    if (ctx.outs.length > 1) ctx.log(`run ${i + 1} of ${ctx.outs.length}`);
    for (const cmd of cmds) {
      try {
        // The workspace is not inside output i, so say which run this is: `-v` prefixes it `train[i]>`.
        await ctx.exec('/bin/sh', ['-c', cmd], { cwd, env, ...(ctx.outs.length > 1 ? { output: i } : {}) });
      } catch (e) {
        // Name the stage's command, not the shell that ran it ("/bin/sh exited with 1").
        if (!(e instanceof CairnError) || e.code !== 'E_BUILD_FAILED' || e.details.cmd !== '/bin/sh') throw e;
        const run = ctx.outs.length > 1 ? ` (run ${i + 1} of ${ctx.outs.length})` : '';
        const message = `\`${cmd}\`${e.message.slice('/bin/sh'.length)}${run}`;
        throw new CairnError('E_BUILD_FAILED', message, { ...e.details, cmd }, { cause: e });
      }
    }
    checkInputsIntact(ctx.name, ws, linked);
    for (const o of [...c.outs, ...c.metrics]) {
      const from = path.join(ws, o);
      throughLink(ctx.name, ws, o);
      try {
        fs.lstatSync(from);
      } catch {
        throw new CairnError(
          'E_PROMISE_BROKEN',
          `stage ${ctx.name}: the command did not create its out ${o}` +
            (ctx.outs.length > 1 ? ` (run ${i + 1} of ${ctx.outs.length})` : ''),
          { stage: ctx.name, missing: [o] },
        );
      }
      mkdirp(path.dirname(path.join(out, o)));
      fs.renameSync(from, path.join(out, o));
    }
    removeTree(ws);
  }
}
