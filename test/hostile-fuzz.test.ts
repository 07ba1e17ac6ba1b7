/**
 * The hostile-tree fuzz test (issue 13): random trees of files,
 * directories, symlinks (relative chains, absolute, through parent
 * directories, dangling), hard links and names of arbitrary bytes, each
 * sent through every way a tree from outside enters the store:
 *
 *  1. a build's out/ (the build writes the tree, hard links to a file
 *     outside included);
 *  2. `unpack` of the tree as a tar archive, and 3. as a tar.zst archive;
 *  4. `cairn import` of an export file holding the tree as a realization.
 *
 * Invariants, for every case and path:
 *  - a sentinel directory outside the store, and a file next to the
 *    store, are unchanged in content, modes and links;
 *  - the case either stores a realization that is exactly the tree (its
 *    tree hash equals an independent implementation of the hash, and a
 *    one-byte change gives another hash and another RRef), or fails with a
 *    coded error and stores nothing, leaving STORE/tmp empty;
 *  - a tree with a link that escapes (judged by an independent physical
 *    resolver), or an archive with a `..`, absolute or fifo entry, is
 *    refused; a safe tree is accepted.
 *
 * CAIRN_FUZZ_RUNS sets the number of cases (default 2000, the issue's floor).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  importClosure,
  instantiate,
  isCairnError,
  realize,
  stage,
  LocalStore,
  unpack,
  type RRef,
  type Stage,
} from '../src/index.js';
import { realizationHash, contextHash } from '../src/store/store.js';
import { makeRRef, parseRRef, type DRef } from '../src/store/refs.js';
import { tempDir } from './helpers.js';
import {
  caseArb,
  dirMember,
  escapes,
  fileMember,
  materialize,
  modelOf,
  readTree,
  sameTree,
  snapshot,
  tarArchive,
  tarMembers,
  treeHash,
  type Case,
  type Entry,
  type Node,
} from './fixtures/hostile/trees.js';
import { storeIndex } from '../src/store/internals.js';

const RUNS = Number(process.env.CAIRN_FUZZ_RUNS ?? 2000);

const work = tempDir('cairn-fuzz');
after(() => work.cleanup());
const sentinelDir = path.join(work.dir, 'sentinel');
const sentinelFile = path.join(sentinelDir, 'secret');
const SECRET = Buffer.from(`SENTINEL-SECRET-${process.pid}-${Date.now()}\n`);
fs.mkdirSync(path.join(sentinelDir, 'sub'), { recursive: true });
fs.writeFileSync(sentinelFile, SECRET, { mode: 0o644 });
fs.writeFileSync(path.join(sentinelDir, 'sub', 'inner'), 'inner\n', { mode: 0o600 });
fs.symlinkSync('secret', path.join(sentinelDir, 'link-to-secret'));
const storeRoot = path.join(work.dir, 'store');
const nextToStore = path.join(work.dir, 'next-to-store');
fs.writeFileSync(nextToStore, 'next to the store\n', { mode: 0o640 });
const outside = { sentinelDir, sentinelFile };
/** What an archive carries for a build's hard link to the outside (an archive cannot link outside itself). */
const COPIED = Buffer.from('a copy of an outside file\n');

/** Everything outside the store: must never change. */
fs.mkdirSync(path.join(work.dir, 'archives'));
const outsideNow = (): string[] => snapshot(work.dir, (n) => n === 'store' || n === 'archives');
const before = outsideNow();

const store = LocalStore.open(storeRoot);
after(() => store.close());

// ---- encoding a case into a stage config (JSON) ----

type WireEntry = { k: string; p: string[]; d?: string; x?: boolean; t?: string; to?: string[] | 'outside' };
const b64 = (b: Buffer): string => b.toString('base64');
const unb64 = (s: string): Buffer => Buffer.from(s, 'base64');
const toWire = (es: Entry[]): WireEntry[] =>
  es.map((e) => {
    const p = e.path.map(b64);
    if (e.kind === 'dir') return { k: 'dir', p };
    if (e.kind === 'file') return { k: 'file', p, d: b64(e.data), x: e.exec };
    if (e.kind === 'symlink') return { k: 'symlink', p, t: b64(e.target) };
    return { k: 'hardlink', p, to: e.to === 'outside' ? 'outside' : e.to.map(b64) };
  });
