/**
 * The Store conformance suite: one set of tests that every implementation
 * of the `Store` interface (src/store/interface.ts) must pass, written
 * against the interface only. A backend runs it with a harness that knows
 * how to make a fresh store of its kind (see `StoreHarness`); everything
 * specific to a backend (where it lives, how it collects garbage, whether
 * it keeps file modes) stays in the harness.
 *
 * Processes are real: the concurrency and crash cases run child processes
 * (test/store-conformance-child.ts) that open the same store through the
 * harness's `child` module and are killed with SIGKILL.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { shortHash } from '../src/store/hash.js';
import { candidateKey, type Added, type Context, type RealizationInfo, type Store } from '../src/store/interface.js';
import { parseRRef, type DRef, type RRef } from '../src/store/refs.js';

/** What a backend provides to run the suite against it. */
export interface StoreHarness {
  /** A fresh, empty store (one per test). */
  create(): Promise<StoreUnderTest>;
}

export interface StoreUnderTest {
  store: Store;
  /** Another handle on the same store, in this process (the suite closes it). */
  open(): Promise<Store>;
  /**
   * A fresh, empty local directory that `store.add` can take over as a
   * staged output (the suite fills it), on the filesystem of os.tmpdir()
   * (the suite hard-links files from there into outputs).
   */
  stage(): Promise<string>;
  /**
   * How a child process opens the same store: `module` (an absolute path)
   * exports `openForChild(arg): Promise<ChildStore>`.
   */
  child: { module: string; arg: string };
  /** Deletes every realization that no root keeps (temp roots included); returns the RRefs deleted. */
  gc(): Promise<RRef[]>;
  /** The mode bits of a stored file, for a backend that keeps modes (a local store does, a cache need not). */
  fileMode?(rref: RRef, rel: string): Promise<number>;
  /** Closes the store and removes everything the harness made. */
  dispose(): Promise<void>;
}

/** What a child's `openForChild` returns. */
export interface ChildStore {
  store: Store;
  stage(): Promise<string>;
}

/** A file tree: relative path → text, a file with a mode, or a symlink. Directories are implied. */
export type TreeSpec = Record<string, string | { text: string; mode: number } | { symlink: string }>;

/** One output as the suite and its children describe it. */
export interface OutputSpec {
  tree: TreeSpec;
  log?: string;
  created: number;
}

/** `AddRequest` without outputs, as JSON. */
export interface RequestSpec {
  dref: DRef;
  name: string;
  drv: string;
  context: Context;
  buildMs: number;
}

/** Writes `spec` into `dir/out` (and `dir/build.log`). */
export function writeOutput(dir: string, out: OutputSpec): void {
  const root = path.join(dir, 'out');
  fs.mkdirSync(root, { mode: 0o755 });
  for (const [rel, v] of Object.entries(out.tree)) {
    const abs = path.join(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true, mode: 0o755 });
    if (typeof v === 'string') fs.writeFileSync(abs, v, { mode: 0o644 });
    else if ('symlink' in v) fs.symlinkSync(v.symlink, abs);
    else {
      fs.writeFileSync(abs, v.text);
      fs.chmodSync(abs, v.mode);
    }
  }
  if (out.log !== undefined) fs.writeFileSync(path.join(dir, 'build.log'), out.log);
}

/** A derivation the suite invents: its DRef hashes its config, as real ones do. */
export function derivation(name: string, salt: string): { dref: DRef; name: string; drv: string } {
  const drv = JSON.stringify({ format: 'cairn-conformance', name, salt });
  return { dref: `${shortHash(drv)}-${name}` as DRef, name, drv };
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHILD = path.join(HERE, 'store-conformance-child.ts');

/** A child process speaking JSON lines (see store-conformance-child.ts). */
class Child {
  readonly proc: ChildProcess;
  private readonly lines: unknown[] = [];
  private waiters: (() => void)[] = [];
  private stderr = '';
  readonly exited: Promise<NodeJS.Signals | number | null>;

  constructor(sut: StoreUnderTest) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', CHILD, sut.child.module, sut.child.arg], {
      // From the repository, where `--import tsx` resolves.
      cwd: path.dirname(HERE),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.lines.push(JSON.parse(line));
      for (const w of this.waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        resolve(signal ?? code);
        for (const w of this.waiters.splice(0)) w();
      });
    });
  }

  send(msg: object): void {
    this.proc.stdin!.write(JSON.stringify(msg) + '\n');
  }

  /** The next message that satisfies `pred` (earlier ones are dropped). */
  async next<T = Record<string, unknown>>(pred: (m: Record<string, unknown>) => boolean = () => true): Promise<T> {
    for (;;) {
      while (this.lines.length > 0) {
        const m = this.lines.shift() as Record<string, unknown>;
        if (m.error !== undefined && !pred(m)) throw new Error(`child failed: ${JSON.stringify(m)}\n${this.stderr}`);
        if (pred(m)) return m as T;
      }
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        const how = this.proc.exitCode ?? this.proc.signalCode;
        throw new Error(`child exited (${how}) before answering\n${this.stderr}`);
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
  }

  async end(): Promise<void> {
    this.proc.stdin!.end();
    const how = await this.exited;
    assert.equal(how, 0, `child ended with ${String(how)}\n${this.stderr}`);
  }
}

