/**
 * ssh connection sharing for builders: many hosts share one 'exit' hook
 * (one listener per host tripped Node's MaxListeners warning past 10), and
 * closing them all removes the hook and every socket directory.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import { sharedSsh } from '../src/stages/builders/ssh-sharing.js';

describe('sharedSsh', () => {
  it('twelve hosts add one exit listener, and closing them removes it and their socket directories', async () => {
    const before = process.listenerCount('exit');
    const warnings: Error[] = [];
    const onWarning = (w: Error): number => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const shared = Array.from({ length: 12 }, (_, i) => sharedSsh('ssh -o BatchMode=yes', `root@host-${i}.invalid`));
      assert.equal(process.listenerCount('exit'), before + 1);
      const dirs = shared.map((s) => /ControlPath=([^ ']+)\/%C/.exec(s.command)![1]!);
      for (const d of dirs) assert.ok(fs.statSync(d).isDirectory(), d);
      await Promise.all(shared.map((s) => s.close()));
      assert.equal(process.listenerCount('exit'), before);
      for (const d of dirs) assert.equal(fs.existsSync(d), false, d);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(
        warnings.filter((w) => w.name === 'MaxListenersExceededWarning'),
        [],
      );
    } finally {
      process.off('warning', onWarning);
    }
  });
});
