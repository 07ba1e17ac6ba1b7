/**
 * Container images as store realizations. A realization never depends on a
 * registry or on what the engine happens to hold: it carries everything
 * needed to re-create the image (a root filesystem tarball plus the
 * `docker import --change` instructions, or a `docker save` tarball), and
 * `ensureImage` puts it back into the engine when the engine lacks it.
 * The stage that builds such a realization is dockerImage()
 * (src/stages/bases/docker-image.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { CairnError } from '../../errors.js';
import { parseRRef, type RRef } from '../../store/refs.js';
import type { LocalStore } from '../../store/store.js';
import { docker, imageExists } from './docker.js';

export const IMAGE_JSON = 'image.json';
export const IMAGE_TAR = 'image.tar';

/**
 * What image.json holds; also the backend fields of a docker machine state
 * (machine.json), so an image realization can serve as a machine base.
 */
export type ImageDescription =
  | { backend: 'docker'; format: 'rootfs'; name: string; file: string; changes: string[] }
  | { backend: 'docker'; format: 'docker-save'; name: string; file: string; imageId: string };

/** The Dockerfile instructions `docker import --change` accepts. */
const CHANGE_RE = /^(CMD|ENTRYPOINT|ENV|EXPOSE|LABEL|ONBUILD|STOPSIGNAL|USER|VOLUME|WORKDIR)\s+\S/;

export function checkChanges(changes: readonly string[] | undefined): string[] {
  const out = [...(changes ?? [])];
  for (const c of out) {
    if (typeof c !== 'string' || !CHANGE_RE.test(c) || c.includes('\n')) {
      throw new CairnError(
        'E_IMAGE_INVALID',
        `image change ${JSON.stringify(c)} is not one line of CMD, ENTRYPOINT, ` +
          `ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME or WORKDIR`,
        { change: c },
      );
    }
  }
  return out;
}

/** Docker repository names allow lowercase letters, digits and `._-` only. */
function repoName(name: string): string {
  return (
    name
      .toLowerCase()
      .replace(/[^a-z0-9._-]/g, '-')
      .replace(/^[._-]+/, '') || 'image'
  );
}

/**
 * The tag of the image in `dir`: `cairn/<name>:<first 12 of rhash>` when
 * dir is a realization's out/ (ROOT/d/<dref>/r/<rhash>/out), else 12 hex of
 * the sha256 of its real path.
 */
export function imageTag(dir: string, name: string): string {
  const real = fs.realpathSync(dir);
  const parent = path.dirname(real);
  const rhash =
    path.basename(real) === 'out' && path.basename(path.dirname(parent)) === 'r' ? path.basename(parent) : '';
  const id = /^[a-z0-9]{12,}$/.test(rhash)
    ? rhash.slice(0, 12)
    : createHash('sha256').update(real).digest('hex').slice(0, 12);
  return `cairn/${repoName(name)}:${id}`;
}

export function readImageDescription(dir: string): ImageDescription {
  let desc: ImageDescription;
  try {
    desc = JSON.parse(fs.readFileSync(path.join(dir, IMAGE_JSON), 'utf8')) as ImageDescription;
  } catch (e) {
    throw new CairnError(
      'E_IMAGE_INVALID',
      `${dir} holds no readable ${IMAGE_JSON}: it is not a container image realization`,
      { dir },
      { cause: e },
    );
  }
  return checkDescription(desc, dir);
}

export function checkDescription(desc: ImageDescription, dir: string): ImageDescription {
  const ok =
    typeof desc === 'object' &&
    desc !== null &&
    desc.backend === 'docker' &&
    typeof desc.file === 'string' &&
    !desc.file.includes('/') &&
    (desc.format === 'rootfs'
      ? Array.isArray(desc.changes)
      : desc.format === 'docker-save' && typeof desc.imageId === 'string');
  if (!ok)
    throw new CairnError('E_IMAGE_INVALID', `${dir}: not a docker image description: ${JSON.stringify(desc)}`, { dir });
  return desc;
}

/**
 * Makes sure the engine has the image described by `desc` (whose files are
 * in `dir`) and returns a reference `docker run` accepts: the tag of an
 * imported rootfs, or the id of a saved image (`docker save`/`load` keep
 * image ids, so the id is stable across engines).
 */
export async function ensureImageAt(dir: string, desc: ImageDescription = readImageDescription(dir)): Promise<string> {
  checkDescription(desc, dir);
  const file = path.join(dir, desc.file);
  if (desc.format === 'docker-save') {
    if (await imageExists(desc.imageId)) return desc.imageId;
    await docker(['load', '--quiet', '--input', file]);
    if (!(await imageExists(desc.imageId)))
      throw new CairnError('E_IMAGE_INVALID', `${file} did not hold image ${desc.imageId}`, { file });
    return desc.imageId;
  }
  const tag = imageTag(dir, desc.name);
  if (await imageExists(tag)) return tag;
  const args = ['import'];
  for (const c of checkChanges(desc.changes)) args.push('--change', c);
  await docker([...args, file, tag]);
  return tag;
}

/** ensureImageAt for a realization: its tag (or image id), imported or loaded if the engine lacks it. */
export async function ensureImage(store: LocalStore, rref: RRef): Promise<string> {
  parseRRef(rref);
  if (!store.has(rref)) throw new CairnError('E_NO_SUCH_REF', `${rref} is not in the store`, { ref: rref });
  return ensureImageAt(store.outPath(rref));
}
