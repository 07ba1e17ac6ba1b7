/**
 * What the remote side prints reaches the caller as the text it was: output is
 * decoded as one UTF-8 stream, not chunk by chunk (a character split across two
 * pipe reads used to turn into two U+FFFD). The "ssh" here is a real program that
 * prints a remote Cairn error, as a failing remote would.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { CairnError } from '../src/errors.js';
import { pull } from '../src/store/sync.js';
import { tempDir } from './helpers.js';

const work = tempDir('cairn-sync-text');
after(() => work.cleanup());

describe('sync: remote output is decoded as one stream', () => {
  it('a remote error message of many 2-byte characters, longer than a pipe read, arrives intact', async () => {
    // The prefix is 29 bytes (two spaces after the colon; the message is trimmed): an odd length puts every
    // 64 KiB read boundary inside a 2-byte character.
    const message = 'é'.repeat(100_000);
    const fakeSsh = path.join(work.dir, 'fake-ssh');
    fs.writeFileSync(
      fakeSsh,
      `#!${process.execPath}\n` +
        `process.stderr.write('cairn: error E_SYNC_FAILED:  ' + 'é'.repeat(` +
        `${message.length}) + '\\n', () => process.exit(1));\n`,
      { mode: 0o755 },
    );
    await assert.rejects(pull(null, 'host:/store', ['x'], { ssh: fakeSsh, dryRun: true }), (e: unknown) => {
      assert.ok(e instanceof CairnError);
      assert.equal(e.code, 'E_SYNC_FAILED');
      assert.ok(!e.message.includes('\ufffd'), 'no replacement characters');
      assert.equal(e.message, `on host: ${message}`);
      return true;
    });
  });
});
