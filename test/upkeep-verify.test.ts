/**
 * `cairn store verify [--repair]` against injected faults. Each fault is
 * injected into a copy of one pristine store (realized pipeline.ts), then:
 *
 *  A. verify reports it (its RRef, the right kind, exit 1); a realize
 *     afterwards never serves the corrupt realization: every realization
 *     it chose verifies intact, and the downstream stage, rebuilt, read
 *     intact content;
 *  B. on a fresh copy, verify --repair moves the corrupt realization to
 *     STORE/quarantine/ (or clears write bits), rebuilds the index, and
 *     verify is clean afterwards (exit 0).
 *
 * Then index drift (rows deleted; directories deleted), realizations copied
 * in from another store, and the layout version.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { cairn, tempDir } from './helpers.js';
import {
  PIPELINE,
  CHAIN,
  assertVerifyClean,
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
  verify,
  type RealizeJson,
  type VerifyReport,
} from './fixtures/torture/support.js';

const cache = tempDir('cairn-verify-cache');
process.env.XDG_CACHE_HOME = cache.dir;
after(() => cache.cleanup());

const work = tempDir('cairn-verify');
after(() => work.cleanup());

let pristine = '';
let plan: RealizeJson;
let copies = 0;

function copyPristine(): string {
  const dst = path.join(work.dir, `copy-${++copies}`);
  const r = spawnSync('cp', ['-a', pristine, dst]);
  assert.equal(r.status, 0, String(r.stderr));
  return dst;
}

/** Runs `fn` on `p` with owner write permission, then puts the mode back exactly. */
function withWrite<T>(p: string, fn: () => T): T {
  const mode = fs.lstatSync(p).mode & 0o7777;
  fs.chmodSync(p, mode | 0o200);
  try {
    return fn();
  } finally {
    fs.chmodSync(p, mode);
  }
}

function flipByte(file: string): void {
  withWrite(file, () => {
    const buf = fs.readFileSync(file);
    const at = Math.floor(buf.length / 2);
    buf[at] = buf[at]! ^ 0x01;
    fs.writeFileSync(file, buf);
  });
}

function editMeta(store: string, rref: string, edit: (meta: Record<string, unknown>) => void): void {
  const file = path.join(rzDir(store, rref), 'meta.json');
  withWrite(file, () => {
    const meta = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    edit(meta);
    fs.writeFileSync(file, JSON.stringify(meta, null, 2) + '\n');
  });
}

const one = (name: string): string => planOf(plan, name).rrefs[0]!;
const digest = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex').slice(0, 16);

interface Fault {
  name: string;
  kind: 'modified' | 'writable';
  /** Injects the fault into `store`; returns the RRef it damaged. */
  inject(store: string): string;
}

const seedOut = (s: string): string => outDir(s, one('seed'));

