/**
 * The cairn server and its C client (dist/bin/cairn), as real processes:
 * a served command must behave exactly as the Node CLI would, and the
 * client must fall back to the Node CLI whenever the server does not serve.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  EndMarkerScanner,
  encodeRequest,
  frame,
  FrameReader,
  installId,
  parseRequest,
  serverSocketPath,
} from '../cli/serve/protocol.js';
import type { ServerStatus } from '../cli/serve/supervisor.js';
import { repoRoot, tempDir } from './helpers.js';

const client = path.join(repoRoot, 'dist', 'bin', 'cairn');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(bin: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Run {
  const r = spawnSync(bin, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8' });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const lastLine = (s: string): string => s.trimEnd().split('\n').pop()!;

describe('protocol', () => {
  it('splits frames however the bytes arrive', () => {
    const bytes = Buffer.concat([frame('O', 'hello'), frame('E', ''), frame('X', '3')]);
    const reader = new FrameReader();
    const got = [...bytes].flatMap((b) => reader.push(Buffer.from([b])));
    assert.deepEqual(
      got.map((f) => [f.type, f.payload.toString()]),
      [
        ['O', 'hello'],
        ['E', ''],
        ['X', '3'],
      ],
    );
  });

  it('refuses a frame over the size limit', () => {
    const head = Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]);
    assert.throws(() => new FrameReader().push(head), /exceeds the limit/);
  });

  it('finds an end marker split across chunks and passes everything before it on', () => {
    const marker = Buffer.from('\0END-123\0');
    const s = new EndMarkerScanner(marker);
    const text = Buffer.concat([Buffer.from('out\0END-12 not yet\n'), marker]);
    let data = '';
    let ended = false;
    for (let i = 0; i < text.length; i += 4) {
      const r = s.push(text.subarray(i, i + 4));
      data += r.data.toString();
      ended ||= r.ended;
    }
    assert.equal(ended, true);
    assert.equal(data, 'out\0END-12 not yet\n');
  });

  it('round-trips a request and rejects malformed ones', () => {
    const req = {
      build: 'b1',
      install: '/opt/a@b/dist',
      cwd: '/tmp',
      umask: 0o022,
      stdoutTty: false,
      stderrTty: true,
      columns: 80,
      args: ['realize', 'a b.ts', ''],
      env: { A: '1', B: 'x=y' },
    };
    const f = new FrameReader().push(encodeRequest(req))[0]!;
    assert.equal(f.type, 'Q');
    assert.deepEqual(parseRequest(f.payload), req);
    // A client that does not name its installation (an older cairn) names none, and is served by no server.
    const old = parseRequest(new FrameReader().push(encodeRequest({ ...req, install: '' }))[0]!.payload);
    assert.deepEqual([old.build, old.install], ['b1', '']);
    assert.throws(() => parseRequest(Buffer.from('nonsense\0')), /request format/);
    assert.throws(
      () => parseRequest(Buffer.from(['cairn-request-1', 'b', 'relative', '22', '0', '0', '0', '0', ''].join('\0'))),
      /absolute/,
    );
  });

  it('keys the socket by user and installation', () => {
    // FNV-1a 64 test vectors; cli/client/cairn.c computes the same (checked end to end below).
    assert.equal(installId(Buffer.from('')), 'cbf29ce484222325');
    assert.equal(installId(Buffer.from('a')), 'af63dc4c8601ec8c');
    const a = serverSocketPath(installId(Buffer.from('/p/a/node_modules/cairn/dist')), {});
    const b = serverSocketPath(installId(Buffer.from('/p/b/node_modules/cairn/dist')), {});
    assert.match(a, new RegExp(`/cairn-${process.getuid!()}/server-[0-9a-f]{16}\\.sock$`));
    assert.notEqual(a, b);
    assert.equal(serverSocketPath('x', { XDG_RUNTIME_DIR: '/run/user/7' }), '/run/user/7/cairn/server-x.sock');
    assert.equal(serverSocketPath('x', { CAIRN_SERVER_SOCKET: '/s.sock' }), '/s.sock');
  });
});

describe('cairn server', () => {
  const tmp = tempDir('cairn-server');
  const socket = path.join(tmp.dir, 'run', 'server.sock');
  const work = path.join(tmp.dir, 'work');
  const store = path.join(tmp.dir, 'store');
  const env = { CAIRN_SERVER_SOCKET: socket, CAIRN_STORE: store, XDG_CACHE_HOME: path.join(tmp.dir, 'cache') };
  const cairn = (args: string[], extra: NodeJS.ProcessEnv = {}, cwd = work): Run =>
    run(client, args, { ...env, ...extra }, cwd);
  const status = (): ServerStatus => JSON.parse(cairn(['server', 'status', '--json']).stdout) as ServerStatus;

  before(() => {
    // Built by scripts/build-client.sh; a shell-script stand-in means no C compiler was found.
    assert.equal(
      fs.readFileSync(client).subarray(0, 4).toString('latin1'),
      '\x7fELF',
      `${client} is not the compiled client: is a C compiler (cc) installed?`,
    );
    fs.mkdirSync(work, { recursive: true });
    fs.writeFileSync(path.join(work, 'lib.ts'), 'export const N: number = 1;\n');
    fs.writeFileSync(
      path.join(work, 'stages.ts'),
      [
        "import * as fs from 'node:fs';",
        "import * as path from 'node:path';",
        "import { execSync } from 'node:child_process';",
        "import { stage } from 'cairn';",
        "import { N } from './lib.js';",
        // Top-level code that a new process would run again each time.
        "const extra = process.env.EXTRA ?? 'none';",
        "const here = fs.readFileSync('here.txt', 'utf8').trim();",
        'export default stage({ name: "s", config: { N, extra, here }, ' +
          'build: ({ out, config }: { out: string; config: unknown }) => {',
        "  fs.writeFileSync(path.join(out, 'v'), JSON.stringify(config));",
        "  execSync('echo child-says-hi', { stdio: 'inherit' });",
        '} });',
        '',
      ].join('\n'),
    );
    fs.writeFileSync(path.join(work, 'here.txt'), 'first\n');
    const r = cairn(['server', 'start', '--workers', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /2 of 2 workers warm/);
  });

  after(() => {
    const r = cairn(['server', 'stop']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.existsSync(socket), false, 'the socket is removed');
    tmp.cleanup();
  });

  it('listens on a socket only its user can reach', () => {
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.dirname(socket)).mode & 0o777, 0o700);
  });

  it('runs realize in a worker with the same result and output as the Node CLI', () => {
    const before = status().served;
    const served = cairn(['realize', 'stages.ts']);
    assert.equal(served.code, 0, served.stderr);
    assert.equal(status().served, before + 1, 'the server ran it');
    // Output of a child process the build started with inherited stdio reaches the client.
    assert.match(served.stdout, /child-says-hi/);
    const standalone = cairn(['realize', 'stages.ts', '-q'], { CAIRN_NO_SERVER: '1' });
    assert.equal(standalone.code, 0, standalone.stderr);
    assert.equal(lastLine(served.stdout), lastLine(standalone.stdout));
    assert.equal(cairn(['catref', lastLine(served.stdout), 'v']).stdout, '{"N":1,"extra":"none","here":"first"}');
  });

  it("evaluates the stage file afresh: the client's environment, cwd and edits of imported files count", () => {
    const sub = path.join(work, 'sub');
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, 'here.txt'), 'second\n');
    fs.writeFileSync(path.join(work, 'lib.ts'), 'export const N: number = 2;\n');
    try {
      const r = cairn(['realize', '../stages.ts', '-q'], { EXTRA: 'yes' }, sub);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(cairn(['catref', lastLine(r.stdout), 'v']).stdout, '{"N":2,"extra":"yes","here":"second"}');
    } finally {
      fs.writeFileSync(path.join(work, 'lib.ts'), 'export const N: number = 1;\n');
    }
  });

  it('runs exp show, exp diff and graph (dot and svg) in a worker, with the output of the Node CLI', () => {
    const rref = lastLine(cairn(['realize', 'stages.ts', '-q']).stdout);
    for (const args of [
      ['exp', 'show', 'stages.ts', '--json'],
      ['exp', 'show', 'stages.ts', '--csv'],
      ['exp', 'diff', rref, rref],
      ['graph', 'stages.ts'],
      ['graph', 'stages.ts', '--format', 'svg'],
    ]) {
      const before = status().served;
      const served = cairn(args);
      assert.equal(served.code, 0, served.stderr);
      assert.equal(status().served, before + 1, `the server ran ${args.join(' ')}`);
      const standalone = cairn(args, { CAIRN_NO_SERVER: '1' });
      assert.equal(standalone.code, 0, standalone.stderr);
      // Ages in the CSV move on between the two runs; everything else is the same.
      const stable = (s: string): string => s.replace(/,\d{13},/g, ',T,');
      assert.equal(stable(served.stdout), stable(standalone.stdout), args.join(' '));
    }
    const bad = cairn(['graph', 'stages.ts', '--format', 'png']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /E_USAGE/);
  });

  it('passes exit statuses and errors through', () => {
    const missing = cairn(['realize', 'nope.ts']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /E_STAGE_FILE/);
    const usage = cairn(['realize', '--bogus', 'stages.ts']);
    assert.equal(usage.code, 1);
    assert.match(usage.stderr, /unknown option '--bogus'/);
    const help = cairn(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: cairn/);
  });

  it('leaves commands it does not run to the Node CLI', () => {
    const rref = lastLine(cairn(['realize', 'stages.ts', '-q']).stdout);
    const fallbacks = status().fallbacks;
    const r = cairn(['shellref', rref, '-c', 'echo "$CAIRN_RREF"'], { CAIRN_SERVER_DEBUG: '1' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), rref);
    assert.match(r.stderr, /running without the server: shellref runs in a process of its own/);
    // `cairn server status` is itself left to Node, hence two.
    assert.equal(status().fallbacks, fallbacks + 2);
  });

  it('runs commands of several clients at once, and leaves the surplus to Node', async () => {
    fs.writeFileSync(
      path.join(work, 'slowish.ts'),
      [
        "import { execSync } from 'node:child_process';",
        "import { stage } from 'cairn';",
        "export default (['a', 'b', 'c'] as const).map((k) => stage({ name: `slow-${k}`, config: { k, at: " +
          "process.env.AT }, build: () => { execSync('sleep 1'); } }));",
        '',
      ].join('\n'),
    );
    const results = await Promise.all(
      ['a', 'b', 'c', 'd'].map(
        (k) =>
          new Promise<Run>((resolve) => {
            const child = spawn(client, ['realize', 'slowish.ts', '-q'], {
              cwd: work,
              env: { ...process.env, ...env, AT: `${Date.now()}-${k}` },
            });
            let stdout = '';
            let stderr = '';
            child.stdout.setEncoding('utf8').on('data', (d: string) => {
              stdout += d;
            });
            child.stderr.setEncoding('utf8').on('data', (d: string) => {
              stderr += d;
            });
            child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
          }),
      ),
    );
    for (const r of results) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(lastLine(r.stdout).split(' ').length, 3);
    }
  });

  it('ends a command whose client is killed, with the processes its build started, and serves on', async () => {
    const pidFile = path.join(tmp.dir, 'sleeper.pid');
    fs.writeFileSync(
      path.join(work, 'hang.ts'),
      [
        "import { execSync } from 'node:child_process';",
        "import { stage } from 'cairn';",
        `export default stage({ name: 'hang', config: { t: ${Date.now()} }, build: ` +
          `() => { execSync('sleep 60 & echo $! > ${pidFile}; wait'); } });`,
        '',
      ].join('\n'),
    );
    const busyBefore = status().workers.map((w) => w.pid);
    const child = spawn(client, ['realize', 'hang.ts'], {
      cwd: work,
      env: { ...process.env, ...env },
      stdio: 'ignore',
    });
    const deadline = Date.now() + 20_000;
    while (!fs.existsSync(pidFile) || fs.readFileSync(pidFile, 'utf8').trim() === '') {
      assert.ok(Date.now() < deadline, 'the build started');
      await new Promise((r) => setTimeout(r, 50));
    }
    const sleeper = Number(fs.readFileSync(pidFile, 'utf8'));
    child.kill('SIGTERM');
    await new Promise((r) => child.on('close', r));
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    while (alive(sleeper)) {
      assert.ok(Date.now() < deadline, 'the build process was ended');
      await new Promise((r) => setTimeout(r, 50));
    }
    // The worker that ran it is replaced; the server keeps serving.
    const r = cairn(['realize', 'stages.ts', '-q']);
    assert.equal(r.code, 0, r.stderr);
    assert.notDeepEqual(
      status()
        .workers.map((w) => w.pid)
        .sort(),
      busyBefore.sort(),
    );
  });

  it(
    'SIGINT to the client alone ends the programs a served build runs in their own process groups, ' +
      'then the client exits 130',
    async () => {
      // The programs ignore SIGINT and run through exec, so they are in
      // neither the client's nor the worker's process group: the worker's
      // interrupt handling must end them (SIGTERM) before it exits.
      const pids = path.join(tmp.dir, 'int-pids');
      fs.mkdirSync(pids);
      fs.writeFileSync(
        path.join(work, 'int.ts'),
        [
          "import { stage } from 'cairn';",
          'const py = "import os, signal, sys, time\\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\\n" +',
          '  "open(sys.argv[1], \'w\').write(str(os.getpid()))\\nwhile True:\\n    time.sleep(0.02)\\n";',
          `export default stage({ name: 'intr', n: 2, config: { t: ${Date.now()} }, build: async ({ exec }) => {`,
          `  await Promise.all([0, 1].map((i) => exec('python3', ['-c', py, ${JSON.stringify(pids)} + '/pid-' + i])));`,
          '} });',
          '',
        ].join('\n'),
      );
      const child = spawn(client, ['realize', 'int.ts'], {
        cwd: work,
        env: { ...process.env, ...env },
        stdio: 'ignore',
      });
      const deadline = Date.now() + 30_000;
      const files = [0, 1].map((i) => path.join(pids, `pid-${i}`));
      while (!files.every((f) => fs.existsSync(f) && fs.readFileSync(f, 'utf8') !== '')) {
        assert.ok(Date.now() < deadline, 'the programs started');
        await new Promise((r) => setTimeout(r, 50));
      }
      const programs = files.map((f) => Number(fs.readFileSync(f, 'utf8')));
      child.kill('SIGINT');
      const [code, signal] = await new Promise<[number | null, string | null]>((r) => {
        child.on('close', (c, s) => r([c, s]));
      });
      // As with the Node CLI: the client forwards the signal and exits 130 once the worker has ended the
      // programs and removed the build's directories (it did not wait, and died of the signal, before).
      assert.deepEqual([code, signal], [130, null], 'the client exits 130 (not killed by the signal)');
      const running = (pid: number): boolean => {
        try {
          const st = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
          return !st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
        } catch {
          return false;
        }
      };
      const tmpLeft = (): string[] => {
        try {
          return fs.readdirSync(path.join(store, 'tmp'));
        } catch {
          return [];
        }
      };
      assert.deepEqual(programs.filter(running), [], 'the programs are gone when the client exits');
      assert.deepEqual(tmpLeft(), [], 'STORE/tmp is empty when the client exits');
      const drvs = fs.readdirSync(path.join(store, 'd')).filter((d) => d.endsWith('-intr'));
      for (const d of drvs) assert.deepEqual(fs.readdirSync(path.join(store, 'd', d, 'r')), [], 'nothing is stored');
    },
  );

  it('puts back what a command replaced, and waits for its timers as a process would', () => {
    fs.writeFileSync(
      path.join(work, 'noisy.ts'),
      [
        "import { stage } from 'cairn';",
        // A logger that wraps stdout, and output from a timer after the command's work is done.
        'const write = process.stdout.write.bind(process.stdout);',
        "process.stdout.write = ((s: string) => write('[wrapped] ' + s)) as typeof process.stdout.write;",
        "setTimeout(() => console.log('late line'), 200);",
        "export default stage({ name: 'noisy', config: {}, build: () => {} });",
        '',
      ].join('\n'),
    );
    const noisy = cairn(['instantiate', 'noisy.ts']);
    assert.equal(noisy.code, 0, noisy.stderr);
    assert.match(noisy.stdout, /^\[wrapped\] [0-9a-z]{32}-noisy\n\[wrapped\] late line\n$/);
    assert.deepEqual(noisy, cairn(['instantiate', 'noisy.ts'], { CAIRN_NO_SERVER: '1' }));
    // Every worker runs a plain command plainly afterwards.
    for (let i = 0; i < 3; i++) assert.doesNotMatch(cairn(['instantiate', 'stages.ts']).stdout, /wrapped/);
  });

  it("leaves a command to Node when the client's Node options or locale differ from the server's", () => {
    const r = cairn(['instantiate', 'stages.ts'], { NODE_OPTIONS: '--no-warnings', CAIRN_SERVER_DEBUG: '1' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /running without the server: the client's NODE_OPTIONS differ/);
  });

  it('never talks to a socket that another user bound', async () => {
    // Another user's "server" in a world-writable directory, answering with a forged result.
    const dir = path.join(tmp.dir, 'shared');
    fs.mkdirSync(dir, { mode: 0o777 });
    fs.chmodSync(dir, 0o777);
    fs.chmodSync(tmp.dir, 0o755);
    const fake = path.join(dir, 'fake.sock');
    const script =
      `const net = require('net'); net.createServer((c) => { c.once('data', () => { const b = ` +
      `Buffer.from('forged'); const h = Buffer.alloc(5); h.write('O'); h.writeUInt32BE(b.length, 1); ` +
      `c.end(Buffer.concat([h, b, Buffer.from('X'), Buffer.from([0, 0, 0, 1]), Buffer.from('0')])); }); }).listen(` +
      `${JSON.stringify(fake)}, () => console.log('up'));`;
    const other = spawn(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        other.stdout.once('data', () => resolve());
        other.once('exit', (c) => reject(new Error(`fake server exited ${c}`)));
      });
      const r = cairn(['instantiate', 'stages.ts'], { CAIRN_SERVER_SOCKET: fake });
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /forged/);
      assert.match(r.stdout, /-s\n$/);
    } finally {
      other.kill();
    }
  });

  it('refuses a second server on the same socket', () => {
    const r = cairn(['server', 'start', '--foreground']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /E_SERVER_RUNNING/);
  });
});

describe('cairn client without a server', () => {
  it('runs the Node CLI itself', () => {
    const tmp = tempDir('cairn-noserver');
    try {
      const env = { CAIRN_SERVER_SOCKET: path.join(tmp.dir, 'none.sock'), CAIRN_STORE: path.join(tmp.dir, 'store') };
      const r = run(client, ['realize', path.join(repoRoot, 'examples', 'ml', 'pipeline.ts'), '-q'], env, tmp.dir);
      assert.equal(r.code, 0, r.stderr);
      assert.match(lastLine(r.stdout), /^[0-9a-z]{32}-[0-9a-z]{32}-report$/);
      assert.equal(run(client, ['server', 'status'], env, tmp.dir).code, 1);
    } finally {
      tmp.cleanup();
    }
  });

  it('restarts a server of an older build and leaves that one command to Node', () => {
    // A copy of dist/ stands for an installation that gets rebuilt.
    const tmp = tempDir('cairn-rebuild');
    const env = { CAIRN_SERVER_SOCKET: path.join(tmp.dir, 'run', 's.sock'), CAIRN_STORE: path.join(tmp.dir, 'store') };
    const copy = path.join(tmp.dir, 'pkg');
    fs.cpSync(path.join(repoRoot, 'dist'), path.join(copy, 'dist'), { recursive: true });
    fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(copy, 'node_modules'));
    const bin = path.join(copy, 'dist', 'bin', 'cairn');
    try {
      assert.equal(run(bin, ['server', 'start', '--workers', '1'], env, tmp.dir).code, 0);
      const old = JSON.parse(run(bin, ['server', 'status', '--json'], env, tmp.dir).stdout) as ServerStatus;
      fs.writeFileSync(path.join(copy, 'dist', 'build-id'), 'rebuilt\n');
      const r = run(bin, ['lsref', 'zzzz'], { ...env, CAIRN_SERVER_DEBUG: '1' }, tmp.dir);
      assert.match(r.stderr, /running without the server: the server runs Cairn build/);
      assert.match(r.stderr, /E_BAD_REF/);
      let now: ServerStatus | null = null;
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        const s = run(bin, ['server', 'status', '--json'], env, tmp.dir);
        now = JSON.parse(s.stdout) as ServerStatus | null;
        if (now && now.build === 'rebuilt' && now.workers.every((w) => w.state === 'idle')) break;
        spawnSync('sleep', ['0.1']);
      }
      assert.equal(now?.build, 'rebuilt');
      assert.notEqual(now?.pid, old.pid);
    } finally {
      run(bin, ['server', 'stop'], env, tmp.dir);
      tmp.cleanup();
    }
  });
});

describe('two installations of the same build', () => {
  // Two projects, each with its own copy of the package (as npm installs it: dist/, package.json), run as
  // root with one shared TMPDIR: both default to a socket under $TMPDIR/cairn-0/.
  const tmp = tempDir('cairn-installs');
  const shared = path.join(tmp.dir, 'tmp');
  const install = (name: string): { bin: string; dist: string } => {
    const pkg = path.join(tmp.dir, name, 'node_modules', 'cairn');
    fs.mkdirSync(pkg, { recursive: true });
    fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
    fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(pkg, 'node_modules'));
    return { bin: path.join(pkg, 'dist', 'bin', 'cairn'), dist: fs.realpathSync(path.join(pkg, 'dist')) };
  };
  const a = install('a');
  const b = install('b');
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: shared, CAIRN_STORE: path.join(tmp.dir, 'store') };
  delete env.XDG_RUNTIME_DIR;
  delete env.CAIRN_SERVER_SOCKET;
  const cairn = (bin: string, args: string[], extra: NodeJS.ProcessEnv = {}): Run => {
    const r = spawnSync(bin, args, { cwd: tmp.dir, env: { ...env, ...extra }, encoding: 'utf8' });
    return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  };
  type Status = ServerStatus & { thisInstallation: boolean };
  const status = (bin: string, extra: NodeJS.ProcessEnv = {}): { code: number | null; s: Status | null } => {
    const r = cairn(bin, ['server', 'status', '--json'], extra);
    return { code: r.code, s: JSON.parse(r.stdout) as Status | null };
  };
  /** A served command (lsref of a bad ref fails the same with or without a server); the client's stderr. */
  const lsref = (bin: string, extra: NodeJS.ProcessEnv = {}): string => {
    const r = cairn(bin, ['lsref', 'zzzz'], { CAIRN_SERVER_DEBUG: '1', ...extra });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /E_BAD_REF/);
    return r.stderr;
  };
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  before(() => {
    assert.equal(process.getuid!(), 0, 'this case is about root servers in a shared TMPDIR');
    fs.mkdirSync(shared, { mode: 0o1777 });
    fs.chmodSync(shared, 0o1777);
    const r = cairn(a.bin, ['server', 'start', '--workers', '1']);
    assert.equal(r.code, 0, r.stderr);
  });

  after(() => {
    for (const i of [a, b]) cairn(i.bin, ['server', 'stop']);
    tmp.cleanup();
  });

  it("serves each installation's commands by its own server only, and stops only its own", () => {
    const sa = status(a.bin).s!;
    assert.equal(sa.install, a.dist);
    assert.equal(sa.thisInstallation, true);
    assert.equal(path.dirname(sa.socket), path.join(shared, 'cairn-0'));
    // A's client and A's server agree on the socket (the C and Node computations of the installation's key).
    lsref(a.bin);
    assert.equal(status(a.bin).s!.served, sa.served + 1, "A's command ran in A's server");
    // B has no server yet: its command runs with Node, and its status does not report A's server.
    assert.match(lsref(b.bin), /running without the server: no server/);
    assert.equal(status(a.bin).s!.served, sa.served + 1, "A's server ran none of B's commands");
    const none = cairn(b.bin, ['server', 'status']);
    assert.equal(none.code, 1);
    assert.match(none.stdout, /^no cairn server on /);
    assert.doesNotMatch(none.stdout, new RegExp(`pid ${sa.pid}\\b`));
    assert.deepEqual(status(b.bin), { code: 1, s: null });

    // B's own server, on its own socket in the same directory.
    const started = cairn(b.bin, ['server', 'start', '--workers', '1']);
    assert.equal(started.code, 0, started.stderr);
    const sb = status(b.bin).s!;
    assert.notEqual(sb.pid, sa.pid);
    assert.notEqual(sb.socket, sa.socket);
    assert.equal(sb.install, b.dist);
    // The same installation reached through a symlinked directory is the same installation.
    fs.symlinkSync(path.join(tmp.dir, 'b'), path.join(tmp.dir, 'b-link'));
    const viaLink = path.join(tmp.dir, 'b-link', path.relative(path.join(tmp.dir, 'b'), b.bin));
    assert.doesNotMatch(lsref(viaLink), /running without the server/);
    assert.doesNotMatch(lsref(b.bin), /running without the server/);
    assert.equal(status(b.bin).s!.served, sb.served + 2);
    assert.equal(status(a.bin).s!.served, sa.served + 1);

    // The text status says whose server answered.
    const text = cairn(b.bin, ['server', 'status']).stdout;
    assert.match(text, new RegExp(`pid ${sb.pid} \\(uid 0\\) on ${sb.socket}`));
    assert.match(text, new RegExp(`installation ${b.dist}, build ${sb.build}`));

    // Stopping B leaves A serving.
    assert.equal(cairn(b.bin, ['server', 'stop']).code, 0);
    assert.equal(alive(sb.pid), false);
    assert.equal(alive(sa.pid), true);
    assert.equal(status(b.bin).code, 1);
    lsref(a.bin);
    assert.equal(status(a.bin).s!.served, sa.served + 2);
  });

  it("does not serve, report or stop another installation's server on a shared CAIRN_SERVER_SOCKET", () => {
    const sa = status(a.bin).s!;
    const socket = { CAIRN_SERVER_SOCKET: sa.socket };
    assert.match(lsref(b.bin, socket), /running without the server: the server is the installation in .*\/a\//);
    assert.equal(status(a.bin).s!.served, sa.served, "A's server ran none of B's commands");
    const st = status(b.bin, socket);
    assert.equal(st.code, 1);
    assert.equal(st.s?.thisInstallation, false);
    assert.equal(st.s?.install, a.dist);
    const text = cairn(b.bin, ['server', 'status'], socket);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /^no cairn server of this installation .* another installation's/);
    assert.match(text.stdout, new RegExp(`installation ${a.dist}, build`));
    const start = cairn(b.bin, ['server', 'start', '--workers', '1'], socket);
    assert.equal(start.code, 1);
    assert.match(start.stderr, /E_SERVER_RUNNING: .* another installation's/);
    const stop = cairn(b.bin, ['server', 'stop'], socket);
    assert.equal(stop.code, 0);
    assert.match(stop.stdout, /left running another installation's/);
    assert.equal(alive(sa.pid), true);
    assert.equal(status(a.bin).s!.pid, sa.pid);
  });
});
