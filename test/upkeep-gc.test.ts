/**
 * `cairn store gc` and its roots, observed from the outside: out-links from
 * `realize --out-link` (indirect roots that stop counting once the link is
 * deleted, moved or repointed), named roots (`root add|rm|ls`), --dry-run,
 * --keep-last, --older-than, the JSON report, and gc running in a loop while
 * other processes realize.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { cairn, cairnAsync, lastLine, repoRoot, tempDir, type CliResult } from './helpers.js';
import {
  CHAIN,
  PIPELINE,
  apparentBytes,
  assertVerifyClean,
  drefsOnDisk,
  expectError,
  ok,
  outDir,
  planOf,
  realizeJson,
  rrefsOf,
  rrefsOnDisk,
  rzDir,
  snapshot,
  tmpEntries,
  type RealizeJson,
} from './fixtures/torture/support.js';

const cache = tempDir('cairn-gc-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

interface GcReport {
  dryRun: boolean;
  realizations: string[];
  derivations: string[];
  bytes: number;
  kept: number;
  roots: number;
  staleOutLinks: number;
  droppedOutLinks: { link?: string; reason: string }[];
}

function gc(store: string, args: string[] = []): GcReport {
  return JSON.parse(
    ok(cairn(store, ['store', 'gc', '--json', ...args]), `store gc ${args.join(' ')}`).stdout,
  ) as GcReport;
}

/** Every RRef the realize chose, for every stage of its graph: the closure of its targets. */
const closureOf = (j: RealizeJson): string[] => j.plan.flatMap((p) => p.rrefs).sort();
const drefsOf = (j: RealizeJson): string[] => j.plan.map((p) => p.dref).sort();

/** What gc will report as freed for these realizations and derivations, measured before it runs. */
function expectedBytes(store: string, rrefs: string[], drefs: string[]): number {
  return (
    rrefs.reduce((a, r) => a + apparentBytes(rzDir(store, r)), 0) +
    drefs.reduce((a, d) => a + apparentBytes(path.join(store, 'd', d, 'drv.json')), 0)
  );
}

function rootLs(store: string): string[] {
  return ok(cairn(store, ['root', 'ls']))
    .stdout.split('\n')
    .filter(Boolean);
}

