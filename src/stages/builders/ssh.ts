/**
 * The ssh builder: `cairn build-drv` on another host, as Nix's remote
 * builders run `nix-store --serve`. One build:
 *  1. the inputs' closures go to the host's store with sync push (only what
 *     it lacks: one `store have` round trip, then rsync);
 *  2. `cairn build-drv DREF --from - --input RREF... --json` runs there,
 *     with the derivation and its code object on its stdin (verified there
 *     against their names before anything is built);
 *  3. its realizations come back with sync pull: re-hashed and verified by
 *     this store (receive.ts), never trusted as sent.
 */
import type { LocalStore } from '../../store/store.js';
import type { RRef } from '../../store/refs.js';
import { listClosure, pullKnown, push, remoteCairn, parseJson, type SyncOptions } from '../../store/sync.js';
import { CairnError } from '../../errors.js';
import type { SshSpec } from './spec.js';
import type { RemoteBuilder, RemoteJob } from './pool.js';
import { derivationBundle } from './send-derivation.js';
import { checkBuildDrvReport, remoteError } from './build-drv-report.js';
import { slurmJobScript, type CacheDataPlane } from './slurm.js';
import { runWithInput } from './run-process.js';
import { shellQuote, splitCommand } from '../../store/sync-plan.js';
import { sharedSsh } from './ssh-sharing.js';

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
  const opts: SyncOptions = { ssh: sshCmd, remoteCairn: transport.remoteCairn };
  const remote = `${target}:${spec.store}`;
  const remoteCmd = transport.remoteCairn ?? 'cairn';
  const sshRemote = { sshTarget: target, rsyncTarget: target, store: spec.store };
  return {
    name: spec.name,
    slots: spec.maxJobs,
    close: () => shared.close(),
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
      if (inputs.length > 0) {
        const sent = await push(store, remote, inputs, opts);
        job.log(`${spec.name}: sent ${sent.plan.rrefs.length} input realization(s)`);
      }
      const args = ['build-drv', node.dref, '--from', '-', ...inputs.flatMap((r) => ['--input', r]), '--json'];
      const drv = await derivationBundle(store, node.dref);
      const report = checkBuildDrvReport(
        parseJson<unknown>(await remoteCairn(sshRemote, opts, args, drv), 'cairn build-drv'),
        node.dref,
        spec.name,
      );
      job.log(`${spec.name}: built on ${report.host} in ${report.buildMs} ms`);
      // Their closure is known here (they were built from exactly `inputs`): no `store closure` round trip.
      const listing = {
        root: spec.store,
        roots: report.realizations,
        nodes: [
          ...(inputs.length > 0 ? listClosure(store, inputs).nodes : []),
          ...report.realizations.map((rref) => ({ rref, deps: [...inputs] })),
        ],
      };
      const got = await pullKnown(store, remote, listing, opts);
      const received = new Set([...(got.received?.received ?? []), ...(got.received?.present ?? [])]);
      // pull verifies what it takes in; anything it did not take in is not ours to return.
      for (const r of report.realizations)
        if (!received.has(r) && !store.has(r))
          throw new CairnError('E_BUILDER_FAILED', `${spec.name} built ${r} but it did not arrive`, { rref: r });
      return report.realizations;
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