const fromWire = (ws: WireEntry[]): Entry[] =>
  ws.map((w): Entry => {
    const p = w.p.map(unb64);
    if (w.k === 'dir') return { kind: 'dir', path: p };
    if (w.k === 'file') return { kind: 'file', path: p, data: unb64(w.d!), exec: w.x! };
    if (w.k === 'symlink') return { kind: 'symlink', path: p, target: unb64(w.t!) };
    return { kind: 'hardlink', path: p, to: w.to === 'outside' ? 'outside' : (w.to as string[]).map(unb64) };
  });

let seq = 0;

/** The stage whose build writes the case's tree into out/. */
function builtStage(entries: Entry[]): Stage {
  return stage({
    name: 'fuzz-built',
    config: { seq: ++seq, tree: toWire(entries), outside: sentinelFile },
    build: ({ config, out }) => {
      materialize({ entries: fromWire(config.tree), attacks: [] }, out, config.outside);
    },
  });
}

/** A stage holding an archive's bytes, and the unpack stage over it. */
function unpackStages(archive: Buffer, file: string): { src: Stage; target: Stage } {
  const src = stage({
    name: 'fuzz-archive',
    config: { seq: ++seq, file, bytes: b64(archive) },
    build: ({ config, out }) => {
      fs.writeFileSync(path.join(out, config.file), unb64(config.bytes));
    },
  });
  return { src, target: unpack({ src, file, name: 'fuzz-unpacked' }) };
}

// ---- checks ----

type Outcome = { ok: true; rref: RRef } | { ok: false; code: string; message: string };

async function realizeOne(target: Stage): Promise<Outcome> {
  try {
    const r = await realize(target, { store, jobs: 1 });
    return { ok: true, rref: r.targets[0]!.rrefs[0]! };
  } catch (e) {
    if (!isCairnError(e)) throw new Error(`not a coded error: ${(e as Error)?.stack ?? String(e)}`);
    return { ok: false, code: e.code, message: e.message };
  }
}

function tmpLeft(): string[] {
  return fs.readdirSync(path.join(storeRoot, 'tmp'));
}

function outBuffer(rref: RRef): Buffer {
  return Buffer.from(store.outPath(rref));
}

/** No stored file holds the sentinel's secret (nothing was read from outside into the store). */
function holdsSecret(n: Node): boolean {
  if (n.kind === 'file') return n.data.includes(SECRET);
  if (n.kind === 'dir') return [...n.children.values()].some(holdsSecret);
  return false;
}

function assertOutsideUnchanged(label: string): void {
  assert.deepEqual(outsideNow(), before, `${label}: something outside the store changed`);
}

type Expect = 'accept' | 'refuse' | 'either';

function expectation(model: Node, c: Case): Expect {
  const v = escapes(model);
  if (v === 'escapes') return 'refuse';
  if (c.attacks.some((a) => a.kind === 'dotdot' || a.kind === 'absolute' || a.kind === 'fifo')) return 'refuse';
  if (c.attacks.length > 0 || v === 'unclear') return 'either';
  return 'accept';
}

/**
 * `refused` names what a refusal must not have stored: the derivation that failed (no realization of it)
 * or, for an import, the realization the file carried (neither indexed nor on disk, nor its derivation).
 */