describe('gc: out-links', { timeout: 240_000 }, () => {
  it(
    'an out-link keeps the whole closure of its target (realizations in the ' +
      'context and their derivations); deleting the link releases it',
    () => {
      const t = tempDir('cairn-gc');
      try {
        const store = path.join(t.dir, 'store');
        const link = path.join(t.dir, 'result');
        const rooted = realizeJson(store, PIPELINE, ['--out-link', link]);
        const closure = closureOf(rooted);
        // seed 1, noise 2 (some(2)), mix 1, fan 1 of its 2 outputs (latest), final 1.
        assert.equal(closure.length, 6, `closure: ${closure.join(' ')}`);
        const final = rooted.targets[0]!.rrefs[0]!;
        assert.equal(fs.readlinkSync(link), outDir(store, final), 'the link points at the target output');
        // fan built two outputs; latest() chose one, so the other is not in the closure.
        const fanAll = rrefsOf(store, 'fan');
        assert.equal(fanAll.length, 2);
        const fanLoser = fanAll.filter((r) => !closure.includes(r));
        assert.equal(fanLoser.length, 1);
        // Garbage: an unrooted closure of other derivations.
        const garbage = realizeJson(store, CHAIN);
        const garbageRefs = closureOf(garbage);
        assert.equal(garbageRefs.length, 3);

        assert.deepEqual(rootLs(store), [`out-link ${link}\t${final}`]);
        const r = gc(store);
        assert.deepEqual(
          r.realizations.sort(),
          [...garbageRefs, ...fanLoser].sort(),
          'exactly the unrooted realizations are deleted',
        );
        assert.deepEqual(r.derivations.sort(), drefsOf(garbage), 'and the derivations left without realizations');
        assert.equal(r.kept, closure.length);
        assert.equal(r.roots, 1);
        assert.equal(r.staleOutLinks, 0);
        assert.deepEqual(rrefsOnDisk(store).sort(), closure, 'exactly the closure is left on disk');
        assert.deepEqual(drefsOnDisk(store), drefsOf(rooted), 'with the derivations of the closure');
        for (const d of drefsOf(rooted))
          assert.ok(fs.existsSync(path.join(store, 'd', d, 'drv.json')), `${d}/drv.json kept`);
        assert.equal(fs.readFileSync(path.join(link, 'final.txt'), 'utf8').length > 0, true, 'the link still resolves');
        // The kept closure is usable as is: a realize is fully cached.
        const again = realizeJson(store, PIPELINE);
        assert.equal(again.builds, 0);
        assert.deepEqual(closureOf(again), closure);
        assertVerifyClean(store);

        // Delete the link: it no longer counts, and gc forgets its entry.
        fs.unlinkSync(link);
        assert.deepEqual(rootLs(store), [], 'root ls no longer lists the deleted link');
        const r2 = gc(store);
        assert.deepEqual(r2.realizations.sort(), closure);
        assert.deepEqual(r2.derivations.sort(), drefsOf(rooted));
        assert.equal(r2.kept, 0);
        assert.equal(r2.roots, 0);
        assert.equal(r2.staleOutLinks, 1, 'the stale out-link entry is reported');
        assert.deepEqual(rrefsOnDisk(store), []);
        assert.deepEqual(drefsOnDisk(store), []);
        assert.deepEqual(fs.readdirSync(path.join(store, 'roots', 'auto')), [], 'the stale entry is removed');
        assert.equal(gc(store).staleOutLinks, 0, 'and reported only once');
        assert.deepEqual(tmpEntries(store), []);
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );

  it(
    'a moved out-link is no longer a root (nor is one repointed ' +
      'elsewhere); the realize that made it keeps working',
    () => {
      const t = tempDir('cairn-gc');
      try {
        const store = path.join(t.dir, 'store');
        const link = path.join(t.dir, 'a', 'result');
        fs.mkdirSync(path.dirname(link));
        const moved = path.join(t.dir, 'elsewhere');
        const j = realizeJson(store, CHAIN, ['--out-link', link]);
        const c = j.targets[0]!.rrefs[0]!;
        assert.equal(rootLs(store).length, 1);
        assert.equal(gc(store).realizations.length, 0, 'rooted: nothing to delete');

        fs.renameSync(link, moved);
        assert.deepEqual(rootLs(store), [], 'root ls does not list a moved link');
        const r = gc(store);
        assert.deepEqual(r.realizations.sort(), closureOf(j), 'the moved link no longer keeps anything');
        assert.equal(r.staleOutLinks, 1);
        assert.equal(
          fs.existsSync(moved),
          false,
          "the moved link now dangles (it is the user's link; gc does not touch it)",
        );
        assert.ok(fs.lstatSync(moved).isSymbolicLink());

        // Rebuild, link again, then repoint the link at something outside the store.
        const j2 = realizeJson(store, CHAIN, ['--out-link', link]);
        assert.equal(j2.targets[0]!.rrefs[0], c, 'deterministic: the same RRef again');
        fs.unlinkSync(link);
        fs.symlinkSync(t.dir, link);
        assert.deepEqual(rootLs(store), []);
        const r2 = gc(store);
        assert.equal(r2.realizations.length, 3, 'a link pointing outside the store is not a root');
        assert.equal(r2.staleOutLinks, 1);
        assert.equal(fs.readlinkSync(link), t.dir, "gc leaves the user's link alone");

        // A second out-link to the same realization: either keeps it.
        realizeJson(store, CHAIN, ['--out-link', link]);
        const link2 = path.join(t.dir, 'second');
        realizeJson(store, CHAIN, ['--out-link', link2]);
        assert.equal(rootLs(store).length, 2);
        fs.unlinkSync(link);
        assert.equal(gc(store).realizations.length, 0, 'the second link still keeps the closure');
        fs.unlinkSync(link2);
        assert.equal(gc(store).realizations.length, 3);
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );

  it('an out-link is refused over a file that is not a symlink, and the existing file is left alone', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      const file = path.join(t.dir, 'precious.txt');
      fs.writeFileSync(file, 'keep me\n');
      const r = cairn(store, ['realize', CHAIN, '-q', '--out-link', file]);
      expectError(r, 'E_OUT_LINK_NOT_SYMLINK', 'out-link over a regular file');
      assert.match(r.stderr, /\(give --out-link a path that is free or a symlink\)/);
      assert.equal(fs.readFileSync(file, 'utf8'), 'keep me\n');
      assert.deepEqual(rootLs(store), []);
    } finally {
      t.cleanup();
    }
  });
});

describe('gc: named roots', { timeout: 240_000 }, () => {
  it('root add NAME REF keeps the closure, root ls lists it, root rm releases it', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      const j = realizeJson(store, PIPELINE);
      const final = j.targets[0]!.rrefs[0]!;
      ok(cairn(store, ['root', 'add', 'release-1', final]));
      assert.deepEqual(rootLs(store), [`named    release-1\t${final}`]);
      const r = gc(store);
      assert.equal(r.roots, 1);
      assert.equal(r.kept, 6);
      assert.equal(r.realizations.length, 1, 'only the unchosen fan output goes');
      assert.deepEqual(rrefsOnDisk(store).sort(), closureOf(j));

      // A DRef names all its realizations: build more fans, root them all.
      const fanDref = planOf(j, 'fan').dref;
      ok(cairn(store, ['realize', PIPELINE, '-q', '-s', 'fan', '-f']));
      ok(cairn(store, ['realize', PIPELINE, '-q', '-s', 'fan', '-f']));
      const fans = rrefsOf(store, 'fan');
      assert.equal(fans.length, 5, '1 kept + 2 builds of 2');
      ok(cairn(store, ['root', 'add', 'fans', fanDref]));
      const fansRoot = fs
        .readFileSync(path.join(store, 'roots', 'named', 'fans'), 'utf8')
        .split('\n')
        .filter(Boolean);
      assert.deepEqual(fansRoot.sort(), fans.sort(), 'a DRef root lists every realization it had');
      assert.deepEqual(
        rootLs(store).map((l) => l.split(/\s+/)[1]),
        ['fans', 'release-1'],
      );
      assert.equal(gc(store).realizations.length, 0);

      // Root names and refs are checked.
      expectError(cairn(store, ['root', 'add', 'a/b', final]), 'E_BAD_NAME', 'root name with a slash');
      expectError(cairn(store, ['root', 'add', '..', final]), 'E_BAD_NAME', 'root name ..');
      expectError(
        cairn(store, ['root', 'add', 'x', `${'0'.repeat(32)}-${final.slice(33)}`]),
        'E_NO_SUCH_REF',
        'root of an absent realization',
      );
      expectError(cairn(store, ['root', 'rm', 'nope']), 'E_NO_SUCH_REF', 'root rm of an unknown root');
      assert.equal(fs.existsSync(path.join(store, 'roots', 'named', 'a')), false);

      ok(cairn(store, ['root', 'rm', 'release-1']));
      assert.deepEqual(
        rootLs(store).map((l) => l.split(/\s+/)[1]),
        ['fans'],
      );
      const r2 = gc(store);
      // fans keeps the five fan realizations and, through them, seed.
      assert.deepEqual(rrefsOnDisk(store).sort(), [...fans, ...rrefsOf(store, 'seed')].sort());
      assert.equal(r2.realizations.length, 4, 'noise x2, mix, final');
      assert.deepEqual(
        r2.derivations.sort(),
        [planOf(j, 'noise').dref, planOf(j, 'mix').dref, planOf(j, 'final').dref].sort(),
      );
      ok(cairn(store, ['root', 'rm', 'fans']));
      assert.deepEqual(rootLs(store), []);
      assert.equal(gc(store).realizations.length, 6);
      assert.deepEqual(rrefsOnDisk(store), []);
      assertVerifyClean(store);
    } finally {
      t.cleanup();
    }
  });
});

