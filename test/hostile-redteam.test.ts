/**
 * Red-team cases for issue 13 that the area tests did not cover: staged
 * trees received by sync or import whose metadata files are links to files
 * outside the store.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CairnError, realize, stage, LocalStore, type BuildContext, type RRef } from '../src/index.js';
import { exportClosure } from '../src/store/export.js';
import { extractTar } from '../src/store/extract.js';
import { receiveClosure } from '../src/store/receive.js';
import { walkTree } from '../src/store/tree.js';
import { verifyStore } from '../src/store/verify.js';
import { parseRRef } from '../src/store/refs.js';
import { parseManifest } from '../src/store/sync-plan.js';
import { cairn, isCode, ok, one, tempDir } from './helpers.js';

const cache = tempDir('cairn-redteam-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

const mode = (p: string): number => fs.statSync(p).mode & 0o7777;

describe('receive: staged meta.json and build.log hard-linked to files outside the store', () => {
  let t: { dir: string; cleanup: () => void };
  let rref: RRef;
  let archive: string;
  before(async () => {
    t = tempDir('cairn-redteam-receive');
    const src = LocalStore.open(path.join(t.dir, 'src'));
    try {
      const s = stage({
        name: 'logged',
        config: {},
        build: ({ out, log }: BuildContext<unknown>) => {
          log('a line of log');
          fs.writeFileSync(path.join(out, 'f'), 'content\n');
        },
      });
      rref = one(await realize(s, { store: src }));
      archive = path.join(t.dir, 'closure.tar');
      await exportClosure(src, [rref], archive);
    } finally {
      src.close();
    }
  });
  after(() => t.cleanup());

  /** A staging directory as sync leaves it, with `name` in the realization replaced by a hard link to `outside`. */
  async function staged(label: string, name: string, outside: string): Promise<string> {
    const staging = path.join(t.dir, `staging-${label}`);
    fs.mkdirSync(staging);
    await extractTar(archive, 'tar', staging);
    const p = parseRRef(rref);
    const file = path.join(staging, 'd', p.dref, 'r', p.rhash, name);
    fs.copyFileSync(file, outside);
    fs.chmodSync(outside, 0o644);
    fs.rmSync(file);
    fs.linkSync(outside, file);
    return staging;
  }

  for (const name of ['meta.json', 'build.log']) {
    it(`${name}: the outside file keeps its mode, and the store's copy is not its inode`, async () => {
      const outside = path.join(t.dir, `outside-${name}`);
      const staging = await staged(name, name, outside);
      const before = fs.readFileSync(outside);
      const store = LocalStore.open(path.join(t.dir, `store-${name}`));
      try {
        const manifest = parseManifest(JSON.parse(fs.readFileSync(path.join(staging, 'manifest.json'), 'utf8')));
        const report = await receiveClosure(store, staging, manifest);
        assert.deepEqual(report.received, [rref]);
        assert.equal(mode(outside), 0o644, 'the outside file keeps its mode');
        assert.deepEqual(fs.readFileSync(outside), before, 'and its content');
        const inStore = path.join(store.rzDir(rref), name);
        assert.notEqual(fs.statSync(inStore).ino, fs.statSync(outside).ino, 'the store holds its own copy');
        assert.equal(mode(inStore), 0o444, 'sealed');
        assert.equal(await store.inspect(rref), null, 'the realization is intact');
      } finally {
        store.close();
      }
    });
  }
});

