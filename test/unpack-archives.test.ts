/**
 * unpack: tar, tar.gz, tar.xz, tar.bz2, tar.zst and .deb archives (built by
 * the tests) extract correctly, with strip; hostile archives (built with
 * python3's tarfile, since node-tar sanitizes what it creates) are refused
 * with E_UNSAFE_ARCHIVE before anything is extracted; damaged ones are
 * E_BAD_ARCHIVE.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tar from 'tar';
import { CairnError, fetchlocal, fetchurl, realize, LocalStore, unpack, type Stage } from '../src/index.js';
import { tempDir, isCode, drefOf, one, storePerTest } from './helpers.js';
import { TestServer, serveRange } from './fixtures/fetch/server.js';
import { storeIndex } from '../src/store/internals.js';

/** Archives built once for the whole file. */
let fx: { dir: string; cleanup: () => void };
let src: string;
const big = randomBytes(200 * 1024);

before(async () => {
  fx = tempDir('cairn-unpack-fx');
  src = path.join(fx.dir, 'src');
  const pkg = path.join(src, 'pkg-1.0');
  fs.mkdirSync(path.join(pkg, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(pkg, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(pkg, 'README'), 'read me\n');
  fs.writeFileSync(path.join(pkg, 'bin', 'tool'), '#!/bin/sh\necho tool\n', { mode: 0o755 });
  fs.writeFileSync(path.join(pkg, 'lib', 'big.bin'), big);
  fs.symlinkSync('../README', path.join(pkg, 'lib', 'readme-link'));
});
after(() => fx.cleanup());

let dir: string;
let store: LocalStore;
storePerTest('cairn-unpack', (t) => ({ dir, store } = t));

const sh = (cmd: string, args: string[], opts: { cwd?: string; input?: string } = {}): void => {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed: ${r.stderr}${r.error ? String(r.error) : ''}`);
};
const tmpEntries = (): string[] => {
  try {
    return fs.readdirSync(path.join(store.root, 'tmp'));
  } catch {
    return [];
  }
};
const nothingStored = (s: Stage): void => {
  const dref = drefOf(s);
  assert.deepEqual(storeIndex(store).realizationsOf(dref), [], 'no realization may be indexed');
  let dirs: string[] = [];
  try {
    dirs = fs.readdirSync(path.join(store.root, 'd', dref, 'r'));
  } catch {
    /* none */
  }
  assert.deepEqual(dirs, [], 'no realization directory may exist');
  assert.deepEqual(tmpEntries(), [], 'STORE/tmp must be empty');
};
const sha256File = (f: string): string => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
/** The archive as a store input: fetchlocal with its real sha256. */
const local = (archive: string): Stage => fetchlocal({ path: archive, hash: sha256File(archive) });
/** Relative paths of everything under root (directories end with /). */
const listTree = (root: string, rel = ''): string[] =>
  fs
    .readdirSync(path.join(root, rel), { withFileTypes: true })
    .flatMap((e) => {
      const r = path.posix.join(rel, e.name);
      return e.isDirectory() ? [`${r}/`, ...listTree(root, r)] : [r];
    })
    .sort();

/** Checks the unpacked pkg-1.0 tree (after strip 1) at `out`. */
function checkPkg(out: string): void {
  assert.deepEqual(listTree(out), ['README', 'bin/', 'bin/tool', 'lib/', 'lib/big.bin', 'lib/readme-link']);
  assert.equal(fs.readFileSync(path.join(out, 'README'), 'utf8'), 'read me\n');
  assert.equal(fs.readFileSync(path.join(out, 'bin', 'tool'), 'utf8'), '#!/bin/sh\necho tool\n');
  assert.ok(fs.statSync(path.join(out, 'bin', 'tool')).mode & 0o100, 'bin/tool stays executable');
  assert.deepEqual(fs.readFileSync(path.join(out, 'lib', 'big.bin')), big);
  assert.equal(fs.readlinkSync(path.join(out, 'lib', 'readme-link')), '../README');
}

describe('unpack: well-formed archives', () => {
  it('a tar.gz (node-tar) extracts with strip 1', async () => {
    const archive = path.join(dir, 'pkg-1.0.tar.gz');
    await tar.c({ gzip: true, file: archive, cwd: src, portable: true }, ['pkg-1.0']);
    const u = unpack({ src: local(archive), strip: 1 });
    assert.equal(u.name, 'pkg-1.0.tar.gz-unpacked');
    const rref = one(await realize(u, { store }));
    checkPkg(store.outPath(rref));
    assert.deepEqual(tmpEntries(), []);
    const again = await realize(unpack({ src: local(archive), strip: 1 }), { store });
    assert.equal(again.builds, 0);
  });

  it('a tar.gz without strip keeps the top directory', async () => {
    const archive = path.join(dir, 'keep.tar.gz');
    await tar.c({ gzip: true, file: archive, cwd: src, portable: true }, ['pkg-1.0']);
    const rref = one(await realize(unpack({ src: local(archive) }), { store }));
    assert.deepEqual(fs.readdirSync(store.outPath(rref)), ['pkg-1.0']);
    checkPkg(path.join(store.outPath(rref), 'pkg-1.0'));
  });

  it('a tar.xz (system tar + xz) extracts with strip 1', async () => {
    const archive = path.join(dir, 'pkg-1.0.tar.xz');
    sh('tar', ['-cJf', archive, '-C', src, 'pkg-1.0']);
    const rref = one(await realize(unpack({ src: local(archive), strip: 1 }), { store }));
    checkPkg(store.outPath(rref));
  });

  it('a tar.bz2, a tar.zst and a plain tar extract with strip 1', async () => {
    for (const [name, flags] of [
      ['p.tar.bz2', ['-cjf']],
      ['p.tar.zst', ['--zstd', '-cf']],
      ['p.tar', ['-cf']],
    ] as const) {
      const archive = path.join(dir, name);
      sh('tar', [...flags, archive, '-C', src, 'pkg-1.0']);
      const rref = one(await realize(unpack({ src: local(archive), strip: 1 }), { store }));
      checkPkg(store.outPath(rref));
    }
  });

  it('the format is detected from the bytes, not the file name', async () => {
    const archive = path.join(dir, 'misnamed.zip');
    sh('tar', ['-cJf', archive, '-C', src, 'pkg-1.0']);
    const rref = one(await realize(unpack({ src: local(archive), strip: 1 }), { store }));
    checkPkg(store.outPath(rref));
  });

  it('fetchurl then unpack, over HTTP', async () => {
    const server = await TestServer.start();
    try {
      const archive = path.join(dir, 'dl.tar.gz');
      await tar.c({ gzip: true, file: archive, cwd: src, portable: true }, ['pkg-1.0']);
      const body = fs.readFileSync(archive);
      const url = server.route('/dist/pkg-1.0.tar.gz', (req, res) => serveRange(req, res, body));
      const u = unpack({ src: fetchurl({ url, hash: sha256File(archive) }), strip: 1 });
      const r = await realize(u, { store });
      assert.equal(r.builds, 2);
      checkPkg(store.outPath(one(r)));
    } finally {
      await server.close();
    }
  });
});

describe('unpack: Debian packages', () => {
  function debTree(root: string): void {
    fs.mkdirSync(path.join(root, 'DEBIAN'), { recursive: true });
    fs.writeFileSync(
      path.join(root, 'DEBIAN', 'control'),
      'Package: hello-cairn\nVersion: 1.0\nArchitecture: all\nMaintainer: ' +
        'Test <t@example.org>\nDescription: test package\n',
    );
    fs.mkdirSync(path.join(root, 'usr', 'bin'), { recursive: true });
    fs.mkdirSync(path.join(root, 'usr', 'share', 'hello-cairn'), { recursive: true });
    fs.writeFileSync(path.join(root, 'usr', 'bin', 'hello-cairn'), '#!/bin/sh\necho hello\n', { mode: 0o755 });
    fs.writeFileSync(path.join(root, 'usr', 'share', 'hello-cairn', 'greeting.txt'), 'hello, cairn\n');
  }
  const checkDebData = (out: string): void => {
    assert.deepEqual(listTree(out), [
      'usr/',
      'usr/bin/',
      'usr/bin/hello-cairn',
      'usr/share/',
      'usr/share/hello-cairn/',
      'usr/share/hello-cairn/greeting.txt',
    ]);
    assert.equal(
      fs.readFileSync(path.join(out, 'usr', 'share', 'hello-cairn', 'greeting.txt'), 'utf8'),
      'hello, cairn\n',
    );
    assert.ok(fs.statSync(path.join(out, 'usr', 'bin', 'hello-cairn')).mode & 0o100);
  };

  it('a .deb built with dpkg-deb (data.tar.xz) has its data files extracted, not its control files', async () => {
    const root = path.join(dir, 'debroot');
    debTree(root);
    const deb = path.join(dir, 'hello-cairn_1.0_all.deb');
    sh('dpkg-deb', ['--root-owner-group', '-Zxz', '-b', root, deb]);
    const rref = one(await realize(unpack({ src: local(deb) }), { store }));
    checkDebData(store.outPath(rref));
  });

  it('a .deb assembled with ar (debian-binary, control.tar.xz, data.tar.xz)', async () => {
    const root = path.join(dir, 'debroot2');
    debTree(root);
    const work = path.join(dir, 'ar');
    fs.mkdirSync(work);
    fs.writeFileSync(path.join(work, 'debian-binary'), '2.0\n');
    sh('tar', ['-cJf', path.join(work, 'control.tar.xz'), '-C', path.join(root, 'DEBIAN'), '.']);
    sh('tar', ['-cJf', path.join(work, 'data.tar.xz'), '-C', root, '--exclude=./DEBIAN', '.']);
    const deb = path.join(dir, 'manual.deb');
    sh('ar', ['rc', deb, 'debian-binary', 'control.tar.xz', 'data.tar.xz'], { cwd: work });
    const rref = one(await realize(unpack({ src: local(deb) }), { store }));
    checkDebData(store.outPath(rref));
  });

  it('an ar archive with no data.tar member is E_BAD_ARCHIVE', async () => {
    const work = path.join(dir, 'ar2');
    fs.mkdirSync(work);
    fs.writeFileSync(path.join(work, 'debian-binary'), '2.0\n');
    fs.writeFileSync(path.join(work, 'notes.txt'), 'no data here\n');
    const deb = path.join(dir, 'nodata.deb');
    sh('ar', ['rc', deb, 'debian-binary', 'notes.txt'], { cwd: work });
    const u = unpack({ src: local(deb) });
    await assert.rejects(realize(u, { store }), isCode('E_BAD_ARCHIVE'));
    nothingStored(u);
  });

  /** An ar archive by hand: `members` as [name, size field, data]. */
  function arFile(file: string, members: [string, string, Buffer][]): void {
    const parts: Buffer[] = [Buffer.from('!<arch>\n')];
    for (const [name, size, data] of members) {
      const h = Buffer.alloc(60, 0x20);
      h.write(name, 0, 'latin1');
      h.write('0', 16);
      h.write('0', 28);
      h.write('0', 34);
      h.write('100644', 40);
      h.write(size, 48, 'latin1');
      h.write('`\n', 58, 'latin1');
      parts.push(h, data, Buffer.alloc(data.length % 2));
    }
    fs.writeFileSync(file, Buffer.concat(parts));
  }

  it('a member with a negative size is E_BAD_ARCHIVE, not an endless loop (red team)', async () => {
    const deb = path.join(dir, 'negative.deb');
    arFile(deb, [['debian-binary', '-60', Buffer.alloc(0)]]);
    const u = unpack({ src: local(deb) });
    await assert.rejects(realize(u, { store }), isCode('E_BAD_ARCHIVE'));
    nothingStored(u);
  });

  it("a member named 'data.tar/../../x' is not written outside the build's directory (red team)", async () => {
    const tarFile = path.join(dir, 'inner.tar');
    await tar.c({ file: tarFile, cwd: src }, ['pkg-1.0/README']);
    const deb = path.join(dir, 'climb.deb');
    arFile(deb, [['data.tar/../../x', String(fs.statSync(tarFile).size), fs.readFileSync(tarFile)]]);
    const u = unpack({ src: local(deb) });
    await assert.rejects(realize(u, { store }), isCode('E_BAD_ARCHIVE'));
    nothingStored(u);
  });
});