describe('gc: --dry-run, --keep-last, --older-than and the report', { timeout: 240_000 }, () => {
  it('--dry-run deletes nothing but reports exactly what gc then deletes, with the bytes it frees', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      const j = realizeJson(store, PIPELINE);
      const refs = rrefsOnDisk(store).sort();
      assert.equal(refs.length, 7);
      const drefs = drefsOf(j);
      const bytes = expectedBytes(store, refs, drefs);
      assert.ok(bytes > 1000, `the pipeline holds some bytes (${bytes})`);
      // Ignore the index files (WAL checkpoints may change their sizes).
      const before = snapshot(store, (rel) => rel.startsWith('index.sqlite') || rel.startsWith('tmp'));

      const dry = gc(store, ['--dry-run']);
      assert.equal(dry.dryRun, true);
      assert.deepEqual(dry.realizations.sort(), refs);
      assert.deepEqual(dry.derivations.sort(), drefs);
      assert.equal(dry.bytes, bytes, 'the dry run reports the bytes a real run frees');
      assert.equal(dry.kept, 0);
      assert.deepEqual(
        snapshot(store, (rel) => rel.startsWith('index.sqlite') || rel.startsWith('tmp')),
        before,
        'a dry run changes no file',
      );
      const text = ok(cairn(store, ['store', 'gc', '--dry-run']))
        .stdout.split('\n')
        .filter(Boolean);
      assert.deepEqual(text.slice(0, -1).sort(), refs.map((r) => `would delete ${r}`).sort());
      assert.match(
        text[text.length - 1]!,
        new RegExp(
          `^would delete 7 realization\\(s\\) and 5 derivation\\(s\\), ` +
            `freeing .* \\(${bytes} bytes\\); kept 0 realization`,
        ),
      );
      assert.equal(realizeJson(store, PIPELINE).builds, 0, 'after dry runs everything is still cached');
      assert.deepEqual(tmpEntries(store), []);

      const real = gc(store);
      assert.equal(real.dryRun, false);
      assert.deepEqual(real.realizations.sort(), refs);
      assert.deepEqual(real.derivations.sort(), drefs);
      assert.equal(real.bytes, bytes, 'freed bytes: files, logs, meta.json and drv.json');
      assert.deepEqual(rrefsOnDisk(store), []);
      const text2 = ok(cairn(store, ['store', 'gc'])).stdout.trim();
      assert.equal(
        text2,
        'deleted 0 realization(s) and 0 derivation(s), freed 0 B (0 ' +
          'bytes); kept 0 realization(s) reachable from 0 root(s)',
      );
      assert.deepEqual(tmpEntries(store), []);
      assertVerifyClean(store);
    } finally {
      t.cleanup();
    }
  });

  it('--keep-last N keeps the N newest realizations of every derivation (and their closures)', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      for (let i = 0; i < 3; i++) ok(cairn(store, ['realize', PIPELINE, '-q', '-s', 'fan', '-f']));
      const j = realizeJson(store, PIPELINE, ['-s', 'fan']);
      const fanDref = planOf(j, 'fan').dref;
      // lsref lists oldest first (by creation time, then insertion order).
      const listed = ok(cairn(store, ['lsref', fanDref]))
        .stdout.split('\n')
        .filter(Boolean)
        .map((l) => l.split(/\s+/)[0]!);
      assert.equal(listed.length, 6, '3 builds of 2 outputs');
      const seed = rrefsOf(store, 'seed');
      assert.equal(seed.length, 1);

      const r = gc(store, ['--keep-last', '2']);
      assert.deepEqual(r.realizations.sort(), listed.slice(0, 4).sort(), 'the 4 oldest fans go');
      assert.deepEqual(rrefsOnDisk(store).sort(), [...listed.slice(4), ...seed].sort(), 'the 2 newest and seed stay');
      assert.equal(r.kept, 3);
      assert.equal(gc(store, ['--keep-last', '2']).realizations.length, 0, 'idempotent');
      const r1 = gc(store, ['--keep-last', '1']);
      assert.deepEqual(r1.realizations, [listed[4]]);
      expectError(cairn(store, ['store', 'gc', '--keep-last', '0']), 'E_USAGE');
      assertVerifyClean(store);
    } finally {
      t.cleanup();
    }
  });

  it('--older-than 1h keeps fresh realizations and collects old ones (created times moved 2h back)', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      const old = realizeJson(store, CHAIN);
      const fresh = realizeJson(store, PIPELINE);
      assert.deepEqual(gc(store, ['--older-than', '1h']).realizations, [], 'everything is fresh: nothing goes');
      assert.equal(rrefsOnDisk(store).length, 10);

      // Make the chain two hours old, in the index and in meta.json (the files are the truth).
      const twoHours = 2 * 3600_000;
      const db = new Database(path.join(store, 'index.sqlite'));
      try {
        for (const r of closureOf(old)) {
          db.prepare('UPDATE rz SET created = created - ? WHERE rref = ?').run(twoHours, r);
          const metaFile = path.join(rzDir(store, r), 'meta.json');
          const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as { created: number };
          meta.created -= twoHours;
          fs.chmodSync(metaFile, 0o644);
          fs.writeFileSync(metaFile, JSON.stringify(meta, null, 2) + '\n');
          fs.chmodSync(metaFile, 0o444);
        }
      } finally {
        db.close();
      }
      const r = gc(store, ['--older-than', '1h']);
      assert.deepEqual(r.realizations.sort(), closureOf(old), 'only the old chain goes');
      assert.deepEqual(r.derivations.sort(), drefsOf(old));
      assert.equal(r.kept, 7);
      const left = rrefsOnDisk(store);
      assert.equal(left.length, 7, 'the fresh pipeline (all 7 realizations) stays');
      for (const r of closureOf(fresh)) assert.ok(left.includes(r), `${r} stays`);
      assert.equal(gc(store, ['--older-than', '90m']).realizations.length, 0);
      expectError(cairn(store, ['store', 'gc', '--older-than', 'soon']), 'E_USAGE');
      assertVerifyClean(store);
    } finally {
      t.cleanup();
    }
  });
});

