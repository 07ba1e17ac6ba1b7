/**
 * Projects: which copy of an ensemble owns which containers. The name is
 * given (`-p NAME`) or derived from the ensemble file's directory and the
 * ensemble's name, as docker-compose derives it from the directory. The
 * rules here are pure; `claimProject` (engine side) feeds them the engine's
 * containers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';

export interface Project {
  /** Names containers, network, volumes, built images and the context file (see names.ts). */
  name: string;
  ensemble: string;
  /** Real path of the directory holding the ensemble file: recorded on every container. */
  dir: string;
  /** Given with -p: the user may take over a project another copy created. */
  explicit: boolean;
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Lowercase a-z, 0-9 and single dashes; '' when nothing is left. */
function sanitize(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

/**
 * The default project: `<directory>-<ensemble>`, the directory's base name
 * reduced to a-z, 0-9 and dashes (compose's rule, plus the ensemble name so
 * two ensembles of one directory stay apart). Cut to 63 characters.
 */
export function defaultProjectName(dir: string, ensemble: string): string {
  const base = sanitize(path.basename(dir));
  if (!base) return ensemble;
  const room = 63 - ensemble.length - 1;
  if (room < 1) return ensemble;
  return `${base.slice(0, room).replace(/-+$/, '')}-${ensemble}`;
}

export function checkProjectName(name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name))
    throw new CairnError(
      'E_SERVICE_INVALID',
      `project name ${JSON.stringify(name)} must be 1-63 of a-z, 0-9 and -, not starting or ending with -`,
      { project: name },
    );
  return name;
}

/** The project of an ensemble file: `explicit` (from -p) or the default for its directory. */
export function resolveProject(file: string, ensemble: string, explicit?: string): Project {
  const abs = path.resolve(file);
  let dir = path.dirname(abs);
  try {
    dir = fs.realpathSync(dir);
  } catch {
    /* a vanished directory: its path as given still names it */
  }
  return explicit !== undefined
    ? { name: checkProjectName(explicit), ensemble, dir, explicit: true }
    : { name: defaultProjectName(dir, ensemble), ensemble, dir, explicit: false };
}

/** A service container as the engine lists it, with Cairn's labels ('' when missing). */
export interface LabelledContainer {
  name: string;
  ensemble: string;
  project: string;
  dir: string;
}

export interface Claim {
  /** Containers from before project names that this project does not cover (a note for the user). */
  legacy: string[];
}

/**
 * Refuses to act on a project that another ensemble, or (unless the name
 * was given explicitly) another copy of this ensemble file, created:
 * E_PROJECT_IN_USE naming the owner. Containers made before projects
 * existed (no project label) are named `cairn.<ensemble>.<service>`, which
 * is exactly what `-p <ensemble>` manages, so they are reported, not touched.
 */
export function checkClaim(p: Project, containers: readonly LabelledContainer[]): Claim {
  const mine = containers.filter((c) => c.project === p.name);
  const otherEnsemble = mine.find((c) => c.ensemble !== p.ensemble);
  if (otherEnsemble)
    throw new CairnError(
      'E_PROJECT_IN_USE',
      `project ${p.name} belongs to ensemble ${otherEnsemble.ensemble} (container ${otherEnsemble.name}); ` +
        `choose another name with -p`,
      { project: p.name, ensemble: otherEnsemble.ensemble },
    );
  const otherCopy = p.explicit ? undefined : mine.find((c) => c.dir !== '' && c.dir !== p.dir);
  if (otherCopy)
    throw new CairnError(
      'E_PROJECT_IN_USE',
      `project ${p.name} belongs to the copy of ensemble ${p.ensemble} in ${otherCopy.dir} ` +
        `(container ${otherCopy.name}); run this copy as its own project with -p NAME, ` +
        `or take that one over with -p ${p.name}`,
      { project: p.name, dir: otherCopy.dir },
    );
  const legacy =
    p.name === p.ensemble
      ? []
      : containers.filter((c) => c.project === '' && c.ensemble === p.ensemble).map((c) => c.name);
  return { legacy };
}

export const legacyNote = (p: Project, legacy: readonly string[]): string =>
  `note: ${legacy.join(', ')} ${legacy.length > 1 ? 'were' : 'was'} created before project names; ` +
  `they belong to project ${p.ensemble}: manage them with -p ${p.ensemble} (e.g. down -p ${p.ensemble})`;