const FAULTS: Fault[] = [
  {
    name: 'bit flip in an executable file',
    kind: 'modified',
    inject: (s) => {
      flipByte(path.join(seedOut(s), 'run.sh'));
      return one('seed');
    },
  },
  {
    name: 'bit flip in a random binary output',
    kind: 'modified',
    inject: (s) => {
      const r = planOf(plan, 'noise').rrefs[1]!;
      flipByte(path.join(outDir(s, r), 'noise.bin'));
      return r;
    },
  },
  {
    name: 'truncated file',
    kind: 'modified',
    inject: (s) => {
      const f = path.join(seedOut(s), 'f4.txt');
      withWrite(f, () => fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2)));
      return one('seed');
    },
  },
  {
    name: 'file truncated to zero bytes',
    kind: 'modified',
    inject: (s) => {
      const r = planOf(plan, 'noise').rrefs[0]!;
      const f = path.join(outDir(s, r), 'noise.bin');
      withWrite(f, () => fs.truncateSync(f, 0));
      return r;
    },
  },
  {
    name: 'deleted file',
    kind: 'modified',
    inject: (s) => {
      const d = path.join(seedOut(s), 'sub');
      withWrite(d, () => fs.unlinkSync(path.join(d, 'deep.txt')));
      return one('seed');
    },
  },
  {
    name: 'deleted out/ directory',
    kind: 'modified',
    inject: (s) => {
      const rz = rzDir(s, one('fan'));
      withWrite(rz, () => {
        spawnSync('chmod', ['-R', 'u+w', path.join(rz, 'out')]);
        fs.rmSync(path.join(rz, 'out'), { recursive: true });
      });
      return one('fan');
    },
  },
  {
    name: 'added file',
    kind: 'modified',
    inject: (s) => {
      const d = seedOut(s);
      withWrite(d, () => fs.writeFileSync(path.join(d, 'extra.txt'), 'sneaked in\n', { mode: 0o444 }));
      return one('seed');
    },
  },
  {
    name: 'added empty directory',
    kind: 'modified',
    inject: (s) => {
      const d = path.join(seedOut(s), 'sub');
      withWrite(d, () => fs.mkdirSync(path.join(d, 'new'), { mode: 0o555 }));
      return one('seed');
    },
  },
  {
    name: 'exec bit set',
    kind: 'modified',
    inject: (s) => {
      fs.chmodSync(path.join(seedOut(s), 'f0.txt'), 0o555);
      return one('seed');
    },
  },
  {
    name: 'exec bit cleared',
    kind: 'modified',
    inject: (s) => {
      fs.chmodSync(path.join(seedOut(s), 'run.sh'), 0o444);
      return one('seed');
    },
  },
  {
    name: 'changed symlink target',
    kind: 'modified',
    inject: (s) => {
      const d = seedOut(s);
      withWrite(d, () => {
        fs.unlinkSync(path.join(d, 'link'));
        fs.symlinkSync('f0.txt', path.join(d, 'link'));
      });
      return one('seed');
    },
  },
  {
    name: 'symlink replaced by the file it pointed to',
    kind: 'modified',
    inject: (s) => {
      const d = seedOut(s);
      withWrite(d, () => {
        fs.unlinkSync(path.join(d, 'link'));
        fs.writeFileSync(path.join(d, 'link'), 'deep\n', { mode: 0o444 });
      });
      return one('seed');
    },
  },
  {
    name: 'meta.json: tree hash edited',
    kind: 'modified',
    inject: (s) => {
      editMeta(s, one('final'), (m) => {
        m.tree = createHash('sha256').update('other').digest('hex');
      });
      return one('final');
    },
  },
  {
    name: 'meta.json: context edited (one input swapped)',
    kind: 'modified',
    inject: (s) => {
      const n = planOf(plan, 'noise');
      editMeta(s, one('mix'), (m) => {
        m.context = { [n.dref]: [n.rrefs[0], n.rrefs[0]] };
      });
      return one('mix');
    },
  },
  {
    name: 'meta.json: rref edited',
    kind: 'modified',
    inject: (s) => {
      editMeta(s, one('final'), (m) => {
        m.rref = `${'1'.repeat(32)}-${planOf(plan, 'final').dref}`;
      });
      return one('final');
    },
  },
  {
    name: 'meta.json: ctx (context hash) edited',
    kind: 'modified',
    inject: (s) => {
      editMeta(s, one('seed'), (m) => {
        const c = String(m.ctx);
        m.ctx = (c.startsWith('0') ? '1' : '0') + c.slice(1);
      });
      return one('seed');
    },
  },
  {
    name: 'meta.json: not JSON any more',
    kind: 'modified',
    inject: (s) => {
      const f = path.join(rzDir(s, one('mix')), 'meta.json');
      withWrite(f, () => fs.truncateSync(f, 20));
      return one('mix');
    },
  },
  {
    name: 'meta.json: deleted',
    kind: 'modified',
    inject: (s) => {
      const d = rzDir(s, one('final'));
      withWrite(d, () => fs.unlinkSync(path.join(d, 'meta.json')));
      return one('final');
    },
  },
  {
    name: 'write bit on an output file',
    kind: 'writable',
    inject: (s) => {
      fs.chmodSync(path.join(seedOut(s), 'f1.txt'), 0o644);
      return one('seed');
    },
  },
  {
    name: 'write bit on an output subdirectory',
    kind: 'writable',
    inject: (s) => {
      fs.chmodSync(path.join(seedOut(s), 'sub'), 0o755);
      return one('seed');
    },
  },
  {
    name: 'write bit on out/ itself',
    kind: 'writable',
    inject: (s) => {
      fs.chmodSync(outDir(s, one('mix')), 0o755);
      return one('mix');
    },
  },
  {
    name: 'write bit on the realization directory (holding meta.json)',
    kind: 'writable',
    inject: (s) => {
      fs.chmodSync(rzDir(s, one('mix')), 0o755);
      return one('mix');
    },
  },
  {
    name: 'write bit on meta.json',
    kind: 'writable',
    inject: (s) => {
      fs.chmodSync(path.join(rzDir(s, one('final')), 'meta.json'), 0o644);
      return one('final');
    },
  },
];

