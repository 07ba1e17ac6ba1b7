/**
 * `ssh://[user@]host[:port]` as a machine base. The base's realization is a
 * *host record*, not a snapshot: machine.json names the ssh backend, the
 * target and the host key ssh verified. Its identity is the target (a
 * different host, port, user, key or known_hosts file is a different DRef)
 * and its content is the host key (a re-keyed host is a new realization).
 *
 * The host is probed on every realize: the matcher logs in and accepts
 * only the record of the key the host presents now, so a cached record is
 * never taken for a host that changed. Steps on such a base always run and
 * are never saved (`liveBase`, src/stages/machine.ts).
 */
import { probeHostKey, type SshState } from '../../backends/ssh/ssh-machine.js';
import { describeTarget, parseSshUrl, type SshTarget } from '../../backends/ssh/target.js';
import { DESCRIPTION, liveBase, parseDescription, writeDescription } from '../machine.js';
import { custom } from '../matchers.js';
import { stage, type Stage } from '../stage.js';

export interface SshBaseOptions {
  /** A private key for `ssh -i` (only it is offered); default: the user's keys and agent. */
  identityFile?: string;
  /** A known_hosts file used instead of the user's (tests, pinned fleets). */
  knownHostsFile?: string;
}

/** A probe answer is reused this long, so one realize (up to three matcher calls) logs in once. */
const PROBE_REUSE_MS = 5_000;

/** The base for `ssh://[user@]host[:port]`: `machine(sshBase('ssh://root@10.0.0.5')).apply(...)`. */
export function sshBase(url: string, opts: SshBaseOptions = {}): Stage<SshTarget> {
  const target = parseSshUrl(url, opts);
  let probed: { at: number; key: Promise<string> } | null = null;
  const presentKey = (): Promise<string> => {
    if (probed === null || Date.now() - probed.at > PROBE_REUSE_MS) {
      probed = { at: Date.now(), key: probeHostKey(target) };
      // A failed probe is not remembered: the next call tries again.
      probed.key.catch(() => (probed = null));
    }
    return probed.key;
  };
  return liveBase(
    stage<SshTarget>({
      name: 'ssh',
      config: target,
      outputs: [DESCRIPTION],
      version: 'cairn-ssh-base-1',
      matcher: custom(
        async (cands) => {
          const key = await presentKey();
          for (let i = cands.length - 1; i >= 0; i--) {
            const d = parseDescription((await cands[i]!.read(DESCRIPTION)).toString('utf8'), cands[i]!.rref);
            if ((d.state as Partial<SshState>).hostKey === key) return [cands[i]!.rref];
          }
          return null;
        },
        { name: 'host-key-now' },
      ),
      async build(ctx) {
        const hostKey = await presentKey();
        ctx.log(`${describeTarget(target)}: host key ${hostKey}`);
        const state: SshState = { backend: 'ssh', ...ctx.config, hostKey };
        writeDescription(ctx.out, {
          format: 1,
          backend: 'ssh',
          state: { ...state },
          expiresAt: null,
          files: [],
          step: null,
        });
      },
    }),
  );
}
