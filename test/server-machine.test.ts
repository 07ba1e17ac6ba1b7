/**
 * `cairn machine` through the warm server (the C client dist/bin/cairn and a
 * worker) on the real tiny guest: the same output and exit status as the
 * Node CLI, a failing step's status, Ctrl-C leaving no QEMU behind, and
 * `+ shell` (which reads stdin) left to the Node CLI.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ownProcessReason } from '../cli/serve/protocol.js';
import type { ServerStatus } from '../cli/serve/supervisor.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { lastLine, repoRoot, tempDir } from './helpers.js';

const client = path.join(repoRoot, 'dist', 'bin', 'cairn');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('which machine commands a worker runs', () => {
  it('serves machine commands, but not one ending in + shell', () => {
    for (const args of [
      ['machine', 'tiny', '+', 'transient', 'exec', 'true'],
      ['machine', 'ls'],
      ['--store', 's', 'machine', '-q', 'tiny', '+', 'exec', 'shell'],
      ['machine', 'tiny', '+', 'exec', 'echo', '+shell'],
      ['realize', 'shell.ts', '+', 'shell'],
    ])
      assert.equal(ownProcessReason(args), undefined, args.join(' '));
    for (const args of [
      ['machine', 'tiny', '+', 'shell'],
      ['machine', 'tiny', '+', 'exec', 'true', '+', 'transient', 'shell'],
      ['--store', 'machine', 'machine', '--steps', 'd', 'debian', '+', 'shell'],
    ])
      assert.match(ownProcessReason(args) ?? '', /\+ shell' reads the client's stdin/, args.join(' '));
  });
});

describe('cairn machine through the server', () => {
  requireQemu();
  const tmp = tempDir('cairn-server-machine');
  const socket = path.join(tmp.dir, 'run', 'server.sock');
  const store = path.join(tmp.dir, 'store');
  const env = { CAIRN_SERVER_SOCKET: socket, CAIRN_STORE: store, XDG_CACHE_HOME: path.join(tmp.dir, 'cache') };
  const cairn = (args: string[], extra: NodeJS.ProcessEnv = {}, input?: string): Run => {
    const r = spawnSync(client, args, {
      cwd: tmp.dir,
      env: { ...process.env, ...env, ...extra },
      encoding: 'utf8',
      ...(input === undefined ? {} : { input }),
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const direct = (args: string[], input?: string): Run => cairn(args, { CAIRN_NO_SERVER: '1' }, input);
  const status = (): ServerStatus => JSON.parse(cairn(['server', 'status', '--json']).stdout) as ServerStatus;
  /** Live (not zombie) QEMU processes working on this test's store. */
  const ourQemus = (): number[] =>
    fs
      .readdirSync('/proc')
      .filter((n) => /^\d+$/.test(n))
      .filter((n) => {
        try {
          const st = fs.readFileSync(`/proc/${n}/stat`, 'latin1');
          const cmd = fs.readFileSync(`/proc/${n}/cmdline`, 'latin1');
          return !st.slice(st.lastIndexOf(')') + 2).startsWith('Z') && cmd.includes('qemu') && cmd.includes(store);
        } catch {
          return false;
        }
      })
      .map(Number);

  before(() => {
    assert.equal(fs.readFileSync(client).subarray(0, 4).toString('latin1'), '\x7fELF', 'the compiled client');
    const base = direct(['machine', '-q', 'tiny']);
    assert.equal(base.code, 0, base.stderr);
    const r = cairn(['server', 'start', '--workers', '2']);
    assert.equal(r.code, 0, r.stderr);
  });

  after(() => {
    cairn(['server', 'stop']);
    for (const pid of ourQemus()) process.kill(pid, 'SIGKILL');
    tmp.cleanup();
  });

  it('resumes the machine in a worker: the same output and exit status as the Node CLI', () => {
    const args = ['machine', 'tiny', '+', 'transient', 'exec', 'echo to-out; echo to-err >&2'];
    const before = status();
    const served = cairn(args);
    const after = status();
    assert.equal(served.code, 0, served.stderr);
    assert.equal(after.served, before.served + 1, 'a worker ran it');
    assert.equal(after.fallbacks, before.fallbacks + 1, 'only the `server status` in between was left to Node');
    const standalone = direct(args);
    assert.equal(standalone.code, 0, standalone.stderr);
    assert.equal(served.stdout, standalone.stdout, 'stdout (the base state, since the step is transient)');
    assert.equal(lastLine(served.stdout), lastLine(direct(['machine', '-q', 'tiny']).stdout));
    assert.equal(served.stderr, standalone.stderr);
    assert.match(served.stderr, /to-out/);
    assert.match(served.stderr, /to-err/);
    // The worker is not replaced after a machine command: nothing of it stays in the process.
    assert.deepEqual(
      after.workers.map((w) => w.pid).sort(),
      before.workers.map((w) => w.pid).sort(),
      'the same workers serve on',
    );
    assert.deepEqual(ourQemus(), [], 'no QEMU left');
  });

  it("passes a failing step's error and exit status through", () => {
    const args = ['machine', 'tiny', '+', 'exec', 'echo failing; exit 3'];
    const before = status().served;
    const served = cairn(args);
    assert.equal(status().served, before + 1, 'a worker ran it');
    const standalone = direct(args);
    assert.equal(served.code, 1);
    assert.equal(served.code, standalone.code);
    assert.match(served.stderr, /E_MACHINE_EXEC: .*machine command exited 3/);
    assert.equal(served.stderr, standalone.stderr);
    assert.equal(served.stdout, standalone.stdout);
    const usage = cairn(['machine', 'tiny', '+', 'shell', '+', 'exec', 'true']);
    assert.equal(usage.code, direct(['machine', 'tiny', '+', 'shell', '+', 'exec', 'true']).code);
    assert.deepEqual(ourQemus(), [], 'no QEMU left');
  });

  it('leaves + shell to the Node CLI, which reads the piped script', () => {
    const r = cairn(['machine', 'tiny', '+', 'shell'], { CAIRN_SERVER_DEBUG: '1' }, 'echo sh$((6*7))ell; exit 4\n');
    assert.match(r.stderr, /running without the server: 'machine \.\.\. \+ shell' reads the client's stdin/);
    assert.match(r.stdout, /sh42ell/);
    assert.equal(r.code, 4);
  });

  /** Starts a served `machine tiny + transient exec 'sleep'` and resolves once the step runs in the guest. */
  async function startSleeper(): Promise<{
    child: ReturnType<typeof spawn>;
    closed: Promise<[number | null, string | null]>;
  }> {
    const marker = `cairn-int-${Date.now()}`;
    const child = spawn(client, ['machine', 'tiny', '+', 'transient', 'exec', `echo ${marker}; sleep 120`], {
      cwd: tmp.dir,
      env: { ...process.env, ...env },
      stdio: 'ignore',
    });
    const closed = new Promise<[number | null, string | null]>((r) => child.on('close', (c, s) => r([c, s])));
    // The step runs once its command line is on the guest's console (QEMU logs the console).
    const consoleLogs = (): string[] =>
      ourQemus().flatMap((pid) => {
        const m = /logfile=([^,\0]+)/.exec(fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
        return m ? [m[1]!] : [];
      });
    const deadline = Date.now() + 60_000;
    while (!consoleLogs().some((f) => fs.existsSync(f) && fs.readFileSync(f, 'latin1').includes(marker))) {
      assert.ok(Date.now() < deadline, 'the step started in the guest');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(status().workers.filter((w) => w.state === 'busy').length, 1, 'a worker runs it');
    return { child, closed };
  }

  it('Ctrl-C (SIGINT) to the client stops the machine: exit 130, no QEMU left, and the server serves on', async () => {
    const { child, closed } = await startSleeper();
    child.kill('SIGINT');
    const [code, signal] = await closed;
    assert.deepEqual([code, signal], [130, null], 'the client exits 130, as the Node CLI does');
    assert.deepEqual(ourQemus(), [], 'no QEMU is left once the client has exited');
    const again = cairn(['machine', '-q', 'tiny', '+', 'transient', 'exec', 'true']);
    assert.equal(again.code, 0, again.stderr);
  });

  it('a client killed outright (SIGKILL): the server ends the command and its QEMU, and serves on', async () => {
    const { child, closed } = await startSleeper();
    child.kill('SIGKILL');
    assert.deepEqual(await closed, [null, 'SIGKILL']);
    // The server sees the connection close and interrupts the worker's process group (QEMU is in it).
    const deadline = Date.now() + 10_000;
    while (ourQemus().length > 0) {
      assert.ok(Date.now() < deadline, 'QEMU was ended');
      await new Promise((r) => setTimeout(r, 50));
    }
    const again = cairn(['machine', '-q', 'tiny', '+', 'transient', 'exec', 'true']);
    assert.equal(again.code, 0, again.stderr);
  });
});
