/**
 * NAR-style tree hashing: the hash covers names, types, the exec bit,
 * contents and symlink targets, and nothing else.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { CairnError } from '../src/index.js';
import { linkStaysInside, walkTree } from '../src/store/tree.js';
import { tempDir } from './helpers.js';

const { dir: base, cleanup } = tempDir('cairn-core-tree');
after(cleanup);

let counter = 0;
const fresh = (): string => {
  const d = path.join(base, `t${counter++}`);
  fs.mkdirSync(d);
  return d;
};

type Entry =
  | { kind: 'file'; path: string; content: string; exec?: boolean }
  | { kind: 'dir'; path: string }
  | { kind: 'link'; path: string; target: string };

/** Creates the entries (parents first as needed) in the given order. */
function make(entries: readonly Entry[], opts: { mode?: number } = {}): string {
  const root = fresh();
  for (const e of entries) {
    const abs = path.join(root, e.path);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    if (e.kind === 'file') fs.writeFileSync(abs, e.content, { mode: e.exec ? 0o755 : (opts.mode ?? 0o644) });
    else if (e.kind === 'dir') fs.mkdirSync(abs, { recursive: true });
    else fs.symlinkSync(e.target, abs);
    if (e.kind === 'file') fs.chmodSync(abs, e.exec ? 0o755 : (opts.mode ?? 0o644));
  }
  return root;
}

const hashOf = async (root: string): Promise<string> => (await walkTree(root, { seal: false })).treeHash;

const sample: Entry[] = [
  { kind: 'file', path: 'a.txt', content: 'alpha\n' },
  { kind: 'file', path: 'bin/run', content: '#!/bin/sh\necho hi\n', exec: true },
  { kind: 'dir', path: 'empty' },
  { kind: 'file', path: 'sub/deep/b.json', content: '{"b":1}' },
  { kind: 'link', path: 'sub/link', target: '../a.txt' },
];

describe('tree hash: same tree, same hash', () => {
  it('does not depend on creation order', async () => {
    const h1 = await hashOf(make(sample));
    const h2 = await hashOf(make([...sample].reverse()));
    const h3 = await hashOf(make([sample[3]!, sample[0]!, sample[4]!, sample[2]!, sample[1]!]));
    assert.equal(h1, h2);
    assert.equal(h1, h3);
    assert.match(h1, /^[0-9a-f]{64}$/);
  });

  it('does not depend on mtimes or atimes', async () => {
    const a = make(sample);
    const b = make(sample);
    const set = (root: string, t: number) => {
      for (const rel of ['a.txt', 'bin/run', 'empty', 'sub/deep/b.json', 'sub', 'sub/deep', 'bin', '.']) {
        fs.utimesSync(path.join(root, rel), t, t);
      }
      fs.lutimesSync(path.join(root, 'sub/link'), t, t);
    };
    set(a, 1_000_000);
    set(b, 2_000_000_000);
    assert.notEqual(fs.statSync(path.join(a, 'a.txt')).mtimeMs, fs.statSync(path.join(b, 'a.txt')).mtimeMs);
    assert.equal(await hashOf(a), await hashOf(b));
  });

  it('does not depend on non-exec mode bits (0644 vs 0600 vs 0444)', async () => {
    const files: Entry[] = [{ kind: 'file', path: 'f', content: 'x' }];
    const h = await hashOf(make(files, { mode: 0o644 }));
    assert.equal(await hashOf(make(files, { mode: 0o600 })), h);
    assert.equal(await hashOf(make(files, { mode: 0o444 })), h);
  });

  it('hashes the same before and after sealing, and reports sizes', async () => {
    const root = make(sample);
    const unsealed = await walkTree(root, { seal: false });
    const sealed = await walkTree(root, { seal: true });
    assert.equal(sealed.treeHash, unsealed.treeHash);
    assert.equal(sealed.files, 3);
    assert.equal(sealed.bytes, 'alpha\n'.length + '#!/bin/sh\necho hi\n'.length + '{"b":1}'.length);
  });

  it('a fixed tree has a pinned hash', async () => {
    const root = make([
      { kind: 'file', path: 'a.txt', content: 'hello\n' },
      { kind: 'file', path: 'sub/run.sh', content: '#!/bin/sh\n', exec: true },
      { kind: 'link', path: 'sub/link', target: '../a.txt' },
    ]);
    assert.equal(await hashOf(root), 'eb9defb92e7a56088536edd3b5845561d3516ee632f0763754a440ee3cdf01ff');
  });
});

