/**
 * ssh machines against a real host: a network namespace with its own sshd
 * (test/fixtures/ssh-host.ts). The CLI as a user runs it (chains, `+
 * shell`, what a second run does, `machine ls`, errors) and the library API
 * (upload/download of files and directories, a hostile host's tar, the
 * recorded host key, an interactive terminal).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { startSshHost, type SshHost } from './fixtures/ssh-host.js';
import { cairn, drefOf, expectError, isCode, isolateModuleCache, lastLine, ok, tempDir } from './helpers.js';
import { LocalStore } from '../src/store/store.js';
import { machine, machineBackend, readDescription } from '../src/stages/machine.js';
import { exec } from '../src/stages/machine-steps.js';
import { sshBase } from '../src/stages/bases/ssh-base.js';
import { entryHeader, padding } from '../src/store/tar-format.js';
import { CairnError } from '../src/errors.js';

isolateModuleCache(after);
let host: SshHost;
const { dir, cleanup } = tempDir('cairn-machine-ssh');
const store = path.join(dir, 'store');
/** Where the "remote" commands write: the namespace shares this filesystem, so the test can look. */
const remote = path.join(dir, 'remote');
const EVIL_USER = `cairnevil${process.pid % 100000}`;
let evilUserMade = false;

before(async () => {
  host = await startSshHost();
  fs.mkdirSync(remote, { mode: 0o777 });
});
after(async () => {
  if (evilUserMade) spawnSync('userdel', [EVIL_USER]);
  await host?.stop();
  cleanup();
});

const RREF = /^[a-z0-9]{32}-[a-z0-9]{32}-ssh$/;
const lib = (): { store: LocalStore; base: ReturnType<typeof sshBase> } => ({
  store: LocalStore.open(store),
  base: sshBase(`ssh://root@${host.addr}`, { identityFile: host.identity, knownHostsFile: host.knownHosts }),
});