/**
 * Writes a tar with python3's tarfile: first a harmless `ok.txt`, then the
 * hostile entry. `kind` picks the entry; `arg` is its path or link target.
 */
function hostileTar(out: string, kind: string, arg = '', gz = false): void {
  const py = `
import io, sys, tarfile
out, kind, arg, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def add(t, name, data=None, **kw):
    ti = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)
with tarfile.open(out, mode) as t:
    add(t, 'ok.txt', b'harmless\\n')
    if kind == 'file':
        add(t, arg, b'escaped\\n')
    elif kind == 'symlink':
        add(t, 'sub/link', type=tarfile.SYMTYPE, linkname=arg)
    elif kind == 'hardlink':
        add(t, 'hard', type=tarfile.LNKTYPE, linkname=arg)
    elif kind == 'chr':
        add(t, 'null', type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    elif kind == 'blk':
        add(t, 'disk', type=tarfile.BLKTYPE, devmajor=7, devminor=0)
    elif kind == 'fifo':
        add(t, 'pipe', type=tarfile.FIFOTYPE)
    add(t, 'after.txt', b'after\\n')
`;
  sh('python3', ['-c', py, out, kind, arg, gz ? 'w:gz' : 'w']);
}

describe('unpack: hostile archives are E_UNSAFE_ARCHIVE, and nothing is extracted or stored', () => {
  /** Realizes unpack(archive) keeping the failed build directory, and checks that nothing came out of it. */
  async function refused(archive: string, strip = 0): Promise<void> {
    const u = unpack({ src: local(archive), strip });
    let kept: string | undefined;
    await assert.rejects(realize(u, { store, keepFailed: true }), (e: unknown) => {
      isCode('E_UNSAFE_ARCHIVE')(e);
      kept = (e as CairnError).details.kept as string | undefined;
      return true;
    });
    nothingStored(u);
    assert.ok(kept && fs.existsSync(kept), 'the failed build directory was kept');
    assert.deepEqual(fs.readdirSync(kept).sort(), ['build.log', 'out'], 'nothing was written beside out/');
    assert.deepEqual(
      fs.readdirSync(path.join(kept, 'out')),
      [],
      'nothing was extracted, not even the harmless entry before the bad one',
    );
  }

  it("an entry with a '..' path", async () => {
    const a = path.join(dir, 'dotdot.tar');
    hostileTar(a, 'file', '../x');
    await refused(a);
  });

  it("an entry with a '..' component in the middle", async () => {
    const a = path.join(dir, 'middle.tar.gz');
    hostileTar(a, 'file', 'a/../../x', true);
    await refused(a);
  });

  it('an entry with an absolute path', async () => {
    const target = path.join(dir, 'abs-target', 'x');
    const a = path.join(dir, 'abs.tar');
    hostileTar(a, 'file', target);
    await refused(a);
    assert.equal(fs.existsSync(target), false, 'nothing was written at the absolute path');
  });

  it('a symlink to /etc/passwd', async () => {
    const a = path.join(dir, 'abslink.tar');
    hostileTar(a, 'symlink', '/etc/passwd');
    await refused(a);
  });

  it("a symlink to '../../x' (leaves the output from sub/)", async () => {
    const a = path.join(dir, 'uplink.tar');
    hostileTar(a, 'symlink', '../../x');
    await refused(a);
  });

  it("a hard link to '../x'", async () => {
    const a = path.join(dir, 'hardup.tar');
    hostileTar(a, 'hardlink', '../x');
    await refused(a);
  });

  it('a hard link to an absolute path', async () => {
    const victim = path.join(dir, 'victim.txt');
    fs.writeFileSync(victim, 'victim\n', { mode: 0o644 });
    const a = path.join(dir, 'hardabs.tar');
    hostileTar(a, 'hardlink', victim);
    await refused(a);
    const st = fs.statSync(victim);
    assert.equal(st.nlink, 1, 'the victim was not hard-linked into the build');
    assert.equal(st.mode & 0o777, 0o644, 'the victim was not sealed read-only');
  });

  it('a character device', async () => {
    const a = path.join(dir, 'chr.tar');
    hostileTar(a, 'chr');
    await refused(a);
  });

  it('a block device', async () => {
    const a = path.join(dir, 'blk.tar');
    hostileTar(a, 'blk');
    await refused(a);
  });

  it('a FIFO', async () => {
    const a = path.join(dir, 'fifo.tar.gz');
    hostileTar(a, 'fifo', '', true);
    await refused(a);
  });

  it("a path that escapes only after strip ('pkg/../../x' with strip 1)", async () => {
    const a = path.join(dir, 'strip.tar');
    hostileTar(a, 'file', 'pkg/../../x');
    await refused(a, 1);
  });

  it('a .deb whose data.tar holds a hostile entry', async () => {
    const work = path.join(dir, 'evil-deb');
    fs.mkdirSync(work);
    fs.writeFileSync(path.join(work, 'debian-binary'), '2.0\n');
    hostileTar(path.join(work, 'control.tar.gz'), 'file', 'control', true);
    hostileTar(path.join(work, 'data.tar.gz'), 'file', '../../etc/evil', true);
    const deb = path.join(dir, 'evil.deb');
    sh('ar', ['rc', deb, 'debian-binary', 'control.tar.gz', 'data.tar.gz'], { cwd: work });
    await refused(deb);
  });

  it('a relative symlink that stays inside the output is fine', async () => {
    const a = path.join(dir, 'fine.tar');
    hostileTar(a, 'symlink', '../ok.txt'); // sub/link -> ../ok.txt == ok.txt
    const rref = one(await realize(unpack({ src: local(a) }), { store }));
    assert.equal(fs.readFileSync(path.join(store.outPath(rref), 'sub', 'link'), 'utf8'), 'harmless\n');
  });
});

