import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { importModule } from '../stages/load.js';
import { validateEnsemble } from './graph.js';
import { ensemble, isEnsemble, type Ensemble } from './spec.js';
import { locate, locationOf, type SourceLocation } from './spec-location.js';

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
  if (isEnsemble(v)) return checked(v, locationOf(v) ?? { file: abs, line: 1 });
  if (typeof v === 'object' && v !== null && 'services' in v)
    return checked(ensemble(v as Ensemble), { file: abs, line: 1 });
  throw new CairnError(
    'E_SERVICE_INVALID',
    `ensemble file ${file} must export default ensemble({ name, services: [...] })`,
    { file },
  );
}

/**
 * Validates the ensemble as it is loaded, so a bad key or type is reported
 * as `file:line: …` (the line of the service or of the key itself), the way
 * a type checker reports it, before anything talks to the engine.
 */
function checked(e: Ensemble, at: SourceLocation): Ensemble {
  try {
    validateEnsemble(e);
  } catch (err) {
    if (!(err instanceof CairnError) || err.code !== 'E_SERVICE_INVALID') throw err;
    const d = (err.details ?? {}) as { service?: unknown; key?: unknown; index?: unknown };
    const svc = typeof d.service === 'string' ? e.services.find((s) => s?.name === d.service) : undefined;
    const byIndex = typeof d.index === 'number' ? e.services[d.index] : undefined;
    const where = locate(
      at,
      typeof d.service === 'string' ? d.service : undefined,
      typeof d.key === 'string' ? d.key : undefined,
      locationOf(svc ?? byIndex),
    );
    if (!where) throw err;
    throw new CairnError(
      'E_SERVICE_INVALID',
      `${where.file}:${where.line}: ${err.message}`,
      { ...err.details, file: where.file, line: where.line },
      { cause: err },
    );
  }
  return e;
}