describe('ssh machines from the CLI', () => {
  it('runs a chain of exec steps over ssh, and a second run runs every step again', () => {
    const log = path.join(remote, 'chain.log');
    const args = [
      'machine',
      ...host.base(),
      '+',
      'exec',
      `echo one >> ${log}; id -un`,
      '+',
      'exec',
      `echo two >> ${log}; uname -s; echo to-stderr >&2`,
    ];
    const r1 = ok(cairn(store, args));
    assert.match(lastLine(r1.stdout), RREF, 'the host record is the result');
    assert.match(r1.stderr, /exec \(transient\)> root/);
    assert.match(r1.stderr, /exec \(transient\)> Linux/);
    assert.match(r1.stderr, /to-stderr/);
    assert.equal(fs.readFileSync(log, 'utf8'), 'one\ntwo\n', 'the steps ran in order');
    const r2 = ok(cairn(store, args));
    assert.equal(lastLine(r2.stdout), lastLine(r1.stdout), 'the same host (same key) gives the same record');
    assert.doesNotMatch(r2.stderr, /built ssh/, 'the record is reused once the probe finds the same key');
    assert.equal(fs.readFileSync(log, 'utf8'), 'one\ntwo\none\ntwo\n', 'nothing is skipped: the host was not restored');
    const ls = ok(cairn(store, ['machine', 'ls', '--json']));
    const rows = JSON.parse(ls.stdout) as { rref: string; backend: string; liveHost: string | null; step: string }[];
    assert.deepEqual(
      rows.map((r) => [r.rref, r.backend, r.liveHost, r.step]),
      [[lastLine(r1.stdout), 'ssh', `ssh://root@${host.addr}`, '(base)']],
      'only the host record is stored: no step claims a state of the host',
    );
    assert.match(ok(cairn(store, ['machine', 'ls'])).stdout, /host record, not a snapshot; steps on it always run/);
  });

  it('uploads a file with the upload step, and + shell runs piped input as a script with its exit status', () => {
    const src = path.join(dir, 'up.txt');
    fs.writeFileSync(src, 'uploaded\n');
    ok(cairn(store, ['machine', ...host.base(), '+', 'upload', src, `${remote}/`]));
    assert.equal(fs.readFileSync(path.join(remote, 'up.txt'), 'utf8'), 'uploaded\n');
    const r = cairn(store, ['machine', ...host.base(), '+', 'exec', `echo before > ${remote}/sh`, '+', 'shell'], {
      input: `cat ${remote}/sh; echo sh$((6*7))ell; echo oops >&2; exit 3\n`,
    });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /^before\nsh42ell\n$/);
    assert.match(r.stderr, /oops/);
  });

  it('refuses --cache and transient on a live host instead of pretending to reuse or roll back a step', () => {
    expectError(cairn(store, ['machine', ...host.base(), '+', 'exec', 'true', '--cache=1h']), 'E_BAD_ARGUMENT', store);
    // Nor a rollback it cannot do.
    expectError(cairn(store, ['machine', ...host.base(), '+', 'transient', 'exec', 'true']), 'E_BAD_ARGUMENT', store);
  });

  it('a failing step stops the chain with E_MACHINE_EXEC and its stderr', () => {
    const after = path.join(remote, 'after-failure');
    const r = cairn(store, [
      'machine',
      ...host.base(),
      '+',
      'exec',
      'echo bad >&2; exit 7',
      '+',
      'exec',
      `touch ${after}`,
    ]);
    expectError(r, 'E_MACHINE_EXEC', store);
    assert.match(r.stderr, /exited with 7: bad/);
    assert.equal(fs.existsSync(after), false, 'the steps after it do not run');
  });

  it('an unreachable host, a host key known_hosts does not trust and a refused login have their own codes', () => {
    const marker = path.join(remote, 'must-not-exist');
    const cmd = ['+', 'exec', `touch ${marker}`];
    const refused = cairn(store, ['machine', `ssh://root@${host.addr}:2222`, ...host.base().slice(1), ...cmd]);
    expectError(refused, 'E_MACHINE_UNREACHABLE', store);
    const otherKey = path.join(dir, 'other_host_key');
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherKey]);
    const wrongKnown = path.join(dir, 'wrong_known_hosts');
    const pub = fs.readFileSync(`${otherKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    fs.writeFileSync(wrongKnown, `${host.addr} ${pub}\n`);
    const url = `ssh://root@${host.addr}`;
    const mismatch = cairn(store, [
      'machine',
      url,
      `--identity=${host.identity}`,
      `--known-hosts=${wrongKnown}`,
      ...cmd,
    ]);
    expectError(mismatch, 'E_MACHINE_HOST_KEY', store);
    const empty = path.join(dir, 'empty_known_hosts');
    fs.writeFileSync(empty, '');
    const unknown = cairn(store, ['machine', url, `--identity=${host.identity}`, `--known-hosts=${empty}`, ...cmd]);
    expectError(unknown, 'E_MACHINE_HOST_KEY', store);
    const badAuth = cairn(store, [
      'machine',
      url,
      `--identity=${otherKey}`,
      `--known-hosts=${host.knownHosts}`,
      ...cmd,
    ]);
    expectError(badAuth, 'E_MACHINE_AUTH', store);
    assert.equal(fs.existsSync(marker), false, 'nothing ran on any of them');
    expectError(cairn(store, ['machine', 'ssh://root@host/path', '+', 'exec', 'true']), 'E_UNKNOWN_BASE');
    expectError(cairn(store, ['machine', url, '--memory=512']), 'E_USAGE');
  });
});