describe('receive: a refused realization moved to quarantine is closed to other users', () => {
  it(
    'a setuid file of a sender, refused before sealing (bad ' + 'meta.json), is not reachable through quarantine/',
    async () => {
      const t = tempDir('cairn-redteam-quarantine');
      const src = LocalStore.open(path.join(t.dir, 'src'));
      const dst = LocalStore.open(path.join(t.dir, 'dst'));
      try {
        const s = stage({
          name: 'q',
          config: {},
          build: ({ out }: BuildContext<unknown>) => {
            fs.writeFileSync(path.join(out, 'tool'), '#!/bin/sh\n', { mode: 0o755 });
          },
        });
        const rref = one(await realize(s, { store: src }));
        const archive = path.join(t.dir, 'q.tar');
        await exportClosure(src, [rref], archive);
        const staging = path.join(t.dir, 'staging');
        fs.mkdirSync(staging);
        await extractTar(archive, 'tar', staging);
        // As rsync -p leaves a sender's tree: a setuid tool, and a meta.json that is refused before out/ is sealed.
        const p = parseRRef(rref);
        const rz = path.join(staging, 'd', p.dref, 'r', p.rhash);
        fs.chmodSync(path.join(rz, 'out', 'tool'), 0o4755);
        fs.writeFileSync(path.join(rz, 'meta.json'), '{}');
        const manifest = parseManifest(JSON.parse(fs.readFileSync(path.join(staging, 'manifest.json'), 'utf8')));
        await assert.rejects(receiveClosure(dst, staging, manifest), isCode('E_SYNC_HASH_MISMATCH'));
        const q = path.join(dst.root, 'quarantine');
        const [moved] = fs.readdirSync(q);
        assert.ok(moved !== undefined && fs.existsSync(path.join(q, moved, 'out', 'tool')), 'the refused tree is kept');
        assert.equal(mode(q) & 0o077, 0, 'quarantine/ is open to its owner only');
      } finally {
        src.close();
        dst.close();
        t.cleanup();
      }
    },
  );
});

describe('store verify with a stray entry in d/ whose name is not UTF-8', () => {
  it('names it by its bytes (\\xff), not U+FFFD, and --repair moves it aside', async () => {
    const t = tempDir('cairn-redteam-verify');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const stray = Buffer.concat([Buffer.from(path.join(store.root, 'd') + '/'), Buffer.from([0x6a, 0xff, 0xfe])]);
      fs.mkdirSync(stray);
      const report = await verifyStore(store);
      assert.deepEqual(
        report.problems.map((p) => [p.kind, p.ref]),
        [['unknown', 'd/j\\xff\\xfe']],
      );
      await verifyStore(store, { repair: true });
      assert.ok(!fs.existsSync(stray), 'moved to quarantine');
      assert.deepEqual((await verifyStore(store)).problems, []);
    } finally {
      store.close();
      t.cleanup();
    }
  });
});

describe('a build directory that cannot be removed does not hide the outcome', () => {
  it("a failed build holding an immutable file reports the build's error, not the cleanup's EPERM", async () => {
    const t = tempDir('cairn-redteam-leftover');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    const locked: string[] = [];
    try {
      const s = stage({
        name: 'immutable',
        config: {},
        build: ({ out }: BuildContext<unknown>) => {
          const f = path.join(out, 'f');
          fs.writeFileSync(f, 'x');
          const c = spawnSync('chattr', ['+i', f], { encoding: 'utf8' });
          assert.equal(c.status, 0, `chattr +i (needs root and ext4/xfs/btrfs): ${c.stderr}`);
          locked.push(f);
          throw new Error('failed on purpose');
        },
      });
      await assert.rejects(realize(s, { store }), (e: unknown) => {
        assert.ok(e instanceof CairnError && e.code === 'E_BUILD_FAILED', String(e));
        assert.match(e.message, /failed on purpose/);
        return true;
      });
    } finally {
      store.close();
      for (const f of locked) spawnSync('chattr', ['-i', f]);
      t.cleanup();
    }
  });
});