describe('unpack: damaged archives are E_BAD_ARCHIVE', () => {
  async function bad(archive: string): Promise<void> {
    const u = unpack({ src: local(archive) });
    await assert.rejects(realize(u, { store }), isCode('E_BAD_ARCHIVE'));
    nothingStored(u);
  }
  const truncate = (file: string, to: (n: number) => number): void => {
    const b = fs.readFileSync(file);
    fs.writeFileSync(file, b.subarray(0, to(b.length)));
  };

  it('random bytes (no known format)', async () => {
    const a = path.join(dir, 'garbage.tar.gz');
    fs.writeFileSync(a, randomBytes(4096));
    await bad(a);
  });

  it('a gzip header followed by garbage', async () => {
    const a = path.join(dir, 'fakegz.tar.gz');
    fs.writeFileSync(a, Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x00]), randomBytes(4096)]));
    await bad(a);
  });

  it('a truncated tar.gz', async () => {
    const a = path.join(dir, 'cut.tar.gz');
    await tar.c({ gzip: true, file: a, cwd: src, portable: true }, ['pkg-1.0']);
    truncate(a, (n) => Math.floor(n / 2));
    await bad(a);
  });

  it('a truncated tar.xz', async () => {
    const a = path.join(dir, 'cut.tar.xz');
    sh('tar', ['-cJf', a, '-C', src, 'pkg-1.0']);
    truncate(a, (n) => Math.floor(n / 2));
    await bad(a);
  });

  it('a truncated plain tar (cut in the middle of an entry)', async () => {
    const a = path.join(dir, 'cut.tar');
    sh('tar', ['-cf', a, '-C', src, 'pkg-1.0']);
    truncate(a, (n) => Math.floor(n / 2));
    await bad(a);
  });

  it('a truncated .deb', async () => {
    const root = path.join(dir, 'debroot3');
    fs.mkdirSync(path.join(root, 'DEBIAN'), { recursive: true });
    fs.writeFileSync(
      path.join(root, 'DEBIAN', 'control'),
      'Package: cut\nVersion: 1\nArchitecture: all\nMaintainer: T <t@e.org>\nDescription: d\n',
    );
    fs.mkdirSync(path.join(root, 'opt'));
    fs.writeFileSync(path.join(root, 'opt', 'big.bin'), big);
    const deb = path.join(dir, 'cut.deb');
    sh('dpkg-deb', ['--root-owner-group', '-Zxz', '-b', root, deb]);
    truncate(deb, (n) => n - 1000);
    await bad(deb);
  });
});