describe('gc in a loop while other processes realize', { timeout: 600_000 }, () => {
  const GCS = 20;
  const REALIZES = 20;

  it(
    `${GCS} gc processes in a row, while ${REALIZES} realizes run in 2 lanes: ` +
      `every realize succeeds and the store verifies clean`,
    async () => {
      const t = tempDir('cairn-gc-loop');
      try {
        const store = path.join(t.dir, 'store');
        ok(cairn(store, ['realize', CHAIN, '-q']));
        const gcReports: GcReport[] = [];
        const gcFailures: CliResult[] = [];
        const realizeResults: { file: string; r: CliResult }[] = [];
        const gcLane = async (): Promise<void> => {
          for (let i = 0; i < GCS; i++) {
            const r = await cairnAsync(store, ['store', 'gc', '--json']);
            if (r.code === 0) gcReports.push(JSON.parse(r.stdout) as GcReport);
            else gcFailures.push(r);
          }
        };
        const realizeLane = async (lane: number): Promise<void> => {
          for (let i = 0; i < REALIZES / 2; i++) {
            // Alternate closures, so gc collects one while the other is being realized.
            const file = (i + lane) % 2 === 0 ? PIPELINE : CHAIN;
            realizeResults.push({ file, r: await cairnAsync(store, ['realize', file, '-q']) });
          }
        };
        const started = Date.now();
        await Promise.all([gcLane(), realizeLane(0), realizeLane(1)]);
        const ms = Date.now() - started;

        assert.equal(realizeResults.length, REALIZES);
        for (const { file, r } of realizeResults) {
          assert.equal(r.code, 0, `realize ${path.basename(file)} exited ${r.code}: ${r.stderr.slice(0, 1500)}`);
          assert.match(lastLine(r.stdout), /^[0-9a-z]{32}-[0-9a-z]{32}-(final|c)$/);
        }
        assert.deepEqual(
          gcFailures.map((r) => r.stderr.slice(0, 500)),
          [],
          'every gc succeeds',
        );
        const deleted = gcReports.reduce((a, r) => a + r.realizations.length, 0);
        console.log(
          `gc loop: ${gcReports.length} gc runs deleted ${deleted} realization(s) ` +
            `while ${REALIZES} realizes ran (${(ms / 1000).toFixed(1)}s)`,
        );

        // Whatever gc deleted, each closure realizes again consistently.
        for (const file of [PIPELINE, CHAIN]) {
          const j = realizeJson(store, file);
          for (const p of j.plan) for (const r of p.rrefs) assert.ok(fs.existsSync(outDir(store, r)), `${r} exists`);
        }
        const j = realizeJson(store, PIPELINE);
        const final = j.targets[0]!.rrefs[0]!;
        const mix = planOf(j, 'mix').rrefs[0]!;
        const fan = planOf(j, 'fan').rrefs[0]!;
        const expected =
          `${fs.readFileSync(path.join(outDir(store, mix), 'mix.txt'), 'utf8').trim()} ` +
          `${fs.readFileSync(path.join(outDir(store, fan), 'fan', '0.txt'), 'utf8').trim()}\n`;
        assert.equal(
          fs.readFileSync(path.join(outDir(store, final), 'final.txt'), 'utf8'),
          expected,
          'final was built from the chosen inputs',
        );
        assert.deepEqual(tmpEntries(store), [], 'STORE/tmp is empty');
        assertVerifyClean(store, 'store verify after the gc loop');
      } finally {
        t.cleanup();
      }
    },
  );

  it(
    'an out-link made by `realize --out-link` while gc runs continuously ' + 'always points at an existing realization',
    async () => {
      // gc runs back to back in one separate process (about a few ms per
      // run), so any moment in which a just-realized target is not protected
      // by a temp root or its out-link is likely to be hit.
      const ROUNDS = 30;
      const t = tempDir('cairn-gc-outlink');
      try {
        const store = path.join(t.dir, 'store');
        ok(cairn(store, ['realize', CHAIN, '-q']));
        const stop = path.join(t.dir, 'stop');
        const script =
          `
        const fs = await import('node:fs');
        const { LocalStore } = await import(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'store', 'store.js'))});
        const { collectGarbage } = await import(` +
          `${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'store', 'gc.js'))});
        const s = LocalStore.open(${JSON.stringify(store)});
        let runs = 0, deleted = 0;
        for (let i = 0; i < 200000 && !fs.existsSync(${JSON.stringify(stop)}); i++) {
          const r = await collectGarbage(s);
          runs++; deleted += r.realizations.length;
        }
        console.log(JSON.stringify({ runs, deleted }));`;
        const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let childOut = '';
        let childErr = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          childOut += d;
        });
        child.stderr.setEncoding('utf8').on('data', (d: string) => {
          childErr += d;
        });
        const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
        const dangling: string[] = [];
        const failures: string[] = [];
        try {
          for (let i = 0; i < ROUNDS; i++) {
            const link = path.join(t.dir, `result-${i}`);
            const r = await cairnAsync(store, ['realize', CHAIN, '-q', '--out-link', link]);
            if (r.code !== 0) failures.push(r.stderr.slice(0, 300));
            else if (!fs.existsSync(link)) dangling.push(`${link} -> ${fs.readlinkSync(link)}`);
            fs.rmSync(link, { force: true });
          }
        } finally {
          fs.writeFileSync(stop, '');
        }
        assert.equal(await exited, 0, `gc loop failed: ${childErr.slice(0, 1000)}`);
        const stats = JSON.parse(childOut) as { runs: number; deleted: number };
        console.log(
          `out-link race: ${stats.runs} gc runs, ${stats.deleted} ` +
            `deleted, ${dangling.length}/${ROUNDS} out-links dangling`,
        );
        assert.deepEqual(failures, [], 'every realize succeeds');
        assert.deepEqual(
          dangling,
          [],
          `out-links must never dangle right after realize --out-link exits (${dangling.length} of ${ROUNDS} did)`,
        );
      } finally {
        t.cleanup();
      }
    },
  );
});

