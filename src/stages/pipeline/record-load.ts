/**
 * Loads a pipeline again from the record its code object embeds
 * (pipeline-code.ts), on a host without the checkout. Exported by Cairn's
 * index for that generated module only; the YAML loader itself is loaded
 * on first call, so no other stage file pays for it.
 */
import { CairnError } from '../../errors.js';
import type { Stage } from '../stage.js';
import type { ProjectRecord } from './project-files.js';

export const PIPELINE_RECORD_FORMAT = 'cairn-pipeline-record-1';

export interface PipelineRecord {
  format: typeof PIPELINE_RECORD_FORMAT;
  /** The pipeline file's absolute path where it was recorded. */
  file: string;
  files: ProjectRecord;
}

const isStrings = (v: unknown, of: 'string' | 'boolean'): boolean =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === of);

/** The stages of a recorded pipeline, every one (build-drv picks the derivation it builds). */
export async function loadPipelineRecord(record: unknown): Promise<Stage[]> {
  const r = record as Partial<PipelineRecord> | null;
  if (
    typeof r !== 'object' ||
    r === null ||
    r.format !== PIPELINE_RECORD_FORMAT ||
    typeof r.file !== 'string' ||
    !r.file.startsWith('/') ||
    !isStrings(r.files?.texts, 'string') ||
    !isStrings(r.files?.exists, 'boolean')
  ) {
    throw new CairnError('E_CODE_CORRUPT', `a pipeline code object holds no ${PIPELINE_RECORD_FORMAT} record`);
  }
  const [{ loadPipeline }, { recordedProject }] = await Promise.all([
    import('./load-yaml.js'),
    import('./project-files.js'),
  ]);
  return [...loadPipeline(r.file, recordedProject(r.files!)).stages.values()];
}