/**
 * Writes a tar with python3's tarfile from a list of entries; names and link
 * targets are bytes (hex on the way to python), so non-UTF-8 names and hostile
 * layouts can be built. `zst` compresses it with zstd afterwards.
 */
interface PyEntry {
  name: string | Buffer;
  type: 'file' | 'dir' | 'sym' | 'hard';
  link?: string | Buffer;
  data?: string;
  mode?: number;
}
function pyTar(out: string, entries: PyEntry[], zst = false): string {
  const hex = (s: string | Buffer | undefined): string => Buffer.from(s ?? '').toString('hex');
  const spec = entries.map((e) => ({
    name: hex(e.name),
    type: e.type,
    link: hex(e.link),
    data: hex(e.data ?? ''),
    mode: e.mode ?? 0o644,
  }));
  const py = `
import io, json, sys, tarfile
out, spec = sys.argv[1], json.loads(sys.stdin.read())
s = lambda h: bytes.fromhex(h).decode('utf-8', 'surrogateescape')
types = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE, 'sym': tarfile.SYMTYPE, 'hard': tarfile.LNKTYPE}
with tarfile.open(out, 'w', format=tarfile.GNU_FORMAT, encoding='utf-8', errors='surrogateescape') as t:
    for e in spec:
        ti = tarfile.TarInfo(s(e['name']))
        ti.type, ti.linkname, ti.mode = types[e['type']], s(e['link']), e['mode']
        data = bytes.fromhex(e['data'])
        ti.size = len(data) if e['type'] == 'file' else 0
        t.addfile(ti, io.BytesIO(data) if e['type'] == 'file' else None)
`;
  const tarFile = zst ? `${out}.tmp.tar` : out;
  sh('python3', ['-c', py, tarFile], { input: JSON.stringify(spec) });
  if (zst) {
    sh('zstd', ['-q', '--rm', '-f', tarFile, '-o', out]);
  }
  return out;
}