function check(
  label: string,
  expect: Expect,
  got: Outcome,
  model: Node | null,
  refused: { dref: DRef } | { rref: RRef },
  mayHoldSecret = false,
): void {
  assertOutsideUnchanged(label);
  assert.deepEqual(tmpLeft(), [], `${label}: STORE/tmp is not empty`);
  if (expect === 'accept')
    assert.ok(got.ok, `${label}: a safe tree was refused (${!got.ok ? `${got.code}: ${got.message}` : ''})`);
  if (expect === 'refuse') assert.ok(!got.ok, `${label}: a hostile tree was accepted`);
  if (got.ok) {
    const stored = readTree(outBuffer(got.rref));
    if (!mayHoldSecret) assert.ok(!holdsSecret(stored), `${label}: the store took in the content of a file outside it`);
    const meta = store.readMeta(got.rref);
    assert.equal(meta.tree, treeHash(stored), `${label}: the stored tree hash is not the hash of the stored tree`);
    if (model && expect !== 'either')
      assert.ok(sameTree(stored, model), `${label}: the stored tree differs from the input`);
  } else {
    if ('dref' in refused) {
      assert.equal(
        storeIndex(store).realizationsOf(refused.dref).length,
        0,
        `${label}: the refused derivation has a realization`,
      );
    } else {
      const { dref } = parseRRef(refused.rref);
      assert.ok(
        !store.has(refused.rref) && !fs.existsSync(store.rzDir(refused.rref)),
        `${label}: a refused import stored its realization`,
      );
      assert.ok(!fs.existsSync(store.drvDir(dref)), `${label}: a refused import left its derivation`);
    }
  }
}

/** A one-byte change of a file's content or of a leaf's name (null when the tree has neither). */
function mutate(entries: Entry[]): Entry[] | null {
  const i = entries.findIndex((e) => e.kind === 'file' && e.data.length > 0);
  if (i >= 0) {
    const e = entries[i] as Extract<Entry, { kind: 'file' }>;
    const data = Buffer.from(e.data);
    data[0] = data[0]! ^ 1;
    return entries.map((x, j) => (j === i ? { ...e, data } : x));
  }
  const leaf = entries.findIndex(
    (e) =>
      e.kind === 'file' &&
      !entries.some((o) => o.kind === 'hardlink' && o.to !== 'outside' && o.to.every((c, k) => c.equals(e.path[k]!))),
  );
  if (leaf < 0) return null;
  const e = entries[leaf]!;
  const last = Buffer.from(e.path[e.path.length - 1]!);
  // Appending a byte keeps the name unique among its siblings only if no sibling has that name: check.
  const renamed = Buffer.concat([last, Buffer.from([0xfe])]);
  const siblings = entries.filter(
    (o) => o.path.length === e.path.length && o.path.slice(0, -1).every((c, k) => c.equals(e.path[k]!)),
  );
  if (siblings.some((o) => o.path[o.path.length - 1]!.equals(renamed))) return null;
  return entries.map((x, j) => (j === leaf ? { ...x, path: [...x.path.slice(0, -1), renamed] } : x));
}

