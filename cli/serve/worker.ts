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
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import { isolateModules, loadStageFile } from '../../src/stages/load.js';
import { instantiate } from '../../src/stages/instantiate.js';
import { realize } from '../../src/stages/realize.js';
import { removeTree } from '../../src/store/fsutil.js';
import { LocalStore } from '../../src/store/store.js';
import { createProgram } from '../program.js';
import { reportError } from '../report-error.js';
import type { ClientRequest } from './protocol.js';
import type { FromWorker, ToWorker } from './worker-messages.js';

const { CommanderError } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

const MAIN = path.join(path.dirname(path.dirname(new URL(import.meta.url).pathname)), 'main.js');
const baseEnv = { ...process.env };
const baseCwd = process.cwd();
// eslint-disable-next-line @typescript-eslint/no-deprecated -- one thread: reading the umask cannot race here
const baseUmask = process.umask();
// What a command may replace, put back after it (a logger that wraps
// process.stdout.write must not outlive its command).
const baseWrites = { out: process.stdout.write, err: process.stderr.write };
const CONSOLE_METHODS = ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir'] as const;
const baseConsole = Object.fromEntries(CONSOLE_METHODS.map((m) => [m, console[m]]));
let baseGlobals: Set<string>;
let baseListeners: Map<string | symbol, number>;

/** Listener counts of `process`, by event. */
const listeners = (): Map<string | symbol, number> =>
  new Map(process.eventNames().map((e) => [e, process.listenerCount(e)]));
/** Active libuv resources, counted by type: what keeps a process from exiting. */
function activeResources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}
let baseResources: Map<string, number>;
/**
 * Whether resources beyond the worker's own are active. A request stays
 * counted until the callback that completed it returns, and code awaiting
 * it runs inside that callback, so a command (or the warm-up) may end while
 * its last request is still counted: the baseline is taken a timer turn
 * after the warm-up, and fewer than the baseline is settled too.
 */
function beyondBase(): boolean {
  for (const [type, n] of activeResources()) if (n > (baseResources.get(type) ?? 0)) return true;
  return false;
}

function send(m: FromWorker): void {
  process.send!(m);
}

/**
 * Loads the hooks thread and the TypeScript transform, and runs the realize
 * code paths (build, then cached) on a throwaway store, so that the first
 * client finds them compiled rather than waiting for it; loads the machine code.
 */
async function warmUp(): Promise<void> {
  isolateModules();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-warm-'));
  try {
    const file = path.join(dir, 'warm.ts');
    fs.writeFileSync(
      file,
      [
        "import * as fs from 'node:fs';",
        "import { stage, type Stage } from 'cairn';",
        "const build = ({ out }: { out: string }) => fs.writeFileSync(out + '/v', '');",
        'let prev: Stage | null = null;',
        "for (let i = 0; i < 20; i++) prev = stage({ name: `warm${i}`, version: '1', config: { i, prev }, build });",
        'export default prev!;',
        '',
      ].join('\n'),
    );
    const store = LocalStore.open(path.join(dir, 'store'));
    try {
      for (let i = 0; i < 3; i++) await realize(instantiate((await loadStageFile(file)).targets), { store });
    } finally {
      store.close();
    }
  } finally {
    removeTree(dir);
  }
  // `machine` commands are served too: their modules (the command group, the QEMU driver, which the
  // pipeline loads only when a state names it) are loaded now, not by the first client's resume.
  await import('../commands/machine.js');
  await import('../../src/backends/qemu/qemu-machine.js');
}

function setTty(stream: NodeJS.WriteStream, tty: boolean, columns: number): void {
  // The progress display asks these; the pipe itself is never a terminal.
  Object.assign(stream, { isTTY: tty || undefined, columns: tty && columns > 0 ? columns : undefined });
}

function replaceEnv(env: NodeJS.ProcessEnv): void {
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, env);
}

function enter(r: ClientRequest): void {
  process.chdir(r.cwd);
  replaceEnv(r.env);
  process.umask(r.umask);
  setTty(process.stdout, r.stdoutTty, r.columns);
  setTty(process.stderr, r.stderrTty, r.columns);
  process.argv = [process.execPath, MAIN, ...r.args];
  process.exitCode = undefined;
}

function leave(): void {
  process.chdir(baseCwd);
  replaceEnv(baseEnv);
  process.umask(baseUmask);
  setTty(process.stdout, false, 0);
  setTty(process.stderr, false, 0);
  process.exitCode = undefined;
  process.stdout.write = baseWrites.out;
  process.stderr.write = baseWrites.err;
  Object.assign(console, baseConsole);
}

/** What the command left that a fresh process would not have; undefined if nothing. */
function taint(): string | undefined {
  const globals = Object.keys(globalThis).filter((k) => !baseGlobals.has(k));
  if (globals.length > 0) return `new globals (${globals.slice(0, 5).join(', ')})`;
  const added = process.eventNames().filter((e) => process.listenerCount(e) > (baseListeners.get(e) ?? 0));
  if (added.length > 0) return `process listeners (${added.map(String).join(', ')})`;
  return undefined;
}

/**
 * A process exits once nothing keeps its event loop alive; a command's
 * timers, sockets and child processes may still write output. Waits for
 * them as a process would, so their output reaches this command's client.
 */
async function settle(): Promise<void> {
  while (beyondBase()) await new Promise((r) => setTimeout(r, 5).unref());
}

/** Runs the command enter() set up; its status if it ended in an error, else undefined (process.exitCode holds it). */
async function run(): Promise<number | undefined> {
  const { program, closeStores } = await createProgram(process.argv, { exitOverride: true });
  try {
    await program.parseAsync(process.argv);
    return undefined;
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
      const failed = await run();
      await settle();
      // As for a process: an error's status, else what the command (or a timer after it) set.
      code = failed ?? (typeof process.exitCode === 'number' ? process.exitCode : 0);
    } catch (e) {
      code = reportError(e);
    }
    // Through the original write functions, queued behind all the
    // command's output: the supervisor relays up to the markers.
    baseWrites.out.call(process.stdout, m.marker);
    baseWrites.err.call(process.stderr, m.marker);
    const tainted = taint();
    leave();
    send({ type: 'done', code, heapUsed: process.memoryUsage().heapUsed, ...(tainted ? { tainted } : {}) });
  })();
});

await warmUp();
await new Promise((r) => setTimeout(r, 10));
baseGlobals = new Set(Object.keys(globalThis));
baseListeners = listeners();
baseResources = activeResources();
send({ type: 'ready' });
