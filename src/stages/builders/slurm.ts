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
import { spawn } from 'node:child_process';
import { CairnError, ErrorCodes, type ErrorCode } from '../../errors.js';
import type { LocalStore } from '../../store/store.js';
import type { RRef } from '../../store/refs.js';
import { shellQuote } from '../../store/sync-plan.js';
import type { PushTarget, Substituter } from '../substitute.js';
import type { SlurmSpec } from './spec.js';
import type { RemoteBuilder, RemoteJob } from './pool.js';
import { slurmResourceArgs } from './resources.js';
import { derivationBundle } from './send-derivation.js';
import { checkBuildDrvReport } from './build-drv-report.js';

export interface SlurmDataPlane {
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

/** The job's shell script (pure): build in a private store, push the results, print the report. */
export function slurmJobScript(cairn: string, url: string, job: RemoteJob, keyFile: string, pub: string): string {
  const q = shellQuote;
  const c = `${cairn} --store "$S/store"`;
  const inputs = job.inputs.map(q).join(' ');
  return [
    'set -eu',
    // A store of the job's own, on the node; removed however the job ends (root may hold read-only dirs).
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
    `${c} cache push ${q(url)} ${q(job.node.dref)} --key ${q(keyFile)} >/dev/null`,
    'cat "$S/report"',
  ].join('\n');
}

export function slurmBuilder(
  store: LocalStore,
  spec: SlurmSpec,
  data: SlurmDataPlane,
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
      const r = await runSrun(opts.srun ?? 'srun', args, await derivationBundle(store, node.dref));
      if (r.code !== 0) throw jobError(spec.name, r);
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
    throw new CairnError('E_BUILDER_FAILED', `${builder}: the job printed no build-drv report: ${tail(text)}`, {
      builder,
    });
  }
}

const tail = (s: string): string => s.trim().split('\n').slice(-5).join('\n');

/** A Cairn error in the job comes back with its own code (so a failed build is not retried elsewhere). */
function jobError(builder: string, r: { code: number | null; stderr: string }): CairnError {
  const m = /cairn: error (E_[A-Z_]+): (.*)/s.exec(r.stderr);
  if (m && m[1]! in ErrorCodes)
    return new CairnError(m[1] as ErrorCode, `in a ${builder} job: ${m[2]!.trim()}`, { builder });
  return new CairnError('E_BUILDER_FAILED', `${builder}: srun exited ${r.code}: ${tail(r.stderr) || 'no output'}`, {
    builder,
    exit: r.code,
  });
}

function runSrun(
  cmd: string,
  args: string[],
  input: Buffer,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        new CairnError(
          'E_BUILDER_FAILED',
          e.code === 'ENOENT' ? `${cmd} is not installed (or not on PATH)` : `cannot run ${cmd}: ${e.message}`,
          { cmd },
        ),
      ),
    );
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
