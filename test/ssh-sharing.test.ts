/**
 * ssh connection sharing for builders: many hosts share one 'exit' hook
 * (one listener per host tripped Node's MaxListeners warning past 10), and
 * closing them all removes the hook and every socket directory.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
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

  it('removes empty socket directories that killed cairn processes left, and nothing else', async () => {
    const probe = sharedSsh('ssh', 'root@probe.invalid');
    const parent = path.dirname(/ControlPath=([^ ']+)\/%C/.exec(probe.command)![1]!);
    await probe.close();
    const make = (name: string, ageS: number, file?: string): string => {
      const d = fs.mkdtempSync(path.join(parent, `cairn-ssh-${name}-`));
      if (file) fs.writeFileSync(path.join(d, file), 'x');
      const t = new Date(Date.now() - ageS * 1000);
      fs.utimesSync(d, t, t);
      return d;
    };
    const stale = make('stale', 600);
    const busy = make('busy', 600, 'not-a-socket');
    const fresh = make('fresh', 5);
    try {
      const s = sharedSsh('ssh', 'root@host.invalid');
      await s.close();
      assert.equal(fs.existsSync(stale), false, 'an old empty one goes');
      assert.ok(fs.existsSync(busy), 'one with something in it stays');
      assert.ok(fs.existsSync(fresh), 'a young one stays (its master may still be starting)');
    } finally {
      for (const d of [stale, busy, fresh]) fs.rmSync(d, { recursive: true, force: true });
    }
  });
});
