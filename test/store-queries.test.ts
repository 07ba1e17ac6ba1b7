/**
 * The store queries the CLI is built on (src/store/du.ts, ref-queries.ts,
 * realization-files.ts): disk use, the newest-realization rule, and reading
 * a realization's files without knowing the store's layout.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { realize, stage, instantiate, type BuildContext, type RRef, type Stage, LocalStore } from '../src/index.js';
import { refUsage, storeUsage } from '../src/store/du.js';
import { storeExistsAt } from '../src/store/exists.js';
import { localOutputDir, outputTree, readBuildLog, readRealizationFile } from '../src/store/realization-files.js';
import { allRealizations, newestRealization, realizationRecords } from '../src/store/ref-queries.js';
import { removeRef } from '../src/store/remove-ref.js';
import { drefOf, isCode, one, storePerTest } from './helpers.js';

let dir: string;
let store: LocalStore;
storePerTest('cairn-store-queries', (t) => ({ dir, store } = t));

/** A stage whose output is `size` random bytes in data.bin: every build is a new realization. */
const sized = (name: string, size: number, deps: Record<string, Stage> = {}): Stage =>
  stage({
    name,
    config: { size, ...deps },
    build: ({ out, log }: BuildContext<unknown>) => {
      log(`building ${name}`);
      fs.writeFileSync(path.join(out, 'data.bin'), randomBytes(size));
    },
  });

const build = async (s: Stage, force = false): Promise<RRef> =>
  one(await realize(instantiate(s), { store, force: force ? [s.name] : undefined }));

describe('du: storeUsage and refUsage', () => {
  it('sums the bytes of realizations by derivation, largest first, with a total', async () => {
    const small = sized('small', 100);
    const big = sized('big', 5000);
    await build(small);
    await build(small, true);
    await build(big);
    const u = storeUsage(store);
    assert.deepEqual(u.byDrv, [
      { dref: drefOf(big), bytes: 5000, count: 1 },
      { dref: drefOf(small), bytes: 200, count: 2 },
    ]);
    assert.deepEqual(u.total, { bytes: 5200, count: 3 });
  });

  it('an empty store uses nothing', () => {
    assert.deepEqual(storeUsage(store), { byDrv: [], total: { bytes: 0, count: 0 } });
  });

  it("gives a reference its own use and its closure's (what it was built from)", async () => {
    const base = sized('base', 3000);
    const top = sized('top', 10, { base });
    const rref = await build(top);
    const topUse = { own: { bytes: 10, count: 1 }, closure: { bytes: 3010, count: 2 } };
    assert.deepEqual(refUsage(store, drefOf(top)), topUse);
    assert.deepEqual(refUsage(store, rref), topUse);
    const baseUse = { own: { bytes: 3000, count: 1 }, closure: { bytes: 3000, count: 1 } };
    assert.deepEqual(refUsage(store, drefOf(base)), baseUse);
  });

  it('refuses a ref the store lacks (E_NO_SUCH_REF) and text that is no ref (E_BAD_REF)', () => {
    assert.throws(() => refUsage(store, drefOf(sized('never', 1))), isCode('E_NO_SUCH_REF'));
    assert.throws(() => refUsage(store, 'not-a-ref'), isCode('E_BAD_REF'));
  });
});

describe('ref queries: the newest realization a DRef stands for', () => {
  it('a DRef stands for its newest realization; `of` counts them', async () => {
    const s = sized('twice', 8);
    const first = await build(s);
    const second = await build(s, true);
    assert.notEqual(first, second);
    assert.deepEqual(newestRealization(store, drefOf(s)), { rref: second, of: 2 });
  });

  it('an RRef stands for itself, even when newer ones exist', async () => {
    const s = sized('pinned', 8);
    const first = await build(s);
    await build(s, true);
    assert.deepEqual(newestRealization(store, first), { rref: first, of: 1 });
  });

  it('a DRef whose realizations were all removed has none to stand for (E_NO_SUCH_REF)', async () => {
    const s = sized('gone', 8);
    store.remove(await build(s));
    assert.throws(
      () => newestRealization(store, drefOf(s)),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'E_NO_SUCH_REF');
        assert.match(e.message, /has no realizations/);
        return true;
      },
    );
  });

  it('unknown refs are refused (E_NO_SUCH_REF), whatever their kind', async () => {
    const s = sized('other', 8);
    const rref = await build(s);
    store.remove(rref);
    assert.throws(() => newestRealization(store, rref), isCode('E_NO_SUCH_REF'));
    assert.throws(() => newestRealization(store, drefOf(sized('never', 1))), isCode('E_NO_SUCH_REF'));
  });

  it('lists the realizations of a ref, and of the store, oldest first, with time and size', async () => {
    const a = sized('a', 30);
    const b = sized('b', 40);
    const a1 = await build(a);
    const b1 = await build(b);
    const a2 = await build(a, true);
    const recs = realizationRecords(store, drefOf(a));
    assert.deepEqual(
      recs.map((r) => [r.rref, r.dref, r.bytes]),
      [
        [a1, drefOf(a), 30],
        [a2, drefOf(a), 30],
      ],
    );
    assert.ok(recs[0]!.created < recs[1]!.created);
    assert.deepEqual(
      realizationRecords(store, b1).map((r) => r.rref),
      [b1],
    );
    assert.deepEqual(
      allRealizations(store).map((r) => r.rref),
      [a1, b1, a2],
    );
  });
});

