/**
 * `cairn realize`: output, caching, --json, --dry-run, --force, -j, --stage,
 * --keep-failed, and every load/instantiate/build error it can report.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import {
  cairn,
  cairnBin,
  lastLine,
  repoRoot,
  tempDir,
  type CliResult,
  isolateModuleCache,
  ok,
  expectError,
  tmpEntries,
} from './helpers.js';

const fixture = (name: string): string => path.join(repoRoot, 'test', 'fixtures', name);
const CHAIN = fixture('chain.ts');
const FAILING = fixture('failing.ts');
const RREF = /^[0-9a-df-np-sv-z]{32}-[0-9a-df-np-sv-z]{32}-[A-Za-z0-9_][A-Za-z0-9._+-]*$/;

// Keep the transpile cache of stage files out of the real home directory.
isolateModuleCache(after);

interface Env {
  store: string;
  counter: string;
  work: string;
  env: NodeJS.ProcessEnv;
  cleanup: () => void;
}

/** A fresh store plus a build counter directory outside it. */
function setup(): Env {
  const t = tempDir('cairn-cli');
  const store = path.join(t.dir, 'store');
  const counter = path.join(t.dir, 'counter');
  const work = path.join(t.dir, 'work');
  fs.mkdirSync(work);
  return { store, counter, work, env: { CAIRN_TEST_COUNTER: counter }, cleanup: t.cleanup };
}

/** How many builds of the stage `name` have run (lines in its counter file). */
function builds(e: Env, name: string): number {
  try {
    return fs.readFileSync(path.join(e.counter, name), 'utf8').split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
}

/** RRefs on disk for the stage called `name`, whatever its DRef. */
function realizationsOf(store: string, name: string): string[] {
  let drvs: string[];
  try {
    drvs = fs.readdirSync(path.join(store, 'd'));
  } catch {
    return [];
  }
  return drvs
    .filter((d) => d.endsWith(`-${name}`))
    .flatMap((d) => {
      try {
        return fs.readdirSync(path.join(store, 'd', d, 'r')).map((h) => `${h}-${d}`);
      } catch {
        return [];
      }
    });
}

function allRealizations(store: string): string[] {
  let drvs: string[];
  try {
    drvs = fs.readdirSync(path.join(store, 'd'));
  } catch {
    return [];
  }
  return drvs.flatMap((d) => {
    try {
      return fs.readdirSync(path.join(store, 'd', d, 'r')).map((h) => `${h}-${d}`);
    } catch {
      return [];
    }
  });
}

/** Every file called `name` anywhere under `dir`. */
function findFiles(dir: string, name: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[])
    .filter((rel) => path.basename(rel) === name)
    .map((rel) => path.join(dir, rel));
}

/** A failure with the stable code on stderr, and nothing half-written in the store. */

interface JsonResult {
  store: string;
  dryRun: boolean;
  builds: number;
  targets: { dref: string; name: string; rrefs: string[] }[];
  plan: { dref: string; name: string; action: string; rrefs: string[] }[];
}

function json(r: CliResult): JsonResult {
  ok(r);
  return JSON.parse(r.stdout) as JsonResult;
}

function writeStageFile(e: Env, name: string, body: string): string {
  const file = path.join(e.work, name);
  fs.writeFileSync(file, body);
  return file;
}

function instantiateDrefs(e: Env, file: string, extra: string[] = []): string[] {
  return ok(cairn(e.store, ['instantiate', file, ...extra], { env: e.env }))
    .stdout.trim()
    .split('\n');
}

