/**
 * What loading a pipeline reads from its project, behind one small
 * interface: the pipeline file, its params files, and whether each declared
 * dep exists. On disk for a realize; recorded while it loads, so a
 * pipeline can travel as a code object (pipeline-code.ts); and served from
 * that record on a builder, which has no checkout.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ProjectFiles {
  /** The text of a file of the project (`rel` relative to its root); throws an errno error when it cannot. */
  read(rel: string): string;
  /** Whether the project has a file or directory at `rel` (never followed if a symlink). */
  exists(rel: string): boolean;
}

/** The project on disk, rooted at `root`. */
export function diskProject(root: string): ProjectFiles {
  return {
    read: (rel) => fs.readFileSync(path.join(root, rel), 'utf8'),
    exists: (rel) => {
      try {
        fs.lstatSync(path.join(root, rel));
        return true;
      } catch {
        return false;
      }
    },
  };
}

/** What a load read: each file's text, and each path asked about with the answer. */
export interface ProjectRecord {
  texts: Record<string, string>;
  exists: Record<string, boolean>;
}

/** `from`, with what is read through it recorded in `record`. */
export function recordingProject(from: ProjectFiles, record: ProjectRecord): ProjectFiles {
  return {
    read: (rel) => (record.texts[rel] = from.read(rel)),
    exists: (rel) => (record.exists[rel] = from.exists(rel)),
  };
}

/** A project served from a record only: anything it did not read is missing, as ENOENT. */
export function recordedProject(record: ProjectRecord): ProjectFiles {
  return {
    read: (rel) => {
      if (Object.hasOwn(record.texts, rel)) return record.texts[rel]!;
      throw Object.assign(new Error(`ENOENT: ${rel} is not in the pipeline's record`), { code: 'ENOENT' });
    },
    exists: (rel) => record.exists[rel] === true,
  };
}