describe('realization files: reading a realization without its local layout', () => {
  /** An output with a file, a subdirectory, a symlink and a name that is not UTF-8. */
  const tree = stage({
    name: 'tree',
    config: { v: 1 },
    build: ({ out, log }: BuildContext<unknown>) => {
      log('made the tree');
      fs.writeFileSync(path.join(out, 'top.txt'), 'top\n');
      fs.mkdirSync(path.join(out, 'sub'));
      fs.writeFileSync(path.join(out, 'sub', 'inner.txt'), 'inner!\n');
      fs.symlinkSync('../top.txt', path.join(out, 'sub', 'link'));
      fs.writeFileSync(Buffer.concat([Buffer.from(out + '/a'), Buffer.from([0xff])]), 'bytes\n');
    },
  });

  it('reads a file by its path in the output; null for a missing path or a directory', async () => {
    const rref = await build(tree);
    assert.equal((await readRealizationFile(store, rref, 'top.txt'))?.toString(), 'top\n');
    assert.equal((await readRealizationFile(store, rref, 'sub/inner.txt'))?.toString(), 'inner!\n');
    assert.equal((await readRealizationFile(store, rref, 'sub/../top.txt'))?.toString(), 'top\n');
    assert.equal(await readRealizationFile(store, rref, 'missing'), null);
    assert.equal(await readRealizationFile(store, rref, 'sub'), null);
  });

  it('reads a name that is not UTF-8 by its display path (a\\xff)', async () => {
    const rref = await build(tree);
    assert.equal((await readRealizationFile(store, rref, 'a\\xff'))?.toString(), 'bytes\n');
  });

  it('refuses a path that leaves the output (E_NO_SUCH_PATH): meta.json and the log are not output files', async () => {
    const rref = await build(tree);
    const outside = [
      '../meta.json',
      '../build.log',
      'sub/../../meta.json',
      '/etc/hostname',
      '../../../../etc/hostname',
    ];
    for (const rel of outside) {
      await assert.rejects(readRealizationFile(store, rref, rel), isCode('E_NO_SUCH_PATH'), rel);
    }
  });

  it('reads the build log', async () => {
    const rref = await build(tree);
    assert.match((await readBuildLog(store, rref)).toString(), /made the tree/);
  });

  it('lists the output depth first in byte order, symlinks as links, names as bytes', async () => {
    const rref = await build(tree);
    const entries = outputTree(store, rref);
    assert.deepEqual(
      entries.map((e) => [e.path.toString('latin1'), e.type, e.target?.toString() ?? null]),
      [
        ['a\xff', 'file', null],
        ['sub', 'directory', null],
        ['sub/inner.txt', 'file', null],
        ['sub/link', 'symlink', '../top.txt'],
        ['top.txt', 'file', null],
      ],
    );
    const inner = entries.find((e) => e.path.toString() === 'sub/inner.txt')!;
    assert.equal(inner.size, 7);
    // Sealed outputs are read-only.
    assert.equal(inner.mode & 0o222, 0);
  });

  it('gives local tools the output directory', async () => {
    const rref = await build(tree);
    const dir = localOutputDir(store, rref);
    assert.equal(fs.readFileSync(path.join(dir, 'top.txt'), 'utf8'), 'top\n');
  });
});

describe('removeRef: what a ref names goes', () => {
  it('an RRef removes one realization; the derivation and its other realizations stay', async () => {
    const s = sized('rm-one', 8);
    const first = await build(s);
    const second = await build(s, true);
    assert.deepEqual(removeRef(store, first), { rrefs: [first], drv: false });
    assert.deepEqual([store.has(first), store.has(second)], [false, true]);
    assert.deepEqual(newestRealization(store, drefOf(s)), { rref: second, of: 1 });
  });

  it('a DRef removes every realization and then the derivation', async () => {
    const s = sized('rm-all', 8);
    const rrefs = [await build(s), await build(s, true)];
    assert.deepEqual(removeRef(store, drefOf(s)), { rrefs, drv: true });
    assert.deepEqual(
      rrefs.map((r) => store.has(r)),
      [false, false],
    );
    assert.throws(() => realizationRecords(store, drefOf(s)), isCode('E_NO_SUCH_REF'));
  });

  it('keeps a realization others were built from, unless forced', async () => {
    const base = sized('rm-base', 8);
    const top = sized('rm-top', 8, { base });
    const topRref = await build(top);
    const baseRref = realizationRecords(store, drefOf(base))[0]!.rref;
    // The refusal's code is LocalStore.remove's (being renamed from E_USAGE in issue 15): any CairnError.
    assert.throws(
      () => removeRef(store, baseRref),
      (e: Error & { code?: string }) => e.code !== undefined,
    );
    assert.equal(store.has(baseRref), true);
    assert.deepEqual(removeRef(store, baseRref, { force: true }), { rrefs: [baseRref], drv: false });
    assert.equal(store.has(topRref), true);
  });

  it('refuses a ref the store lacks (E_NO_SUCH_REF)', () => {
    assert.throws(() => removeRef(store, drefOf(sized('never', 1))), isCode('E_NO_SUCH_REF'));
  });
});

describe('storeExistsAt: asking without creating', () => {
  it('is true for an opened store, false for a directory without one, and creates nothing', () => {
    assert.equal(storeExistsAt(path.join(dir, 'store')), true);
    const none = path.join(dir, 'none');
    assert.equal(storeExistsAt(none), false);
    assert.equal(fs.existsSync(none), false);
  });
});
