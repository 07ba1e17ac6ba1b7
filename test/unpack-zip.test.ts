/**
 * unpack of zip archives: archives from zip(1) and python's zipfile extract
 * like their tar equivalents (test/unpack-archives.test.ts), zip64 too; names
 * follow the rules in src/store/zip-format.ts (UTF-8 flag, Info-ZIP Unicode
 * path, CP437 from MS-DOS/Windows hosts, bytes otherwise); hostile archives,
 * made byte by byte (test/fixtures/zip.ts), are refused with
 * E_UNSAFE_ARCHIVE before anything is extracted; zip bombs (a size that
 * lies, a ratio deflate cannot reach, overlapping entries, the limits) and
 * damaged archives are E_BAD_ARCHIVE or E_ARCHIVE_TOO_LARGE, and nothing is
 * stored.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError, fetchlocal, realize, LocalStore, unpack, type Stage } from '../src/index.js';
import type { UnpackLimits } from '../src/stages/builtins/unpack.js';
import { storeIndex } from '../src/store/internals.js';
import { extractZip } from '../src/store/extract-zip.js';
import { tempDir, isCode, drefOf, one, storePerTest } from './helpers.js';
import { unicodePath, zipBytes, type ZipSpec, type ZipOptions } from './fixtures/zip.js';

let fx: { dir: string; cleanup: () => void };
let src: string;
const big = randomBytes(3 * 1024 * 1024); // incompressible: read through the streaming path

before(() => {
  fx = tempDir('cairn-unzip-fx');
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
storePerTest('cairn-unzip', (t) => ({ dir, store } = t));

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
const local = (archive: string): Stage => fetchlocal({ path: archive, hash: sha256File(archive) });
const listTree = (root: string, rel = ''): string[] =>
  fs
    .readdirSync(path.join(root, rel), { withFileTypes: true })
    .flatMap((e) => {
      const r = path.posix.join(rel, e.name);
      return e.isDirectory() ? [`${r}/`, ...listTree(root, r)] : [r];
    })
    .sort();

function checkPkg(out: string): void {
  assert.deepEqual(listTree(out), ['README', 'bin/', 'bin/tool', 'lib/', 'lib/big.bin', 'lib/readme-link']);
  assert.equal(fs.readFileSync(path.join(out, 'README'), 'utf8'), 'read me\n');
  assert.ok(fs.statSync(path.join(out, 'bin', 'tool')).mode & 0o100, 'bin/tool stays executable');
  assert.equal(fs.statSync(path.join(out, 'README')).mode & 0o111, 0, 'README is not executable');
  assert.deepEqual(fs.readFileSync(path.join(out, 'lib', 'big.bin')), big);
  assert.equal(fs.readlinkSync(path.join(out, 'lib', 'readme-link')), '../README');
}

/** Writes a hand-made zip into the test's directory. */
const handMade = (name: string, entries: ZipSpec[], opts?: ZipOptions): string => {
  const f = path.join(dir, name);
  fs.writeFileSync(f, zipBytes(entries, opts));
  return f;
};
const unpackOf = async (archive: string, strip = 0): Promise<string> =>
  store.outPath(one(await realize(unpack({ src: local(archive), strip }), { store })));

