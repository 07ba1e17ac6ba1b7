/**
 * The cairn server's trust boundary, with real processes and sockets: a
 * client whose process lives in another sandbox than the server's workers
 * (namespaces, limits, groups) is not served; malformed requests, stuck
 * and surplus connections are answered quickly; a socket directory that
 * is not the user's alone is never used, by the client or by `cairn server`.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { frame, FrameReader } from '../cli/serve/protocol.js';
import { sandboxDifference } from '../cli/serve/sandbox.js';
import type { ServerStatus } from '../cli/serve/supervisor.js';
import { repoRoot, tempDir } from './helpers.js';

const client = path.join(repoRoot, 'dist', 'bin', 'cairn');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `argv` (a tool such as unshare or prlimit, then the client) with `env` added. */
function run(argv: string[], env: NodeJS.ProcessEnv, cwd: string): Run {
  const r = spawnSync(argv[0]!, argv.slice(1), { cwd, env: { ...process.env, ...env }, encoding: 'utf8' });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const lastLine = (s: string): string => s.trimEnd().split('\n').pop()!;

/**
 * Connects to `socket`; resolves with every frame the server sent before it closed the connection, or
 * with 'still open' if it had not closed it after 20 s (a bound, so that a server that never answers
 * fails the test instead of hanging it).
 */
function talk(socket: string, send: Buffer | null): Promise<{ type: string; payload: string }[] | 'still open'> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    const reader = new FrameReader();
    const got: { type: string; payload: string }[] = [];
    const bound = setTimeout(() => {
      resolve('still open');
      c.destroy();
    }, 20_000);
    c.on('close', () => clearTimeout(bound));
    c.on('connect', () => {
      if (send) c.write(send);
    });
    c.on('data', (d: Buffer) => {
      for (const f of reader.push(d)) got.push({ type: f.type, payload: f.payload.toString() });
    });
    c.on('error', reject);
    c.on('close', () => resolve(got));
  });
}

function requireTool(name: string): void {
  assert.equal(spawnSync('sh', ['-c', `command -v ${name}`]).status, 0, `this test needs ${name}`);
}

describe('sandboxDifference', () => {
  const base = new Map([
    ['ns/net', 'net:[1]'],
    ['ns/mnt', 'mnt:[2]'],
    ['root', '/'],
    ['cgroup', '0::/a\n'],
    ['stat', '1 (cairn) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0'],
    ['status', 'Name:\tcairn\nUid:\t0\t0\t0\t0\nGroups:\t\nNoNewPrivs:\t0\n'],
    [
      'limits',
      'Limit  Soft Limit  Hard Limit  Units\n' +
        'Max open files            1024                 4096                 files\n' +
        'Max processes             100                  100                  processes\n',
    ],
  ]);
  const worker = new Map(base);
  it('accepts the same process facts, and a soft open-files limit Node raises anyway', () => {
    assert.equal(sandboxDifference(base, worker), undefined);
    const soft = new Map(base);
    soft.set('limits', base.get('limits')!.replace('1024 ', '4096 '));
    assert.equal(sandboxDifference(soft, worker), undefined);
  });
  it('names what differs', () => {
    const cases: [string, string, RegExp][] = [
      ['ns/net', 'net:[9]', /net namespace/],
      ['root', '/jail', /root directory/],
      ['cgroup', '0::/b\n', /cgroup/],
      ['status', base.get('status')!.replace('Groups:\t', 'Groups:\t5'), /Groups/],
      ['status', base.get('status')!.replace('NoNewPrivs:\t0', 'NoNewPrivs:\t1'), /NoNewPrivs/],
      ['limits', base.get('limits')!.replace('4096 ', '2048 '), /Max open files/],
      ['limits', base.get('limits')!.replace('100                  100', '50                   100'), /Max processes/],
      ['stat', base.get('stat')!.replace(' 20 0 1 0', ' 20 5 1 0'), /nice/],
    ];
    for (const [key, value, why] of cases) {
      const c = new Map(base);
      c.set(key, value);
      assert.match(sandboxDifference(c, worker) ?? '', why, key);
    }
    const missing = new Map(base);
    missing.delete('ns/mnt');
    assert.match(sandboxDifference(missing, worker) ?? '', /mnt namespace/);
  });
});

