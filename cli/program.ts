/**
 * The `cairn` command tree, assembled from one module per command group
 * (cli/commands/*). Each group is commander wiring only: what a command
 * does to a store is a library function under src/.
 */
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import { commandWord } from './command-word.js';
import { cliContext } from './context.js';
import { registerCache } from './commands/cache.js';
import { registerCatalog } from './commands/catalog.js';
import { registerDemo } from './commands/demo.js';
import { registerHash } from './commands/hash.js';
import { registerMachine } from './commands/machine.js';
import { registerRealize } from './commands/realize.js';
import { registerServer } from './commands/server.js';
import { registerServices } from './commands/services.js';
import { registerStore } from './commands/store.js';
import { registerSync } from './commands/sync.js';

// require(), not import: ESM importing a CommonJS package runs Node's
// cjs-module-lexer over it on every start (see src/store/index-db.ts).
const { Command } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

export interface CliProgram {
  program: CommanderTypes.Command;
  /** Closes every store the command opened. */
  closeStores(): void;
}

/**
 * A fresh `cairn` command tree for one run: `argv` is a full process argv
 * (node, script, words...). The standalone CLI makes one per process; a
 * server worker makes one per request, so no parsed state carries over, and
 * asks for `exitOverride` (commander then throws instead of exiting).
 */
export function createProgram(argv: readonly string[], opts: { exitOverride?: boolean } = {}): CliProgram {
  const program = new Command('cairn')
    .description('Content-addressed store and build system: stages, derivations, realizations, matchers.')
    .option('--store <dir>', 'store root (default: $CAIRN_STORE, else $XDG_DATA_HOME/cairn)')
    .showHelpAfterError()
    .configureOutput({ outputError: (s, write) => write(s) });
  // Set before any command is added: commands copy it when created. A server
  // worker must not let commander end its process (help, usage errors).
  if (opts.exitOverride) program.exitOverride();

  // Every store a command opens is closed when the command ends (see
  // closeStores), which matters to a server worker that runs many commands.
  const ctx = cliContext(program);
  // The order of registration is the order of `cairn --help`.
  registerRealize(ctx);
  registerStore(ctx);
  registerHash(ctx);
  registerCatalog(ctx);
  registerDemo(ctx);
  // After registerStore: it adds the sync plumbing to the `store` command.
  registerSync(ctx);
  registerCache(ctx);
  // `cairn machine` passes every word after the base on to the steps
  // (`--cache=1h`, step options), which commander allows only with positional
  // program options. Those are turned on for that command alone, so
  // `cairn realize F --store S` keeps working.
  const command = commandWord(argv.slice(2));
  if (command === 'machine') program.enablePositionalOptions();
  registerMachine(ctx, command === 'machine');
  registerServices(ctx);
  registerServer(ctx);

  return { program, closeStores: ctx.closeStores };
}