/** Realizes unpack(archive) expecting `code`, keeping the failed build: nothing may be stored or extracted. */
async function refusedWith(
  code: string,
  archive: string,
  opts: { strip?: number; limits?: { bytes?: number; entries?: number } } = {},
): Promise<void> {
  const u = unpack({ src: local(archive), ...opts });
  let kept: string | undefined;
  await assert.rejects(realize(u, { store, keepFailed: true }), (e: unknown) => {
    isCode(code)(e);
    kept = (e as CairnError).details.kept as string | undefined;
    return true;
  });
  nothingStored(u);
  assert.ok(kept && fs.existsSync(kept), 'the failed build directory was kept');
  assert.deepEqual(fs.readdirSync(kept).sort(), ['build.log', 'out'], 'nothing was written beside out/');
  assert.deepEqual(fs.readdirSync(path.join(kept, 'out')), [], 'nothing was extracted');
}

/**
 * Links that read as inside on paper and climb out on disk: `DEEP/up` is the
 * output's root (30 '..' from 30 levels down), and `far` goes from `DEEP/up`
 * 31 levels up, which on paper returns to the root and on disk reaches '/'.
 */
const DEEP = Array.from({ length: 30 }, (_, i) => `d${i}`).join('/');
const chainEntries = (): PyEntry[] => [
  { name: `${DEEP}/up`, type: 'sym', link: '../'.repeat(30) },
  { name: 'far', type: 'sym', link: `${DEEP}/up/${'../'.repeat(31)}` },
];