describe('cairn realize: results and caching', () => {
  it('prints the target RRef last, and a second run prints the same RRef and builds nothing', () => {
    const e = setup();
    try {
      const drefs = instantiateDrefs(e, CHAIN);
      const r1 = ok(cairn(e.store, ['realize', CHAIN], { env: e.env }));
      const rref = lastLine(r1.stdout);
      assert.match(rref, RREF);
      assert.ok(rref.endsWith(`-${drefs[drefs.length - 1]}`), `${rref} should be a realization of ${drefs.at(-1)}`);
      assert.match(r1.stderr, /3 built \(3 build run\(s\)\), 0 cached/);
      assert.equal(
        fs.readFileSync(path.join(e.store, 'd', drefs.at(-1)!, 'r', rref.split('-')[0]!, 'out', 'c.txt'), 'utf8'),
        'alpha+beta+gamma\n',
      );
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 1, 1],
      );

      const r2 = ok(cairn(e.store, ['realize', CHAIN], { env: e.env }));
      assert.equal(lastLine(r2.stdout), rref);
      assert.match(r2.stderr, /0 built \(0 build run\(s\)\), 3 cached/);
      assert.doesNotMatch(r2.stderr, /building /);
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 1, 1],
        'the cached run must not run any build function',
      );
      assert.deepEqual(tmpEntries(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('--json parses and holds targets, plan and build count; a second run is all cached', () => {
    const e = setup();
    try {
      const j1 = json(cairn(e.store, ['realize', CHAIN, '--json'], { env: e.env }));
      assert.equal(j1.dryRun, false);
      assert.equal(j1.builds, 3);
      assert.equal(path.resolve(j1.store), path.resolve(e.store));
      assert.equal(j1.targets.length, 1);
      assert.equal(j1.targets[0]!.name, 'c');
      assert.equal(j1.targets[0]!.rrefs.length, 1);
      assert.match(j1.targets[0]!.rrefs[0]!, RREF);
      assert.deepEqual(
        j1.plan.map((p) => p.name),
        ['a', 'b', 'c'],
        'plan lists dependencies first',
      );
      assert.deepEqual(
        j1.plan.map((p) => p.action),
        ['build', 'build', 'build'],
      );
      for (const p of j1.plan) {
        assert.equal(p.rrefs.length, 1);
        assert.ok(p.rrefs[0]!.endsWith(`-${p.dref}`));
      }
      assert.equal(j1.plan[2]!.dref, j1.targets[0]!.dref);

      const j2 = json(cairn(e.store, ['realize', CHAIN, '--json'], { env: e.env }));
      assert.equal(j2.builds, 0);
      assert.deepEqual(
        j2.plan.map((p) => p.action),
        ['cached', 'cached', 'cached'],
      );
      assert.deepEqual(j2.targets, j1.targets);
      assert.deepEqual(
        j2.plan.map((p) => p.rrefs),
        j1.plan.map((p) => p.rrefs),
      );
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 1, 1],
      );
    } finally {
      e.cleanup();
    }
  });

  it('the same stage file gives the same RRefs in two different stores (content addressing)', () => {
    const e1 = setup();
    const e2 = setup();
    try {
      const r1 = lastLine(ok(cairn(e1.store, ['realize', CHAIN], { env: e1.env })).stdout);
      const r2 = lastLine(ok(cairn(e2.store, ['realize', CHAIN, '-j', '1'], { env: e2.env })).stdout);
      assert.equal(r1, r2);
    } finally {
      e1.cleanup();
      e2.cleanup();
    }
  });

  it('-j 1 realizes the whole graph; -j 0 is a usage error', () => {
    const e = setup();
    try {
      const j = json(cairn(e.store, ['realize', CHAIN, '-j', '1', '--json'], { env: e.env }));
      assert.equal(j.builds, 3);
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 1, 1],
      );
      const again = ok(cairn(e.store, ['realize', CHAIN, '--jobs', '1'], { env: e.env }));
      assert.equal(lastLine(again.stdout), j.targets[0]!.rrefs[0]);

      const bad = cairn(e.store, ['realize', CHAIN, '-j', '0'], { env: e.env });
      expectError(bad, 'E_USAGE', e.store);
      assert.equal(bad.code, 2);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize: build times', () => {
  it('a build waiting for a -j slot reports its own time, not the wait', () => {
    const e = setup();
    try {
      // Two independent 1.5 s builds and one slot: the second waits 1.5 s for it.
      const file = writeStageFile(
        e,
        'slow.ts',
        `import { stage } from 'cairn';
const slow = (name: string) => stage({ name, config: {}, build: async ({ exec, out }) => {
  await exec('sh', ['-c', 'sleep 1.5; echo 1 > "$1/v"', 'sh', out]);
} });
export default [slow('one'), slow('two')];
`,
      );
      const r = ok(cairn(e.store, ['realize', file, '-j', '1'], { env: e.env }));
      const times = [...r.stderr.matchAll(/^built (one|two) in ([\d.]+)s/gm)].map((m) => Number(m[2]));
      assert.equal(times.length, 2, r.stderr);
      for (const t of times) assert.ok(t >= 1.5 && t < 2.9, `each build took about 1.5 s, not 3: ${r.stderr}`);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize: stdout holds only results', () => {
  it('what a stage file or a build prints on stdout goes to stderr: --json parses, the RRefs are the last line', () => {
    const e = setup();
    try {
      const file = writeStageFile(
        e,
        'noisy.ts',
        `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
console.log('noise at load');
export default stage({ name: 'noisy', config: {}, build: async ({ out }) => {
  console.log('noise from the build');
  process.stdout.write('more noise\\n');
  fs.writeFileSync(path.join(out, 'v'), '1');
} });
`,
      );
      const r = ok(cairn(e.store, ['realize', file, '--json'], { env: e.env }));
      const j = JSON.parse(r.stdout) as { targets: { rrefs: string[] }[] };
      assert.match(j.targets[0]!.rrefs[0]!, RREF);
      for (const n of ['noise at load', 'noise from the build', 'more noise']) assert.match(r.stderr, new RegExp(n));
      const plain = ok(cairn(e.store, ['realize', file, '--force'], { env: e.env }));
      assert.equal(plain.stdout.trim().split('\n').length, 1, plain.stdout);
      assert.match(plain.stdout.trim(), RREF);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize: several outputs per build', () => {
  it('a stage with n: 3 stores 3 realizations from one build, each with its build log', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', fixture('nondet.ts'), '--stage', 'trio', '--json'], { env: e.env });
      assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp is empty afterwards');
      const j = json(r);
      assert.equal(j.builds, 1);
      assert.equal(builds(e, 'trio'), 1);
      const all = realizationsOf(e.store, 'trio');
      assert.equal(all.length, 3, 'one realization per output');
      assert.ok(all.includes(j.targets[0]!.rrefs[0]!), 'latest() chose one of them');
      for (const rref of all) {
        assert.match(ok(cairn(e.store, ['catref', rref, 'value.txt'])).stdout, /^[012] [0-9a-f]{16}\n$/);
        assert.match(ok(cairn(e.store, ['log', rref])).stdout, /wrote 3 outputs/);
      }
      const again = json(
        cairn(e.store, ['realize', fixture('nondet.ts'), '--stage', 'trio', '--json'], { env: e.env }),
      );
      assert.equal(again.builds, 0);
      assert.deepEqual(again.targets, j.targets);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize --dry-run', () => {
  it('lists the actions and builds nothing', () => {
    const e = setup();
    try {
      const drefs = instantiateDrefs(e, CHAIN);
      const r = ok(cairn(e.store, ['realize', CHAIN, '--dry-run'], { env: e.env }));
      const lines = r.stdout.trim().split('\n');
      assert.deepEqual(
        lines.slice(0, 3).map((l) => l.split(/\s+/)),
        drefs.map((d) => ['build', d]),
      );
      assert.equal(lines[3], '3 to build, 0 cached');
      assert.deepEqual(allRealizations(e.store), [], 'a dry run stores no realizations');
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [0, 0, 0],
        'a dry run runs no build function',
      );
      assert.deepEqual(tmpEntries(e.store), []);

      const j = json(cairn(e.store, ['realize', CHAIN, '-n', '--json'], { env: e.env }));
      assert.equal(j.dryRun, true);
      assert.equal(j.builds, 0);
      assert.deepEqual(
        j.plan.map((p) => p.action),
        ['build', 'build', 'build'],
      );
      assert.deepEqual(allRealizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('reports cached stages as cached and the rest as to build', () => {
    const e = setup();
    try {
      ok(cairn(e.store, ['realize', CHAIN, '--stage', 'a'], { env: e.env }));
      assert.equal(allRealizations(e.store).length, 1);
      const r = ok(cairn(e.store, ['realize', CHAIN, '--dry-run'], { env: e.env }));
      const lines = r.stdout.trim().split('\n');
      assert.deepEqual(
        lines.slice(0, 3).map((l) => l.split(/\s+/)[0]),
        ['cached', 'build', 'build'],
      );
      assert.equal(lines[3], '2 to build, 1 cached');
      assert.equal(allRealizations(e.store).length, 1, 'still only the realization of a');
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 0, 0],
      );

      const f = json(cairn(e.store, ['realize', CHAIN, '--dry-run', '--json', '--force'], { env: e.env }));
      assert.deepEqual(
        f.plan.map((p) => p.action),
        ['force', 'force', 'force'],
      );
      assert.equal(f.builds, 0);
      assert.equal(allRealizations(e.store).length, 1);
      assert.equal(builds(e, 'a'), 1);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize --force', () => {
  it('--force with no name rebuilds every stage', () => {
    const e = setup();
    try {
      const first = json(cairn(e.store, ['realize', CHAIN, '--json'], { env: e.env }));
      const j = json(cairn(e.store, ['realize', CHAIN, '--json', '--force'], { env: e.env }));
      assert.equal(j.builds, 3);
      assert.deepEqual(
        j.plan.map((p) => p.action),
        ['force', 'force', 'force'],
      );
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [2, 2, 2],
      );
      // The chain is deterministic, so rebuilt outputs are identical and merge.
      assert.deepEqual(j.targets, first.targets);
      assert.equal(allRealizations(e.store).length, 3);
      assert.deepEqual(tmpEntries(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('--force NAME rebuilds only that stage', () => {
    const e = setup();
    try {
      const first = json(cairn(e.store, ['realize', CHAIN, '--json'], { env: e.env }));
      const j = json(cairn(e.store, ['realize', CHAIN, '--json', '--force', 'b'], { env: e.env }));
      assert.equal(j.builds, 1);
      assert.deepEqual(
        j.plan.map((p) => [p.name, p.action]),
        [
          ['a', 'cached'],
          ['b', 'force'],
          ['c', 'cached'],
        ],
      );
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 2, 1],
      );
      assert.deepEqual(j.targets, first.targets);

      // A DRef works as the name too.
      const bDref = first.plan[1]!.dref;
      const k = json(cairn(e.store, ['realize', CHAIN, '--json', '--force', bDref], { env: e.env }));
      assert.equal(k.builds, 1);
      assert.equal(k.plan[1]!.action, 'force');
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 3, 1],
      );
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize --stage', () => {
  it('picks an export by name, building only its closure', () => {
    const e = setup();
    try {
      const j = json(cairn(e.store, ['realize', CHAIN, '--stage', 'a', '--json'], { env: e.env }));
      assert.deepEqual(
        j.targets.map((t) => t.name),
        ['a'],
      );
      assert.deepEqual(
        j.plan.map((p) => p.name),
        ['a'],
      );
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 0, 0],
      );
      const r = ok(cairn(e.store, ['realize', CHAIN, '-s', 'a'], { env: e.env }));
      assert.equal(lastLine(r.stdout), j.targets[0]!.rrefs[0]);
    } finally {
      e.cleanup();
    }
  });

  it('an array export realizes all its stages; a function export is called', () => {
    const e = setup();
    try {
      const pair = ok(cairn(e.store, ['realize', CHAIN, '--stage', 'pair'], { env: e.env }));
      const rrefs = lastLine(pair.stdout).split(' ');
      assert.equal(rrefs.length, 2);
      assert.match(rrefs[0]!, /-a$/);
      assert.match(rrefs[1]!, /-b$/);
      const fn = ok(cairn(e.store, ['realize', CHAIN, '--stage', 'makeB'], { env: e.env }));
      assert.equal(lastLine(fn.stdout), rrefs[1]);
      assert.deepEqual(
        ['a', 'b', 'c'].map((n) => builds(e, n)),
        [1, 1, 0],
      );
    } finally {
      e.cleanup();
    }
  });

  it('a stage name selects too, and several selectors combine', () => {
    const e = setup();
    try {
      const byName = json(cairn(e.store, ['realize', CHAIN, '--stage', 'solo', '--json'], { env: e.env }));
      assert.deepEqual(
        byName.targets.map((t) => t.name),
        ['solo'],
      );
      const both = ok(cairn(e.store, ['realize', CHAIN, '--stage', 'renamed', 'c'], { env: e.env }));
      const rrefs = lastLine(both.stdout).split(' ');
      assert.equal(rrefs.length, 2);
      assert.equal(rrefs[0], byName.targets[0]!.rrefs[0]);
      assert.match(rrefs[1]!, /-c$/);
      assert.equal(builds(e, 'solo'), 1);
    } finally {
      e.cleanup();
    }
  });

  it('an unknown selector gives E_NO_TARGET', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', CHAIN, '--stage', 'nope'], { env: e.env });
      expectError(r, 'E_NO_TARGET', e.store);
      assert.match(r.stderr, /nope/);
      assert.deepEqual(allRealizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize: stage file errors', () => {
  it('a file without a default export gives E_NO_TARGET and names the exports', () => {
    const e = setup();
    try {
      const file = writeStageFile(
        e,
        'nodefault.ts',
        `
import { stage } from 'cairn';
export const only = stage({ name: 'only', config: {}, build: () => {} });
`,
      );
      const r = cairn(e.store, ['realize', file], { env: e.env });
      expectError(r, 'E_NO_TARGET', e.store);
      assert.match(r.stderr, /only/);
      assert.deepEqual(allRealizations(e.store), []);
      // The named export still works.
      ok(cairn(e.store, ['realize', file, '--stage', 'only'], { env: e.env }));
    } finally {
      e.cleanup();
    }
  });

  it('a file that throws at import gives E_STAGE_FILE', () => {
    const e = setup();
    try {
      const file = writeStageFile(
        e,
        'throws.ts',
        `
import { stage } from 'cairn';
throw new Error('boom at import time');
export default stage({ name: 'never', config: {}, build: () => {} });
`,
      );
      const r = cairn(e.store, ['realize', file], { env: e.env });
      expectError(r, 'E_STAGE_FILE', e.store);
      assert.match(r.stderr, /boom at import time/);
      assert.deepEqual(allRealizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('a function export that throws gives E_STAGE_FILE', () => {
    const e = setup();
    try {
      const file = writeStageFile(
        e,
        'fnthrows.ts',
        `
export default () => { throw new Error('factory exploded'); };
`,
      );
      const r = cairn(e.store, ['realize', file], { env: e.env });
      expectError(r, 'E_STAGE_FILE', e.store);
      assert.match(r.stderr, /factory exploded/);
    } finally {
      e.cleanup();
    }
  });

  it('a syntax error gives E_STAGE_FILE (TypeScript and JavaScript)', () => {
    const e = setup();
    try {
      const ts = writeStageFile(
        e,
        'syntax.ts',
        `
import { stage } from 'cairn';
export default stage({ name: 'x', config: {, build: () => {} });
`,
      );
      expectError(cairn(e.store, ['realize', ts], { env: e.env }), 'E_STAGE_FILE', e.store);
      const js = writeStageFile(e, 'syntax.mjs', `export default {{{;\n`);
      expectError(cairn(e.store, ['realize', js], { env: e.env }), 'E_STAGE_FILE', e.store);
      assert.deepEqual(allRealizations(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('a nonexistent file gives E_STAGE_FILE', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', path.join(e.work, 'does-not-exist.ts')], { env: e.env });
      expectError(r, 'E_STAGE_FILE', e.store);
      assert.match(r.stderr, /does-not-exist\.ts/);
      expectError(
        cairn(e.store, ['instantiate', path.join(e.work, 'nope.ts')], { env: e.env }),
        'E_STAGE_FILE',
        e.store,
      );
    } finally {
      e.cleanup();
    }
  });

  for (const [what, value] of [
    ['a function', '() => 1'],
    ['a BigInt', '10n'],
    ['NaN', 'NaN'],
    ['Infinity', 'Infinity'],
    ['a class instance', 'new Date(0)'],
  ] as const) {
    it(`a config holding ${what} gives E_CONFIG_NOT_JSON`, () => {
      const e = setup();
      try {
        const file = writeStageFile(
          e,
          'badconfig.ts',
          `
import { stage } from 'cairn';
const dep = stage({ name: 'dep', config: { fine: 1 }, build: () => {} });
export default stage({ name: 'bad', config: { dep, nested: { value: ${value} } }, build: () => {} });
`,
        );
        const r = cairn(e.store, ['realize', file], { env: e.env });
        expectError(r, 'E_CONFIG_NOT_JSON', e.store);
        assert.match(r.stderr, /nested\.value/);
        assert.deepEqual(allRealizations(e.store), [], 'nothing is built when the graph cannot be instantiated');
        expectError(cairn(e.store, ['instantiate', file], { env: e.env }), 'E_CONFIG_NOT_JSON', e.store);
      } finally {
        e.cleanup();
      }
    });
  }

  for (const bad of ['../evil', 'has/slash', '.hidden', '', 'a..b']) {
    it(`the stage name ${JSON.stringify(bad)} gives E_BAD_NAME`, () => {
      const e = setup();
      try {
        const file = writeStageFile(
          e,
          'badname.ts',
          `
import { stage } from 'cairn';
export default stage({ name: ${JSON.stringify(bad)}, config: {}, build: () => {} });
`,
        );
        const r = cairn(e.store, ['realize', file], { env: e.env });
        expectError(r, 'E_BAD_NAME', e.store);
        assert.deepEqual(allRealizations(e.store), []);
        assert.equal(fs.existsSync(path.join(e.store, 'evil')), false);
      } finally {
        e.cleanup();
      }
    });
  }

  it('a cyclic graph gives E_CYCLE', () => {
    const e = setup();
    try {
      const file = writeStageFile(
        e,
        'cycle.ts',
        `
import { stage } from 'cairn';
const cfgA: Record<string, unknown> = { k: 1 };
const a = stage({ name: 'cyc-a', config: cfgA, build: () => {} });
const b = stage({ name: 'cyc-b', config: { a }, build: () => {} });
cfgA.b = b;
export default b;
`,
      );
      const r = cairn(e.store, ['realize', file], { env: e.env });
      expectError(r, 'E_CYCLE', e.store);
      assert.match(r.stderr, /cyc-a/);
      assert.match(r.stderr, /cyc-b/);
      assert.deepEqual(allRealizations(e.store), []);
      expectError(cairn(e.store, ['instantiate', file], { env: e.env }), 'E_CYCLE', e.store);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize: build failures', () => {
  it('a failing build exits non-zero with E_BUILD_FAILED and stores nothing for it', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', FAILING], { env: e.env });
      expectError(r, 'E_BUILD_FAILED', e.store);
      assert.match(r.stderr, /deliberate failure from the broken stage/);
      assert.equal(builds(e, 'broken'), 1);
      assert.deepEqual(realizationsOf(e.store, 'broken'), []);
      assert.equal(realizationsOf(e.store, 'base').length, 1, 'the dependency that built fine is kept');
      assert.equal(fs.existsSync(path.join(e.store, 'failed')), false, 'no --keep-failed, nothing kept');
      assert.equal(r.stdout.trim(), '', 'no RRefs printed on failure');

      // The failure is not cached: a second run tries again.
      expectError(cairn(e.store, ['realize', FAILING], { env: e.env }), 'E_BUILD_FAILED', e.store);
      assert.equal(builds(e, 'broken'), 2);
      assert.equal(builds(e, 'base'), 1);
    } finally {
      e.cleanup();
    }
  });

  it('--keep-failed keeps the build directory under STORE/failed/', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', FAILING, '--keep-failed'], { env: e.env });
      expectError(r, 'E_BUILD_FAILED', e.store);
      const failed = fs.readdirSync(path.join(e.store, 'failed'));
      assert.equal(failed.length, 1);
      // The whole label of the build directory, not a slice cut mid-word (`-uild-1`).
      assert.match(failed[0]!, /^broken-\d{4}-\d\d-\d\dT\d{9}Z-p\d+-build-[0-9a-z]+$/);
      const kept = path.join(e.store, 'failed', failed[0]!);
      assert.ok(
        r.stderr.includes(kept) || r.stderr.includes(failed[0]!),
        `stderr should say where it was kept: ${r.stderr}`,
      );
      // The layout inside the kept directory is the builder's business; the
      // partial output and the build log must both be in there somewhere.
      const partial = findFiles(kept, 'partial.txt');
      assert.equal(partial.length, 1, 'the partial output is kept');
      assert.equal(fs.readFileSync(partial[0]!, 'utf8'), 'half done\n');
      const logs = findFiles(kept, 'build.log');
      assert.ok(logs.length >= 1, 'the build log is kept');
      const log = fs.readFileSync(logs[0]!, 'utf8');
      assert.match(log, /about to fail/);
      assert.match(log, /deliberate failure/);
      assert.deepEqual(realizationsOf(e.store, 'broken'), []);
    } finally {
      e.cleanup();
    }
  });

  it('a broken output promise gives E_PROMISE_BROKEN and stores nothing', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', FAILING, '--stage', 'liar'], { env: e.env });
      expectError(r, 'E_PROMISE_BROKEN', e.store);
      assert.match(r.stderr, /promised\.txt/);
      assert.equal(builds(e, 'liar'), 1);
      assert.deepEqual(realizationsOf(e.store, 'liar'), []);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn: command line usage', () => {
  let e: Env;
  before(() => {
    e = setup();
  });
  after(() => e.cleanup());

  it('an unknown command fails with a non-zero exit', () => {
    const r = cairn(e.store, ['frobnicate']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unknown command/i);
  });

  it('realize without a file fails with a non-zero exit', () => {
    const r = cairn(e.store, ['realize']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /missing required argument/i);
  });
});

describe('cairn realize -v: live output of programs', () => {
  const STAGES =
    `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
const gate = process.env.GATE!;
// Prints a line, then waits for the test to answer it: the line must be on stderr while the program still runs.
const waiter = "import os, sys, time\\nprint('waiting for the gate', flush=True)\\n" +
  "end = time.time() + 20\\nwhile not os.path.exists(sys.argv[1]) and time.time() < end: time.sleep(0.02)\\n" +
  "print('through' if os.path.exists(sys.argv[1]) else 'no gate', file=sys.stderr, flush=True)\\n";
export const live = stage({ name: 'live', config: {}, build: async ({ exec, out }) => {
  await exec('python3', ['-c', waiter, gate]);
  fs.writeFileSync(path.join(out, 'v'), '1');
} });
export const trio = stage({ name: 'trio', n: 3, config: {}, build: async ({ exec, outs }) => {
  for (const [i, o] of outs.entries()) await exec('sh', ['-c', 'echo "made $(basename $(dirname $PWD))" && echo ` +
    `partial-line-' + i + ' | tr -d "\\\\n"'], { cwd: o });
} });
`;

  it(
    "streams what exec'd programs print while they run, prefixed " + 'by the stage, and keeps it in build.log',
    async () => {
      const e = setup();
      try {
        const file = writeStageFile(e, 'live.ts', STAGES);
        const gate = path.join(e.work, 'gate');
        const child = spawn(process.execPath, [cairnBin, '--store', e.store, 'realize', file, '-s', 'live', '-v'], {
          cwd: repoRoot,
          env: { ...process.env, ...e.env, GATE: gate },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stderr = '';
        let stdout = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          stdout += d;
        });
        child.stderr.setEncoding('utf8').on('data', (d: string) => {
          stderr += d;
          // The program waits for the gate (20 s at most): seeing its line while it waits proves the output is live.
          if (stderr.includes('live> waiting for the gate\n') && !fs.existsSync(gate)) fs.writeFileSync(gate, '');
        });
        const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
        assert.equal(code, 0, stderr);
        assert.ok(fs.existsSync(gate), `the program's first line was shown while it ran: ${stderr}`);
        assert.match(stderr, /^live> \$ python3 -c /m, 'the command line is shown');
        assert.match(stderr, /^live> through$/m, 'stderr of the program too');
        const log = ok(cairn(e.store, ['log', lastLine(stdout)])).stdout;
        assert.match(log, /waiting for the gate\nthrough\n/);
      } finally {
        e.cleanup();
      }
    },
  );

  it('prefixes the output index when a build has several outputs; without -v nothing of it is shown', () => {
    const e = setup();
    try {
      const file = writeStageFile(e, 'live.ts', STAGES);
      const r = ok(cairn(e.store, ['realize', file, '-s', 'trio', '-v'], { env: e.env }));
      for (const i of [0, 1, 2]) {
        assert.match(r.stderr, new RegExp(`^trio\\[${i}\\]> made rz-${i}$`, 'm'));
        // A last line without a newline is shown when the program ends.
        assert.match(r.stderr, new RegExp(`^trio\\[${i}\\]> partial-line-${i}$`, 'm'));
      }
      const quiet = ok(cairn(e.store, ['realize', file, '-s', 'trio', '--force'], { env: e.env }));
      assert.doesNotMatch(quiet.stderr, /made rz-|partial-line/);
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn log --failed: logs of failed builds', () => {
  it('keeps the log of a failed build without --keep-failed; prints the newest, lists them, keeps at most 5', () => {
    const e = setup();
    try {
      const dref = instantiateDrefs(e, FAILING).pop()!;
      assert.match(dref, /-broken$/);
      const r = cairn(e.store, ['realize', FAILING], { env: e.env });
      expectError(r, 'E_BUILD_FAILED', e.store);
      assert.ok(r.stderr.includes(`cairn log ${dref} --failed`), `the error says where the log is: ${r.stderr}`);
      const log = ok(cairn(e.store, ['log', dref, '--failed'])).stdout;
      assert.match(log, /about to fail/);
      assert.match(log, /build failed: deliberate failure/);
      assert.ok(!fs.existsSync(path.join(e.store, 'failed')), 'no build directory is kept without --keep-failed');
      // Without --failed, the plain log command points there.
      const plain = cairn(e.store, ['log', dref]);
      expectError(plain, 'E_NO_SUCH_REF');
      assert.match(plain.stderr, /--failed/);

      for (let i = 0; i < 6; i++)
        expectError(cairn(e.store, ['realize', FAILING], { env: e.env }), 'E_BUILD_FAILED', e.store);
      const list = ok(cairn(e.store, ['log', dref, '--failed', '--list']))
        .stdout.trim()
        .split('\n');
      assert.equal(list.length, 5, 'at most 5 failed logs per derivation');
      const times = list.map((l) => Date.parse(l.split(/\s+/)[0]!));
      assert.ok(
        times.every((t) => Number.isFinite(t)),
        list.join('\n'),
      );
      assert.deepEqual(
        [...times].sort((a, b) => a - b),
        times,
        'oldest first',
      );
      const newest = list[list.length - 1]!.split(/\s+/)[1]!;
      assert.equal(ok(cairn(e.store, ['log', dref, '--failed'])).stdout, fs.readFileSync(newest, 'utf8'));

      // gc keeps them while they are recent, deletes them once older than --older-than.
      const kept = ok(cairn(e.store, ['store', 'gc']));
      assert.doesNotMatch(kept.stdout, /failed-build log/);
      assert.equal(
        ok(cairn(e.store, ['log', dref, '--failed', '--list']))
          .stdout.trim()
          .split('\n').length,
        5,
      );
      const dry = ok(cairn(e.store, ['store', 'gc', '--dry-run', '--older-than', '0m']));
      assert.equal(dry.stdout.split('\n').filter((l) => l.startsWith('would delete failed-build log ')).length, 5);
      ok(cairn(e.store, ['store', 'gc', '--older-than', '0m']));
      expectError(cairn(e.store, ['log', dref, '--failed']), 'E_NO_SUCH_REF');
      expectError(cairn(e.store, ['log', 'nonsense', '--failed']), 'E_BAD_REF');
    } finally {
      e.cleanup();
    }
  });
});

describe('cairn realize --force: the built line', () => {
  it('names the realizations just built, and what best() chose when that differs', () => {
    const e = setup();
    try {
      const ml = path.join(repoRoot, 'examples', 'ml', 'pipeline.ts');
      ok(cairn(e.store, ['realize', ml], { env: e.env }));
      const before = new Set(realizationsOf(e.store, 'train'));
      assert.equal(before.size, 3);
      for (let i = 0; i < 3; i++) {
        const r = ok(cairn(e.store, ['realize', ml, '--force', 'train'], { env: e.env }));
        const line = r.stderr.split('\n').find((l) => l.startsWith('built train in '));
        assert.ok(line, r.stderr);
        const built = line
          .replace(/^built train in [0-9.]+s: /, '')
          .split(';')[0]!
          .trim()
          .split(' ');
        const now = realizationsOf(e.store, 'train');
        const fresh = now.filter((x) => !before.has(x));
        assert.deepEqual([...built].sort(), [...fresh].sort(), `the line names the new realizations: ${line}`);
        for (const x of now) before.add(x);
      }
    } finally {
      e.cleanup();
    }
  });
});
