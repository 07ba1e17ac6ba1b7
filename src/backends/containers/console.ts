/**
 * A container console: an interactive `docker exec -i CONTAINER sh`, with
 * the same send/expect contract as the QEMU serial console (see
 * ProcessConsole).
 */
import { ProcessConsole } from '../process-console.js';
import { dockerHost } from './docker.js';

export class ExecConsole extends ProcessConsole {
  constructor(container: string, shell: readonly string[] = ['sh']) {
    super('docker', ['-H', dockerHost(), 'exec', '-i', container, ...shell], 'E_DOCKER');
  }
}