describe('unpack: links judged by where they really resolve (issue 13)', () => {
  for (const zst of [false, true]) {
    const ext = zst ? 'tar.zst' : 'tar';
    it(`a symlink chain inside on paper, outside on disk (${ext})`, async () => {
      const entries: PyEntry[] = [{ name: 'ok.txt', type: 'file', data: 'x' }, ...chainEntries()];
      await refusedWith('E_UNSAFE_ARCHIVE', pyTar(path.join(dir, `chain.${ext}`), entries, zst));
    });

    it(`a hard link through that chain to a file outside (${ext}): the victim is untouched`, async () => {
      const victim = path.join(dir, 'victim.txt');
      fs.writeFileSync(victim, 'victim\n', { mode: 0o644 });
      await refusedWith(
        'E_UNSAFE_ARCHIVE',
        pyTar(
          path.join(dir, `hardchain.${ext}`),
          [...chainEntries(), { name: 'h', type: 'hard', link: `far${victim}` }],
          zst,
        ),
      );
      const st = fs.statSync(victim);
      assert.equal(st.nlink, 1, 'the victim was not hard-linked into the build');
      assert.equal(st.mode & 0o777, 0o644, 'the victim was not sealed read-only');
    });

    it(`a file entry written through the planted chain (${ext}): the sentinel outside is untouched`, async () => {
      const sentinel = path.join(dir, 'sentinel.txt');
      fs.writeFileSync(sentinel, 'sentinel\n');
      await refusedWith(
        'E_UNSAFE_ARCHIVE',
        pyTar(
          path.join(dir, `writechain.${ext}`),
          [...chainEntries(), { name: `far${sentinel}`, type: 'file', data: 'pwned\n' }],
          zst,
        ),
      );
      assert.equal(fs.readFileSync(sentinel, 'utf8'), 'sentinel\n');
    });
  }

  it('a hard link entry through a symlink (inside) is refused', async () => {
    await refusedWith(
      'E_UNSAFE_ARCHIVE',
      pyTar(path.join(dir, 'hardsym.tar'), [
        { name: 'dir/', type: 'dir' },
        { name: 'dir/a', type: 'file', data: 'a' },
        { name: 'ln', type: 'sym', link: 'dir' },
        { name: 'h', type: 'hard', link: 'ln/a' },
      ]),
    );
  });

  it('an archive that plants a symlink, then a file entry through it', async () => {
    await refusedWith(
      'E_UNSAFE_ARCHIVE',
      pyTar(path.join(dir, 'plant.tar'), [
        { name: 'ok.txt', type: 'file', data: 'x' },
        { name: 'real/', type: 'dir' },
        { name: 'ln', type: 'sym', link: 'real' },
        { name: 'ln/x', type: 'file', data: 'through\n' },
      ]),
    );
  });

  it('a name given twice is refused rather than silently replaced', async () => {
    await refusedWith(
      'E_UNSAFE_ARCHIVE',
      pyTar(path.join(dir, 'dup.tar'), [
        { name: 'a', type: 'file', data: 'first' },
        { name: 'a', type: 'file', data: 'second' },
      ]),
    );
  });
});