describe('unpack: well-formed zip archives', () => {
  it('a zip from zip(1) (deflate, a symlink, an exec bit) extracts with strip 1, and is cached', async () => {
    const archive = path.join(dir, 'pkg-1.0.zip');
    sh('zip', ['-qry', archive, 'pkg-1.0'], { cwd: src });
    checkPkg(await unpackOf(archive, 1));
    assert.deepEqual(tmpEntries(), []);
    assert.equal((await realize(unpack({ src: local(archive), strip: 1 }), { store })).builds, 0);
  });

  it('zip(1) with stored entries and forced zip64 (-0 -fz), detected from the bytes under any name', async () => {
    const archive = path.join(dir, 'stored.bin');
    sh('zip', ['-qry0', '-fz', archive, 'pkg-1.0'], { cwd: src });
    checkPkg(await unpackOf(archive, 1));
  });

  it('a hand-made zip with every size and offset in zip64 fields', async () => {
    const a = handMade(
      'z64.zip',
      [
        { name: 'dir/', mode: 0o040755, data: '' },
        { name: 'dir/a.txt', data: 'zip64 a\n' },
        { name: 'dir/run.sh', data: '#!/bin/sh\n', mode: 0o100755, method: 0 },
      ],
      { zip64: true },
    );
    const out = await unpackOf(a);
    assert.deepEqual(listTree(out), ['dir/', 'dir/a.txt', 'dir/run.sh']);
    assert.equal(fs.readFileSync(path.join(out, 'dir', 'a.txt'), 'utf8'), 'zip64 a\n');
    assert.ok(fs.statSync(path.join(out, 'dir', 'run.sh')).mode & 0o100);
  });

  it("python's zipfile: deflate, a UTF-8 name (flagged), an empty file", async () => {
    const a = path.join(dir, 'py.zip');
    sh('python3', [
      '-c',
      `import zipfile,sys
with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('caf\\u00e9/\\u65e5\\u672c.txt', 'unicode\\n')
    z.writestr('empty', '')
    z.writestr('zeros.img', b'\\0' * (4 << 20))`,
      a,
    ]);
    const out = await unpackOf(a);
    assert.deepEqual(listTree(out), ['café/', 'café/日本.txt', 'empty', 'zeros.img']);
    assert.equal(fs.statSync(path.join(out, 'zeros.img')).size, 4 << 20);
    assert.equal(fs.statSync(path.join(out, 'empty')).size, 0);
  });

  it('an empty zip gives an empty output', async () => {
    const out = await unpackOf(handMade('empty.zip', []));
    assert.deepEqual(fs.readdirSync(out), []);
  });

  it('names: Unix bytes stay, MS-DOS ones are CP437 with \\ as separator, Info-ZIP Unicode paths win', async () => {
    const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in latin1: not UTF-8
    const cp437 = Buffer.from([0x64, 0x6f, 0x73, 0x5c, 0x63, 0x61, 0x66, 0x82]); // "dos\café" in CP437
    const other = Buffer.from('plain-header-name');
    const a = handMade('names.zip', [
      { name: latin1, data: 'unix\n' },
      { name: cp437, data: 'dos\n', host: 0, mode: 0 },
      { name: other, data: 'unicode\n', extra: [unicodePath(other, 'übersicht.txt')] },
      { name: Buffer.from('bad-crc'), data: 'x\n', extra: [unicodePath(Buffer.from('other'), 'ignored.txt')] },
    ]);
    const out = await unpackOf(a);
    const names = fs.readdirSync(Buffer.from(out), { encoding: 'buffer' }).map((b) => b.toString('hex'));
    assert.ok(names.includes(latin1.toString('hex')), 'the latin1 bytes are the file name');
    assert.equal(fs.readFileSync(path.join(out, 'dos', 'café'), 'utf8'), 'dos\n');
    assert.equal(fs.readFileSync(path.join(out, 'übersicht.txt'), 'utf8'), 'unicode\n');
    assert.equal(
      fs.readFileSync(path.join(out, 'bad-crc'), 'utf8'),
      'x\n',
      'a Unicode path whose CRC differs is ignored',
    );
  });
});

describe('unpack: hostile zip archives are E_UNSAFE_ARCHIVE, and nothing is extracted or stored', () => {
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
    assert.deepEqual(fs.readdirSync(path.join(kept, 'out')), [], 'nothing was extracted, not even ok.txt');
  }
  /** A harmless entry first, the hostile one, then another harmless one. */
  const hostile = (name: string, bad: ZipSpec): string =>
    handMade(name, [{ name: 'ok.txt', data: 'harmless\n' }, bad, { name: 'after.txt', data: 'after\n' }]);
  const link = (name: string, target: string): ZipSpec => ({ name, data: target, mode: 0o120777 });

  it("an entry with a '..' path", async () => {
    await refused(hostile('dotdot.zip', { name: '../x', data: 'escaped\n' }));
  });

  it("an entry with a '..' component in the middle", async () => {
    await refused(hostile('middle.zip', { name: 'a/../../x', data: 'escaped\n' }));
  });

  it("an MS-DOS entry '..\\..\\x' (backslashes are separators there)", async () => {
    await refused(hostile('dos-dotdot.zip', { name: '..\\..\\x', data: 'escaped\n', host: 0, mode: 0 }));
  });

  it('an entry with an absolute path', async () => {
    const target = path.join(dir, 'abs-target', 'x');
    await refused(hostile('abs.zip', { name: target, data: 'escaped\n' }));
    assert.equal(fs.existsSync(target), false, 'nothing was written at the absolute path');
  });

  it('a symlink to /etc/passwd', async () => {
    await refused(hostile('abslink.zip', link('sub/link', '/etc/passwd')));
  });

  it("a symlink to '../../x' (leaves the output from sub/)", async () => {
    await refused(hostile('uplink.zip', link('sub/link', '../../x')));
  });

  it("links that escape only together ('d/l1 -> ..', then 'd/l2 -> l1/..')", async () => {
    const a = handMade('chain.zip', [link('d/l1', '..'), link('d/l2', 'l1/..')]);
    await refused(a);
  });

  it('an entry written through a symlink of the archive', async () => {
    const a = handMade('through.zip', [link('d', '.'), { name: 'd/x', data: 'via link\n' }]);
    await refused(a);
  });

  for (const [what, mode] of [
    ['a character device', 0o020644],
    ['a block device', 0o060644],
    ['a FIFO', 0o010644],
    ['a socket', 0o140644],
  ] as const) {
    it(what, async () => {
      await refused(hostile(`${what.replace(/ /g, '-')}.zip`, { name: 'node', data: '', mode }));
    });
  }

  it('a name that appears twice', async () => {
    await refused(hostile('twice.zip', { name: 'ok.txt', data: 'replaced\n' }));
  });

  it("a path that escapes only after strip ('pkg/../../x' with strip 1)", async () => {
    await refused(hostile('strip.zip', { name: 'pkg/../../x', data: 'escaped\n' }), 1);
  });

  it('a relative symlink that stays inside the output is fine', async () => {
    const out = await unpackOf(hostile('fine.zip', link('sub/link', '../ok.txt')));
    assert.equal(fs.readFileSync(path.join(out, 'sub', 'link'), 'utf8'), 'harmless\n');
    assert.equal(fs.readlinkSync(path.join(out, 'sub', 'link')), '../ok.txt');
  });
});

