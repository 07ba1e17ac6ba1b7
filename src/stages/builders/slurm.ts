/**
 * The Slurm builder: one job per ready derivation, run with `srun` (which
 * waits for the job and hands back its stdout, so no polling). The binary
 * cache is the data plane: this side pushes the inputs' closures to it,
 * the job builds in a store of its own (a fresh directory on the node,
 * removed when the job ends) that pulls the inputs from the cache, builds
 * with `cairn build-drv`, and pushes its realizations back; this side then
 * fetches them through the cache's verified path (signature, hashes,
 * closure). The derivation and its code object ride on the job's stdin.
 */
import { CairnError } from '../../errors.js';
import type { LocalStore } from '../../store/store.js';
import type { RRef } from '../../store/refs.js';
import { shellQuote } from '../../store/sync-plan.js';
import type { PushTarget, Substituter } from '../substitute.js';
import type { SlurmSpec } from './spec.js';
import type { RemoteBuilder, RemoteJob } from './pool.js';
import { slurmResourceArgs } from './resources.js';
import { derivationBundle } from './send-derivation.js';
import { checkBuildDrvReport, remoteError } from './build-drv-report.js';
import { runWithInput } from './run-process.js';

export interface CacheDataPlane {
  /** The cache URL as the job opens it (credentials come from the job's environment, as srun passes it). */
  url: string;
  /** The secret key file the job signs its pushes with (readable on the nodes). */
  keyFile: string;
  /** Its public half: what the job trusts when it pulls the inputs. */
  publicKey: string;
  /** Where this side pushes the inputs. */
  push: PushTarget;
  /** How this side fetches the results (trusting `publicKey`). */
  fetch: Substituter;
}

export interface SlurmOptions {
  /** The cairn command on the nodes, a shell command line (default `cairn`). */
  cairn?: string;
  /** The srun binary (default `srun`). */
  srun?: string;
}

/**
 * The scratch of jobs that were killed outright: when srun dies (SIGKILL,
 * a lost connection), slurmstepd SIGKILLs the job's processes, so no trap
 * runs and the job's store stays in TMPDIR. Every job holds a lock on its
 * directory's `lock` file while any of its processes lives; the next job on
 * the node removes the directories of this user whose lock is free. Never
 * through a symlink (the glob's matches and `lock` are checked, rm -rf
 * does not follow links). Without flock(1) there is no lock and no sweep.
 */
const SWEEP_KILLED_JOBS = [
  'T="${TMPDIR:-/tmp}"',
  'if command -v flock >/dev/null; then',
  '  for d in "$T"/cairn-slurm-job.*; do',
  '    [ -d "$d" ] && [ ! -L "$d" ] && [ -O "$d" ] && [ -f "$d/lock" ] && [ ! -L "$d/lock" ] || continue',
  '    flock -n "$d/lock" true 2>/dev/null || continue',
  '    chmod -R u+w "$d" 2>/dev/null; rm -rf "$d" 2>/dev/null || true',
  '  done',
  'fi',
];

/**
 * The job's shell script (pure): pull the inputs from the cache, build,
 * push the realizations build-drv reports (RRefs: only `[A-Za-z0-9._+-]`,
 * so the shell can take them from its one-line JSON), print the report.
 * In a private store removed at the end (Slurm), or in the builder's own
 * `store` (an ssh host with a cache: what it pulled serves its next builds).
 */
export function slurmJobScript(
  cairn: string,
  url: string,
  job: RemoteJob,
  keyFile: string,
  pub: string,
  store?: string,
): string {
  const q = shellQuote;
  const c = `${cairn} --store ${store !== undefined ? q(store) : '"$S/store"'}`;
  const inputs = job.inputs.map(q).join(' ');
  return [
    'set -eu',
    ...SWEEP_KILLED_JOBS,
    // No globbing from here on: words taken from the report are never file patterns.
    'set -f',
    // Scratch (and, without `store`, the job's own store) on the node; removed however the job ends.
    'S=$(mktemp -d "$T/cairn-slurm-job.XXXXXX")',
    `trap 'chmod -R u+w "$S" 2>/dev/null; rm -rf "$S"' EXIT`,
    // A cancelled job (SIGTERM from Slurm) exits through the EXIT trap too.
    "trap 'exit 143' TERM INT HUP",
    // Held by this shell and everything it starts, released by the kernel however they end (the sweep's test).
    // Taken under another name first, so a sweep never finds a `lock` nobody holds yet.
    'if command -v flock >/dev/null; then exec 9>"$S/lock.new"; flock -n 9; mv "$S/lock.new" "$S/lock"; fi',
    // The derivation export arrives on stdin; kept in a file so no later command can read it.
    'cat >"$S/drv.tar"',
    ...(job.inputs.length > 0 ? [`${c} cache pull ${q(url)} ${inputs} --trusted-key ${q(pub)} >/dev/null`] : []),
    [c, 'build-drv', q(job.node.dref), '--from', '"$S/drv.tar"', ...job.inputs.flatMap((r) => ['--input', q(r)])]
      .concat(job.force === true ? ['--force'] : [], ['--json', '>"$S/report"'])
      .join(' '),
    // Exactly what this build chose (the report's realizations), not every realization of the
    // derivation in the store: a builder's own store may hold older ones, from other inputs.
    `R=$(sed -n 's/.*"realizations":\\[\\([^]]*\\)\\].*/\\1/p' "$S/report" | tr -d '"' | tr ',' ' ')`,
    `for r in $R; do case $r in *[!A-Za-z0-9._+-]*) R=;; esac; done`,
    `[ -n "$R" ] || { echo 'cairn build-drv reported no realizations' >&2; exit 1; }`,
    `${c} cache push ${q(url)} $R --key ${q(keyFile)} >/dev/null`,
    'cat "$S/report"',
  ].join('\n');
}

export function slurmBuilder(
  store: LocalStore,
  spec: SlurmSpec,
  data: CacheDataPlane,
  opts: SlurmOptions = {},
): RemoteBuilder {
  const cairn = opts.cairn ?? 'cairn';
  return {
    name: spec.name,
    slots: spec.maxJobs,
    async build(job: RemoteJob): Promise<RRef[]> {
      const { node, inputs } = job;
      if (inputs.length > 0) await data.push.push(store, inputs);
      const script = slurmJobScript(cairn, data.url, job, data.keyFile, data.publicKey);
      const args = [
        '--quiet',
        `--job-name=cairn-${node.name}`,
        '--ntasks=1',
        '--kill-on-bad-exit=1',
        ...(spec.partition !== undefined ? [`--partition=${spec.partition}`] : []),
        ...slurmResourceArgs(node.stage.resources),
        '/bin/sh',
        '-c',
        script,
      ];
      const r = await runWithInput(opts.srun ?? 'srun', args, await derivationBundle(store, node.dref));
      if (r.code !== 0) throw remoteError(spec.name, r);
      const report = checkBuildDrvReport(parseReport(r.stdout, spec.name), node.dref, spec.name);
      job.log(`${spec.name}: built on ${report.host} in ${report.buildMs} ms`);
      await data.fetch.fetch(store, report.realizations);
      return report.realizations;
    },
  };
}

function parseReport(text: string, builder: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new CairnError('E_BUILDER_FAILED', `${builder}: the job printed no build-drv report: ${text.slice(-500)}`, {
      builder,
    });
  }
}
