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
 * The job's shell script (pure): pull the inputs from the cache, build,
 * push the realizations build-drv reports (RRefs: only `[A-Za-z0-9._+-]`,
 * so the shell can take them from its one-line JSON), print the report. In a private store removed
 * at the end (Slurm), or in the builder's own `store` (an ssh host with a
 * cache: what it pulled serves its next builds).
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
    // No globbing: words taken from the report are never file patterns.
    'set -euf',
    // Scratch (and, without `store`, the job's own store) on the node; removed however the job ends.
    'S=$(mktemp -d "${TMPDIR:-/tmp}/cairn-slurm-job.XXXXXX")',
    `trap 'chmod -R u+w "$S" 2>/dev/null; rm -rf "$S"' EXIT`,
    // A cancelled job (SIGTERM from Slurm) exits through the EXIT trap too.
    "trap 'exit 143' TERM INT HUP",
    // The derivation export arrives on stdin; kept in a file so no later command can read it.
    'cat >"$S/drv.tar"',
    ...(job.inputs.length > 0 ? [`${c} cache pull ${q(url)} ${inputs} --trusted-key ${q(pub)} >/dev/null`] : []),
    [c, 'build-drv', q(job.node.dref), '--from', '"$S/drv.tar"', ...job.inputs.flatMap((r) => ['--input', q(r)])]
      .concat(['--json', '>"$S/report"'])
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