describe('unpack: names are bytes (issue 13)', () => {
  it('non-UTF-8 names and link targets come out exactly (tar and tar.zst), with the same RRef', async () => {
    const raw = Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x2e, 0x74, 0x78, 0x74]); // "caf\xe9.txt" in latin1
    const rrefs: string[] = [];
    for (const zst of [false, true]) {
      const a = pyTar(
        path.join(dir, zst ? 'bytes.tar.zst' : 'bytes.tar'),
        [
          { name: Buffer.concat([Buffer.from('pkg/'), raw]), type: 'file', data: 'latin1 name\n' },
          { name: 'pkg/link', type: 'sym', link: raw },
          { name: 'pkg/hard', type: 'hard', link: Buffer.concat([Buffer.from('pkg/'), raw]) },
        ],
        zst,
      );
      const rref = one(await realize(unpack({ src: local(a), strip: 1 }), { store }));
      const out = store.outPath(rref);
      const names = fs.readdirSync(out, { encoding: 'buffer' }).sort(Buffer.compare);
      assert.deepEqual(names, [raw, Buffer.from('hard'), Buffer.from('link')].sort(Buffer.compare));
      assert.equal(fs.readFileSync(Buffer.concat([Buffer.from(`${out}/`), raw]), 'utf8'), 'latin1 name\n');
      assert.deepEqual(fs.readlinkSync(path.join(out, 'link'), { encoding: 'buffer' }), raw);
      assert.equal(fs.readFileSync(path.join(out, 'hard'), 'utf8'), 'latin1 name\n');
      rrefs.push(rref.split('/')[1]!);
    }
    assert.equal(rrefs[0], rrefs[1], 'the same tree, whatever the compression');
  });
});