async function streamToBuffer(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

/** The regular files of a spec, following its links as the store does, for checking reads. */
function filesOf(tree: TreeSpec): Map<string, string> {
  const m = new Map<string, string>();
  for (const [rel, v] of Object.entries(tree)) {
    if (typeof v === 'string') m.set(rel, v);
    else if ('text' in v) m.set(rel, v.text);
  }
  return m;
}

function sizesOf(tree: TreeSpec): { bytes: number; files: number } {
  let bytes = 0;
  for (const t of filesOf(tree).values()) bytes += Buffer.byteLength(t);
  return { bytes, files: filesOf(tree).size };
}

/** Summary fields that `info`, `candidates` and `realizationsOf` must agree on with `meta`. */
function summary(x: RealizationInfo): RealizationInfo {
  return { rref: x.rref, dref: x.dref, ctx: x.ctx, created: x.created, tree: x.tree, bytes: x.bytes, files: x.files };
}

/**
 * `call()` rejects with a CairnError of `code`. A synchronous throw fails: every
 * operation of the interface returns a promise, and callers handle its rejection only.
 */
async function rejectsWith(call: () => Promise<unknown>, code: string, what: string): Promise<void> {
  let p: Promise<unknown>;
  try {
    p = call();
  } catch (e) {
    assert.fail(`${what}: threw ${String((e as { code?: string }).code)} synchronously instead of rejecting`);
  }
  await assert.rejects(p, (e: { code?: string }) => {
    assert.equal(
      e.code,
      code,
      `${what}: expected ${code}, got ${String(e.code)} (${e instanceof Error ? e.message : JSON.stringify(e)})`,
    );
    return true;
  });
}

/** A bound for every test, so a child that never answers fails the test instead of hanging the run. */
const T = { timeout: 60_000 };

export function storeConformance(name: string, h: StoreHarness): void {
  describe(`Store conformance: ${name}`, () => {
    let sut: StoreUnderTest;
    let store: Store;
    let scratch: string;
    const children: Child[] = [];
    const handles: Store[] = [];

    beforeEach(async () => {
      sut = await h.create();
      store = sut.store;
      scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-conformance-'));
    });
    afterEach(async () => {
      for (const c of children.splice(0)) await c.kill();
      for (const s of handles.splice(0)) s.close();
      await sut.dispose();
      fs.rmSync(scratch, { recursive: true, force: true });
    });

    const child = (): Child => {
      const c = new Child(sut);
      children.push(c);
      return c;
    };
    const reopen = async (): Promise<Store> => {
      const s = await sut.open();
      handles.push(s);
      return s;
    };
    const staged = async (out: OutputSpec): Promise<{ dir: string; created: number }> => {
      const dir = await sut.stage();
      writeOutput(dir, out);
      return { dir, created: out.created };
    };
    let clock = Date.now() - 1_000_000;
    /** Creation times that increase, one millisecond apart, so orders are unambiguous. */
    const at = (): number => (clock += 1);
    const add = async (req: RequestSpec, outs: OutputSpec[], s: Store = store): Promise<Added[]> =>
      s.add({ ...req, outputs: await Promise.all(outs.map(staged)) });
    const req = (d: { dref: DRef; name: string; drv: string }, context: Context = {}): RequestSpec => ({
      ...d,
      context,
      buildMs: 7,
    });
    /** Every file of the spec reads back whole, through every way of reading. */
    const assertWhole = async (rref: RRef, tree: TreeSpec, s: Store = store): Promise<void> => {
      const meta = await s.meta(rref);
      assert.deepEqual({ bytes: meta.bytes, files: meta.files }, sizesOf(tree));
      for (const [rel, text] of filesOf(tree)) {
        assert.equal((await s.readFile(rref, rel)).toString(), text, `${rref} ${rel}`);
        assert.equal((await streamToBuffer(await s.openFile(rref, rel))).toString(), text);
      }
      const info = await s.info(rref);
      assert.ok(info, `${rref}: meta() has it, info() does not`);
      assert.deepEqual(summary(info), summary(meta));
    };

    describe('add', () => {
      test('one output: meta, info and files are what was added', T, async () => {
        const d = derivation('one', 'a');
        const tree: TreeSpec = {
          'a.txt': 'alpha',
          'sub/dir/b.txt': 'beta!',
          'run.sh': { text: '#!/bin/sh\n', mode: 0o755 },
        };
        const out = { tree, log: 'built\n', created: at() };
        const [added, ...rest] = await add(req(d), [out]);
        assert.equal(rest.length, 0);
        assert.equal(added!.merged, false);
        const m = added!.meta;
        assert.equal(m.format, 'cairn-realization-1');
        assert.equal(parseRRef(m.rref).dref, d.dref);
        assert.deepEqual(
          { dref: m.dref, name: m.name, context: m.context, created: m.created, buildMs: m.buildMs },
          { dref: d.dref, name: d.name, context: {}, created: out.created, buildMs: 7 },
        );
        assert.deepEqual(await store.meta(m.rref), m);
        assert.deepEqual(summary((await store.info(m.rref))!), summary(m));
        await assertWhole(m.rref, tree);
        assert.equal((await store.readLog(m.rref)).toString(), 'built\n');
        assert.deepEqual(JSON.parse((await store.derivation(d.dref))!), JSON.parse(d.drv));
        // Another handle sees the same.
        const other = await reopen();
        assert.deepEqual(await other.meta(m.rref), m);
        await assertWhole(m.rref, tree, other);
      });

      test('the store takes the staged directories over', T, async () => {
        const d = derivation('takeover', 'a');
        const outs = [
          { tree: { f: '1' }, created: at() },
          { tree: { f: '1' }, created: at() },
        ];
        const dirs = await Promise.all(outs.map(staged));
        await store.add({ ...req(d), outputs: dirs });
        for (const s of dirs) assert.equal(fs.existsSync(s.dir), false, `${s.dir} is left behind`);
      });

      test('several outputs in one call: one realization each, in order, all readable', T, async () => {
        const d = derivation('multi', 'a');
        const outs = [0, 1, 2].map((i) => ({ tree: { 'n.txt': `output ${i}`, [`only-${i}`]: 'x' }, created: at() }));
        const added = await add(req(d), outs);
        assert.equal(added.length, 3);
        assert.equal(new Set(added.map((a) => a.meta.rref)).size, 3);
        for (const [i, a] of added.entries()) {
          assert.equal(a.merged, false);
          assert.equal(a.meta.created, outs[i]!.created);
          await assertWhole(a.meta.rref, outs[i]!.tree);
        }
        assert.deepEqual(
          (await store.realizationsOf(d.dref)).map((r) => r.rref),
          added.map((a) => a.meta.rref),
        );
      });

      test('onReadable is told once, before add settles, with what add returns; outputs are readable', T, async () => {
        const d = derivation('readable', 'a');
        const outs = [
          { tree: { f: 'one' }, created: at() },
          { tree: { f: 'two' }, created: at() },
        ];
        let settled = false;
        const calls: Added[][] = [];
        const reads: Promise<string>[] = [];
        const p = store.add(
          { ...req(d), outputs: await Promise.all(outs.map(staged)) },
          {
            onReadable: (added) => {
              assert.equal(settled, false, 'onReadable came after add settled');
              calls.push(added);
              for (const a of added)
                reads.push(
                  store
                    .readFile(a.meta.rref, 'f')
                    .then(String, (e: unknown) => (e instanceof Error ? e.message : String(e))),
                );
            },
          },
        );
        const added = await p.finally(() => {
          settled = true;
        });
        assert.equal(calls.length, 1);
        assert.deepEqual(
          calls[0]!.map((a) => a.meta),
          added.map((a) => a.meta),
        );
        assert.deepEqual(await Promise.all(reads), ['one', 'two']);
      });

      test('identical outputs merge: across calls, within a call, at the same time', T, async () => {
        const d = derivation('merge', 'a');
        const tree = { a: 'same', 'b/c': 'content' };
        const [first] = await add(req(d), [{ tree, created: at() }]);
        const [again] = await add(req(d), [{ tree, created: at() }]);
        assert.equal(again!.merged, true);
        assert.deepEqual(again!.meta, first!.meta, 'a merged add returns the existing realization');
        const both = await add(req(d), [
          { tree: { x: 'y' }, created: at() },
          { tree: { x: 'y' }, created: at() },
        ]);
        assert.equal(both[0]!.meta.rref, both[1]!.meta.rref);
        assert.equal(both[1]!.merged, true);
        const racing = await Promise.all(
          [0, 1, 2].map(async () => add(req(d), [{ tree: { r: 'race' }, created: at() }])),
        );
        assert.equal(new Set(racing.map((r) => r[0]!.meta.rref)).size, 1);
        assert.equal((await store.realizationsOf(d.dref)).length, 3);
        await assertWhole(first!.meta.rref, tree);
      });

      test('the RRef commits to the derivation, the context and the tree', T, async () => {
        const dep = derivation('dep', 'a');
        const [depA] = await add(req(dep), [{ tree: { v: '1' }, created: at() }]);
        const [depB] = await add(req(dep), [{ tree: { v: '2' }, created: at() }]);
        const d = derivation('commit', 'a');
        const tree = { f: 'same tree' };
        const base = (await add(req(d), [{ tree, created: at() }]))[0]!.meta;
        const otherTree = (await add(req(d), [{ tree: { f: 'same tree.' }, created: at() }]))[0]!.meta;
        const exec = (await add(req(d), [{ tree: { f: { text: 'same tree', mode: 0o755 } }, created: at() }]))[0]!.meta;
        const ctxA = (await add(req(d, { [dep.dref]: [depA!.meta.rref] }), [{ tree, created: at() }]))[0]!.meta;
        const ctxB = (await add(req(d, { [dep.dref]: [depB!.meta.rref] }), [{ tree, created: at() }]))[0]!.meta;
        const d2 = derivation('commit', 'b');
        const otherDrv = (await add(req(d2), [{ tree, created: at() }]))[0]!.meta;
        const all = [base, otherTree, exec, ctxA, ctxB, otherDrv];
        assert.equal(new Set(all.map((m) => m.rref)).size, all.length, 'each differs in one thing, so does each RRef');
        assert.notEqual(base.tree, otherTree.tree);
        assert.notEqual(base.tree, exec.tree, 'the executable bit is part of the tree');
        assert.equal(base.tree, ctxA.tree);
        assert.equal(base.tree, otherDrv.tree);
        assert.equal(base.ctx, otherTree.ctx);
        assert.equal(base.ctx, otherDrv.ctx, 'the context hash depends on the context only');
        assert.equal(new Set([base.ctx, ctxA.ctx, ctxB.ctx]).size, 3);
        assert.deepEqual(ctxA.context, { [dep.dref]: [depA!.meta.rref] });
        // Mode bits other than the executable bit are not part of the output (sealing drops them).
        const rw = (await add(req(d), [{ tree: { f: { text: 'same tree', mode: 0o664 } }, created: at() }]))[0]!;
        assert.equal(rw.meta.rref, base.rref);
        assert.equal(rw.merged, true);
      });

      test('hostile trees: a link that leaves the output is refused and nothing outside changes', T, async () => {
        const outside = path.join(scratch, 'outside.txt');
        fs.writeFileSync(outside, 'outside');
        fs.chmodSync(outside, 0o644);
        const cases: [string, TreeSpec][] = [
          ['an absolute link', { ok: 'x', esc: { symlink: outside } }],
          ['a relative link that climbs out', { ok: 'x', 'a/esc': { symlink: '../../outside.txt' } }],
          [
            'a chain that leaves through another link',
            { ok: 'x', s: { symlink: '.' }, 'd/esc': { symlink: '../s/../x' } },
          ],
        ];
        for (const [i, [what, tree]] of cases.entries()) {
          const d = derivation('hostile', `link-${i}`);
          await rejectsWith(() => add(req(d), [{ tree, created: at() }]), 'E_UNSAFE_OUTPUT', what);
          assert.deepEqual(await store.realizationsOf(d.dref), [], `${what}: nothing is stored`);
        }
        assert.equal(fs.readFileSync(outside, 'utf8'), 'outside');
        assert.equal(fs.statSync(outside).mode & 0o7777, 0o644, 'sealing never changed a file outside the output');
      });

      test(
        'refuses what verify would call corrupt (E_BAD_ADD): a drv that does not hash to its DRef, a bad context',
        T,
        async () => {
          const dep = derivation('dep', 'bad-add');
          const [depR] = await add(req(dep), [{ tree: { f: 'dep' }, created: at() }]);
          const d = derivation('user', 'bad-add');
          const other = derivation('other', 'bad-add');
          const ghost = `${'0'.repeat(32)}-${dep.dref}` as RRef;
          const cases: [string, RequestSpec][] = [
            ['a drv that hashes to another DRef', { ...req(d), drv: other.drv }],
            ["a name that is not the DRef's", { ...req(d), name: 'renamed' }],
            ['a context naming a realization the store lacks', req(d, { [dep.dref]: [ghost] })],
            ['a context listing a realization under another DRef', req(d, { [other.dref]: [depR!.meta.rref] })],
          ];
          for (const [what, bad] of cases) {
            await rejectsWith(() => add(bad, [{ tree: { f: 'x' }, created: at() }]), 'E_BAD_ADD', what);
          }
          assert.deepEqual(await store.realizationsOf(d.dref), [], 'nothing is stored');
          assert.equal(await store.derivation(d.dref), undefined, 'not even the derivation');
          await rejectsWith(() => store.add({ ...req(d), outputs: [] }), 'E_BAD_ADD', 'no outputs');
        },
      );

      test('hostile trees: an output that is itself a link is refused; a hard link out is copied', T, async () => {
        const victim = path.join(scratch, 'victim');
        fs.mkdirSync(victim, { mode: 0o755 });
        fs.writeFileSync(path.join(victim, 'file'), 'outside');
        fs.chmodSync(path.join(victim, 'file'), 0o644);
        const d = derivation('hostile', 'out-link');
        const dir = await sut.stage();
        fs.symlinkSync(victim, path.join(dir, 'out'));
        const outputs = [{ dir, created: at() }];
        await rejectsWith(() => store.add({ ...req(d), outputs }), 'E_UNSAFE_OUTPUT', 'out -> outside');
        assert.deepEqual(await store.realizationsOf(d.dref), []);
        assert.equal(fs.statSync(victim).mode & 0o7777, 0o755);
        assert.equal(fs.statSync(path.join(victim, 'file')).mode & 0o7777, 0o644);

        // A file of the output hard-linked to one outside (the same filesystem: see StoreUnderTest.stage).
        const h = derivation('hostile', 'hard-link');
        const hdir = await sut.stage();
        writeOutput(hdir, { tree: { other: 'o' }, created: 0 });
        fs.linkSync(path.join(victim, 'file'), path.join(hdir, 'out', 'h'));
        const [a] = await store.add({ ...req(h), outputs: [{ dir: hdir, created: at() }] });
        assert.equal((await store.readFile(a!.meta.rref, 'h')).toString(), 'outside');
        assert.equal(fs.statSync(path.join(victim, 'file')).mode & 0o7777, 0o644, 'sealing left it alone');
        fs.writeFileSync(path.join(victim, 'file'), 'changed later');
        assert.equal((await store.readFile(a!.meta.rref, 'h')).toString(), 'outside', 'the store has its own copy');
      });

      test('hostile trees: a refused output among several stores none of them', T, async () => {
        const d = derivation('hostile', 'partial');
        const outs: OutputSpec[] = [
          { tree: { fine: 'yes' }, created: at() },
          { tree: { esc: { symlink: '/etc/passwd' } }, created: at() },
        ];
        await rejectsWith(() => add(req(d), outs), 'E_UNSAFE_OUTPUT', 'the second output escapes');
        assert.deepEqual(await store.realizationsOf(d.dref), []);
      });

      test('hostile trees: set-id and write bits are not stored, and do not change the RRef', T, async () => {
        const d = derivation('hostile', 'modes');
        const plainTree: TreeSpec = { tool: { text: 'bin', mode: 0o755 }, data: 'd' };
        const plain = (await add(req(d), [{ tree: plainTree, created: at() }]))[0]!;
        const setid = (
          await add(req(d), [
            {
              tree: { tool: { text: 'bin', mode: 0o6755 }, data: { text: 'd', mode: 0o1666 } },
              created: at(),
            },
          ])
        )[0]!;
        assert.equal(setid.meta.rref, plain.meta.rref);
        if (sut.fileMode) {
          assert.equal((await sut.fileMode(plain.meta.rref, 'tool')) & 0o7777, 0o555);
          assert.equal((await sut.fileMode(plain.meta.rref, 'data')) & 0o7777, 0o444);
        }
        const fresh = derivation('hostile', 'modes-first');
        const first = (await add(req(fresh), [{ tree: { tool: { text: 'bin', mode: 0o4777 } }, created: at() }]))[0]!;
        if (sut.fileMode) assert.equal((await sut.fileMode(first.meta.rref, 'tool')) & 0o7777, 0o555);
        assert.equal((await store.readFile(first.meta.rref, 'tool')).toString(), 'bin');
      });

      test('hostile trees: names are bytes (read by their bytes; one byte apart gives another RRef)', T, async () => {
        const d = derivation('hostile', 'bytes');
        const rrefs: RRef[] = [];
        for (const byte of [0xfe, 0xff]) {
          const dir = await sut.stage();
          const out = Buffer.from(path.join(dir, 'out'));
          fs.mkdirSync(out);
          fs.writeFileSync(Buffer.concat([out, Buffer.from([0x2f, 0x6e, byte])]), 'same content');
          fs.writeFileSync(path.join(dir, 'out', 'plain'), 'readable');
          const [a] = await store.add({ ...req(d), outputs: [{ dir, created: at() }] });
          assert.equal(a!.meta.files, 2);
          assert.equal((await store.readFile(a!.meta.rref, 'plain')).toString(), 'readable');
          // A byte name is read by its bytes; the name decoded as UTF-8 is another (missing) name.
          const name = Buffer.from([0x6e, byte]);
          assert.equal((await store.readFile(a!.meta.rref, name)).toString(), 'same content');
          assert.equal((await streamToBuffer(await store.openFile(a!.meta.rref, name))).toString(), 'same content');
          const asText = name.toString();
          await rejectsWith(() => store.readFile(a!.meta.rref, asText), 'E_NO_SUCH_PATH', 'a byte name as UTF-8');
          rrefs.push(a!.meta.rref);
        }
        // Decoding names as UTF-8 would turn both into U+FFFD and merge them.
        assert.notEqual(rrefs[0], rrefs[1]);
      });
    });

    describe('query', () => {
      test('candidates: only of that context, oldest first by creation time; candidatesOfAll agrees', T, async () => {
        const dep = derivation('qdep', 'a');
        const [depR] = await add(req(dep), [{ tree: { v: 'dep' }, created: at() }]);
        const d = derivation('q', 'a');
        const ctx = { [dep.dref]: [depR!.meta.rref] };
        // Added newest first: the order must come from `created`, not from the order of adds.
        const times = [at(), at(), at()];
        const bare: Added[] = [];
        for (const i of [2, 0, 1]) bare.push(...(await add(req(d), [{ tree: { i: String(i) }, created: times[i]! }])));
        const withDep = await add(req(d, ctx), [{ tree: { i: 'dep' }, created: at() }]);
        const bareCtx = bare[0]!.meta.ctx;
        const depCtx = withDep[0]!.meta.ctx;
        assert.notEqual(bareCtx, depCtx);
        const cands = await store.candidates(d.dref, bareCtx);
        assert.deepEqual(
          cands.map((c) => c.created),
          times,
        );
        const oldestFirst = [...bare].sort((a, b) => a.meta.created - b.meta.created);
        assert.deepEqual(
          cands.map((c) => summary(c)),
          await Promise.all(oldestFirst.map(async (a) => summary(await store.meta(a.meta.rref)))),
        );
        assert.deepEqual(
          (await store.candidates(d.dref, depCtx)).map((c) => c.rref),
          [withDep[0]!.meta.rref],
        );
        assert.deepEqual(await store.candidates(d.dref, 'x'.repeat(32)), []);
        assert.deepEqual(await store.candidates(derivation('never', 'a').dref, bareCtx), []);

        const all = await store.candidatesOfAll([d.dref, dep.dref, derivation('never', 'b').dref]);
        const nonEmpty = [...all]
          .filter(([, v]) => v.length > 0)
          .map(([k]) => k)
          .sort();
        assert.deepEqual(
          nonEmpty,
          [candidateKey(d.dref, bareCtx), candidateKey(d.dref, depCtx), candidateKey(dep.dref, depR!.meta.ctx)].sort(),
        );
        for (const [k, v] of all) {
          const [dref, c] = k.split(' ') as [DRef, string];
          assert.deepEqual(v.map(summary), (await store.candidates(dref, c)).map(summary), k);
        }

        const rz = await store.realizationsOf(d.dref);
        assert.deepEqual(
          rz.map((r) => r.created),
          [...times, withDep[0]!.meta.created],
        );
        for (const r of rz) assert.deepEqual(summary(r), summary(await store.meta(r.rref)));
      });

      test('candidates read their own files, as readFile does', T, async () => {
        const d = derivation('cread', 'a');
        const tree: TreeSpec = { 'score.json': '{"s":3}', 'd/e/f': 'deep', l: { symlink: 'd/e/f' } };
        const [a] = await add(req(d), [{ tree, created: at() }]);
        const [c] = await store.candidates(d.dref, a!.meta.ctx);
        for (const rel of ['score.json', 'd/e/f', 'l']) {
          const want = await store.readFile(a!.meta.rref, rel);
          assert.deepEqual(await c!.read(rel), want);
          assert.deepEqual(await streamToBuffer(await c!.open(rel)), want);
        }
        await rejectsWith(() => c!.read('missing'), 'E_NO_SUCH_PATH', 'a candidate reading a missing file');
        await rejectsWith(() => c!.read('../meta.json'), 'E_NO_SUCH_PATH', 'a candidate reading out of its output');
        await rejectsWith(() => c!.open('d'), 'E_NO_SUCH_PATH', 'a candidate opening a directory');
      });

      test('unknown refs: info undefined, meta and reads E_NO_SUCH_REF, no derivation', T, async () => {
        const d = derivation('known', 'a');
        const [a] = await add(req(d), [{ tree: { f: 'x' }, created: at() }]);
        const rhash = a!.meta.rref.slice(0, 32).split('').reverse().join('');
        const missing = `${rhash}-${d.dref}` as RRef;
        assert.equal(await store.info(missing), undefined);
        await rejectsWith(() => store.meta(missing), 'E_NO_SUCH_REF', 'meta of a missing realization');
        await rejectsWith(() => store.readFile(missing, 'f'), 'E_NO_SUCH_REF', 'readFile of a missing realization');
        await rejectsWith(() => store.openFile(missing, 'f'), 'E_NO_SUCH_REF', 'openFile of a missing realization');
        await rejectsWith(() => store.readLog(missing), 'E_NO_SUCH_REF', 'readLog of a missing realization');
        assert.equal(await store.derivation(derivation('unknown', 'a').dref), undefined);
        assert.deepEqual(await store.realizationsOf(derivation('unknown', 'a').dref), []);
      });
    });

    describe('read', () => {
      const tree: TreeSpec = {
        'top.txt': 'top',
        'a/b/c/deep.txt': 'deep',
        'a/b/sib.txt': 'sibling',
        'link-file': { symlink: 'a/b/c/deep.txt' },
        'a/b/up': { symlink: '../b/sib.txt' },
        'link-dir': { symlink: 'a/b' },
        self: { symlink: '.' },
        dangling: { symlink: 'nowhere' },
        'empty.txt': '',
      };

      test('files, nested files and links that resolve inside; the log', T, async () => {
        const d = derivation('read', 'a');
        const [a] = await add(req(d), [{ tree, log: 'line 1\nline 2\n', created: at() }]);
        const r = a!.meta.rref;
        await assertWhole(r, tree);
        const reads: [string, string][] = [
          ['link-file', 'deep'],
          ['a/b/up', 'sibling'],
          ['link-dir/c/deep.txt', 'deep'],
          ['self/top.txt', 'top'],
          ['self/link-dir/sib.txt', 'sibling'],
          ['a/b/c/../sib.txt', 'sibling'],
          ['./top.txt', 'top'],
        ];
        for (const [rel, want] of reads) {
          assert.equal((await store.readFile(r, rel)).toString(), want, rel);
          assert.equal((await streamToBuffer(await store.openFile(r, rel))).toString(), want, rel);
        }
        assert.equal((await store.readLog(r)).toString(), 'line 1\nline 2\n');
      });

      test('E_NO_SUCH_PATH: missing, directories, dangling links, .., absolute, leaving via a link', T, async () => {
        const d = derivation('read', 'b');
        const [a] = await add(req(d), [{ tree, created: at() }]);
        const r = a!.meta.rref;
        const refused = [
          'missing',
          'a/missing',
          'top.txt/x',
          'a',
          'a/b/',
          '',
          '.',
          'link-dir',
          'self',
          'dangling',
          '..',
          '../meta.json',
          '../build.log',
          'a/../../meta.json',
          'self/../meta.json',
          'link-dir/../../../meta.json',
          '/etc/passwd',
          path.join(scratch, 'x'),
          'top.txt\0x',
        ];
        fs.writeFileSync(path.join(scratch, 'x'), 'outside');
        for (const rel of refused) {
          await rejectsWith(() => store.readFile(r, rel), 'E_NO_SUCH_PATH', `readFile ${JSON.stringify(rel)}`);
          await rejectsWith(() => store.openFile(r, rel), 'E_NO_SUCH_PATH', `openFile ${JSON.stringify(rel)}`);
        }
      });

      test('a large file streams whole; a realization without a log has an empty one', T, async () => {
        const d = derivation('read', 'large');
        const big = '0123456789abcdef'.repeat(256 * 1024 + 3);
        const [a] = await add(req(d), [{ tree: { big }, created: at() }]);
        const got = await streamToBuffer(await store.openFile(a!.meta.rref, 'big'));
        assert.equal(got.length, big.length);
        assert.ok(got.equals(Buffer.from(big)));
        assert.equal((await store.readLog(a!.meta.rref)).length, 0);
      });
    });

    describe('closure', () => {
      test('transitive, across several levels and diamonds, each realization once', T, async () => {
        // a <- b, a <- c, {b, c} <- d (a diamond), d <- e, and an unrelated z.
        const mk = async (n: string, ctx: Context): Promise<RRef> =>
          (await add(req(derivation(n, 'c'), ctx), [{ tree: { n }, created: at() }]))[0]!.meta.rref;
        const dr = (n: string): DRef => derivation(n, 'c').dref;
        const a = await mk('a', {});
        const a2 = await add(req(derivation('a', 'c')), [{ tree: { n: 'a2' }, created: at() }]);
        const b = await mk('b', { [dr('a')]: [a] });
        const c = await mk('c', { [dr('a')]: [a, a2[0]!.meta.rref] });
        const d = await mk('d', { [dr('b')]: [b], [dr('c')]: [c] });
        const e = await mk('e', { [dr('d')]: [d] });
        const z = await mk('z', {});
        const sorted = async (rs: RRef[]): Promise<RRef[]> => {
          const got = await store.closure(rs);
          assert.equal(new Set(got).size, got.length, 'no duplicates');
          return [...got].sort();
        };
        assert.deepEqual(await sorted([e]), [a, a2[0]!.meta.rref, b, c, d, e].sort());
        assert.deepEqual(await sorted([b]), [a, b].sort());
        assert.deepEqual(await sorted([a]), [a]);
        assert.deepEqual(await sorted([b, c, z, b]), [a, a2[0]!.meta.rref, b, c, z].sort());
        assert.deepEqual(await sorted([]), []);
      });
    });

    describe('concurrency', () => {
      test('two processes adding the same outputs at once end with one realization each, same RRef', T, async () => {
        const [p, q] = [child(), child()];
        await Promise.all([p.next((m) => m.event === 'ready'), q.next((m) => m.event === 'ready')]);
        const d = derivation('race', 'a');
        for (let i = 0; i < 6; i++) {
          const outs: OutputSpec[] = [
            { tree: { i: String(i), 'x/y': 'z'.repeat(i * 1000) }, created: at() },
            { tree: { second: String(i) }, created: at() },
          ];
          const msg = { op: 'add', id: i, req: req(d), outs };
          p.send(msg);
          q.send(msg);
          const [rp, rq] = await Promise.all([p.next((m) => m.id === i), q.next((m) => m.id === i)]);
          assert.deepEqual(rp.rrefs, rq.rrefs, `round ${i}: both processes get the same RRefs`);
        }
        const rz = await store.realizationsOf(d.dref);
        assert.equal(rz.length, 12, 'one realization per distinct output');
        for (const r of rz) assert.ok(await store.info(r.rref));
        await Promise.all([p.end(), q.end()]);
      });

      test('withLock excludes across processes', T, async () => {
        const counter = path.join(scratch, 'counter');
        fs.writeFileSync(counter, '0');
        const kids = [child(), child(), child()];
        for (const k of kids) k.send({ op: 'count', id: 1, key: 'conformance-counter', file: counter, n: 15 });
        const mine = (async () => {
          for (let i = 0; i < 15; i++) {
            await store.withLock('conformance-counter', 'counting', async () => {
              const v = Number(fs.readFileSync(counter, 'utf8'));
              await new Promise((r) => setImmediate(r));
              fs.writeFileSync(counter, String(v + 1));
            });
          }
        })();
        await Promise.all([mine, ...kids.map((k) => k.next((m) => m.id === 1))]);
        assert.equal(fs.readFileSync(counter, 'utf8'), String(4 * 15), 'no increment was lost');
        await Promise.all(kids.map((k) => k.end()));
      });

      test('withLock: a busy lock is waited for (onWait names the holder); E_LOCK_TIMEOUT', T, async () => {
        const k = child();
        k.send({ op: 'hold', id: 1, key: 'conformance-held' });
        await k.next((m) => m.id === 1 && m.event === 'held');
        const waits: string[] = [];
        await rejectsWith(
          () =>
            store.withLock('conformance-held', 'test', async () => 'never', {
              timeoutMs: 200,
              onWait: (holder) => waits.push(holder),
            }),
          'E_LOCK_TIMEOUT',
          'a lock another process holds',
        );
        assert.equal(waits.length, 1);
        assert.ok(waits[0]!.length > 0);
        const got = store.withLock('conformance-held', 'test', async (held) => {
          assert.equal(held.key, 'conformance-held');
          return 'mine';
        });
        k.send({ op: 'release', id: 1 });
        assert.equal(await got, 'mine');
        await k.end();
        // A failing fn releases the lock.
        const boom = async (): Promise<never> => {
          throw new Error('boom');
        };
        await assert.rejects(store.withLock('conformance-held', 'test', boom), /boom/);
        const other = await reopen();
        assert.equal(await other.withLock('conformance-held', 'test', async () => 1, { timeoutMs: 5000 }), 1);
      });

      test('add releases a build lock (AddOptions.release) once indexed: a waiter finds the outputs', T, async () => {
        const d = derivation('locked-build', 'a');
        const k = child();
        await k.next((m) => m.event === 'ready');
        await store.withLock('conformance-build', 'building', async (held) => {
          const outs = [await staged({ tree: { g: 'released' }, created: at() })];
          const added = await store.add({ ...req(d), outputs: outs }, { release: held });
          assert.equal(held.released, true);
          // Still inside fn: the lock is free, and whoever takes it next sees the realization.
          k.send({ op: 'probe', id: 1, key: 'conformance-build', dref: d.dref, ctx: added[0]!.meta.ctx });
          const got = await k.next<{ rrefs: RRef[] }>((m) => m.id === 1);
          assert.ok(got.rrefs.includes(added[0]!.meta.rref));
        });
        // And the release was not undone when fn returned.
        const again = await store.withLock('conformance-build', 'again', async () => 'free', { timeoutMs: 10_000 });
        assert.equal(again, 'free');
        await k.end();
      });

      test('a lock held by a process killed with SIGKILL is taken over', T, async () => {
        const k = child();
        k.send({ op: 'hold', id: 1, key: 'conformance-dead' });
        await k.next((m) => m.id === 1 && m.event === 'held');
        await k.kill();
        const got = await store.withLock('conformance-dead', 'after a crash', async () => 'taken', {
          timeoutMs: 20_000,
        });
        assert.equal(got, 'taken');
      });
    });

    describe('crash', () => {
      /** Every realization the store names is readable, whole, and one of the outputs added (`expected` finds it). */
      type Lookup = (r: RRef) => Promise<TreeSpec | undefined>;
      const assertConsistent = async (dref: DRef, expected: Lookup): Promise<void> => {
        for (const r of await store.realizationsOf(dref)) {
          const meta = await store.meta(r.rref);
          assert.deepEqual(summary(meta), summary(r));
          const tree = await expected(r.rref);
          assert.ok(tree, `${r.rref} holds an output nobody added`);
          await assertWhole(r.rref, tree);
          assert.ok((await store.candidates(dref, r.ctx)).some((c) => c.rref === r.rref));
        }
      };

      test('killed once its outputs are readable, before add settled: consistent; adding again works', T, async () => {
        const k = child();
        const d = derivation('crash', 'paused');
        const outs: OutputSpec[] = [
          { tree: { f: 'first', 'g/h': 'x' }, created: at() },
          { tree: { f: 'second' }, created: at() },
        ];
        k.send({ op: 'add', id: 1, req: req(d), outs, pause: true });
        const ev = await k.next<{ rrefs: RRef[] }>((m) => m.event === 'readable');
        // Readable from another process, as onReadable promises (durable and indexed may come later).
        const other = await reopen();
        for (const [i, r] of ev.rrefs.entries()) {
          for (const [rel, text] of filesOf(outs[i]!.tree)) {
            assert.equal((await other.readFile(r, rel)).toString(), text);
          }
        }
        await k.kill();
        const byRRef = new Map(ev.rrefs.map((r, i) => [r, outs[i]!.tree]));
        await assertConsistent(d.dref, async (r) => byRRef.get(r));
        const again = await add(req(d), outs);
        assert.deepEqual(
          again.map((a) => a.meta.rref),
          ev.rrefs,
        );
        await assertConsistent(d.dref, async (r) => byRRef.get(r));
        assert.deepEqual(
          (await store.realizationsOf(d.dref)).map((r) => r.rref),
          ev.rrefs,
        );
        assert.deepEqual(JSON.parse((await store.derivation(d.dref))!), JSON.parse(d.drv));
      });

      test('killed at random points of a loop of adds: every realization named is whole; adds work', T, async () => {
        const rounds = 4;
        for (let round = 0; round < rounds; round++) {
          const k = child();
          await k.next((m) => m.event === 'ready');
          const d = derivation('crash', `loop-${round}`);
          const outs = Array.from({ length: 8 }, (_, i): OutputSpec[] => [
            { tree: { id: `${round}.${i}.0`, 'files/a': 'a'.repeat(20_000 + i), 'files/b': `b${i}` }, created: at() },
            { tree: { id: `${round}.${i}.1` }, created: at() },
          ]);
          k.send({ op: 'loop', id: 1, req: req(d), outs });
          await k.next((m) => m.event === 'start');
          // Fault injection, not an assertion: a kill somewhere in the first adds, a different point each round.
          await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 40) + round * 15));
          await k.kill();
          const byId = new Map(outs.flat().map((o) => [o.tree.id as string, o.tree]));
          await assertConsistent(d.dref, async (r) => byId.get((await store.readFile(r, 'id')).toString()));
          for (const o of outs) {
            const added = await add(req(d), o);
            for (const [j, a] of added.entries()) await assertWhole(a.meta.rref, o[j]!.tree);
          }
          assert.equal((await store.realizationsOf(d.dref)).length, 16);
        }
      });

      test('temp roots keep realizations (and their closures) from gc until released', T, async () => {
        const mk = async (n: string, ctx: Context = {}): Promise<Added> =>
          (await add(req(derivation(n, 'gc'), ctx), [{ tree: { n }, created: at() }]))[0]!;
        const a = await mk('base');
        const b = await mk('top', { [a.meta.dref]: [a.meta.rref] });
        const loose = await mk('loose');
        const later = derivation('later', 'gc');
        const roots = await store.addTempRoots([b.meta.dref, later.dref], 'conformance');
        // Declared before it exists: a realize declares, then queries and builds.
        const [l] = await add(req(later), [{ tree: { n: 'later' }, created: at() }]);
        const first = await sut.gc();
        assert.deepEqual(first, [loose.meta.rref]);
        for (const r of [a, b, l!]) await assertWhole(r.meta.rref, { n: r.meta.name });
        assert.equal(await store.info(loose.meta.rref), undefined);
        assert.deepEqual(await store.realizationsOf(loose.meta.dref), []);
        await roots.release();
        const second = await sut.gc();
        assert.deepEqual([...second].sort(), [a.meta.rref, b.meta.rref, l!.meta.rref].sort());
        for (const r of [a, b, l!]) {
          assert.equal(await store.info(r.meta.rref), undefined);
          await rejectsWith(() => store.meta(r.meta.rref), 'E_NO_SUCH_REF', 'meta after gc');
        }
      });

      test('gc running while another process adds under temp roots deletes none of it', T, async () => {
        const d = derivation('busy', 'gc');
        const k = child();
        k.send({ op: 'roots', id: 1, drefs: [d.dref] });
        await k.next((m) => m.id === 1 && m.event === 'rooted');
        const outs = Array.from({ length: 6 }, (_, i): OutputSpec[] => [{ tree: { id: `busy ${i}` }, created: at() }]);
        k.send({ op: 'loop', id: 2, req: req(d), outs });
        let done = false;
        const finished = k
          .next((m) => m.id === 2 && m.event === 'done' && m.i === outs.length - 1)
          .finally(() => {
            done = true;
          });
        let runs = 0;
        while (!done || runs === 0) {
          assert.deepEqual(await sut.gc(), []);
          runs++;
          // A gc may settle without I/O: let the child's messages in.
          await new Promise((r) => setImmediate(r));
        }
        await finished;
        assert.equal((await store.realizationsOf(d.dref)).length, outs.length);
        for (const r of await store.realizationsOf(d.dref)) {
          await assertWhole(r.rref, { id: (await store.readFile(r.rref, 'id')).toString() });
        }
        k.send({ op: 'release', id: 1 });
        await k.end();
        assert.equal((await sut.gc()).length, outs.length);
      });

      test('temp roots of a process killed with SIGKILL stop counting', T, async () => {
        const d = derivation('rooted', 'gc');
        const [a] = await add(req(d), [{ tree: { n: 'rooted' }, created: at() }]);
        const k = child();
        k.send({ op: 'roots', id: 1, drefs: [d.dref] });
        await k.next((m) => m.id === 1 && m.event === 'rooted');
        assert.deepEqual(await sut.gc(), []);
        await assertWhole(a!.meta.rref, { n: 'rooted' });
        await k.kill();
        assert.deepEqual(await sut.gc(), [a!.meta.rref]);
      });
    });
  });
}
