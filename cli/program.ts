/**
 * The `cairn` command tree, assembled from one module per command group
 * (cli/commands/*). Each group is commander wiring only: what a command
 * does to a store is a library function under src/.
 */
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import { commandIndex, commandWord } from './command-word.js';
import { cliContext, type CliContext } from './context.js';

// require(), not import: ESM importing a CommonJS package runs Node's
// cjs-module-lexer over it on every start (see src/store/index-db.ts).
const { Command } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

export interface CliProgram {
  program: CommanderTypes.Command;
  /** Closes every store the command opened. */
  closeStores(): void;
}

/** A command group: the top-level commands it adds, and how to load the module that adds them. */
interface Group {
  words: readonly string[];
  register(ctx: CliContext, command: string | undefined): Promise<void>;
}

const extendsStore = (g: Group): boolean => g.words.includes('sync');

// In the order of `cairn --help`. Sync comes after store: it adds the sync plumbing to the `store` command.
// test/cli-groups.test.ts checks that each group adds exactly these words.
export const GROUPS: readonly Group[] = [
  {
    words: ['realize', 'instantiate'],
    register: async (c) => (await import('./commands/realize.js')).registerRealize(c),
  },
  {
    words: ['build-drv', 'export-drv', 'import-drv', 'builder-worker'],
    register: async (c) => (await import('./commands/build-drv.js')).registerBuildDrv(c),
  },
  {
    words: ['lsref', 'catref', 'shellref', 'rmref', 'du', 'log', 'store', 'root'],
    register: async (c) => (await import('./commands/store.js')).registerStore(c),
  },
  { words: ['exp', 'graph'], register: async (c) => (await import('./commands/inspect.js')).registerInspect(c) },
  { words: ['hash'], register: async (c) => (await import('./commands/hash.js')).registerHash(c) },
  { words: ['catalog'], register: async (c) => (await import('./commands/catalog.js')).registerCatalog(c) },
  { words: ['demo'], register: async (c) => (await import('./commands/demo.js')).registerDemo(c) },
  {
    words: ['sync', 'export', 'import', 'store'],
    register: async (c) => (await import('./commands/sync.js')).registerSync(c),
  },
  { words: ['key', 'cache'], register: async (c) => (await import('./commands/cache.js')).registerCache(c) },
  {
    words: ['machine'],
    register: async (c, command) => (await import('./commands/machine.js')).registerMachine(c, command === 'machine'),
  },
  { words: ['services'], register: async (c) => (await import('./commands/services.js')).registerServices(c) },
  { words: ['server'], register: async (c) => (await import('./commands/server.js')).registerServer(c) },
  { words: ['ui'], register: async (c) => (await import('./commands/ui.js')).registerUi(c) },
];

/**
 * A fresh `cairn` command tree for one run: `argv` is a full process argv
 * (node, script, words...). The standalone CLI makes one per process; a
 * server worker makes one per request, so no parsed state carries over, and
 * asks for `exitOverride` (commander then throws instead of exiting).
 *
 * A command that names one group loads that group only (`cairn realize`
 * does not load the machine, cache or server code: each module costs start-up
 * time); help, no command or an unknown word load them all, so `cairn --help`
 * lists everything and a misspelt command gets its suggestion.
 */
export async function createProgram(
  argv: readonly string[],
  opts: { exitOverride?: boolean } = {},
): Promise<CliProgram> {
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
  // `cairn machine` passes every word after the base on to the steps
  // (`--cache=1h`, step options), which commander allows only with positional
  // program options. Those are turned on for that command alone, so
  // `cairn realize F --store S` keeps working.
  const command = commandWord(argv.slice(2));
  // `cairn services exec|run FILE SERVICE CMD...` pass CMD's words on likewise.
  const sub = command === 'services' ? argv.slice(2)[commandIndex(argv.slice(2)) + 1] : undefined;
  if (command === 'machine' || sub === 'exec' || sub === 'run') program.enablePositionalOptions();
  // The sync group extends `store` (its plumbing), so it needs the store group (before it: GROUPS' order).
  const named = command === undefined ? [] : GROUPS.filter((g) => g.words.includes(command));
  const mine = GROUPS.filter((g) => named.includes(g) || (g.words.includes('store') && named.some(extendsStore)));
  for (const g of mine.length > 0 ? mine : GROUPS) await g.register(ctx, command);

  return { program, closeStores: ctx.closeStores };
}
