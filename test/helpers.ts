import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach } from 'node:test';
import { CairnError, instantiate, LocalStore, type RRef, type Stage } from '../src/index.js';
import type { DRef } from '../src/store/refs.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The built CLI (`npm test` builds it first). */
export const cairnBin = path.join(repoRoot, 'dist', 'cli', 'main.js');

/** A fresh directory under the OS temp dir, removed (even if read-only) by the returned cleanup. */
export function tempDir(label = 'cairn-test'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${label}-`));
  return {
    dir,
    cleanup: () => {
      spawnSync('chmod', ['-R', 'u+w', dir]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A fresh directory with a store in DIR/store for every test of the file
 * (or of the suite it is called in), closed and removed after each; `set`
 * receives them before each test.
 */
export function storePerTest(label: string, set: (t: { dir: string; store: LocalStore }) => void): void {
  let current: { dir: string; store: LocalStore; cleanup: () => void };
  beforeEach(() => {
    const { dir, cleanup } = tempDir(label);
    current = { dir, cleanup, store: LocalStore.open(path.join(dir, 'store')) };
    set(current);
  });
  afterEach(() => {
    current.store.close();
    current.cleanup();
  });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cairn ARGS` as a separate process against `store`. */
export function cairn(
  store: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {},
): CliResult {
  const r = spawnSync(process.execPath, [cairnBin, '--store', store, ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: { ...process.env, ...opts.env },
    input: opts.input,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The same, without blocking the event loop (for running many processes at once). */
export function cairnAsync(
  store: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cairnBin, '--store', store, ...args], {
      cwd: opts.cwd ?? repoRoot,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The last non-empty line of a command's stdout (where `realize` prints the target RRefs). */
export function lastLine(s: string): string {
  const lines = s.trim().split('\n');
  return lines[lines.length - 1]!.trim();
}

/**
 * Points the compiled-module cache (XDG_CACHE_HOME) of this test file and the
 * CLI processes it starts at a temporary directory, removed after the file.
 */
export function isolateModuleCache(after: (fn: () => void) => void, label = 'cairn-cli-cache'): void {
  const cache = tempDir(label);
  process.env.XDG_CACHE_HOME = cache.dir;
  after(() => cache.cleanup());
}

/** Entries left in STORE/tmp (there should be none once every process is done). */
export function tmpEntries(store: string): string[] {
  try {
    return fs.readdirSync(path.join(store, 'tmp'));
  } catch {
    return [];
  }
}

export function ok(r: CliResult): CliResult {
  assert.equal(r.code, 0, `expected success, got ${r.code}\nstderr: ${r.stderr}`);
  return r;
}

/** A failed command: non-zero exit, a stable code on stderr, no crash; with `store`, nothing left in STORE/tmp. */
export function expectError(r: CliResult, code: string, store?: string): void {
  assert.notEqual(r.code, 0, `expected ${code}, but it succeeded\nstdout: ${r.stdout}`);
  assert.notEqual(r.code, null);
  assert.match(r.stderr, new RegExp(`cairn: error ${code}:`), `stderr was: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /internal error/);
  if (store !== undefined) assert.deepEqual(tmpEntries(store), [], 'STORE/tmp must be empty after an error');
}

/** For assert.rejects/throws: the error is a CairnError with this code. */
export const isCode =
  (c: string) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof CairnError, `expected a CairnError, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    return true;
  };

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** The DRef of a stage. */
export const drefOf = (s: Stage): DRef => instantiate(s).targets[0]!;

/** The single RRef a realize chose for its single target. */
export const one = (r: { targets: { rrefs: RRef[] }[] }): RRef => {
  assert.equal(r.targets[0]!.rrefs.length, 1);
  return r.targets[0]!.rrefs[0]!;
};