describe('unpack: zip bombs and damaged zips are refused, and nothing is stored', () => {
  async function fails(archive: string, code: string, why?: RegExp, limits?: UnpackLimits): Promise<void> {
    const u = unpack({ src: local(archive), ...(limits ? { limits } : {}) });
    await assert.rejects(realize(u, { store }), (e: unknown) => {
      isCode(code)(e);
      if (why) assert.match((e as Error).message, why);
      return true;
    });
    nothingStored(u);
  }

  it('a size that lies (10 bytes declared, 10 MB inside) stops at the declared size', async () => {
    const zeros = Buffer.alloc(10 << 20);
    await fails(handMade('lie.zip', [{ name: 'x', data: zeros, size: 10 }]), 'E_BAD_ARCHIVE', /more than the 10 bytes/);
  });

  it('a size that lies in a large entry (the streaming path)', async () => {
    const noise = randomBytes(2 << 20);
    const a = handMade('lie-big.zip', [{ name: 'x', data: noise, size: (1 << 20) + 5 }]);
    await fails(a, 'E_BAD_ARCHIVE', /more than the 1048581 bytes/);
  });

  it('a declared size that deflate cannot reach from the compressed size', async () => {
    const a = handMade('ratio.zip', [{ name: 'x', data: 'tiny', size: 4_000_000_000 }]);
    await fails(a, 'E_BAD_ARCHIVE', /more than deflate can produce/);
  });

  it('entries that share their data (the overlapping-files bomb)', async () => {
    const kernel = Buffer.alloc(1 << 20, 0x61);
    const a = handMade('overlap.zip', [
      { name: 'a', data: kernel },
      { name: 'a', data: kernel, sameDataAs: 0 },
    ]);
    await fails(a, 'E_BAD_ARCHIVE', /overlaps/);
  });

  it('more bytes or entries than the limits: E_ARCHIVE_TOO_LARGE from the directory', async () => {
    const a = handMade('many.zip', [
      { name: 'a', data: Buffer.alloc(600) },
      { name: 'b', data: Buffer.alloc(600) },
      { name: 'c', data: '' },
    ]);
    await fails(a, 'E_ARCHIVE_TOO_LARGE', /more than 1000 bytes/, { bytes: 1000 });
    await fails(a, 'E_ARCHIVE_TOO_LARGE', /more than 2 entries/, { entries: 2 });
  });

  it('an end record that claims more entries than the directory holds', async () => {
    await fails(handMade('count.zip', [{ name: 'a', data: 'a' }], { count: 2 }), 'E_BAD_ARCHIVE');
  });

  it('a local header that names another file than the directory', async () => {
    const a = handMade('twonames.zip', [{ name: 'innocent.txt', localName: Buffer.from('../evil'), data: 'x' }]);
    await fails(a, 'E_BAD_ARCHIVE', /names another file/);
  });

  it('a wrong CRC-32', async () => {
    await fails(handMade('crc.zip', [{ name: 'a', data: 'abc', crc: 1 }]), 'E_BAD_ARCHIVE', /CRC-32/);
  });

  it('an encrypted entry, and a method Cairn does not read (bzip2)', async () => {
    await fails(handMade('enc.zip', [{ name: 'a', data: 'abc', flags: 1 }]), 'E_BAD_ARCHIVE', /encrypted/);
    await fails(handMade('bz.zip', [{ name: 'a', data: 'abc', method: 12 }]), 'E_BAD_ARCHIVE', /12 \(bzip2\)/);
  });

  it('a truncated zip, and a zip cut just before its end record', async () => {
    const a = path.join(dir, 'cut.zip');
    sh('zip', ['-qry', a, 'pkg-1.0'], { cwd: src });
    const b = fs.readFileSync(a);
    fs.writeFileSync(a, b.subarray(0, Math.floor(b.length / 2)));
    await fails(a, 'E_BAD_ARCHIVE');
    const c = path.join(dir, 'noend.zip');
    fs.writeFileSync(c, b.subarray(0, b.length - 22));
    await fails(c, 'E_BAD_ARCHIVE');
  });

  it('an archive comment is fine; bytes appended after the end record are E_BAD_ARCHIVE', async () => {
    const a = path.join(dir, 'comment.zip');
    sh('zip', ['-qryz', a, 'pkg-1.0'], { cwd: src, input: 'a comment holding PK\x05\x06 bytes\n' });
    checkPkg(await unpackOf(a, 1));
    const b = path.join(dir, 'trailing.zip');
    fs.writeFileSync(b, Buffer.concat([fs.readFileSync(a), Buffer.from('trailing bytes')]));
    await fails(b, 'E_BAD_ARCHIVE', /no end of central directory record/);
  });

  it('a stored entry whose compressed size differs from its size', async () => {
    const a = handMade('stored-lie.zip', [{ name: 'a', data: 'abcdef', method: 0, size: 3 }]);
    await fails(a, 'E_BAD_ARCHIVE', /declares 3 bytes but holds 6/);
  });
});