const detected = new Set<string>();
const missed = new Map<string, string>();

/** `store verify --json RREF...`: problems of just these realizations. */
function verifyRefs(store: string, rrefs: string[]): VerifyReport {
  const r = cairn(store, ['store', 'verify', '--json', ...rrefs]);
  return JSON.parse(r.stdout) as VerifyReport;
}

/** mix.txt as mix's build writes it from the given (intact) inputs. */
function expectedMix(store: string, j: RealizeJson): string {
  const noise = planOf(j, 'noise').rrefs.map((r) => digest(path.join(outDir(store, r), 'noise.bin')));
  return `${noise.join('+')} ${digest(path.join(outDir(store, planOf(j, 'seed').rrefs[0]!), 'run.sh'))}\n`;
}

describe('store verify: injected faults', { timeout: 600_000 }, () => {
  before(() => {
    pristine = path.join(work.dir, 'pristine');
    plan = realizeJson(pristine, PIPELINE);
    assert.equal(rrefsOnDisk(pristine).length, 7);
    assertVerifyClean(pristine, 'the pristine store');
  });

  for (const fault of FAULTS) {
    it(`${fault.name}: verify reports it as '${fault.kind}' with its RRef and exits 1`, () => {
      const store = copyPristine();
      const bad = fault.inject(store);
      const v = verify(store);
      const mine = v.report.problems.filter((p) => p.ref === bad);
      if (mine.length === 0)
        missed.set(fault.name, `verify said ${JSON.stringify(v.report.problems)} (exit ${v.code})`);
      assert.deepEqual(
        v.report.problems.map((p) => ({ ref: p.ref, kind: p.kind })),
        [{ ref: bad, kind: fault.kind }],
        `verify reports exactly the injected fault (${fault.name})`,
      );
      assert.equal(v.code, 1, 'verify exits 1 on a problem');
      detected.add(fault.name);
      const text = cairn(store, ['store', 'verify']);
      assert.equal(text.code, 1);
      assert.match(text.stdout, new RegExp(`^${fault.kind}\\s+${bad}: `, 'm'), 'the text report names the RRef too');
    });

    it(
      `${fault.name}: after verify, a realize never serves it and ` +
        `the rebuilt downstream stage reads intact content`,
      () => {
        const store = copyPristine();
        fault.inject(store);
        verify(store);
        const j = realizeJson(store, PIPELINE, ['-f', 'mix']);
        const served = j.plan.flatMap((p) => p.rrefs);
        const check = verifyRefs(store, served);
        // A realization with only write bits set has intact content and may be
        // served; its detection is the business of the test above.
        const content = check.problems.filter((p) => !(fault.kind === 'writable' && p.kind === 'writable'));
        assert.deepEqual(content, [], `every realization the realize chose is intact (${served.length} checked)`);
        assert.equal(
          fs.readFileSync(path.join(outDir(store, planOf(j, 'mix').rrefs[0]!), 'mix.txt'), 'utf8'),
          expectedMix(store, j),
          'the rebuilt downstream stage read intact inputs',
        );
        const seed = planOf(j, 'seed').rrefs[0]!;
        assert.equal(fs.readFileSync(path.join(outDir(store, seed), 'sub', 'deep.txt'), 'utf8'), 'deep\n');
        assert.equal(fs.readlinkSync(path.join(outDir(store, seed), 'link')), 'sub/deep.txt');
        assert.deepEqual(tmpEntries(store), []);
      },
    );

    it(
      `${fault.name}: verify --repair ` +
        (fault.kind === 'writable' ? 'clears the write bits' : 'moves it to STORE/quarantine') +
        `, and verify is clean afterwards`,
      () => {
        const store = copyPristine();
        const bad = fault.inject(store);
        const rep = verify(store, { repair: true });
        assert.equal(rep.code, 0, `verify --repair exits 0 once it has repaired: ${rep.stderr}`);
        assert.equal(rep.report.repaired, true);
        assert.deepEqual(
          rep.report.problems.map((p) => ({ ref: p.ref, kind: p.kind })),
          [{ ref: bad, kind: fault.kind }],
        );
        if (fault.kind === 'writable') {
          assert.deepEqual(rep.report.quarantined, []);
          assert.ok(fs.existsSync(rzDir(store, bad)), 'content was intact, so it stays');
          const modes = snapshot(rzDir(store, bad)).filter((l) => !/ l /.test(l));
          for (const l of modes)
            assert.equal(Number.parseInt(l.split(' ')[2]!, 8) & 0o222, 0, `write bits cleared: '${l}'`);
        } else {
          assert.deepEqual(rep.report.quarantined, [bad]);
          assert.equal(fs.existsSync(rzDir(store, bad)), false, 'moved out of d/');
          const q = fs.readdirSync(path.join(store, 'quarantine'));
          assert.equal(q.length, 1);
          assert.ok(q[0]!.startsWith(`${bad}-`), `quarantine/${q[0]} is named after the RRef`);
        }
        assertVerifyClean(store, 'verify after --repair');
        const again = realizeJson(store, PIPELINE);
        assert.equal(
          again.builds > 0,
          fault.kind === 'modified',
          'a quarantined realization is rebuilt (or replaced); a writable one is kept',
        );
        assertVerifyClean(store, 'verify after the rebuild');
        assert.deepEqual(tmpEntries(store), []);
      },
    );
  }

  it('detects 100% of the injected faults', () => {
    console.log(`faults injected: ${FAULTS.length}, detected by verify: ${detected.size}`);
    assert.deepEqual([...missed.entries()], [], 'faults verify did not report');
    assert.equal(detected.size, FAULTS.length);
  });
});