/** unpack({ src: fetchurl(a.tar.gz, aaa…), strip: 1 }) as computed before limits existed (commit 78b7f69). */
const OLD_DREF = '7186gqw3vcm28xk9khw12413jd5x9m85-a.tar.gz-unpacked';

describe('unpack: limits (issue 13 item 8)', () => {
  /** ~50 MB of zeros in a tar.zst of a few KB. */
  function bomb(): string {
    const a = path.join(dir, 'zeros.tar.zst');
    const root = path.join(dir, 'bomb');
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, 'zeros.bin'), Buffer.alloc(50 * 1024 * 1024));
    sh('tar', ['--zstd', '-cf', a, '-C', root, 'zeros.bin']);
    fs.rmSync(root, { recursive: true });
    assert.ok(fs.statSync(a).size < 100 * 1024, 'a small archive');
    return a;
  }

  it('more bytes than the stage allows is E_ARCHIVE_TOO_LARGE, and nothing is stored', async () => {
    await refusedWith('E_ARCHIVE_TOO_LARGE', bomb(), { limits: { bytes: 4 * 1024 * 1024 } });
  });

  it('more entries than the stage allows is E_ARCHIVE_TOO_LARGE, and nothing is stored', async () => {
    const entries: PyEntry[] = Array.from({ length: 20 }, (_, i) => ({ name: `f${i}`, type: 'file', data: 'x' }));
    await refusedWith('E_ARCHIVE_TOO_LARGE', pyTar(path.join(dir, 'many.tar'), entries), { limits: { entries: 10 } });
  });

  it('within the limits it unpacks; without an override the DRef is what it was before limits existed', async () => {
    const a = bomb();
    const limits = { bytes: 60 * 1024 * 1024, entries: 2 };
    const rref = one(await realize(unpack({ src: local(a), limits }), { store }));
    assert.equal(fs.statSync(path.join(store.outPath(rref), 'zeros.bin')).size, 50 * 1024 * 1024);
    const fixed = fetchurl({ url: 'http://example.invalid/a.tar.gz', hash: 'a'.repeat(64) });
    assert.equal(drefOf(unpack({ src: fixed, strip: 1 })), OLD_DREF);
    assert.equal(drefOf(unpack({ src: fixed, strip: 1, limits: {} })), OLD_DREF);
    assert.notEqual(drefOf(unpack({ src: fixed, strip: 1, limits: { bytes: 1 } })), OLD_DREF);
  });

  it('a malformed override is E_BAD_STAGE_SPEC', () => {
    const src = fetchurl({ url: 'http://example.invalid/a', hash: 'a'.repeat(64) });
    assert.throws(() => unpack({ src, limits: { bytes: -1 } }), isCode('E_BAD_STAGE_SPEC'));
  });
});