describe('unpack: damaged zips, fuzzed', () => {
  it('400 zips with random bytes changed: extract or are refused with an archive code, none escape', async () => {
    const good = path.join(dir, 'fuzz-src.zip');
    sh('zip', ['-qry', good, 'pkg-1.0/README', 'pkg-1.0/bin', 'pkg-1.0/lib/readme-link'], { cwd: src });
    const hand = zipBytes(
      [
        { name: 'd/', mode: 0o040755 },
        { name: 'd/a', data: 'aaaa'.repeat(50) },
        { name: 'd/l', data: 'a', mode: 0o120777 },
      ],
      { zip64: true },
    );
    const bases = [fs.readFileSync(good), hand];
    let seed = 17;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const outcomes = new Map<string, number>();
    for (let round = 0; round < 400; round++) {
      const b = Buffer.from(bases[round % 2]!);
      for (let k = 1 + rand(4); k > 0; k--) b[rand(b.length)] = rand(256);
      const archive = path.join(dir, 'fuzz.zip');
      fs.writeFileSync(archive, b);
      const dest = path.join(dir, `fuzz-out-${round}`, 'out');
      fs.mkdirSync(dest, { recursive: true });
      let outcome = 'ok';
      try {
        await extractZip(archive, dest);
      } catch (e) {
        assert.ok(e instanceof CairnError, `round ${round}: ${String((e as Error)?.stack ?? e)}`);
        assert.ok(['E_BAD_ARCHIVE', 'E_UNSAFE_ARCHIVE', 'E_ARCHIVE_TOO_LARGE'].includes(e.code), e.code);
        outcome = e.code;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      // Nothing beside out/, and every symlink made resolves inside it.
      assert.deepEqual(fs.readdirSync(path.dirname(dest)), ['out']);
      for (const f of listTree(dest)) {
        const p = path.join(dest, f.replace(/\/$/, ''));
        if (fs.lstatSync(p).isSymbolicLink()) {
          const to = path.resolve(path.dirname(p), fs.readlinkSync(p));
          assert.ok(to === dest || to.startsWith(dest + path.sep), `round ${round}: ${f} -> ${to}`);
        }
      }
      fs.rmSync(path.dirname(dest), { recursive: true });
    }
    assert.ok((outcomes.get('E_BAD_ARCHIVE') ?? 0) > 0 && (outcomes.get('ok') ?? 0) > 0, JSON.stringify([...outcomes]));
  });
});
