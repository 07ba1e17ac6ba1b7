/**
 * Every name a project gives the engine and the disk, in one place, so that
 * start, stop, down, status, logs, exec and the tests' cleanup agree on them.
 * A project is the unit a copy of an ensemble owns: its containers, network,
 * volumes, built images and context file all carry its name, so two copies
 * of one ensemble file (two checkouts) never touch each other's containers.
 *
 * Dots cannot occur in project, service or volume names, so
 * `cairn.<project>.<service>` is unambiguous.
 */
import * as path from 'node:path';

export const LABEL_ENSEMBLE = 'cairn.ensemble';
export const LABEL_PROJECT = 'cairn.project';
/** The directory of the ensemble file that created a resource (which copy of the ensemble owns it). */
export const LABEL_PROJECT_DIR = 'cairn.project.dir';
export const LABEL_SERVICE = 'cairn.service';
export const LABEL_SPEC = 'cairn.spec';
/** JSON: dependency name → the container id it was created after (so `up` sees a replaced dependency). */
export const LABEL_DEPS = 'cairn.deps';
export const LABEL_VOLUME = 'cairn.volume';
/** On one-off containers (`services run`), naming their service; they never carry LABEL_SERVICE. */
export const LABEL_ONEOFF = 'cairn.oneoff';

export const containerName = (project: string, service: string): string => `cairn.${project}.${service}`;
export const networkName = (project: string): string => `cairn.${project}`;
export const volumeName = (project: string, volume: string): string => `cairn.${project}.${volume}`;
/** The tag `buildFromDirectory` builds (a repository name must be lowercase: project and service names are). */
export const buildTag = (project: string, service: string): string => `cairn-build/${project}-${service}:latest`;
/** The context file of a project in a state directory. */
export const contextFileIn = (stateDir: string, project: string): string =>
  path.join(stateDir, `${project}.context.json`);