describe('tree hash: every meaningful change changes it', () => {
  const variants: Record<string, Entry[]> = {
    'file content': sample.map((e) => (e.path === 'a.txt' ? ({ ...e, content: 'alpha!\n' } as Entry) : e)),
    'one byte appended': sample.map((e) =>
      e.path === 'sub/deep/b.json' ? ({ ...e, content: '{"b":1} ' } as Entry) : e,
    ),
    'file renamed': sample.map((e) =>
      e.path === 'a.txt'
        ? { ...e, path: 'A.txt' }
        : e.path === 'sub/link'
          ? ({ ...e, target: '../A.txt' } as Entry)
          : e,
    ),
    'file renamed, link left dangling': sample.map((e) => (e.path === 'a.txt' ? { ...e, path: 'a.text' } : e)),
    'exec bit set': sample.map((e) => (e.path === 'a.txt' ? ({ ...e, exec: true } as Entry) : e)),
    'exec bit cleared': sample.map((e) => (e.path === 'bin/run' ? ({ ...e, exec: false } as Entry) : e)),
    'symlink target': sample.map((e) => (e.kind === 'link' ? { ...e, target: './../a.txt' } : e)),
    'empty dir removed': sample.filter((e) => e.path !== 'empty'),
    'empty dir renamed': sample.map((e) => (e.path === 'empty' ? { ...e, path: 'vacant' } : e)),
    'file moved to another dir': sample.map((e) => (e.path === 'sub/deep/b.json' ? { ...e, path: 'sub/b.json' } : e)),
    'file replaced by symlink with its content as target': sample.map((e) =>
      e.path === 'a.txt' ? { kind: 'link', path: 'a.txt', target: 'alpha' } : e,
    ),
    'empty dir replaced by empty file': sample.map((e) =>
      e.path === 'empty' ? { kind: 'file', path: 'empty', content: '' } : e,
    ),
    'extra empty file': [...sample, { kind: 'file', path: 'sub/deep/zero', content: '' }],
  };

  for (const [what, entries] of Object.entries(variants)) {
    it(`changes with: ${what}`, async () => {
      assert.notEqual(await hashOf(make(entries)), await hashOf(make(sample)));
    });
  }

  it('all the variants are pairwise distinct', async () => {
    const hashes = await Promise.all(Object.values(variants).map((v) => hashOf(make(v))));
    hashes.push(await hashOf(make(sample)));
    assert.equal(new Set(hashes).size, hashes.length);
  });

  it('content split differently between two files gives a different hash (length prefixes)', async () => {
    const h1 = await hashOf(
      make([
        { kind: 'file', path: 'a', content: 'xy' },
        { kind: 'file', path: 'b', content: 'z' },
      ]),
    );
    const h2 = await hashOf(
      make([
        { kind: 'file', path: 'a', content: 'x' },
        { kind: 'file', path: 'b', content: 'yz' },
      ]),
    );
    assert.notEqual(h1, h2);
  });

  it('an empty directory differs from a directory holding an empty directory', async () => {
    assert.notEqual(await hashOf(make([])), await hashOf(make([{ kind: 'dir', path: 'e' }])));
  });
});

