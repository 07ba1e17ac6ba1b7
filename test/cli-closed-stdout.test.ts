/**
 * `cairn ... | head`: a reader that goes away early ends cairn quietly with
 * 141 (128 + SIGPIPE), as for a Unix tool, not with an uncaught EPIPE.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cairn, cairnBin, isolateModuleCache, ok, repoRoot, tempDir, tmpEntries } from './helpers.js';

isolateModuleCache(after);
const ML = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');

/** Runs cairn with a stdout pipe whose read end is closed before cairn writes anything. */
function withClosedStdout(store: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cairnBin, '--store', store, ...args], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Closed at once: node takes far longer to start than this takes, so every write of cairn's meets EPIPE.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

describe('a closed stdout (cairn ... | head)', () => {
  const t = tempDir('cairn-epipe');
  after(() => t.cleanup());
  const store = path.join(t.dir, 'store');

  for (const args of [
    ['instantiate', ML],
    ['realize', ML],
    ['exp', 'show', ML],
    ['graph', ML],
  ]) {
    it(`cairn ${args[0]}${args[0] === 'exp' ? ' show' : ''} exits 141 with no error on stderr`, async () => {
      const r = await withClosedStdout(store, args);
      // realize's progress lines go to stderr as always; no stack trace, no error message.
      assert.doesNotMatch(r.stderr, /EPIPE|Error|error|^\s+at /m);
      assert.equal(r.code, 141);
    });
  }

  it('leaves the store whole: the realize it cut short is complete, and nothing is left in tmp', () => {
    assert.deepEqual(tmpEntries(store), []);
    const r = ok(cairn(store, ['realize', ML]));
    assert.doesNotMatch(r.stdout + r.stderr, /\bbuild\b.*train/, 'train was stored by the first realize');
  });
});
