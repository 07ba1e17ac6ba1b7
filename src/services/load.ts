import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { importModule } from '../stages/load.js';
import { ensemble, isEnsemble, type Ensemble } from './spec.js';

/**
 * Imports an ensemble file (TypeScript or JavaScript, `import … from
 * 'cairn'` resolved like stage files) and returns its default export: an
 * ensemble(), or a plain `{ name, services }` object, or a function
 * (possibly async) returning one.
 */
export async function loadEnsembleFile(file: string): Promise<Ensemble> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new CairnError('E_STAGE_FILE', `ensemble file ${file} does not exist`, { file });
  let mod: Record<string, unknown>;
  try {
    mod = await importModule(abs);
  } catch (e) {
    if (e instanceof CairnError) throw e;
    throw new CairnError(
      'E_STAGE_FILE',
      `ensemble file ${file} failed to load: ${(e as Error)?.message ?? String(e)}`,
      { file },
      { cause: e },
    );
  }
  let v = mod.default;
  if (typeof v === 'function') v = await (v as () => unknown)();
  if (isEnsemble(v)) return v;
  if (typeof v === 'object' && v !== null && 'services' in v) return ensemble(v as Ensemble);
  throw new CairnError(
    'E_SERVICE_INVALID',
    `ensemble file ${file} must export default ensemble({ name, services: [...] })`,
    { file },
  );
}
