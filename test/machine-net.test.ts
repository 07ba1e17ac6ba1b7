/**
 * The guest network and the guest clock on real QEMU: a `net` base reaches
 * a host HTTP server at 10.0.2.2 while a step builds and again after its
 * state is restored (tiny and debian); `restrict` cuts the way out but
 * keeps forwards in; port forwards are per run (a port chosen per run, a
 * given port that differs from the one at save time, one added while the
 * machine runs, a taken port as E_MACHINE_FORWARD); the network mode is
 * part of the base's identity; the debian guest installs a package with
 * apt-get from a repository served by the test, and the installed state
 * is cached as a step; a restored guest's clock is the host's (bug 8).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { LocalStore } from '../src/store/store.js';
import { machine, step } from '../src/stages/machine.js';
import { tiny } from '../src/stages/bases/tiny.js';
import { debian } from '../src/stages/bases/debian.js';
import type { RunningMachine } from '../src/backends/machine.js';
import { netArgs, parseForward, parseNetOption, parseUsernet } from '../src/backends/qemu/net.js';
import { clockCommand } from '../src/backends/qemu/vm.js';
import { qemuBackend } from '../src/backends/qemu/qemu-machine.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { debianFixture, type DebianFixture } from './fixtures/qemu/debian.js';
import { cairn, drefOf, expectError, isCode, isolateModuleCache, ok, tempDir } from './helpers.js';

requireQemu();
isolateModuleCache(after);
const { dir, cleanup } = tempDir('cairn-machine-net');
const store = LocalStore.open(path.join(dir, 'store'));
after(() => cleanup());

// A per-run tag, so the debian tests (in a store shared across runs) build new states.
const run = `${process.pid}-${Date.now()}`;

/** A host HTTP server on loopback (the guest sees it at 10.0.2.2:port); `files` are served by name. */
async function hostServer(
  files: Record<string, Buffer | string> | string,
): Promise<{ port: number; hits: string[]; close(): Promise<void> }> {
  const hits: string[] = [];
  const srv = http.createServer((req, res) => {
    hits.push(req.url ?? '');
    const name = decodeURIComponent((req.url ?? '/').split('?')[0]!.replace(/^\/+/, '').replace(/^\.\//, ''));
    let body: Buffer | string | undefined;
    if (typeof files === 'string') {
      // A directory: plain names only, no way out of it.
      if (/^[\w.+~%-]+$/.test(name) && fs.existsSync(path.join(files, name)))
        body = fs.readFileSync(path.join(files, name));
    } else body = files[name];
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': Buffer.byteLength(body) }).end(body);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    port: (srv.address() as net.AddressInfo).port,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        srv.closeAllConnections();
        srv.close(() => resolve());
      }),
  };
}

/** GET http://127.0.0.1:port/path from the host. */
function hostGet(port: number, p = '/'): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: p, timeout: 10_000 }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

/** A free host port (bound and released at once). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((resolve) => s.close(resolve));
  return p;
}

const sh = step<{ cmd: string; tag?: string }>({
  name: 'net.sh',
  version: '1',
  async run(vm, { cmd }) {
    await vm.exec(cmd, { check: true, shell: true, timeoutMs: 300_000 });
  },
});

const out = async (vm: RunningMachine, cmd: string): Promise<string> =>
  (await vm.exec(cmd, { check: true, timeoutMs: 60_000 })).stdout;

/** The guest's clock minus the host's, in seconds. */
async function clockSkew(vm: RunningMachine): Promise<number> {
  const guest = Number((await out(vm, 'date +%s')).trim());
  return guest - Date.now() / 1000;
}

