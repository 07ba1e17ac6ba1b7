/**
 * cli/program.ts loads only the command group a command names (start-up
 * time), so its table of which words each group adds must be true: a word
 * missing from it would make that command unknown when named directly.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import type * as CommanderTypes from 'commander';
import { cliContext } from '../cli/context.js';
import { GROUPS, createProgram } from '../cli/program.js';

const { Command } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

describe('command groups', () => {
  it('each group adds exactly the top-level commands the table names', async () => {
    const program = new Command('cairn');
    const ctx = cliContext(program);
    for (const g of GROUPS) {
      const before = new Set(program.commands.map((c) => c.name()));
      await g.register(ctx, undefined);
      const added = program.commands.map((c) => c.name()).filter((n) => !before.has(n));
      // A group may extend a command an earlier group added (sync adds plumbing to `store`).
      assert.deepEqual(added.sort(), g.words.filter((w) => !before.has(w)).sort(), g.words.join(' '));
    }
  });

  it('a named command gets its group only; help and unknown words get every command', async () => {
    const names = async (...words: string[]): Promise<string[]> =>
      (await createProgram(['node', 'cairn', ...words])).program.commands.map((c) => c.name());
    assert.deepEqual(await names('realize', 'x.ts'), ['realize', 'instantiate']);
    const store = ['lsref', 'catref', 'shellref', 'rmref', 'du', 'log', 'store', 'root'];
    assert.deepEqual(await names('--store', '/s', 'lsref', 'r'), store);
    // `store` is extended by the sync group (its plumbing subcommands), which needs it.
    assert.deepEqual(await names('store', 'closure'), [...store, 'sync', 'export', 'import']);
    assert.deepEqual(await names('export', 'r', 'f.tar'), [...store, 'sync', 'export', 'import']);
    const all = GROUPS.flatMap((g) => g.words).filter((w, i, a) => a.indexOf(w) === i);
    assert.deepEqual((await names('--help')).sort(), [...all].sort());
    assert.deepEqual((await names('relaize')).sort(), [...all].sort());
  });
});