describe('store verify: index drift', { timeout: 300_000 }, () => {
  it("rows deleted from the index are reported as 'extra' and restored by --repair", () => {
    const t = tempDir('cairn-verify-drift');
    try {
      const store = path.join(t.dir, 'store');
      const j = realizeJson(store, PIPELINE);
      const dropped = [...planOf(j, 'noise').rrefs, planOf(j, 'final').rrefs[0]!].sort();
      const db = new Database(path.join(store, 'index.sqlite'));
      let before: number;
      try {
        before = (db.prepare('SELECT count(*) AS n FROM rz').get() as { n: number }).n;
        for (const r of dropped) assert.equal(db.prepare('DELETE FROM rz WHERE rref = ?').run(r).changes, 1);
      } finally {
        db.close();
      }
      const v = verify(store);
      assert.equal(v.code, 1);
      assert.deepEqual(
        v.report.problems.map((p) => `${p.kind} ${p.ref}`).sort(),
        dropped.map((r) => `extra ${r}`),
      );
      const rep = verify(store, { repair: true });
      assert.equal(rep.code, 0);
      assert.deepEqual(rep.report.quarantined, []);
      const db2 = new Database(path.join(store, 'index.sqlite'), { readonly: true });
      try {
        assert.equal((db2.prepare('SELECT count(*) AS n FROM rz').get() as { n: number }).n, before);
        for (const r of dropped)
          assert.ok(db2.prepare('SELECT 1 FROM rz WHERE rref = ?').get(r), `${r} is indexed again`);
      } finally {
        db2.close();
      }
      assertVerifyClean(store);
      const again = realizeJson(store, PIPELINE);
      assert.equal(again.builds, 0, 'the restored rows serve the realize: nothing is rebuilt');
      assert.equal(again.targets[0]!.rrefs[0], j.targets[0]!.rrefs[0]);
    } finally {
      t.cleanup();
    }
  });

  it(
    "a realization deleted behind the index's back is 'missing'; " +
      '--repair drops the row and the next realize rebuilds',
    () => {
      const t = tempDir('cairn-verify-drift');
      try {
        const store = path.join(t.dir, 'store');
        const j = realizeJson(store, PIPELINE);
        const gone = planOf(j, 'final').rrefs[0]!;
        spawnSync('chmod', ['-R', 'u+w', rzDir(store, gone)]);
        fs.rmSync(rzDir(store, gone), { recursive: true });
        const v = verify(store);
        assert.equal(v.code, 1);
        assert.deepEqual(
          v.report.problems.map((p) => ({ ref: p.ref, kind: p.kind })),
          [{ ref: gone, kind: 'missing' }],
        );
        assert.equal(verify(store, { repair: true }).code, 0);
        assertVerifyClean(store);
        const again = realizeJson(store, PIPELINE);
        assert.equal(again.builds, 1, 'final is rebuilt');
        assert.equal(again.targets[0]!.rrefs[0], gone, 'deterministically, into the same RRef');
        assertVerifyClean(store);
      } finally {
        t.cleanup();
      }
    },
  );

  it(
    'a realization copied in from another store (cp -a, like rsync) is ' +
      "'extra' and indexed by --repair; so is a whole derivation",
    () => {
      const t = tempDir('cairn-verify-copy');
      try {
        const a = path.join(t.dir, 'a');
        const b = path.join(t.dir, 'b');
        const ja = realizeJson(a, PIPELINE, ['-s', 'noise']);
        realizeJson(b, PIPELINE, ['-s', 'noise']);
        ok(cairn(b, ['realize', CHAIN, '-q', '-s', 'a']));
        const noiseDref = planOf(ja, 'noise').dref;
        const foreign = rrefsOf(b, 'noise')[0]!;
        assert.ok(
          !rrefsOf(a, 'noise').includes(foreign),
          'random outputs: the other store has other noise realizations',
        );
        // Copy one realization directory into the existing derivation ...
        const r1 = spawnSync('cp', ['-a', rzDir(b, foreign), path.join(a, 'd', noiseDref, 'r')]);
        assert.equal(r1.status, 0, String(r1.stderr));
        // ... and a whole derivation the store does not have.
        const aDref = fs.readdirSync(path.join(b, 'd')).find((d) => d.endsWith('-a'))!;
        const r2 = spawnSync('cp', ['-a', path.join(b, 'd', aDref), path.join(a, 'd')]);
        assert.equal(r2.status, 0, String(r2.stderr));
        const chainA = rrefsOf(b, 'a')[0]!;

        const v = verify(a);
        assert.equal(v.code, 1);
        assert.deepEqual(
          v.report.problems.map((p) => `${p.kind} ${p.ref}`).sort(),
          [`extra ${chainA}`, `extra ${foreign}`].sort(),
        );
        const rep = verify(a, { repair: true });
        assert.equal(rep.code, 0);
        assertVerifyClean(a);
        const listed = ok(cairn(a, ['lsref', noiseDref]))
          .stdout.split('\n')
          .filter(Boolean)
          .map((l) => l.split(/\s+/)[0]);
        assert.equal(listed.length, 3);
        assert.ok(listed.includes(foreign), 'the copied realization is indexed');
        // The copied derivation serves a realize at once.
        const chain = JSON.parse(ok(cairn(a, ['realize', CHAIN, '--json', '-s', 'a'])).stdout) as RealizeJson;
        assert.equal(chain.builds, 0);
        assert.deepEqual(chain.targets[0]!.rrefs, [chainA]);
        assert.equal(ok(cairn(a, ['catref', chainA, 'a.txt'])).stdout, 'alpha\n');
      } finally {
        t.cleanup();
      }
    },
  );
});

describe('store verify: layout version', () => {
  it(
    'a store.json with another layout gives E_STORE_VERSION for verify, ' +
      'verify --repair, gc and root ls, and nothing is changed',
    () => {
      const t = tempDir('cairn-verify-layout');
      try {
        const store = path.join(t.dir, 'store');
        realizeJson(store, CHAIN);
        const marker = path.join(store, 'store.json');
        fs.chmodSync(marker, 0o644);
        fs.writeFileSync(marker, '{"cairn-store":true,"layout":2}\n');
        fs.chmodSync(marker, 0o444);
        const before = snapshot(store, (rel) => rel.startsWith('index.sqlite'));
        for (const args of [
          ['store', 'verify'],
          ['store', 'verify', '--repair'],
          ['store', 'gc'],
          ['root', 'ls'],
        ]) {
          const r = cairn(store, args);
          expectError(r, 'E_STORE_VERSION', args.join(' '));
          assert.equal(r.stdout, '');
        }
        assert.deepEqual(
          snapshot(store, (rel) => rel.startsWith('index.sqlite')),
          before,
          'nothing was changed',
        );
      } finally {
        t.cleanup();
      }
    },
  );
});