describe('gc: dropped out-link roots are named, with why', { timeout: 240_000 }, () => {
  it(
    '--dry-run lists each out-link whose link was moved, deleted or ' +
      'repointed, and leaves the entries; gc then drops them',
    () => {
      const t = tempDir('cairn-gc');
      try {
        const store = path.join(t.dir, 'store');
        const links = ['moved', 'deleted', 'repointed', 'kept'].map((n) => path.join(t.dir, n));
        for (const l of links) realizeJson(store, CHAIN, ['--out-link', l]);
        fs.renameSync(links[0]!, path.join(t.dir, 'somewhere-else'));
        fs.unlinkSync(links[1]!);
        fs.unlinkSync(links[2]!);
        fs.symlinkSync(t.dir, links[2]!);

        const dry = ok(cairn(store, ['store', 'gc', '--dry-run'])).stdout;
        assert.ok(dry.includes(`would drop out-link root ${links[0]}: the link is gone (deleted or moved`), dry);
        assert.ok(dry.includes(`would drop out-link root ${links[1]}: the link is gone (deleted or moved`), dry);
        assert.ok(
          dry.includes(`would drop out-link root ${links[2]}: it now points to ${t.dir}, not into this store`),
          dry,
        );
        assert.ok(!dry.includes(links[3]!), 'a live out-link is not mentioned');
        assert.equal(fs.readdirSync(path.join(store, 'roots', 'auto')).length, 4, 'a dry run drops nothing');

        const r = gc(store);
        assert.deepEqual(r.droppedOutLinks.map((d) => d.link).sort(), links.slice(0, 3).sort());
        assert.equal(r.staleOutLinks, 3);
        assert.equal(r.realizations.length, 0, 'the live out-link still keeps the chain');
        assert.equal(fs.readdirSync(path.join(store, 'roots', 'auto')).length, 1);
        assert.doesNotMatch(
          ok(cairn(store, ['store', 'gc', '--dry-run'])).stdout,
          /drop out-link/,
          'reported until dropped, then no more',
        );
      } finally {
        t.cleanup();
      }
    },
  );
});