describe('ssh machines from TypeScript', () => {
  it('a different host, port or user is a different DRef', () => {
    const a = drefOf(sshBase('ssh://root@10.200.17.2'));
    assert.notEqual(a, drefOf(sshBase('ssh://admin@10.200.17.2')));
    assert.notEqual(a, drefOf(sshBase('ssh://root@10.200.17.2:2200')));
    assert.notEqual(a, drefOf(sshBase('ssh://root@10.200.17.6')));
    assert.equal(a, drefOf(sshBase('ssh://root@10.200.17.2/')));
  });

  it('uploads and downloads files and directories, names as bytes, links as links', async () => {
    const { store: s, base } = lib();
    const src = path.join(dir, 'tree');
    fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(src, 'sub', 'f'), 'deep\n');
    fs.writeFileSync(path.join(src, 'x.sh'), '#!/bin/sh\n', { mode: 0o755 });
    fs.symlinkSync('sub/f', path.join(src, 'link'));
    const rtree = path.join(remote, 'rtree');
    const binName = Buffer.from([0x6e, 0xff, 0x01, 0x2e]); // not UTF-8
    const back = path.join(dir, 'back');
    fs.mkdirSync(back);
    await machine(base).use(
      async (vm) => {
        await vm.upload(src, rtree); // a new name: the directory itself
        await vm.upload(src, `${remote}/`); // into a directory: remote/tree
        await vm.upload(path.join(src, 'x.sh'), `${remote}/x-copy.sh`);
        await vm.exec(`printf 'bytes' > ${rtree}/"$(printf 'n\\377\\001.')"`, { check: true });
        await vm.download(rtree, back); // into an existing directory: back/rtree
        await vm.download(`${remote}/x-copy.sh`, path.join(dir, 'x-back.sh'));
        await assert.rejects(vm.download(`${remote}/nope`, path.join(dir, 'nope')), isCode('E_MACHINE_EXEC'));
        await assert.rejects(vm.download(rtree, back), isCode('E_BAD_ARGUMENT'), 'never merges into a directory');
        await assert.rejects(vm.download('/', back), isCode('E_BAD_ARGUMENT'));
        // A link that leaves the tree is refused, as unpack refuses it: the whole download, before any write.
        await vm.exec(`mkdir ${remote}/abs && ln -s /etc/hostname ${remote}/abs/l`, { check: true });
        await assert.rejects(vm.download(`${remote}/abs`, back), isCode('E_UNSAFE_ARCHIVE'));
        await assert.rejects(vm.exec('pwd', { shell: true }), isCode('E_BAD_ARGUMENT'));
      },
      { store: s },
    );
    for (const t of [rtree, path.join(remote, 'tree')]) {
      assert.equal(fs.readFileSync(path.join(t, 'sub', 'f'), 'utf8'), 'deep\n');
      assert.equal(fs.readlinkSync(path.join(t, 'link')), 'sub/f', 'a link is uploaded as a link');
    }
    assert.equal(fs.statSync(path.join(remote, 'x-copy.sh')).mode & 0o777, 0o755);
    const got = path.join(back, 'rtree');
    assert.equal(fs.readFileSync(path.join(got, 'sub', 'f'), 'utf8'), 'deep\n');
    assert.equal(fs.readlinkSync(path.join(got, 'link')), 'sub/f', 'a downloaded link stays a link');
    assert.equal(fs.existsSync(path.join(back, 'abs')), false);
    const names = fs.readdirSync(got, { encoding: 'buffer' });
    assert.ok(
      names.some((n) => n.equals(binName)),
      'a name that is not UTF-8 arrives byte for byte',
    );
    assert.equal(fs.readFileSync(Buffer.concat([Buffer.from(got + '/'), binName]), 'utf8'), 'bytes');
    assert.equal(fs.readFileSync(path.join(dir, 'x-back.sh'), 'utf8'), '#!/bin/sh\n');
    assert.equal(fs.statSync(path.join(dir, 'x-back.sh')).mode & 0o111, 0o111, 'the exec bit is kept');
  });

  it('a hostile host cannot write outside the download or send more than was asked', async () => {
    // A real login whose shell answers the download's tar with a crafted archive. The user must reach
    // its shell and authorized_keys (sshd reads them as the user).
    fs.chmodSync(dir, 0o711);
    fs.chmodSync(host.dir, 0o711);
    const evilTar = path.join(dir, 'evil.tar');
    const evilShell = path.join(dir, 'evil-shell');
    fs.writeFileSync(
      evilShell,
      `#!/bin/sh\ncase "$2" in *"exec tar -c"*) cat ${evilTar}; exit 0 ;; esac\nexec /bin/sh "$@"\n`,
      { mode: 0o755 },
    );
    const add = spawnSync('useradd', ['-M', '-d', dir, '-s', evilShell, '-p', '*', EVIL_USER], { encoding: 'utf8' });
    assert.equal(add.status, 0, add.stderr);
    evilUserMade = true;
    const base = sshBase(`ssh://${EVIL_USER}@${host.addr}`, {
      identityFile: host.identity,
      knownHostsFile: host.knownHosts,
    });
    const file = (name: string, body: string): Buffer =>
      Buffer.concat([
        entryHeader({ path: Buffer.from(name), type: 'file', size: body.length, mode: 0o644 }),
        Buffer.from(body),
        Buffer.alloc(padding(body.length)),
      ]);
    const tarOf = (...parts: Buffer[]): Buffer => Buffer.concat([...parts, Buffer.alloc(1024)]);
    const outside = path.join(dir, 'escaped');
    const dest = path.join(dir, 'evil-dest');
    fs.mkdirSync(dest);
    await machine(base).use(
      async (vm) => {
        assert.equal((await vm.exec('id -un', { check: true })).stdout.trim(), EVIL_USER);
        fs.writeFileSync(evilTar, tarOf(file('victim/../../escaped', 'x')));
        await assert.rejects(vm.download('/any/victim', dest), isCode('E_UNSAFE_ARCHIVE'));
        fs.writeFileSync(evilTar, tarOf(file('victim', 'ok'), file('extra', 'more')));
        await assert.rejects(vm.download('/any/victim', dest), isCode('E_UNSAFE_ARCHIVE'));
        // A link to a directory outside, then a file "through" it.
        const link = entryHeader({
          path: Buffer.from('victim'),
          type: 'symlink',
          mode: 0o777,
          linkpath: Buffer.from(dir),
        });
        fs.writeFileSync(evilTar, tarOf(link, file('victim/escaped', 'x')));
        await assert.rejects(vm.download('/any/victim', dest), (e: unknown) => e instanceof CairnError);
      },
      { store: LocalStore.open(store) },
    );
    assert.equal(fs.existsSync(outside), false, 'nothing was written outside the destination');
    assert.deepEqual(fs.readdirSync(dest), [], 'a refused download leaves nothing behind');
    assert.deepEqual(
      fs.readdirSync(dir).filter((n) => n.startsWith('.cairn-download')),
      [],
      'nor its scratch directory',
    );
  });

  it('pins the recorded host key: a re-keyed host gets a new record, and the old one is refused', async () => {
    const { store: s, base } = lib();
    const before = await machine(base).realize({ store: s });
    assert.match(before.description.state.hostKey as string, /^ssh-ed25519 SHA256:/);
    await host.rekey(); // known_hosts now trusts only the new key
    const { base: again } = lib();
    const after = await machine(again).realize({ store: s });
    assert.notEqual(after.rref, before.rref, 'a new host key is a new host record');
    assert.equal(drefOf(again), drefOf(base), 'the same target keeps its DRef');
    const backend = await machineBackend('ssh');
    const d = readDescription(before.dir);
    await assert.rejects(backend.resume(before.dir, d.state, dir), isCode('E_MACHINE_HOST_KEY'));
    // The new record works: known_hosts trusts the new key.
    await machine(again)
      .apply(exec, { cmd: `touch ${remote}/rekeyed` })
      .realize({ store: s });
    assert.equal(fs.existsSync(path.join(remote, 'rekeyed')), true);
  });

  it('has a console with send/expect, and attaches a terminal (a pty on the host) until the shell exits', async () => {
    const { store: s, base } = lib();
    const input = new PassThrough();
    const output = new PassThrough();
    let seen = '';
    output.on('data', (b: Buffer) => (seen += b.toString()));
    await machine(base).use(
      async (vm) => {
        await vm.console.send('X=41; echo "val=$((X+1))"\n');
        assert.equal(await vm.console.expect(/val=\d+/), 'val=42');
        await vm.console.send('echo "still $X"\n');
        assert.equal(await vm.console.expect(/still \d+/), 'still 41', 'one shell across sends');
        const done = vm.console.attach!(input, output);
        input.write('tty >/dev/null && echo has-a-tty-$((40+2))\n');
        input.write('exit\n');
        await done;
      },
      { store: s },
    );
    assert.match(seen, /has-a-tty-42/);
  });
});
