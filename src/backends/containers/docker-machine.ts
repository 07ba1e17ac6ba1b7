/**
 * Docker containers as machines (MachineBackend). A state is an image:
 * either an imported rootfs (an image realization, see image.ts) or a
 * `docker commit` saved with `docker save` into the state's out/. Resuming
 * runs a fresh container of that image whose main process only sleeps;
 * every command is a `docker exec`. Containers are not checkpointed:
 * resuming a state gives its files, not its running processes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import type {
  BackendSession,
  BackendState,
  ExecOptions,
  ExecResult,
  MachineBackend,
  RunningMachine,
} from '../machine.js';
import { ExecConsole } from './console.js';
import { docker, requireDocker } from './docker.js';
import { checkDescription, ensureImageAt, IMAGE_TAR, type ImageDescription } from './image.js';

/** Every container this backend starts carries this label, so leftovers can be found and removed. */
export const MACHINE_LABEL = 'cairn.machine';

export interface DockerBackendOptions {
  /** Extra labels for the containers (tests use them for cleanup). */
  labels?: Record<string, string>;
  /** `docker run --network` (default: the engine's default bridge). */
  network?: string;
}

export class DockerBackend implements MachineBackend {
  readonly kind = 'docker';
  constructor(private readonly opts: DockerBackendOptions = {}) {}

  async resume(stateDir: string, state: BackendState, workDir: string): Promise<BackendSession> {
    await requireDocker();
    if (state.backend !== 'docker')
      throw new CairnError('E_MACHINE_STATE', `state ${stateDir} is for the ${state.backend} backend, not docker`, {
        stateDir,
      });
    const desc = checkDescription(state as unknown as ImageDescription, stateDir);
    const image = await ensureImageAt(stateDir, desc);
    const labels = { [MACHINE_LABEL]: '1', ...this.opts.labels };
    const args = ['run', '--detach'];
    for (const [k, v] of Object.entries(labels)) args.push('--label', `${k}=${v}`);
    if (this.opts.network) args.push('--network', this.opts.network);
    // The container's first process only keeps it alive. It is pid 1, so
    // it ignores SIGTERM; discard and save use SIGKILL (docker rm -f) anyway.
    const run = await docker([...args, '--entrypoint', 'sleep', image, 'infinity']);
    const id = run.stdout.trim();
    fs.writeFileSync(path.join(workDir, 'container-id'), id + '\n');
    return new DockerSession(id, desc.name);
  }
}

class DockerSession implements BackendSession {
  readonly machine: RunningMachine;
  private console: ExecConsole | undefined;
  private ended = false;

  constructor(
    readonly container: string,
    private readonly name: string,
  ) {
    const self = this;
    this.machine = {
      backend: 'docker',
      exec: (cmd, opts) => execIn(container, cmd, opts),
      get console() {
        self.console ??= new ExecConsole(container);
        return self.console;
      },
      upload: async (hostPath, machinePath) => {
        await docker(['cp', hostPath, `${container}:${machinePath}`]);
      },
      download: async (machinePath, hostPath) => {
        await docker(['cp', `${container}:${machinePath}`, hostPath]);
      },
    };
  }

  async save(outDir: string): Promise<BackendState> {
    this.end('saved');
    this.console?.close();
    // The sleeping main process is stopped first so the commit sees no
    // half-written files from commands still running in the background.
    await docker(['kill', this.container], { check: false });
    try {
      const commit = await docker(['commit', this.container]);
      const imageId = commit.stdout.trim();
      await docker(['save', '--output', path.join(outDir, IMAGE_TAR), imageId]);
      const desc: ImageDescription = {
        backend: 'docker',
        format: 'docker-save',
        name: this.name,
        file: IMAGE_TAR,
        imageId,
      };
      return { ...desc };
    } finally {
      await docker(['rm', '--force', this.container], { check: false });
    }
  }

  async discard(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.console?.close();
    await docker(['rm', '--force', this.container], { check: false }).catch(() => undefined);
  }

  private end(what: string): void {
    if (this.ended)
      throw new CairnError(
        'E_MACHINE_STATE',
        `container ${this.container.slice(0, 12)} was already ${what === 'saved' ? 'saved or discarded' : what}`,
      );
    this.ended = true;
  }
}

/** `docker exec CONTAINER sh -c CMD`: stdout, stderr and the exit code of the command. */
export function execIn(container: string, cmd: string, opts: ExecOptions = {}): Promise<ExecResult> {
  return execArgv(container, ['sh', '-c', cmd], opts, cmd);
}

/** `docker exec [-i] CONTAINER ARGV...`, with optional stdin. */
export async function execArgv(
  container: string,
  argv: readonly string[],
  opts: ExecOptions & { input?: string } = {},
  shown: string = argv.join(' '),
): Promise<ExecResult> {
  const cmd = shown;
  const r = await docker(['exec', ...(opts.input === undefined ? [] : ['-i']), container, ...argv], {
    check: false,
    input: opts.input,
    timeoutMs: opts.timeoutMs ?? 60_000,
    timeoutCode: 'E_MACHINE_TIMEOUT',
  });
  // 125-127 from `docker exec` itself mean the exec could not start (no
  // such container, no sh): an engine problem, not the command's status.
  if (r.exitCode >= 125 && r.exitCode <= 127 && /Error response from daemon|OCI runtime/.test(r.stderr)) {
    throw new CairnError('E_DOCKER', `docker exec in ${container.slice(0, 12)} failed: ${r.stderr.trim()}`, {
      container,
    });
  }
  const result = { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode };
  if (opts.check && result.exitCode !== 0) {
    throw new CairnError(
      'E_MACHINE_EXEC',
      `${JSON.stringify(cmd)} exited with ${result.exitCode}: ` +
        result.stderr.trim().split('\n').slice(-3).join(' | '),
      { cmd, ...result },
    );
  }
  return result;
}
