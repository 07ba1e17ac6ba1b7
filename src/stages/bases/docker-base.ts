/**
 * A Docker machine base for the machine pipeline (src/stages/machine.ts):
 * an image realization turned into a machine state (machine.json naming
 * the docker backend, plus the rootfs). The pipeline loads the docker
 * backend itself when it first resumes such a state.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkName } from '../../store/refs.js';
import { ROOTFS_TAR } from '../builtins/debootstrap.js';
import { writeDescription, DESCRIPTION } from '../machine.js';
import { stage, type Stage } from '../stage.js';
import { IMAGE_JSON, readImageDescription } from '../../backends/containers/image.js';

/** A base state from an image stage (dockerImage()): `machine(dockerMachineBase(img)).apply(...)`. */
export function dockerMachineBase(image: Stage, name = 'docker-base'): Stage<{ image: Stage }> {
  return stage({
    name: checkName(name),
    config: { image },
    outputs: [DESCRIPTION, IMAGE_JSON, ROOTFS_TAR],
    version: 'cairn-docker-base-1',
    build: ({ config, out }) => {
      const desc = readImageDescription(config.image.path);
      // A state must be self-contained (resume gets only its directory),
      // so the rootfs is copied; a reflink where the filesystem has them.
      fs.copyFileSync(config.image.file(desc.file), path.join(out, desc.file), fs.constants.COPYFILE_FICLONE);
      fs.copyFileSync(config.image.file(IMAGE_JSON), path.join(out, IMAGE_JSON));
      writeDescription(out, {
        format: 1,
        backend: 'docker',
        state: { ...desc },
        expiresAt: null,
        files: [],
        step: null,
      });
    },
  });
}