describe('net options (no VM)', () => {
  it('parses modes and forwards, and refuses what it cannot do', () => {
    assert.deepEqual(parseNetOption(undefined), { mode: null, forwards: [] });
    assert.deepEqual(parseNetOption(true), { mode: 'user', forwards: [] });
    assert.deepEqual(parseNetOption('restrict'), { mode: 'restrict', forwards: [] });
    assert.deepEqual(parseNetOption({ restrict: true, forward: [80, '8080:22', 'udp:53'] }), {
      mode: 'restrict',
      forwards: [
        { proto: 'tcp', hostPort: 0, guestPort: 80 },
        { proto: 'tcp', hostPort: 8080, guestPort: 22 },
        { proto: 'udp', hostPort: 0, guestPort: 53 },
      ],
    });
    for (const badOpt of [
      'open',
      { mode: 'bridge' },
      { forward: ['80:'] },
      { forward: ['0'] },
      { forward: [70000] },
      { forward: ['1:2:3'] },
      { forward: [80, '8080:80'] },
      { forward: ['8080:80', '8080:81'] },
      { mode: 'user', restrict: true },
      { forward: '80' },
    ])
      assert.throws(() => parseNetOption(badOpt as never), isCode('E_BAD_ARGUMENT'), JSON.stringify(badOpt));
    assert.deepEqual(parseForward('udp:5353:53'), { proto: 'udp', hostPort: 5353, guestPort: 53 });
  });

  it('gives QEMU a virtio-net card without a ROM, forwards on loopback, restrict=on', () => {
    assert.deepEqual(netArgs('restrict', [{ proto: 'tcp', hostPort: 0, guestPort: 80 }]), [
      '-netdev',
      'user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:0-:80',
      '-device',
      'virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=',
    ]);
    const usernet =
      'Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n' +
      '  TCP[HOST_FORWARD]  14       127.0.0.1 34129       10.0.2.15    22     0     0\r\n' +
      '  TCP[ESTABLISHED]   15       10.0.2.15 40000       10.0.2.2     80     0     0\r\n' +
      '  UDP[HOST_FORWARD]   8       127.0.0.1 41403       10.0.2.15    53     0     0\r\n';
    assert.deepEqual(parseUsernet(usernet), [
      { proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 34129, guestPort: 22 },
      { proto: 'udp', hostAddr: '127.0.0.1', hostPort: 41403, guestPort: 53 },
    ]);
    assert.equal(
      clockCommand(1_700_000_000_042),
      'date -s @1700000000.042 >/dev/null 2>&1 || date -s @1700000000 >/dev/null',
    );
  });

  it('a machine.json with an unknown network mode is E_MACHINE_STATE; forwards need a network', async () => {
    const state = {
      backend: 'qemu',
      qemuVersion: '7.2.22',
      machine: 'pc-q35-7.2',
      memoryMb: 256,
      smp: 1,
      accel: 'tcg',
      accelArgs: ['-accel', 'tcg'],
      kernel: 'vmlinuz',
      initramfs: 'initramfs.cpio',
      append: '',
      memory: 'memory.bin',
      disk: null,
    };
    const work = path.join(dir, 'hostile');
    fs.mkdirSync(work);
    for (const netMode of ['tap,script=/bin/evil', 1, {}])
      await assert.rejects(qemuBackend.resume(work, { ...state, net: netMode }, work), isCode('E_MACHINE_STATE'));
    await assert.rejects(
      qemuBackend.resume(work, state, work, { forwards: [{ proto: 'tcp', hostPort: 0, guestPort: 80 }] }),
      isCode('E_BAD_ARGUMENT'),
    );
  });

  it('the network mode is part of the base identity; forwards are not', () => {
    const plain = drefOf(tiny());
    const user = drefOf(tiny({ net: true }));
    const restrict = drefOf(tiny({ net: 'restrict' }));
    assert.equal(new Set([plain, user, restrict]).size, 3);
    assert.equal(drefOf(tiny({ net: { forward: [80] } })), user);
    assert.equal(drefOf(tiny({ net: { mode: 'restrict', forward: ['8080:80'] } })), restrict);
    assert.notEqual(drefOf(debian({ net: true })), drefOf(debian()));
  });
});

