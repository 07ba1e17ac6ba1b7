/**
 * A cairn.yaml pipeline as a code object, so its stages can be built on a
 * builder with no checkout (`cairn build-drv`). A pipeline stage has no
 * code of the user's: its build is Cairn's own command runner (run-cmd.ts)
 * and its identity is PIPELINE_VERSION plus its config. What a builder
 * needs to instantiate the stages again is only what loading the pipeline
 * read from the project: the pipeline file, its params files, and which
 * declared deps exist. Those are recorded while loading here and embedded
 * in a small module that loads the pipeline again from the record
 * (loadPipelineRecord in load.ts); the deps' content travels as file-input realizations.
 */
import * as path from 'node:path';
import { CODE_FORMAT, type CodeObject } from '../../store/code-object.js';
import { loadPipeline } from './load-yaml.js';
import { diskProject, recordingProject, type ProjectRecord } from './project-files.js';
import { PIPELINE_RECORD_FORMAT, type PipelineRecord } from '../load.js';

/** Named in the code object's `bundler` field: no bundler ran, the module is generated. */
export const PIPELINE_BUNDLER = 'cairn-pipeline-record';

/** The code object of the pipeline `file`, as loaded now (E_BAD_PIPELINE and the like when it does not load). */
export function pipelineCodeObject(file: string): CodeObject {
  const abs = path.resolve(file);
  const files: ProjectRecord = { texts: {}, exists: {} };
  loadPipeline(abs, recordingProject(diskProject(path.dirname(abs)), files));
  const record: PipelineRecord = { format: PIPELINE_RECORD_FORMAT, file: abs, files };
  // JSON is a JavaScript expression: the record is data, never spliced into code any other way.
  const bundle =
    `import { loadPipelineRecord } from 'cairn';\n` +
    `export const pipeline = () => loadPipelineRecord(${JSON.stringify(record)});\n`;
  return { format: CODE_FORMAT, entry: abs, bundle, bundler: PIPELINE_BUNDLER, notes: [] };
}