describe('an output that changes under the walk', () => {
  /** Fault injection: runs `before` once, just ahead of the first `call` on a path ending in `name`. */
  function interceptOnce(call: 'lstatSync' | 'openSync', name: string, before: (p: string) => void): () => void {
    const cjs = createRequire(import.meta.url)('node:fs') as Record<string, (...a: unknown[]) => unknown>;
    const real = cjs[call]!;
    let done = false;
    cjs[call] = (p: unknown, ...rest: unknown[]) => {
      if (!done && String(p).endsWith(name)) {
        done = true;
        before(String(p));
      }
      return real(p, ...rest);
    };
    syncBuiltinESMExports();
    return () => {
      cjs[call] = real;
      syncBuiltinESMExports();
    };
  }

  // The survey lstats every entry; the hash pass opens each file.
  for (const call of ['lstatSync', 'openSync'] as const) {
    it(`a file that vanishes before its ${call} is E_UNSAFE_OUTPUT, not a raw ENOENT (E_STORE_IO)`, async () => {
      const t = tempDir('cairn-redteam-vanish');
      try {
        const root = path.join(t.dir, 'out');
        fs.mkdirSync(root);
        fs.writeFileSync(path.join(root, 'victim'), 'x');
        const restore = interceptOnce(call, 'victim', (p) => fs.rmSync(p));
        try {
          await assert.rejects(walkTree(root, { seal: true }), isCode('E_UNSAFE_OUTPUT'));
        } finally {
          restore();
        }
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('names with control characters (valid UTF-8) in listings', () => {
  it('lsref shows a newline or an escape sequence in a name as \\xNN, and catref takes that form', async () => {
    const t = tempDir('cairn-redteam-ctl');
    const storeDir = path.join(t.dir, 'store');
    const store = LocalStore.open(storeDir);
    let rref: RRef;
    try {
      const s = stage({
        name: 'ctl',
        config: {},
        build: ({ out }: BuildContext<unknown>) => {
          fs.writeFileSync(path.join(out, 'a\n-r--r--r--          9  forged'), 'newline\n');
          fs.writeFileSync(path.join(out, '\x1b[2Jclear'), 'escape\n');
        },
      });
      rref = one(await realize(s, { store }));
    } finally {
      store.close();
    }
    try {
      const listed = ok(cairn(storeDir, ['lsref', rref]))
        .stdout.split('\n')
        .filter(Boolean);
      assert.equal(listed.length, 2, `one line per entry:\n${listed.join('\n')}`);
      assert.ok(
        listed.every((l) => !l.includes('\x1b')),
        'no escape byte reaches the terminal',
      );
      assert.ok(
        listed.some((l) => l.endsWith('  a\\x0a-r--r--r--          9  forged')),
        listed.join('\n'),
      );
      assert.equal(ok(cairn(storeDir, ['catref', rref, '\\x1b[2Jclear'])).stdout, 'escape\n');
    } finally {
      t.cleanup();
    }
  });
});

describe("file capabilities on a root build's output", () => {
  it('sealing drops security.capability from an executable output (setcap), which no mode bit shows', async () => {
    const t = tempDir('cairn-redteam-caps');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      const s = stage({
        name: 'capped',
        config: {},
        build: ({ out }: BuildContext<unknown>) => {
          const bin = path.join(out, 'ping-like');
          fs.copyFileSync('/bin/true', bin);
          fs.chmodSync(bin, 0o755);
          const r = spawnSync('setcap', ['cap_net_raw+ep', bin], { encoding: 'utf8' });
          // The test fails, it does not skip, where setcap is missing (libcap2-bin, scripts/system-deps.sh).
          if (r.status !== 0) throw new Error(`setcap failed: ${r.error?.message ?? r.stderr}`);
        },
      });
      const rref = one(await realize(s, { store }));
      const sealed = path.join(store.outPath(rref), 'ping-like');
      const caps = spawnSync('getcap', [sealed], { encoding: 'utf8' });
      assert.equal(caps.status, 0, caps.stderr);
      assert.equal(caps.stdout.trim(), '', `the stored file kept its capabilities: ${caps.stdout}`);
      assert.equal(mode(sealed), 0o555);
    } finally {
      store.close();
      t.cleanup();
    }
  });
});
