/**
 * The ssh builder: builds on another host, as Nix's remote builders run
 * `nix-store --serve`: one long-lived `cairn builder-worker` per slot,
 * started on first use over the host's shared ssh connection and closed
 * when the realize ends (worker-serve.ts). One build on a worker
 * (ssh-worker-build.ts):
 *  1. `have`: which of the inputs' closure the host lacks; what it lacks goes
 *     as a closure tar in the same stream, taken in there through the
 *     verified import;
 *  2. `build`: the derivation and its code object (verified there against
 *     their names) and the exact input RRefs; the build's log lines stream back;
 *  3. its realizations come back as a closure tar in the same stream and
 *     enter this store only through the verified import (receive.ts):
 *     re-hashed, the closure checked, never trusted as sent.
 */
import type { LocalStore } from '../../store/store.js';
import type { RRef } from '../../store/refs.js';
import { parseJson } from '../../store/sync.js';
import type { SshSpec } from './spec.js';
import type { RemoteBuilder, RemoteJob } from './pool.js';
import { derivationBundle } from './send-derivation.js';
import { checkBuildDrvReport, remoteError } from './build-drv-report.js';
import { slurmJobScript, type CacheDataPlane } from './slurm.js';
import { runWithInput } from './run-process.js';
import { shellQuote, splitCommand } from '../../store/sync-plan.js';
import { sharedSsh } from './ssh-sharing.js';
import { buildOnWorker, workerSlots } from './ssh-worker-build.js';

export interface SshTransport {
  /** The ssh command (default `ssh -o BatchMode=yes`), split like a shell would. */
  ssh?: string;
  /** The cairn command on the hosts (default `cairn`). */
  remoteCairn?: string;
}

/**
 * With `data` (a cache and a key), inputs and results travel through the
 * cache instead, as for Slurm jobs: this side pushes the inputs, the host
 * pulls them, builds in its store, pushes its realizations signed with the
 * key (its path must be readable on the host), and this side fetches them.
 */
export function sshBuilder(
  store: LocalStore,
  spec: SshSpec,
  transport: SshTransport,
  data?: CacheDataPlane,
): RemoteBuilder {
  const target = `${spec.user !== undefined ? `${spec.user}@` : ''}${spec.host}`;
  const shared = sharedSsh(
    (transport.ssh ?? 'ssh -o BatchMode=yes') + (spec.port !== undefined ? ` -p ${spec.port}` : ''),
    target,
  );
  const sshCmd = shared.command;
  const remoteCmd = transport.remoteCairn ?? 'cairn';
  const workers = workerSlots(
    store,
    {
      name: spec.name,
      argv: [...splitCommand(sshCmd), '--', target, `${remoteCmd} --store ${shellQuote(spec.store)} builder-worker`],
    },
    () => shared.connected(),
  );
  return {
    name: spec.name,
    slots: spec.maxJobs,
    async close() {
      // Workers first: they end over the shared connection, which goes last.
      await workers.close();
      await shared.close();
    },
    async build(job: RemoteJob): Promise<RRef[]> {
      const { node, inputs } = job;
      if (data) {
        if (inputs.length > 0) await data.push.push(store, inputs);
        const script = slurmJobScript(remoteCmd, data.url, job, data.keyFile, data.publicKey, spec.store);
        const ran = await sshShell(sshCmd, target, script, await derivationBundle(store, node.dref));
        if (ran.code !== 0) throw remoteError(spec.name, ran);
        const report = checkBuildDrvReport(parseJson<unknown>(ran.stdout, 'cairn build-drv'), node.dref, spec.name);
        job.log(`${spec.name}: built on ${report.host} in ${report.buildMs} ms (through ${data.fetch.name})`);
        await data.fetch.fetch(store, report.realizations);
        return report.realizations;
      }
      return workers.run((w) => buildOnWorker(store, spec.name, w, job));
    },
  };
}

/** Runs a shell script on the host (`sh -c SCRIPT` through ssh), with `input` on its stdin. */
function sshShell(
  sshCmd: string,
  target: string,
  script: string,
  input: Buffer,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const ssh = splitCommand(sshCmd);
  return runWithInput(ssh[0]!, [...ssh.slice(1), '--', target, `sh -c ${shellQuote(script)}`], input);
}
