/**
 * The QMP client against a real QEMU (no guest: `-S`, nothing to boot) and
 * against a fake server for the failure cases (silence, garbage, hang-up).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { QmpClient, QmpError } from '../src/backends/qemu/qmp.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
before(() => ({ dir, cleanup } = tempDir('cairn-qmp')));
after(() => cleanup());

function startQemu(sock: string): ChildProcess {
  requireQemu();
  return spawn(
    'qemu-system-x86_64',
    [
      '-machine',
      'pc-q35-7.2',
      '-accel',
      'tcg',
      '-m',
      '32',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-S',
      '-qmp',
      `unix:${sock},server=on,wait=off`,
    ],
    { stdio: 'ignore' },
  );
}

const exited = (p: ChildProcess): Promise<number | null> =>
  p.exitCode !== null ? Promise.resolve(p.exitCode) : new Promise((r) => p.on('exit', (c) => r(c)));

describe('QmpClient with real QEMU', () => {
  it('greets, runs commands with matched ids, reports errors and events, and sees QEMU quit', async () => {
    const sock = path.join(dir, 'a.sock');
    const proc = startQemu(sock);
    try {
      const qmp = await QmpClient.connect(sock);
      assert.equal(typeof qmp.greeting.version.qemu.major, 'number');
      assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'prelaunch');
      // Many commands in flight at once: each reply reaches its own caller.
      const [name, kvm, status, cpus] = await Promise.all([
        qmp.execute('query-name'),
        qmp.execute<{ enabled: boolean }>('query-kvm'),
        qmp.execute<{ running: boolean }>('query-status'),
        qmp.execute<unknown[]>('query-cpus-fast'),
      ]);
      assert.deepEqual(name, {});
      assert.equal(typeof kvm.enabled, 'boolean');
      assert.equal(status.running, false);
      assert.equal(cpus.length, 1);
      await assert.rejects(
        qmp.execute('no-such-command'),
        (e: unknown) => e instanceof QmpError && e.errorClass === 'CommandNotFound',
      );
      await assert.rejects(
        qmp.execute('migrate-set-parameters', { 'max-bandwidth': 'lots' }),
        (e: unknown) => e instanceof QmpError && e.errorClass === 'GenericError',
      );
      // Events: cont gives RESUME, stop gives STOP.
      const resume = qmp.waitEvent('RESUME', { timeoutMs: 5000 });
      await qmp.execute('cont');
      assert.equal((await resume).event, 'RESUME');
      const since = qmp.events.length;
      await qmp.execute('stop');
      assert.equal((await qmp.waitEvent('STOP', { since, timeoutMs: 5000 })).event, 'STOP');
      await assert.rejects(
        qmp.waitEvent('NEVER', { timeoutMs: 50 }),
        (e: unknown) => e instanceof QmpError && e.errorClass === 'Timeout',
      );
      const shutdown = qmp.waitEvent('SHUTDOWN', { timeoutMs: 5000 });
      await qmp.execute('quit');
      assert.equal((await shutdown).event, 'SHUTDOWN');
      assert.equal(await qmp.waitClosed(5000), true);
      assert.equal(qmp.closed, true);
      await assert.rejects(
        qmp.execute('query-status'),
        (e: unknown) => e instanceof QmpError && e.errorClass === 'Closed',
      );
      assert.equal(await exited(proc), 0);
    } finally {
      proc.kill('SIGKILL');
    }
  });

  it('retries until the socket appears, and close() leaves QEMU running', async () => {
    const sock = path.join(dir, 'b.sock');
    const connecting = QmpClient.connect(sock, { timeoutMs: 10_000 });
    const proc = startQemu(sock); // started after connect() began
    try {
      const qmp = await connecting;
      await qmp.close();
      assert.equal(qmp.closed, true);
      const again = await QmpClient.connect(sock);
      assert.equal((await again.execute<{ status: string }>('query-status')).status, 'prelaunch');
      await again.execute('quit');
      assert.equal(await exited(proc), 0);
    } finally {
      proc.kill('SIGKILL');
    }
  });
});

describe('QmpClient failure cases (fake server)', () => {
  async function fakeServer(sock: string, onConn: (s: net.Socket) => void): Promise<net.Server> {
    const server = net.createServer(onConn);
    await new Promise<void>((r) => server.listen(sock, r));
    return server;
  }
  const greeting =
    JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 }, package: '' }, capabilities: [] } }) +
    '\n';

  it('times out when there is no socket', async () => {
    await assert.rejects(
      QmpClient.connect(path.join(dir, 'none.sock'), { timeoutMs: 200 }),
      (e: unknown) => e instanceof QmpError && e.errorClass === 'Timeout',
    );
  });

  it('times out without a greeting, and on a command that gets no reply', async () => {
    const silent = path.join(dir, 'silent.sock');
    const s1 = await fakeServer(silent, () => {});
    await assert.rejects(
      QmpClient.connect(silent, { timeoutMs: 300 }),
      (e: unknown) => e instanceof QmpError && e.errorClass === 'Timeout',
    );
    s1.close();

    const mute = path.join(dir, 'mute.sock');
    const s2 = await fakeServer(mute, (c) => {
      c.write(greeting);
      c.on('data', (d) => {
        for (const line of d.toString().split('\n').filter(Boolean)) {
          const msg = JSON.parse(line) as { execute?: string; id?: unknown };
          if (msg.execute === 'qmp_capabilities')
            c.write('not json\n' + JSON.stringify({ return: {}, id: msg.id }) + '\n');
          // anything else: no reply
        }
      });
    });
    const qmp = await QmpClient.connect(mute);
    await assert.rejects(
      qmp.execute('query-status', undefined, { timeoutMs: 100 }),
      (e: unknown) => e instanceof QmpError && e.errorClass === 'Timeout',
    );
    qmp.destroy();
    s2.close();
  });

  it('rejects pending commands when the server hangs up', async () => {
    const sock = path.join(dir, 'hangup.sock');
    const server = await fakeServer(sock, (c) => {
      c.write(greeting);
      c.on('data', (d) => {
        const msg = JSON.parse(d.toString().split('\n')[0]!) as { execute?: string; id?: unknown };
        if (msg.execute === 'qmp_capabilities') c.write(JSON.stringify({ return: {}, id: msg.id }) + '\n');
        else c.destroy();
      });
    });
    const qmp = await QmpClient.connect(sock);
    await assert.rejects(qmp.execute('quit'), (e: unknown) => e instanceof QmpError && e.errorClass === 'Closed');
    server.close();
    assert.ok(!fs.existsSync(path.join(dir, 'none.sock')));
  });
});
