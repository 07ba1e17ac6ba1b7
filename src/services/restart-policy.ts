/**
 * Keeps an existing container's engine restart policy in line with its
 * service's `restart`: `docker update` changes it in place, so a changed
 * policy costs no new container (and no postStartInit).
 */
import { docker } from '../backends/containers/docker.js';
import { engineRestartPolicy } from './health-policy.js';
import type { RestartPolicy } from './spec.js';

export async function syncRestartPolicy(
  container: string,
  wanted: RestartPolicy | undefined,
  current: string,
): Promise<void> {
  const policy = engineRestartPolicy(wanted);
  if (policy !== current) await docker(['update', '--restart', policy, container]);
}
