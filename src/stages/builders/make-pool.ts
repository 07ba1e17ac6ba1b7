/**
 * From builder specs to a BuilderPool: an ssh builder per host, a Slurm
 * builder per partition, and `local` when it is listed. With only `local`
 * (or nothing), there is no pool: realize builds everything here as before.
 */
import { CairnError } from '../../errors.js';
import type { LocalStore } from '../../store/store.js';
import { BuilderPool, type RemoteBuilder } from './pool.js';
import { parseBuilderSpecs } from './spec.js';
import { sshBuilder, type SshTransport } from './ssh.js';
import { slurmBuilder, type CacheDataPlane, type SlurmOptions } from './slurm.js';

export interface PoolOptions {
  /** Local builds at once (-j). */
  jobs: number;
  ssh?: SshTransport;
  slurm?: SlurmOptions;
  /**
   * The cache builders exchange inputs and results through: needed by a
   * Slurm builder (it throws when there is none); used by ssh builders when
   * `viaCache` (a substituter and a signing key were given), else they use sync.
   */
  cacheData?: () => Promise<CacheDataPlane>;
  viaCache?: boolean;
}

export async function makeBuilderPool(
  store: LocalStore,
  specs: readonly string[],
  opts: PoolOptions,
): Promise<BuilderPool | undefined> {
  const parsed = parseBuilderSpecs(specs);
  const remotes: RemoteBuilder[] = [];
  let data: CacheDataPlane | undefined;
  for (const spec of parsed) {
    if (spec.kind === 'ssh') {
      if (opts.viaCache && opts.cacheData) data ??= await opts.cacheData();
      remotes.push(sshBuilder(store, spec, opts.ssh ?? {}, opts.viaCache ? data : undefined));
    } else if (spec.kind === 'slurm') {
      if (!opts.cacheData)
        throw new CairnError(
          'E_BAD_BUILDER',
          `${spec.name}: a Slurm builder needs a binary cache to exchange inputs and results through ` +
            '(a substituter, and a secret key to sign with)',
          { spec: spec.name },
        );
      data ??= await opts.cacheData();
      remotes.push(slurmBuilder(store, spec, data, opts.slurm));
    }
  }
  if (remotes.length === 0) return undefined;
  return new BuilderPool(remotes, { local: parsed.some((s) => s.kind === 'local'), localSlots: opts.jobs });
}
