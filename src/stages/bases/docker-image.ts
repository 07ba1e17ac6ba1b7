/**
 * Container images as stages. The realization carries everything needed to
 * re-create the image (src/backends/containers/image.ts puts it into the
 * engine on first use), never a registry reference.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { checkName } from '../../store/refs.js';
import { stage, type Stage } from '../stage.js';
import { ROOTFS_TAR } from '../builtins/debootstrap.js';
import { checkChanges, IMAGE_JSON, type ImageDescription } from '../../backends/containers/image.js';

export interface DockerImageSpec {
  /** A stage whose output holds `rootfs.tar` (e.g. debootstrap()). */
  rootfs: Stage;
  /** Dockerfile-style changes applied on import, e.g. `CMD ["sleep", "infinity"]`, `ENV A=b`. */
  changes?: readonly string[];
  /** Stage name, and the repository of the engine tag `cairn/<name>` (default `image`). */
  name?: string;
}

/**
 * An image built as a stage: the rootfs tarball copied in (a reflink where
 * the filesystem has them) plus image.json. The build does not touch the
 * engine: the image is imported on first use, under a tag derived from the
 * RRef, so a store moved to another machine still yields its images.
 */
export function dockerImage(spec: DockerImageSpec): Stage<{ rootfs: Stage; changes: string[] }> {
  const name = checkName(spec.name ?? 'image');
  const changes = checkChanges(spec.changes);
  return stage({
    name,
    config: { rootfs: spec.rootfs, changes },
    outputs: [IMAGE_JSON, ROOTFS_TAR],
    version: 'cairn-docker-image-1',
    build: ({ config, out }) => {
      const src = config.rootfs.file(ROOTFS_TAR);
      if (!fs.existsSync(src))
        throw new CairnError('E_IMAGE_INVALID', `${config.rootfs.rrefs[0]} has no ${ROOTFS_TAR}`);
      fs.copyFileSync(src, path.join(out, ROOTFS_TAR), fs.constants.COPYFILE_FICLONE);
      const desc: ImageDescription = {
        backend: 'docker',
        format: 'rootfs',
        name,
        file: ROOTFS_TAR,
        changes: config.changes,
      };
      fs.writeFileSync(path.join(out, IMAGE_JSON), JSON.stringify(desc, null, 2) + '\n');
    },
  });
}