describe('tiny guest network', () => {
  it('reaches a host server from a step, and again after the state is restored', async () => {
    const srv = await hostServer({ greeting: `hello-${run}\n` });
    try {
      const m = machine(tiny({ net: true })).apply(sh, {
        cmd: `wget -q -O /tmp/got http://10.0.2.2:${srv.port}/greeting`,
      });
      const state = await m.realize({ store });
      assert.equal((state.description.state as { net?: string }).net, 'user');
      assert.equal(srv.hits.length, 1);
      const seen = await m.use(
        async (vm) => ({
          saved: await out(vm, 'cat /tmp/got'),
          again: await out(vm, `wget -q -O - http://10.0.2.2:${srv.port}/greeting`),
          addr: await out(vm, "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route show default"),
        }),
        { store },
      );
      assert.equal(seen.saved, `hello-${run}\n`);
      assert.equal(seen.again, `hello-${run}\n`, 'the restored guest reaches the host again');
      assert.match(seen.addr, /inet 10\.0\.2\.15\/24\ndefault via 10\.0\.2\.2/);
      assert.equal(srv.hits.length, 2);
    } finally {
      await srv.close();
    }
  });

  it('a base without net has no network card', async () => {
    const links = await machine(tiny()).use((vm) => out(vm, 'ls /sys/class/net'), { store });
    assert.equal(links.trim(), 'lo');
  });

  it('forwards host ports: chosen per run, given, added while running, other than at the save', async () => {
    // The step's state is saved with a forward whose host port slirp chose
    // (on a base saved with none); it is then restored with a given port and
    // with none: forwards are slirp's settings, not device state.
    const serve = sh;
    const chosen = machine(tiny({ net: { forward: [80] } })).apply(serve, {
      cmd: `mkdir -p /tmp/www && echo served-${run} > /tmp/www/index.html && httpd -p 80 -h /tmp/www`,
    });
    await chosen.realize({ store });
    const a = await chosen.use(
      async (vm) => {
        assert.equal(vm.forwards?.length, 1);
        const f = vm.forwards[0]!;
        assert.deepEqual([f.proto, f.hostAddr, f.guestPort], ['tcp', '127.0.0.1', 80]);
        assert.ok(f.hostPort > 0);
        return hostGet(f.hostPort, '/index.html');
      },
      { store },
    );
    assert.equal(a, `served-${run}\n`);

    const given = await freePort();
    const fixed = machine(tiny({ net: { forward: [`${given}:80`] } })).apply(serve, {
      cmd: `mkdir -p /tmp/www && echo served-${run} > /tmp/www/index.html && httpd -p 80 -h /tmp/www`,
    });
    const b = await fixed.use(
      async (vm) => {
        assert.equal(vm.forwards![0]!.hostPort, given);
        const first = await hostGet(given, '/index.html');
        // One more, added while the machine runs.
        await vm.exec('httpd -p 8081 -h /tmp/www', { check: true });
        const extra = await vm.forward!(8081);
        assert.notEqual(extra.hostPort, given);
        return first + (await hostGet(extra.hostPort, '/index.html'));
      },
      { store },
    );
    assert.equal(b, `served-${run}\nserved-${run}\n`);
    const none = machine(tiny({ net: true })).apply(serve, {
      cmd: `mkdir -p /tmp/www && echo served-${run} > /tmp/www/index.html && httpd -p 80 -h /tmp/www`,
    });
    assert.deepEqual(await none.use((vm) => vm.forwards, { store }), []);

    // A taken host port is a stable error, not a crash.
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const taken = (holder.address() as net.AddressInfo).port;
    try {
      const clash = machine(tiny({ net: { forward: [`${taken}:80`] } })).apply(serve, {
        cmd: `mkdir -p /tmp/www && echo served-${run} > /tmp/www/index.html && httpd -p 80 -h /tmp/www`,
      });
      await assert.rejects(
        clash.use(async () => undefined, { store }),
        isCode('E_MACHINE_FORWARD'),
      );
      await assert.rejects(
        fixed.use((vm) => vm.forward!(`${taken}:8081`), { store }),
        isCode('E_MACHINE_FORWARD'),
      );
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it("'restrict' keeps the guest from the host and the outside, but forwards still come in", async () => {
    const srv = await hostServer({ greeting: 'should-not-arrive\n' });
    try {
      const m = machine(tiny({ net: { mode: 'restrict', forward: [80] } })).apply(sh, {
        cmd: 'mkdir -p /tmp/www && echo inside > /tmp/www/index.html && httpd -p 80 -h /tmp/www',
      });
      const r = await m.use(
        async (vm) => ({
          out: await vm.exec(`timeout 5 wget -q -O - http://10.0.2.2:${srv.port}/greeting`, { timeoutMs: 60_000 }),
          inside: await hostGet(vm.forwards![0]!.hostPort, '/index.html'),
        }),
        { store },
      );
      assert.notEqual(r.out.exitCode, 0);
      assert.equal(srv.hits.length, 0);
      assert.equal(r.inside, 'inside\n');
    } finally {
      await srv.close();
    }
  });

  it("sets a restored guest's clock to the host's (bug 8)", async () => {
    // The state is saved with its clock an hour behind, as a state saved an
    // hour ago would be; a restore must not bring that hour back.
    const m = machine(tiny({ net: true })).apply(sh, { cmd: `date -s @$(( $(date +%s) - 3600 ))`, tag: run });
    await m.realize({ store });
    const skew = await m.use(clockSkew, { store });
    assert.ok(Math.abs(skew) < 3, `guest clock is ${skew.toFixed(1)} s off the host's`);
    // A guest without a network too.
    const plain = machine(tiny()).apply(sh, { cmd: `date -s @$(( $(date +%s) - 3600 ))`, tag: run });
    assert.ok(Math.abs(await plain.use(clockSkew, { store })) < 3);
  });
});

describe('cairn machine --net', () => {
  it('shows the host port of each forward and refuses bad network words', () => {
    const storeDir = path.join(dir, 'cli-store');
    const r = ok(
      cairn(storeDir, ['machine', 'tiny', '--net', '--forward=80,udp:53', '+', 'shell'], {
        input: 'ip -4 addr show eth0 | grep -o "inet [0-9.]*"\n',
      }),
    );
    assert.match(r.stdout, /inet 10\.0\.2\.15/);
    assert.match(r.stderr, /machine: forward tcp 127\.0\.0\.1:\d+ -> guest port 80\n/);
    assert.match(r.stderr, /machine: forward udp 127\.0\.0\.1:\d+ -> guest port 53\n/);
    expectError(cairn(storeDir, ['machine', 'tiny', '--net=bridge']), 'E_USAGE');
    expectError(cairn(storeDir, ['machine', 'tiny', '--net', '--forward=http']), 'E_USAGE');
    expectError(cairn(storeDir, ['machine', 'tiny', '--forward']), 'E_USAGE');
  });
});

describe('debian guest network', () => {
  let fx: DebianFixture;
  const repo = path.join(dir, 'repo');
  before(
    async () => {
      fx = await debianFixture();
      // A small apt repository: hello (its only dependency, libc6, is in minbase), indexed like a mirror.
      fs.mkdirSync(repo);
      execFileSync('apt-get', ['download', 'hello'], { cwd: repo, stdio: 'ignore' });
      const index = execFileSync('dpkg-scanpackages', ['--multiversion', '.', '/dev/null'], {
        cwd: repo,
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      fs.writeFileSync(path.join(repo, 'Packages'), index);
    },
    { timeout: 900_000 },
  );

  it('installs a package with apt-get from a host repository, and caches the installed state', async () => {
    const srv = await hostServer(repo);
    const port = srv.port;
    // Only the host's repository: the guest must not need the internet.
    const apt = `apt-get -o Dir::Etc::SourceList=/etc/apt/sources.list.d/host.list -o Dir::Etc::SourceParts=/dev/null`;
    const install = {
      cmd:
        `echo 'deb [trusted=yes] http://10.0.2.2:${port} ./' > /etc/apt/sources.list.d/host.list && ` +
        `${apt} update && DEBIAN_FRONTEND=noninteractive ${apt} install -y --no-install-recommends hello`,
      tag: run,
    };
    const m = machine(debian({ net: true })).apply(sh, install);
    let builds = 0;
    const events = { built: () => void builds++ };
    try {
      await m.realize({ store: fx.store, events });
      assert.ok(builds >= 1);
      assert.ok(
        srv.hits.some((h) => h.includes('hello_')),
        `the .deb came from the host: ${srv.hits.join(' ')}`,
      );
    } finally {
      await srv.close();
    }
    // The server is gone: a second run builds nothing, and the package is there.
    builds = 0;
    await m.realize({ store: fx.store, events });
    assert.equal(builds, 0);
    const seen = await m.use(async (vm) => out(vm, 'hello; dpkg-query -W -f "\\${Status}" hello'), {
      store: fx.store,
    });
    assert.equal(seen, 'Hello, world!\ninstall ok installed');
  });

  it('reaches the host after a restore, with its clock set to the host', async () => {
    const srv = await hostServer({ greeting: `deb-${run}\n` });
    // bash's /dev/tcp: minbase has no wget or curl.
    const get =
      `(exec 3<>/dev/tcp/10.0.2.2/${srv.port} && printf 'GET /greeting HTTP/1.0\\r\\n\\r\\n' >&3 && ` +
      `tail -n 1 <&3)`;
    try {
      const m = machine(debian({ net: true })).apply(sh, {
        cmd: `${get} > /root/got; date -s @$(( $(date +%s) - 3600 ))`,
        tag: run,
      });
      await m.realize({ store: fx.store });
      const r = await m.use(
        async (vm) => ({ saved: await out(vm, 'cat /root/got'), again: await out(vm, get), skew: await clockSkew(vm) }),
        { store: fx.store },
      );
      assert.equal(r.saved, `deb-${run}\n`);
      assert.equal(r.again, `deb-${run}\n`);
      assert.ok(Math.abs(r.skew) < 3, `guest clock is ${r.skew.toFixed(1)} s off the host's`);
      assert.equal(srv.hits.length, 2);
    } finally {
      await srv.close();
    }
  });
});
