/**
 * A server worker: a Node process that has already loaded Cairn and warmed
 * its module hooks, and runs one client command at a time as that client's
 * own process would (its cwd, environment, umask, argv and terminal).
 *
 * Its stdout and stderr are pipes to the supervisor, which relays them to
 * the client, so child processes a build starts with inherited stdio reach
 * the client too. After each command it writes the request's end marker to
 * both, which tells the supervisor that all of the command's output is in.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import { isolateModules, loadStageFile } from '../../src/stages/load.js';
import { instantiate } from '../../src/stages/instantiate.js';
import { realize } from '../../src/stages/realize.js';
import { Store } from '../../src/store/store.js';
import { createProgram, reportError } from '../program.js';
import type { ClientRequest } from './protocol.js';

const { CommanderError } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

/** Messages between the supervisor and a worker (over the IPC channel). */
export type ToWorker = { type: 'run'; request: ClientRequest; marker: string } | { type: 'exit' };
export type FromWorker = { type: 'ready' } | { type: 'done'; code: number; heapUsed: number };

const MAIN = path.join(path.dirname(path.dirname(new URL(import.meta.url).pathname)), 'main.js');
const baseEnv = { ...process.env };
const baseCwd = process.cwd();
const baseUmask = process.umask();

function send(m: FromWorker): void {
  process.send!(m);
}

/**
 * Loads the hooks thread and the TypeScript transform, and runs the realize
 * code paths (build, then cached) on a throwaway store, so that the first
 * client finds them compiled rather than waiting for it.
 */
async function warmUp(): Promise<void> {
  await isolateModules();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-warm-'));
  try {
    const file = path.join(dir, 'warm.ts');
    fs.writeFileSync(file, [
      "import * as fs from 'node:fs';",
      "import { stage, type Stage } from 'cairn';",
      "const build = ({ out }: { out: string }) => fs.writeFileSync(out + '/v', '');",
      'let prev: Stage | null = null;',
      "for (let i = 0; i < 20; i++) prev = stage({ name: `warm${i}`, version: '1', config: { i, prev }, build });",
      'export default prev!;',
      '',
    ].join('\n'));
    const store = Store.open(path.join(dir, 'store'));
    try {
      for (let i = 0; i < 3; i++) await realize(instantiate((await loadStageFile(file)).targets), { store });
    } finally {
      store.close();
    }
  } finally {
    spawnSync('chmod', ['-R', 'u+w', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function setTty(stream: NodeJS.WriteStream, tty: boolean, columns: number): void {
  // The progress display asks these; the pipe itself is never a terminal.
  Object.assign(stream, { isTTY: tty || undefined, columns: tty && columns > 0 ? columns : undefined });
}

function enter(r: ClientRequest): void {
  process.chdir(r.cwd);
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, r.env);
  process.umask(r.umask);
  setTty(process.stdout, r.stdoutTty, r.columns);
  setTty(process.stderr, r.stderrTty, r.columns);
  process.argv = [process.execPath, MAIN, ...r.args];
  process.exitCode = undefined;
}

function leave(): void {
  process.chdir(baseCwd);
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, baseEnv);
  process.umask(baseUmask);
  setTty(process.stdout, false, 0);
  setTty(process.stderr, false, 0);
  process.exitCode = undefined;
}

async function run(r: ClientRequest): Promise<number> {
  const argv = [process.execPath, MAIN, ...r.args];
  const { program, closeStores } = createProgram(argv, { exitOverride: true });
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    // Help, a version or a usage error: commander has printed what it had to say.
    if (e instanceof CommanderError) return e.exitCode;
    return reportError(e);
  } finally {
    closeStores();
  }
}

// The supervisor is gone (killed): nobody can receive this worker's output.
process.on('disconnect', () => process.exit(0));

process.on('message', (m: ToWorker) => {
  if (m.type === 'exit') process.exit(0);
  void (async () => {
    let code: number;
    try {
      enter(m.request);
      code = await run(m.request);
    } catch (e) {
      code = reportError(e);
    }
    // Pipes are written synchronously on Linux: once the markers are
    // written, so is everything before them.
    process.stdout.write(m.marker);
    process.stderr.write(m.marker);
    leave();
    send({ type: 'done', code, heapUsed: process.memoryUsage().heapUsed });
  })();
});

await warmUp();
send({ type: 'ready' });
