import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError, isCairnError } from '../errors.js';
import { redactUrlsIn } from '../redact-url.js';
import type { BuildDirs } from '../store/build-dirs.js';
import { keepFailedLog } from '../store/failed-logs.js';
import { chmodNoFollow } from '../store/fsutil.js';
import { removeBuildTree } from '../store/mounts.js';
import type { Added, Context, HeldLock } from '../store/interface.js';
import { DIR_MODE } from '../store/permissions.js';
import { creationTime, type LocalStore } from '../store/store.js';
import { makeBuildContext, makeLog } from './build-context.js';
import { BuildGroups, interruptedBy } from './build-processes.js';
import type { Derivation } from './instantiate.js';
import type { BuildContext } from './stage.js';

export interface BuildRun {
  store: LocalStore;
  node: Derivation;
  /** The direct context: recorded in every realization this build publishes. */
  context: Context;
  /** The config with stage references resolved to their chosen realizations. */
  config: unknown;
  /** `ctx.files`: the store paths of the stage's file inputs (see inputPaths). */
  files?: Readonly<Record<string, string>>;
  /**
   * Programs run without a `cwd` start in the build's own scratch directory
   * (`ctx.tmp`) instead of this process's: on a builder that is a login
   * directory or a Slurm job's, shared by every build at once and by none of
   * the user's files.
   */
  programsInTmp?: boolean;
  /** On failure, move the build directory to ROOT/failed/ instead of deleting it. */
  keepFailed?: boolean;
  /**
   * Receives log() lines and, live, the output of programs run through
   * exec (with the output they work on, if known).
   */
  onLog?: (line: string, output?: number) => void;
  /** Where one-output builds get their directory (made ahead of time). */
  dirs?: BuildDirs;
  /** The build lock to release when the outputs are indexed (see AddOptions.release). */
  release?: HeldLock;
  /** Runs instead of the build function: someone builds by hand at a break point (see break-point.ts). */
  byHand?: (ctx: BuildContext<unknown>) => Promise<void>;
}

export interface BuildOutcome {
  /** The outputs, complete and readable in the store. */
  added: Added[];
  /** Settles once they are durable and indexed. */
  durable: Promise<Added[]>;
}

/**
 * Runs a stage's build function once, in a fresh directory on the store's
 * filesystem, checks every promise of every output, and adds the outputs
 * to the store (`Store.add`). Returns as soon as they are readable; their
 * durability and indexing go on in `durable`, so dependants can start.
 */
