/**
 * A stage's optional `resources: { cpus, memory, gpus }`: what a Slurm job
 * building it asks for. It is scheduling advice, not identity: it is not
 * part of the DRef, so moving a stage to a bigger machine rebuilds nothing.
 */
import { CairnError } from '../../errors.js';

export interface Resources {
  cpus?: number;
  /** Megabytes (a number) or a Slurm size such as `4G`, `512M`. */
  memory?: number | string;
  gpus?: number;
}

const MEMORY = /^[1-9]\d{0,9}[KMGT]?$/;

/** Checks and freezes a stage's `resources` (E_BAD_STAGE_SPEC names the stage and field). */
export function checkResources(stage: string, r: unknown): Readonly<Resources> | undefined {
  if (r === undefined) return undefined;
  const bad = (why: string): CairnError =>
    new CairnError('E_BAD_STAGE_SPEC', `stage ${stage}: resources ${why}`, { stage });
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw bad('must be an object { cpus, memory, gpus }');
  const out: Resources = {};
  for (const [k, v] of Object.entries(r)) {
    if (k === 'cpus' || k === 'gpus') {
      if (!Number.isInteger(v) || (v as number) < (k === 'cpus' ? 1 : 0) || (v as number) > 100000)
        throw bad(`.${k} must be a whole number${k === 'cpus' ? ' >= 1' : ' >= 0'}`);
      out[k] = v as number;
    } else if (k === 'memory') {
      const ok = (Number.isInteger(v) && (v as number) >= 1) || (typeof v === 'string' && MEMORY.test(v.toUpperCase()));
      if (!ok) throw bad('.memory must be megabytes (a whole number) or a size such as "4G" or "512M"');
      out.memory = typeof v === 'string' ? v.toUpperCase() : (v as number);
    } else throw bad(`has an unknown field ${JSON.stringify(k)} (cpus, memory, gpus)`);
  }
  return Object.freeze(out);
}

/** The srun/sbatch options for `r` (pure). */
export function slurmResourceArgs(r: Readonly<Resources> | undefined): string[] {
  const args: string[] = [`--cpus-per-task=${r?.cpus ?? 1}`];
  if (r?.memory !== undefined) args.push(`--mem=${r.memory}`);
  if (r?.gpus !== undefined && r.gpus > 0) args.push(`--gpus=${r.gpus}`);
  return args;
}