describe('gc --keep-best: what a best() stage would choose', { timeout: 240_000 }, () => {
  it(
    "keeps the N best-scoring realizations of the ML demo's train stage " +
      '(and their closure), as its best() matcher ranks them',
    () => {
      const t = tempDir('cairn-gc');
      try {
        const store = path.join(t.dir, 'store');
        const ml = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');
        realizeJson(store, ml);
        realizeJson(store, ml, ['--force', 'train']);
        const j = realizeJson(store, ml, ['--force', 'train']);
        const trains = rrefsOf(store, 'train');
        assert.equal(trains.length, 9);
        const score = (r: string): number => Number(fs.readFileSync(path.join(outDir(store, r), 'score.txt'), 'utf8'));
        const created = (r: string): number =>
          (JSON.parse(fs.readFileSync(path.join(rzDir(store, r), 'meta.json'), 'utf8')) as { created: number }).created;
        // best()'s order: highest score first; equal scores (the demo's models converge) go to the older.
        const order =
          (sign: number) =>
          (a: string, b: string): number =>
            sign * (score(b) - score(a)) || created(a) - created(b) || (a < b ? -1 : 1);
        const ranked = [...trains].sort(order(1));
        // The matcher's choice is the best one.
        assert.equal(planOf(j, 'train').rrefs[0], ranked[0]);

        const dry = gc(store, ['--dry-run', '--keep-best', '2']);
        assert.deepEqual(trains.filter((r) => !dry.realizations.includes(r)).sort(), ranked.slice(0, 2).sort());
        const low = gc(store, ['--dry-run', '--keep-best', '1', '--lowest']);
        assert.deepEqual(
          trains.filter((r) => !low.realizations.includes(r)),
          [[...trains].sort(order(-1))[0]],
        );

        const r = gc(store, ['--keep-best', '1']);
        assert.deepEqual(rrefsOf(store, 'train'), [ranked[0]], 'only the best train realization is left');
        assert.equal(rrefsOf(store, 'dataset').length, 1, 'with its closure');
        assert.equal(rrefsOf(store, 'report').length, 0, 'a stage without a score keeps nothing by --keep-best');
        assert.ok(r.realizations.length >= 8);
        // The best realization is still there, so a realize builds only the report again.
        const again = realizeJson(store, ml);
        assert.equal(again.builds, 1);
        assert.equal(planOf(again, 'train').action, 'cached');
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );

  it('--keep-best reads a JSON field with --score-file and --score-key; usage errors are refused', () => {
    const t = tempDir('cairn-gc');
    try {
      const store = path.join(t.dir, 'store');
      const file = path.join(t.dir, 'scored.ts');
      fs.writeFileSync(
        file,
        [
          "import * as fs from 'node:fs';",
          "import { stage, best } from 'cairn';",
          "export default stage({ name: 'scored', n: 4, config: {}, outputs: " +
            "['m.json'], matcher: best({ file: 'm.json', key: 'acc' }),",
          '  build: ({ outs }) => outs.forEach((o, i) => fs.writeFileSync(o + ' +
            "'/m.json', JSON.stringify({ acc: [0.5, 0.9, 0.1, 0.7][i] }))) });",
          '',
        ].join('\n'),
      );
      const j = realizeJson(store, file);
      const all = rrefsOf(store, 'scored');
      assert.equal(all.length, 4);
      const r = gc(store, ['--keep-best', '2', '--score-file', 'm.json', '--score-key', 'acc']);
      const acc = (x: string): number =>
        (JSON.parse(fs.readFileSync(path.join(outDir(store, x), 'm.json'), 'utf8')) as { acc: number }).acc;
      assert.deepEqual(rrefsOf(store, 'scored').map(acc).sort(), [0.7, 0.9]);
      assert.equal(r.realizations.length, 2);
      assert.ok(rrefsOf(store, 'scored').includes(j.targets[0]!.rrefs[0]!), "the matcher's choice is kept");
      expectError(cairn(store, ['store', 'gc', '--keep-best', '0']), 'E_USAGE');
    } finally {
      t.cleanup();
    }
  });
});