describe('cairn server trust boundary', () => {
  const tmp = tempDir('cairn-server-trust');
  const runDir = path.join(tmp.dir, 'run');
  const socket = path.join(runDir, 'server.sock');
  const work = path.join(tmp.dir, 'work');
  const env = {
    CAIRN_SERVER_SOCKET: socket,
    CAIRN_STORE: path.join(tmp.dir, 'store'),
    XDG_CACHE_HOME: path.join(tmp.dir, 'cache'),
  };
  const cairn = (args: string[], extra: NodeJS.ProcessEnv = {}, wrap: string[] = []): Run =>
    run([...wrap, client, ...args], { ...env, ...extra }, work);
  const status = (): ServerStatus => {
    const r = cairn(['server', 'status', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as ServerStatus;
  };
  let host: ChildProcess;
  let port = 0;
  let n = 0;

  before(async () => {
    for (const tool of ['unshare', 'prlimit', 'setpriv', 'useradd', 'userdel']) requireTool(tool);
    const magic = fs.readFileSync(client).subarray(0, 4).toString('latin1');
    assert.equal(magic, '\x7fELF', `${client} is not the compiled client`);
    // A port on the host's loopback that a build may or may not reach. In a process of its own: this one
    // waits in spawnSync while the build connects.
    host = spawn(
      process.execPath,
      [
        '-e',
        "const s = require('net').createServer((c) => c.end('host\\n'));" +
          "s.listen(0, '127.0.0.1', () => console.log(s.address().port));",
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    port = await new Promise<number>((resolve, reject) => {
      host.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString())));
      host.once('exit', (c) => reject(new Error(`the loopback listener exited (${c})`)));
    });
    fs.mkdirSync(work, { recursive: true });
    fs.writeFileSync(
      path.join(work, 'probe.ts'),
      [
        "import * as fs from 'node:fs';",
        "import * as net from 'node:net';",
        "import { stage } from 'cairn';",
        'export default stage({ name: "probe", config: { n: process.env.N },',
        '  build: async ({ out }: { out: string }) => {',
        `  const reached = await new Promise<string>((r) => { const s = net.connect(${port}, '127.0.0.1');`,
        "    s.on('data', () => { s.destroy(); r('reached'); }); s.on('error', () => r('unreachable')); });",
        "  fs.writeFileSync(out + '/net', reached);",
        "  const limits = fs.readFileSync('/proc/self/limits', 'utf8').split('\\n');",
        "  fs.writeFileSync(out + '/nofile', limits.find((l) => l.startsWith('Max open files'))!);",
        '} });',
        '',
      ].join('\n'),
    );
    const r = cairn(['server', 'start', '--workers', '2']);
    assert.equal(r.code, 0, r.stderr);
  });

  after(() => {
    cairn(['server', 'stop']);
    host.kill();
    tmp.cleanup();
  });

  /** Realizes probe.ts afresh; whether the server ran it, what its build saw, and the client's stderr. */
  type Probe = { served: boolean; net: string; nofile: string; stderr: string };
  const probe = (extra: NodeJS.ProcessEnv = {}, wrap: string[] = []): Probe => {
    const before = status().served;
    const r = cairn(['realize', 'probe.ts', '-q'], { N: String(++n), CAIRN_SERVER_DEBUG: '1', ...extra }, wrap);
    assert.equal(r.code, 0, r.stderr);
    const served = status().served > before;
    const rref = lastLine(r.stdout);
    const file = (name: string): string => cairn(['catref', rref, name]).stdout;
    return { served, net: file('net'), nofile: file('nofile'), stderr: r.stderr };
  };

  it('serves a client in its own sandbox, whose build reaches the host loopback', () => {
    const p = probe();
    assert.equal(p.served, true, p.stderr);
    assert.equal(p.net, 'reached');
  });

  it('does not serve a client in another network namespace: its build cannot reach the host', () => {
    const p = probe({}, ['unshare', '--net']);
    assert.equal(p.served, false);
    assert.equal(p.net, 'unreachable');
    assert.match(p.stderr, /running without the server: the client's net namespace differs from the server's/);
  });

  it('does not serve a client with another open-files limit: its build has that limit', () => {
    const p = probe({}, ['prlimit', '--nofile=777:777']);
    assert.equal(p.served, false);
    assert.match(p.nofile, /^Max open files +777 +777 /);
    assert.match(p.stderr, /running without the server: the client's limit "Max open files" \(777\) differs/);
  });

  it('does not serve a client with other supplementary groups', () => {
    const p = probe({}, ['setpriv', '--groups', '4321']);
    assert.equal(p.served, false);
    assert.match(p.stderr, /running without the server: the client's Groups \(4321\) differs/);
  });

  it('answers a request with a non-octal umask with E_SERVER_PROTOCOL', async () => {
    const build = fs.readFileSync(path.join(repoRoot, 'dist', 'build-id'), 'utf8').trim();
    // Otherwise as the client would send it (its environment as the server's), so that only the umask is wrong.
    const environ = Object.entries({ ...process.env, ...env }).map(([k, v]) => `${k}=${v}`);
    const fields = ['cairn-request-1', build, work, '9z', '0', '0', '0', '2', 'lsref', 'zzzz', ...environ];
    const got = await talk(socket, frame('Q', fields.map((f) => f + '\0').join('')));
    assert.notEqual(got, 'still open');
    if (got === 'still open') return;
    assert.deepEqual(
      got.map((f) => f.type),
      ['E', 'X'],
    );
    assert.match(got[0]!.payload, /E_SERVER_PROTOCOL: umask "9z" is not octal/);
    assert.equal(got[1]!.payload, '2');
  });

  it(
    'answers R (run it yourself), not an internal error, when the ' + "request's cwd cannot be entered (red team)",
    async () => {
      const build = fs.readFileSync(path.join(repoRoot, 'dist', 'build-id'), 'utf8').trim();
      const install = fs.realpathSync(path.join(repoRoot, 'dist'));
      const environ = Object.entries({ ...process.env, ...env }).map(([k, v]) => `${k}=${v}`);
      for (const cwd of [path.join(tmp.dir, 'gone'), '/etc/passwd']) {
        const fields = ['cairn-request-1', `${build}@${install}`, cwd, '22', '0', '0', '0', '1', 'du', ...environ];
        const got = await talk(socket, frame('Q', fields.map((f) => f + '\0').join('')));
        assert.notEqual(got, 'still open');
        if (got === 'still open') return;
        assert.deepEqual(
          got.map((f) => f.type),
          ['R'],
          JSON.stringify(got),
        );
        assert.match(got[0]!.payload, /working directory .* cannot be entered/);
      }
    },
  );

  it('drops a client that sends half a request (after 5 s)', { timeout: 60_000 }, async () => {
    const got = await talk(socket, Buffer.from('Q\0\0'));
    assert.deepEqual(got, [], 'closed without an answer');
  });

  it('answers R at once beyond 64 open connections, then serves again', { timeout: 60_000 }, async () => {
    const idle: net.Socket[] = [];
    try {
      for (let i = 0; i < 64; i++) {
        const c = net.connect(socket);
        c.on('error', () => {
          /* closed by the server's request timeout */
        });
        await new Promise((r) => c.once('connect', r));
        idle.push(c);
      }
      // Sends nothing: the answer cannot be the request timeout's (that one closes without a frame).
      const got = await talk(socket, null);
      assert.notEqual(got, 'still open');
      if (got === 'still open') return;
      assert.deepEqual(
        got.map((f) => f.type),
        ['R'],
      );
      assert.match(got[0]!.payload, /64 connections open/);
    } finally {
      await Promise.all(
        idle.map(
          (c) =>
            new Promise((r) => {
              c.once('close', r);
              c.destroy();
            }),
        ),
      );
    }
    assert.equal(probe().served, true);
  });
});

describe('the server socket directory', () => {
  const tmp = tempDir('cairn-server-dir');
  const good = path.join(tmp.dir, 'good');
  const socket = path.join(good, 'server.sock');
  const env = { CAIRN_STORE: path.join(tmp.dir, 'store'), XDG_CACHE_HOME: path.join(tmp.dir, 'cache') };
  const cairn = (args: string[], sock: string, extra: NodeJS.ProcessEnv = {}): Run =>
    run([client, ...args], { ...env, CAIRN_SERVER_SOCKET: sock, ...extra }, tmp.dir);
  const user = 'cairn-dir-test';
  let uid = 0;

  /** The client with `sock`: the command still runs (with Node); returns why it was not served. */
  const notServedBecause = (sock: string): string => {
    const r = cairn(['lsref', 'zzzz'], sock, { CAIRN_SERVER_DEBUG: '1' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /E_BAD_REF/);
    return /running without the server: (.*)/.exec(r.stderr)?.[1] ?? 'served';
  };
  /** `cairn server status`, `stop` and `start` with `sock` all refuse it. */
  const serverRefuses = (sock: string): void => {
    for (const args of [
      ['server', 'status'],
      ['server', 'stop'],
      ['server', 'start', '--workers', '1'],
    ]) {
      const r = cairn(args, sock);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stdout}`);
      assert.match(r.stderr, /E_SERVER_SOCKET/, args.join(' '));
    }
  };

  before(() => {
    requireTool('useradd');
    spawnSync('userdel', [user]);
    const add = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user], {
      encoding: 'utf8',
    });
    assert.equal(add.status, 0, add.stderr);
    uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout);
    const r = cairn(['server', 'start', '--workers', '1'], socket);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(notServedBecause(socket), 'served');
  });

  after(() => {
    fs.chownSync(good, 0, 0);
    fs.chmodSync(good, 0o700);
    cairn(['server', 'stop'], socket);
    spawnSync('userdel', [user]);
    tmp.cleanup();
  });

  it('is not used when it belongs to another user (client, server start, status, stop)', () => {
    fs.chownSync(good, uid, uid);
    try {
      assert.match(notServedBecause(socket), /is not a directory of yours with mode 0700/);
      serverRefuses(socket);
    } finally {
      fs.chownSync(good, 0, 0);
    }
    assert.equal(notServedBecause(socket), 'served');
  });

  it('is not used when group or others have access to it', () => {
    for (const mode of [0o777, 0o750]) {
      fs.chmodSync(good, mode);
      try {
        assert.match(notServedBecause(socket), /mode 0700 \(it is a directory, uid 0, mode (777|750)\)/);
        serverRefuses(socket);
      } finally {
        fs.chmodSync(good, 0o700);
      }
    }
  });

  it('is not used through a symlink, nor when a directory above it lets others swap it', () => {
    const link = path.join(tmp.dir, 'link');
    fs.symlinkSync(good, link);
    assert.match(notServedBecause(path.join(link, 'server.sock')), /it is a symlink/);
    serverRefuses(path.join(link, 'server.sock'));
    fs.chmodSync(tmp.dir, 0o777);
    try {
      assert.match(notServedBecause(socket), /ancestor directory .* is not safe/);
      serverRefuses(socket);
      // Sticky, as /tmp is: others cannot rename what is ours.
      fs.chmodSync(tmp.dir, 0o1777);
      assert.equal(notServedBecause(socket), 'served');
    } finally {
      fs.chmodSync(tmp.dir, 0o700);
    }
  });

  it('is not used when the socket in it is not a socket of the user', () => {
    fs.lchownSync(socket, uid, uid);
    try {
      assert.match(notServedBecause(socket), /is not a socket of yours/);
      serverRefuses(socket);
    } finally {
      fs.lchownSync(socket, 0, 0);
    }
  });

  it('is never taken over when another user created it first', () => {
    for (const [name, owner, mode] of [
      ['foreign', uid, 0o700],
      ['open', 0, 0o777],
    ] as const) {
      const dir = path.join(tmp.dir, name);
      fs.mkdirSync(dir);
      fs.chmodSync(dir, mode);
      fs.chownSync(dir, owner, owner);
      serverRefuses(path.join(dir, 'server.sock'));
      assert.deepEqual(fs.readdirSync(dir), [], 'no socket or log was made in it');
    }
  });
});