function zstd(data: Buffer): Buffer {
  const r = spawnSync('zstd', ['-q', '-c'], { input: data, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr.toString()}`);
  return r.stdout;
}

/** An export file (as `cairn export` writes: manifest.json, drv.json, the realization) holding the tree. */
function exportFile(c: Case, model: Node, n: number): { file: string; rref: RRef } {
  const s = stage({ name: 'fuzz-imported', config: { n }, build: () => {} });
  const node = instantiate(s).nodes.values().next().value!;
  const tree = treeHash(model);
  let files = 0;
  let bytesTotal = 0;
  const count = (m: Node): void => {
    if (m.kind === 'file') {
      files++;
      bytesTotal += m.data.length;
    }
    if (m.kind === 'dir') for (const ch of m.children.values()) count(ch);
  };
  count(model);
  const rhash = realizationHash(node.dref, {}, tree);
  const rref = makeRRef(rhash, node.dref);
  const meta = {
    format: 'cairn-realization-1',
    rref,
    dref: node.dref,
    name: node.name,
    context: {},
    ctx: contextHash({}),
    tree,
    bytes: bytesTotal,
    files,
    created: 1,
    buildMs: 1,
  };
  const manifest = { format: 'cairn-closure-1', roots: [rref], rrefs: [rref], drvs: [node.dref], drefs: [node.dref] };
  const rz = `d/${node.dref}/r/${rhash}`;
  const members = [
    ...fileMember('manifest.json', JSON.stringify(manifest)),
    ...dirMember('d'),
    ...dirMember(`d/${node.dref}`),
    ...fileMember(`d/${node.dref}/drv.json`, `${node.drvJson}\n`),
    ...dirMember(`d/${node.dref}/r`),
    ...dirMember(rz),
    ...fileMember(`${rz}/meta.json`, JSON.stringify(meta)),
    ...dirMember(`${rz}/out`),
    ...tarMembers(c, Buffer.from(`${rz}/out/`), outside, COPIED),
  ];
  const file = path.join(work.dir, 'archives', `import-${n}.tar`);
  fs.writeFileSync(file, tarArchive(members));
  return { file, rref };
}

describe('hostile trees, fuzzed through build, unpack (tar, tar.zst) and import', () => {
  it(`${RUNS} generated cases keep every invariant`, async () => {
    let n = 0;
    const tally = { accepted: 0, refused: 0 };
    await fc.assert(
      fc.asyncProperty(caseArb(outside), async (c) => {
        n++;
        // 1. A build's out/.
        const builtModel = modelOf(c, SECRET);
        const bExpect = expectation(builtModel, { ...c, attacks: [] });
        const built = builtStage(c.entries);
        const bDref = instantiate(built).targets[0]!;
        const b = await realizeOne(built);
        check(`case ${n} build`, bExpect, b, builtModel, { dref: bDref }, true);
        if (b.ok) {
          assert.equal(
            store.readMeta(b.rref).tree,
            treeHash(builtModel),
            `case ${n} build: tree hash differs from the specification's`,
          );
          const changed = mutate(c.entries);
          if (changed) {
            const m = await realizeOne(builtStage(changed));
            if (m.ok) {
              assert.notEqual(
                store.readMeta(m.rref).tree,
                store.readMeta(b.rref).tree,
                `case ${n}: a one-byte change kept the tree hash`,
              );
              assert.notEqual(m.rref, b.rref);
            }
            assertOutsideUnchanged(`case ${n} build (changed)`);
          }
        }
        // 2, 3. unpack as tar and as tar.zst; the archive's model has copies for outside hard links.
        const tarModel = modelOf(c, COPIED);
        const tExpect = expectation(tarModel, c);
        const tar = tarArchive(tarMembers(c, Buffer.alloc(0), outside, COPIED));
        for (const [file, bytes] of [
          ['a.tar', tar],
          ['a.tar.zst', zstd(tar)],
        ] as const) {
          const { src, target } = unpackStages(bytes, file);
          await realize(src, { store, jobs: 1 });
          const uDref = instantiate(target).targets[0]!;
          const u = await realizeOne(target);
          check(`case ${n} unpack ${file}`, tExpect, u, tarModel, { dref: uDref });
          if (u.ok && tExpect === 'accept') assert.equal(store.readMeta(u.rref).tree, treeHash(tarModel));
          if (u.ok) tally.accepted++;
          else tally.refused++;
        }
        // 4. import of an export file.
        const exp = exportFile(c, tarModel, n);
        let imp: Outcome;
        try {
          await importClosure(store, exp.file);
          imp = { ok: true, rref: exp.rref };
        } catch (e) {
          if (!isCairnError(e))
            throw new Error(`case ${n} import: not a coded error: ${(e as Error)?.stack ?? String(e)}`);
          imp = { ok: false, code: e.code, message: e.message };
        }
        fs.rmSync(exp.file);
        check(`case ${n} import`, tExpect, imp, tarModel, { rref: exp.rref });
      }),
      { numRuns: RUNS, endOnFailure: true },
    );
    assert.ok(n >= RUNS, `ran ${n} cases`);
    // Both outcomes must have happened, or the generator is not doing its job.
    assert.ok(
      tally.accepted > RUNS / 10 && tally.refused > RUNS / 10,
      `accepted ${tally.accepted}, refused ${tally.refused}`,
    );
  });
});