describe('tree hash: property over random trees', () => {
  const nameArb = fc.constantFrom('a', 'b', 'c', 'A', 'x.txt', 'é', '0');
  const entriesArb = fc
    .uniqueArray(
      fc.record({
        dirs: fc.array(fc.constantFrom('d1', 'd2'), { maxLength: 2 }),
        name: nameArb,
        content: fc.string({ maxLength: 20 }),
        exec: fc.boolean(),
      }),
      { minLength: 1, maxLength: 8, selector: (e) => e.name },
    )
    .map((list) =>
      list.map((e): Entry => ({ kind: 'file', path: [...e.dirs, e.name].join('/'), content: e.content, exec: e.exec })),
    );

  it('building the same random tree in two orders gives the same hash; changing one file changes it', async () => {
    await fc.assert(
      fc.asyncProperty(
        entriesArb,
        fc.nat(),
        fc.constantFrom('content', 'exec', 'rename'),
        async (entries, pick, how) => {
          // Drop entries whose paths collide with another entry's directory.
          const ok = entries.filter((e) => !entries.some((o) => o !== e && o.path.startsWith(`${e.path}/`)));
          const h1 = await hashOf(make(ok));
          const h2 = await hashOf(make([...ok].reverse()));
          assert.equal(h1, h2);
          const i = pick % ok.length;
          const target = ok[i] as Extract<Entry, { kind: 'file' }>;
          const changed: Entry =
            how === 'content'
              ? { ...target, content: `${target.content}!` }
              : how === 'exec'
                ? { ...target, exec: !target.exec }
                : { ...target, path: `${target.path}_renamed` };
          const mutated = ok.map((e, j) => (j === i ? changed : e));
          assert.notEqual(await hashOf(make(mutated)), h1);
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('sealing', () => {
  it('makes files 0444, executables 0555 and directories 0555', async () => {
    const root = make(sample);
    await walkTree(root, { seal: true });
    const mode = (rel: string) => fs.lstatSync(path.join(root, rel)).mode & 0o7777;
    assert.equal(mode('a.txt'), 0o444);
    assert.equal(mode('bin/run'), 0o555);
    assert.equal(mode('sub/deep/b.json'), 0o444);
    for (const d of ['.', 'bin', 'empty', 'sub', 'sub/deep']) assert.equal(mode(d), 0o555, d);
    assert.ok(
      fs.lstatSync(path.join(root, 'sub/link')).isSymbolicLink(),
      "expected: fs.lstatSync(path.join(root, 'sub/link')).isSymbolicLink()",
    );
  });

  it('breaks hard links to files outside the tree, leaving the outside file untouched', async () => {
    const outside = path.join(fresh(), 'outside.txt');
    fs.writeFileSync(outside, 'shared', { mode: 0o644 });
    fs.chmodSync(outside, 0o644);
    const root = fresh();
    fs.linkSync(outside, path.join(root, 'h'));
    assert.equal(fs.statSync(outside).nlink, 2);
    await walkTree(root, { seal: true });
    assert.equal(fs.statSync(outside).mode & 0o777, 0o644);
    assert.equal(fs.statSync(outside).nlink, 1);
    assert.equal(fs.readFileSync(path.join(root, 'h'), 'utf8'), 'shared');
    assert.equal(fs.statSync(path.join(root, 'h')).mode & 0o777, 0o444);
    assert.notEqual(fs.statSync(path.join(root, 'h')).ino, fs.statSync(outside).ino);
  });
});

describe('unsafe entries are refused with E_UNSAFE_OUTPUT', () => {
  const unsafe = async (root: string, rel?: string): Promise<void> => {
    await assert.rejects(walkTree(root, { seal: false }), (e: unknown) => {
      assert.ok(e instanceof CairnError, 'expected: e instanceof CairnError');
      assert.equal(e.code, 'E_UNSAFE_OUTPUT');
      if (rel !== undefined) assert.equal(e.details.path, rel);
      return true;
    });
  };

  it('an absolute symlink', async () => {
    await unsafe(make([{ kind: 'link', path: 'abs', target: '/etc/passwd' }]), 'abs');
  });

  it('a symlink to ../x', async () => {
    await unsafe(make([{ kind: 'link', path: 'up', target: '../x' }]), 'up');
  });

  it('a nested symlink climbing out: sub/l -> ../../x', async () => {
    await unsafe(make([{ kind: 'link', path: 'sub/l', target: '../../x' }]), 'sub/l');
  });

  it('the tricky pair s -> . and t -> s/../x', async () => {
    await unsafe(
      make([
        { kind: 'link', path: 's', target: '.' },
        { kind: 'link', path: 't', target: 's/../x' },
      ]),
      't',
    );
  });

  it('a chain through a directory symlink: d -> sub, t -> d/../../x', async () => {
    await unsafe(
      make([
        { kind: 'dir', path: 'sub' },
        { kind: 'link', path: 'd', target: 'sub' },
        { kind: 'link', path: 't', target: 'd/../../x' },
      ]),
      't',
    );
  });

  it('a FIFO', async () => {
    const root = fresh();
    const r = spawnSync('mkfifo', [path.join(root, 'pipe')]);
    assert.equal(r.status, 0);
    await unsafe(root, 'pipe');
  });

  it('safe symlinks are accepted: s -> ., sub/l -> ../a, dangling inside', async () => {
    const root = make([
      { kind: 'file', path: 'a', content: 'a' },
      { kind: 'link', path: 's', target: '.' },
      { kind: 'link', path: 'sub/l', target: '../a' },
      { kind: 'link', path: 'sub/m', target: '../s/sub/l' },
      { kind: 'link', path: 'dangling', target: 'nope/../a' },
    ]);
    await assert.doesNotReject(walkTree(root, { seal: false }));
    assert.equal(linkStaysInside(root, path.join(root, 'sub/m')), true);
    assert.equal(linkStaysInside(root, path.join(root, 's')), true);
  });
});