export async function buildAndAdd(run: BuildRun): Promise<BuildOutcome> {
  const { store, node, context, config, keepFailed, onLog } = run;
  const s = node.stage;
  refuseIfInterrupted(node);
  // Each output is built directly inside its staging directory, so
  // publishing it is a single rename; with one output, the build
  // directory is itself the staging directory, made ahead with its out/
  // when the caller has `dirs`.
  const dir = s.n === 1 && run.dirs ? run.dirs.take() : store.makeTempDir(`build-${node.name}`);
  const staging = s.n === 1 ? [dir] : Array.from({ length: s.n }, (_, i) => path.join(dir, `rz-${i}`));
  const outs = staging.map((d) => path.join(d, 'out'));
  if (!(s.n === 1 && run.dirs)) {
    if (s.n > 1) for (const d of staging) fs.mkdirSync(d, { mode: DIR_MODE });
    for (const d of outs) fs.mkdirSync(d, { mode: DIR_MODE });
  }
  let scratch: string | undefined;
  // The log is written straight into the first realization; the others get copies.
  const logFile = path.join(staging[0]!, 'build.log');
  const started = Date.now();
  let ok = false;
  let outcome!: BuildOutcome;
  const groups = new BuildGroups();
  try {
    const log = makeLog(logFile, onLog && ((line) => onLog(line)));
    try {
      log(`building ${node.dref} with ${s.n} output(s)`);
      const live = { groups, echo: onLog };
      const tmp = (): string => (scratch ??= store.makeTempDir(`work-${node.name}`));
      const ctx = makeBuildContext(node, config, outs, tmp, log, live, run.files, run.programsInTmp);
      await (run.byHand ? run.byHand(ctx) : s.build(ctx));
    } catch (e) {
      if (interruptedBy()) refuseIfInterrupted(node);
      // An HTTP library's message may quote the URL the build gave it, secrets and all: the log is world-readable.
      const msg = redactUrlsIn(e instanceof Error ? e.message : String(e));
      log(`build failed: ${msg}`);
      if (isCairnError(e) && e.code === 'E_BREAK_CANCELLED') throw e;
      // A Cairn error keeps its code (a fetch's E_HASH_MISMATCH, say);
      // anything else a build throws is E_BUILD_FAILED.
      const code = isCairnError(e) ? e.code : 'E_BUILD_FAILED';
      throw new CairnError(
        code,
        `stage ${node.name} (${node.dref}) failed: ${msg}`,
        { ...(isCairnError(e) ? e.details : {}), dref: node.dref, stage: node.name },
        { cause: e },
      );
    } finally {
      // Programs the build left running must not write into what is about to be stored.
      await groups.end();
      log.close();
    }
    refuseIfInterrupted(node);
    // Every output must keep every promise before any of them is stored.
    for (const [i, out] of outs.entries()) {
      const missing = s.outputs.filter((o) => !fs.existsSync(path.join(out, o)) && !isLink(path.join(out, o)));
      if (missing.length > 0) {
        throw new CairnError(
          'E_PROMISE_BROKEN',
          `stage ${node.name} (${node.dref}) output ${i} lacks promised ${missing.join(', ')}`,
          { dref: node.dref, missing },
        );
      }
    }
    // Failures from here on are the store's (a full disk, say), not the build's.
    outcome = await asStoreError(async (): Promise<BuildOutcome> => {
      const buildMs = Date.now() - started;
      // The build could have replaced its log with a link: never chmod or copy through one.
      try {
        chmodNoFollow(logFile, 0o444);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ELOOP') throw e;
        throw new CairnError(
          'E_UNSAFE_OUTPUT',
          `stage ${node.name} (${node.dref}) replaced its build.log with a symlink`,
          {
            dref: node.dref,
            path: 'build.log',
          },
        );
      }
      const logs = staging.map((rz) => path.join(rz, 'build.log'));
      for (const l of logs.slice(1)) fs.copyFileSync(logFile, l, fs.constants.COPYFILE_EXCL);
      // The log is not fsynced: it is not hashed, and a log cut short by a
      // crash is harmless, unlike an output.
      let readable!: (added: Added[]) => void;
      const seen = new Promise<Added[]>((r) => {
        readable = r;
      });
      const durable = store.add(
        {
          dref: node.dref,
          name: node.name,
          drv: node.drvJson,
          context,
          buildMs,
          outputs: staging.map((dir) => ({ dir, created: creationTime() })),
        },
        { onReadable: readable, release: run.release },
      );
      // A failure before the outputs are readable is this build's; after, the caller's (it awaits `durable`).
      durable.catch(() => {});
      return { added: await Promise.race([seen, durable]), durable };
    });
    ok = true;
  } catch (e) {
    // Neither an interrupt nor a cancelled break is a failure of the build to keep for inspection.
    const interrupted = isCairnError(e) && (e.code === 'E_INTERRUPTED' || e.code === 'E_BREAK_CANCELLED');
    if (!ok && !interrupted && fs.existsSync(logFile)) {
      const saved = keepFailedLog(store, node.dref, logFile);
      if (saved && isCairnError(e)) e.details.failedLog = saved;
      if (saved && e instanceof Error) e.message += ` (log: cairn log ${node.dref} --failed)`;
    }
    if (keepFailed && !ok && !interrupted) {
      const kept = store.keepFailedBuild(dir, keptName(node.name, path.basename(dir), store.owner));
      if (isCairnError(e)) e.details.kept = kept;
      if (e instanceof Error) e.message += ` (build directory kept at ${kept})`;
    }
    throw e;
  } finally {
    // A published single output took the build directory with it. Mounts the build made are detached first.
    // A leftover that cannot be removed (a mount that stays, an immutable file, a process of the build still
    // writing) must not hide the build's own outcome: the temporary sweep of a later realize reports and skips it.
    for (const d of [ok && s.n === 1 ? undefined : dir, scratch]) {
      if (d !== undefined)
        try {
          removeBuildTree(d);
        } catch {
          /* left to the sweep */
        }
    }
  }
  return outcome;
}

/** Stops a build from starting or storing anything once cairn was interrupted. */
function refuseIfInterrupted(node: Derivation): void {
  const sig = interruptedBy();
  if (!sig) return;
  throw new CairnError('E_INTERRUPTED', `stage ${node.name} (${node.dref}) interrupted by ${sig}`, {
    dref: node.dref,
    signal: sig,
  });
}

/**
 * `NAME-TIME-pPID-LABEL` for a kept build directory: the whole label of
 * the temporary directory (`build-3`, `build-train-2`), without its owner's
 * start time; the pid keeps names from processes failing at once apart.
 */
export function keptName(name: string, base: string, owner: string): string {
  const label = base.startsWith(`${owner}-`) ? base.slice(owner.length + 1) : base;
  return `${name}-${new Date().toISOString().replace(/[:.]/g, '')}-p${process.pid}-${label}`;
}

/** Runs store work, turning plain I/O errors (ENOSPC, EIO, ...) into E_STORE_IO. */
async function asStoreError<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CairnError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new CairnError(
      'E_STORE_IO',
      `storing the build's outputs failed: ${err?.message ?? String(e)}`,
      { errno: err?.code },
      { cause: e },
    );
  }
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
