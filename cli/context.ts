/**
 * What every command group of one `cairn` run shares: the program, the
 * store it names (opened on first use by a command, closed when the run
 * ends) and small helpers for printing and parsing options.
 */
import * as path from 'node:path';
import type { Command } from 'commander';
import { CairnError } from '../src/errors.js';
import { defaultStoreRoot, LocalStore } from '../src/store/store.js';
import { divertStdout } from '../src/stdout-divert.js';

export interface CliContext {
  program: Command;
  /** Opens the --store store; every store opened is closed by closeStores. */
  openStore(): LocalStore;
  /** The --store root as given (else the default), without opening (nor creating) the store. */
  storeArg(): string;
  /** That root made absolute, as LocalStore.open makes it: what the CLI prints names the store it opened. */
  storeRoot(): string;
  closeStores(): void;
}

export function cliContext(program: Command): CliContext {
  const stores: LocalStore[] = [];
  const storeArg = (): string => program.opts<{ store?: string }>().store ?? defaultStoreRoot();
  const storeRoot = (): string => path.resolve(storeArg());
  return {
    program,
    openStore: () => {
      const store = LocalStore.open(storeArg());
      stores.push(store);
      return store;
    },
    storeArg,
    storeRoot,
    closeStores: () => {
      for (const s of stores.splice(0)) s.close();
    },
  };
}

/** stdout's own write while a command keeps stdout for its results (see resultsOnStdout). */
let results: ((s: string) => boolean) | undefined;

/** Prints a line on stdout (adding the newline when missing). */
export const out = (s: string): void => {
  const line = s.endsWith('\n') ? s : s + '\n';
  if (results) results(line);
  else process.stdout.write(line);
};

/**
 * A command whose stdout holds only its results (RRefs, --json): what else
 * writes to process.stdout while it runs (a stage file's or a build
 * function's console.log, in this process) goes to stderr, so
 * `cairn realize --json | jq` parses whatever the stages print.
 */
export function resultsOnStdout<A extends unknown[]>(
  action: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args) => {
    const kept = divertStdout();
    results = (s) => kept.write(s);
    try {
      await action(...args);
    } finally {
      kept.restore();
      results = undefined;
    }
  };
}

/** Commander's collector for a repeatable option (`--input A --input B`). */
export const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** A whole number >= 1 given to `flag`; E_USAGE otherwise. */
export function parseCount(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    throw new CairnError('E_USAGE', `${flag} needs a whole number >= 1, not ${JSON.stringify(v)}`);
  }
  return n;
}
