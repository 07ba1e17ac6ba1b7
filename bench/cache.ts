/**
 * The binary cache against `rclone copy`, in one run against the same
 * private Swift (scripts/swift.sh, its s3api): the same files pushed and
 * pulled both ways.
 *
 *   npm run bench:cache                (builds dist/ first)
 *   node --import tsx bench/cache.ts   (uses the existing dist/)
 *
 * Cases:
 * - 1,000 small realizations (a fan-in of 1,000 leaves and its top, one small
 *   file each) against rclone copying the same output trees as a directory
 *   of 1,001 small files;
 * - one 1 GiB realization of random bytes against rclone copying the file;
 * - the ML demo (examples/ml/pipeline.ts) realized on an empty store from
 *   a cache holding it, against building it.
 * Cairn is timed two ways doing equal work: the library in-process
 * (pushClosure / pullClosure, the S3 SDK loaded already) and the CLI as a
 * whole process (`cairn cache push|pull`, `cairn realize --substituter`),
 * like rclone. Every push goes to a fresh prefix and every pull into an
 * empty store or directory, so nothing is skipped as already there. rclone
 * runs with --transfers 16 --checkers 16, Cairn's default parallelism.
 * A profile of the 1 GiB case times Cairn's steps on their own (tar + gzip,
 * a raw PUT and GET of the same bytes, unpacking).
 *
 * Environment: BENCH_REPS=n (default 3), BENCH_SMALL=n (default 1000),
 * BENCH_BIG_MIB=n (default 1024), BENCH_OUT=FILE (also write the report
 * there), BENCH_KEEP=1 (keep the temporary directory). Needs rclone and the
 * Swift of scripts/swift.sh (started here if it is not running); fails when
 * either is missing. Prints a Markdown table; see docs/benchmarks.md
 * ("Binary cache vs rclone").
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { instantiate } from '../src/stages/instantiate.js';
import { loadStageFile } from '../src/stages/load.js';
import { realize } from '../src/stages/realize.js';
import type { Substituter } from '../src/stages/substitute.js';
import { packTree, unpackTree, download } from '../src/store/cache/archive.js';
import type { BlobStore } from '../src/store/cache/blob.js';
import type { ArchiveKind } from '../src/store/cache/format.js';
import { CacheStore } from '../src/store/cache/cache-store.js';
import { openBlobStore } from '../src/store/cache/open-blob.js';
import { pullClosure } from '../src/store/cache/pull.js';
import { pushClosure } from '../src/store/cache/push.js';
import { generateKeyPair, parsePublicKey, parseSecretKey } from '../src/store/cache/sign.js';
import type { RRef } from '../src/store/refs.js';
import { LocalStore } from '../src/store/store.js';
import { listClosure } from '../src/store/sync.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const NODE = process.execPath;

const REPS = positiveInt('BENCH_REPS', 3);
const SMALL = positiveInt('BENCH_SMALL', 1000);
const BIG_MIB = positiveInt('BENCH_BIG_MIB', 1024);
const KEEP = process.env.BENCH_KEEP === '1';
/** The rclone parallelism: Cairn's default (16 uploads or downloads in flight). */
const RCLONE_PARALLEL = ['--transfers', '16', '--checkers', '16'];

/** Goals from issue 16: Cairn's time over rclone's at most this. */
const GOAL_SMALL_PULL = 1.5;
const GOAL_BIG = 1.2;

function positiveInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) die(`${name} must be a whole number >= 1, not ${JSON.stringify(v)}`);
  return n;
}

function die(msg: string): never {
  process.stderr.write(`bench: error: ${msg}\n`);
  process.exit(1);
}

const log = (s: string): void => {
  process.stderr.write(s + '\n');
};

// ---- pure helpers ----

interface Stats {
  median: number;
  min: number;
  n: number;
}

function stats(xs: readonly number[]): Stats | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = (s.length - 1) / 2;
  // An even count's median is the mean of the middle two (with 2 repetitions, not the lower one).
  return { median: (s[Math.floor(mid)]! + s[Math.ceil(mid)]!) / 2, min: s[0]!, n: s.length };
}

const fmtMs = (ms: number): string => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
const fmtStats = (s: Stats | null): string => (s ? `${fmtMs(s.median)} (min ${fmtMs(s.min)})` : 'n/a');
const ratio = (a: Stats | null, b: Stats | null): number | null => (a && b ? a.median / b.median : null);
const fmtRatio = (r: number | null): string => (r === null ? 'n/a' : `${r.toFixed(2)}×`);
const mibps = (bytes: number, ms: number): string => `${(bytes / 2 ** 20 / (ms / 1000)).toFixed(0)} MiB/s`;

function md(rows: string[][]): string {
  const [head, ...body] = rows;
  return [`| ${head!.join(' | ')} |`, `| ${head!.map(() => '---').join(' | ')} |`]
    .concat(body.map((r) => `| ${r.join(' | ')} |`))
    .join('\n');
}

// ---- processes ----

/** Runs a process to completion; its wall time in ms. Throws with its stderr when it fails. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { ms: number; stdout: string } {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, maxBuffer: 1 << 28 });
  const ms = performance.now() - t0;
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 6).join(' ')} failed (${r.status}): ${r.stderr}`);
  return { ms, stdout: r.stdout };
}

const cairn = (args: string[]): { ms: number; stdout: string } => run(NODE, [CLI, ...args]);

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

// ---- setup ----

const started = new Date();
const loadBefore = os.loadavg();
if (!fs.existsSync(CLI)) die(`${CLI} is missing: run npm run build (or npm run bench:cache)`);
const rcloneVersion = (() => {
  try {
    return run('rclone', ['version']).stdout.split('\n')[0]!.trim();
  } catch (e) {
    die(`rclone is needed (Debian package rclone): ${(e as Error).message}`);
  }
})();
const endpoint = (() => {
  try {
    return run('bash', [path.join(ROOT, 'scripts', 'swift.sh'), 'start'])
      .stdout.trim()
      .split('\n')
      .pop()!;
  } catch (e) {
    die(`the private Swift (scripts/swift.sh start) is needed: ${(e as Error).message}`);
  }
})();
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(endpoint)) die(`scripts/swift.sh printed ${endpoint}`);

// Credentials of scripts/swift.sh's tempauth user, for Cairn (AWS variables) and rclone (its env config).
Object.assign(process.env, {
  AWS_ACCESS_KEY_ID: 'test:tester',
  AWS_SECRET_ACCESS_KEY: 'testing',
  AWS_REGION: 'us-east-1',
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
});
delete process.env.AWS_PROFILE;
delete process.env.AWS_SESSION_TOKEN;
const rcloneEnv: NodeJS.ProcessEnv = {
  ...process.env,
  RCLONE_CONFIG_CAIRNBENCH_TYPE: 's3',
  RCLONE_CONFIG_CAIRNBENCH_PROVIDER: 'Other',
  RCLONE_CONFIG_CAIRNBENCH_ENV_AUTH: 'false',
  RCLONE_CONFIG_CAIRNBENCH_ACCESS_KEY_ID: 'test:tester',
  RCLONE_CONFIG_CAIRNBENCH_SECRET_ACCESS_KEY: 'testing',
  RCLONE_CONFIG_CAIRNBENCH_ENDPOINT: endpoint,
  RCLONE_CONFIG_CAIRNBENCH_REGION: 'us-east-1',
};
// AWS_CA_BUNDLE, set on some hosts, breaks rclone 1.60 even for http:// (see scripts/swift.sh).
delete rcloneEnv.AWS_CA_BUNDLE;
const rclone = (args: string[]): number => run('rclone', ['--config', '/dev/null', ...args], rcloneEnv).ms;

const bucket = `cairn-bench-${Date.now().toString(36)}`;
rclone(['mkdir', `cairnbench:${bucket}`]);
const urlOf = (prefix: string): string =>
  `s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1`;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-cache-'));
const pair = generateKeyPair('bench');
const secretFile = path.join(work, 'bench.secret');
fs.writeFileSync(secretFile, pair.secret, { mode: 0o600 });
const key = parseSecretKey(pair.secret);
const trustedKeys = [parsePublicKey(pair.public)];
let fresh = 0;
/** A new empty directory under the work directory. */
const freshDir = (label: string): string => {
  const d = path.join(work, `${label}-${++fresh}`);
  fs.mkdirSync(d);
  return d;
};
/** Requests the library made, by BlobStore call (`has` counts its keys: one HEAD each); reset per case. */
const calls = { get: 0, has: 0, put: 0, list: 0, delete: 0 };
const resetCalls = (): void => {
  for (const k of Object.keys(calls) as (keyof typeof calls)[]) calls[k] = 0;
};
const fmtCalls = (): string =>
  Object.entries(calls)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
/** The BlobStore of a prefix, counting what is asked of it. */
async function blobOf(prefix: string): Promise<BlobStore> {
  const b = await openBlobStore(urlOf(prefix));
  return {
    url: b.url,
    identity: b.identity,
    writable: b.writable,
    get: (k) => (calls.get++, b.get(k)),
    getStream: (k) => (calls.get++, b.getStream(k)),
    has: (ks) => ((calls.has += ks.length), b.has(ks)),
    put: (k, body, o) => (calls.put++, b.put(k, body, o)),
    list: (p) => (calls.list++, b.list(p)),
    delete: (ks) => ((calls.delete += ks.length), b.delete(ks)),
  };
}

// Load the S3 SDK and make the first signed request before anything is timed: the library timings are of work.
await (await blobOf('warmup')).has(['nothing-here']);

// ---- a case: push and pull of one closure, Cairn (library, CLI) and rclone ----

interface Row {
  label: string;
  lib: Stats | null;
  cli: Stats | null;
  rclone: Stats | null;
  cliError?: string;
}

interface Transfer {
  pushLib: number[];
  pushCli: number[];
  pullLib: number[];
  pullCli: number[];
  up: number[];
  down: number[];
  cliError?: string;
  /** The library's requests in one push and one pull. */
  pushCalls?: string;
  pullCalls?: string;
}

/** The stage file of the 1,000 small realizations: `n` leaves of one small file each, and their top. */
const smallFile = (n: number, salt: string): string => `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
const build = ({ config, out }) => {
  fs.writeFileSync(path.join(out, 'v.txt'), 'value ' + config.i + ' ${salt}\\n' + 'x'.repeat(200) + '\\n');
};
const leaves = Array.from({ length: ${n} }, (_, i) => stage({ name: 'l' + i, config: { i }, build }));
export default stage({ name: 'top', config: { i: ${n}, leaves }, build });
`;

/** One realization holding `mib` MiB of random (incompressible) bytes. */
const bigFile = (mib: number, salt: string): string => `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { stage } from 'cairn';
export default stage({
  name: 'big',
  config: { mib: ${mib}, salt: '${salt}' },
  build: ({ config, out }) => {
    const fd = fs.openSync(path.join(out, 'big.bin'), 'w');
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < config.mib; i++) fs.writeSync(fd, randomFillSync(chunk));
    fs.closeSync(fd);
  },
});
`;

/** Realizes a stage file into a new store through the CLI; the store, the target and its closure. */
function realizeInto(label: string, text: string): { store: string; top: RRef; closure: RRef[]; ms: number } {
  const store = freshDir(`${label}-store`);
  const file = path.join(work, `${label}.mjs`);
  fs.writeFileSync(file, text);
  const r = cairn(['--store', store, 'realize', file, '-q']);
  const top = r.stdout.trim().split('\n').pop()! as RRef;
  const s = LocalStore.open(store);
  try {
    return { store, top, closure: listClosure(s, [top]).nodes.map((n) => n.rref), ms: r.ms };
  } finally {
    s.close();
  }
}

/** The output trees of `closure` side by side in one directory (what rclone moves): DIR/<rhash>/... */
function exportTrees(storeRoot: string, closure: readonly RRef[]): { dir: string; files: number; bytes: number } {
  const dir = freshDir('trees');
  const s = LocalStore.open(storeRoot);
  let files = 0;
  let bytes = 0;
  try {
    for (const rref of closure) {
      const dest = path.join(dir, rref.replace(/[^A-Za-z0-9._-]/g, '_'));
      fs.cpSync(s.outPath(rref), dest, { recursive: true, verbatimSymlinks: true });
    }
  } finally {
    s.close();
  }
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        files++;
        bytes += fs.statSync(p).size;
      }
    }
  };
  walk(dir);
  return { dir, files, bytes };
}

/** Pushes and pulls `top`'s closure REPS times each way, Cairn (library and CLI) and rclone, interleaved. */
async function transfer(label: string, storeRoot: string, top: RRef, trees: string): Promise<Transfer> {
  const t: Transfer = { pushLib: [], pushCli: [], pullLib: [], pullCli: [], up: [], down: [] };
  const pub = path.join(work, 'bench.public');
  fs.writeFileSync(pub, pair.public + '\n');
  for (let rep = 1; rep <= REPS; rep++) {
    log(`  ${label}: rep ${rep}/${REPS}`);
    // Push: the library, the CLI and rclone, each to a prefix of its own.
    const libPrefix = `${label}-lib-${rep}`;
    const local = LocalStore.open(storeRoot);
    try {
      const blob = await blobOf(libPrefix);
      resetCalls();
      t.pushLib.push(await timed(() => pushClosure(local, blob, [top], { key })));
      t.pushCalls = fmtCalls();
    } finally {
      local.close();
    }
    const cliPrefix = `${label}-cli-${rep}`;
    if (t.cliError === undefined) {
      try {
        t.pushCli.push(cairn(['--store', storeRoot, 'cache', 'push', urlOf(cliPrefix), top, '--key', secretFile]).ms);
      } catch (e) {
        t.cliError = firstLine((e as Error).message);
      }
    }
    const rclonePrefix = `${label}-rclone-${rep}`;
    t.up.push(rclone(['copy', ...RCLONE_PARALLEL, trees, `cairnbench:${bucket}/${rclonePrefix}`]));

    // Pull: each into an empty store or directory.
    const into = LocalStore.open(freshDir(`${label}-pull-lib`));
    try {
      const blob = await blobOf(libPrefix);
      resetCalls();
      t.pullLib.push(await timed(() => pullClosure(blob, into, [top], { trustedKeys })));
      t.pullCalls = fmtCalls();
      if (!into.has(top)) throw new Error(`${label}: the library pull did not bring ${top}`);
    } finally {
      into.close();
      fs.rmSync(into.root, { recursive: true, force: true });
    }
    if (t.cliError === undefined) {
      const dir = freshDir(`${label}-pull-cli`);
      try {
        t.pullCli.push(cairn(['--store', dir, 'cache', 'pull', urlOf(cliPrefix), top, '--trusted-key', pub]).ms);
      } catch (e) {
        t.cliError = firstLine((e as Error).message);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const down = freshDir(`${label}-down`);
    t.down.push(rclone(['copy', ...RCLONE_PARALLEL, `cairnbench:${bucket}/${rclonePrefix}`, down]));
    fs.rmSync(down, { recursive: true, force: true });
  }
  return t;
}

/** The line of a failure that says why: cairn's error line, else the first. */
const firstLine = (s: string): string => {
  const lines = s.split('\n');
  const why = /cairn: error.*/.exec(s)?.[0];
  return (why ?? lines[0]!).slice(0, 240);
};

/** Where the time of the 1 GiB push and pull goes: Cairn's steps one at a time, on the same tree. */
async function profileBig(storeRoot: string, top: RRef, bytes: number): Promise<string[][]> {
  const rows: string[][] = [['step', 'time', 'rate']];
  const add = (step: string, ms: number): void => {
    rows.push([step, fmtMs(ms), mibps(bytes, ms)]);
  };
  const s = LocalStore.open(storeRoot);
  const dir = freshDir('profile');
  try {
    const out = s.outPath(top);
    const big = path.join(out, 'big.bin');
    let archive = path.join(dir, 'a.tar.gz');
    let kind = 'tar.gz' as ArchiveKind;
    add(
      'tar, + gzip (level 6) when it pays, to a file: packTree',
      await timed(async () => {
        const packed = await packTree(out, archive);
        kind = packed.kind;
        // A small tree (BENCH_BIG_MIB of a few MiB) is packed in memory: the steps below read a file.
        if (packed.body) fs.writeFileSync(archive, packed.body);
        else archive = packed.file!;
      }),
    );
    add('gzip -1 of the file alone (gzip(1), for scale)', run('sh', ['-c', `gzip -1 -c ${big} > /dev/null`]).ms);
    const blob = await blobOf('profile');
    const size = fs.statSync(big).size;
    add(
      'PUT of the raw file (BlobStore.put, multipart)',
      await timed(() => blob.put('raw', fs.createReadStream(big), { size })),
    );
    const asize = fs.statSync(archive).size;
    add(
      `PUT of the archive (${kind}; BlobStore.put, multipart)`,
      await timed(() => blob.put('archive', fs.createReadStream(archive), { size: asize })),
    );
    const got = path.join(dir, `got.${kind}`);
    add(
      'GET of the archive to a file (BlobStore.getStream)',
      await timed(async () => download((await blob.getStream('archive'))!, got)),
    );
    add(
      `${kind === 'tar' ? 'untar' : 'gunzip + untar'} to a directory: unpackTree`,
      await timed(() => {
        fs.mkdirSync(path.join(dir, 'unpacked'));
        return unpackTree(got, path.join(dir, 'unpacked'), kind);
      }),
    );
  } finally {
    s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

/** The ML demo from a cache on an empty store against building it, library and CLI. */
async function demo(): Promise<{ scratchLib: number[]; hitLib: number[]; scratchCli: number[]; hitCli: number[] }> {
  const file = path.join(ROOT, 'examples', 'ml', 'pipeline.ts');
  const r = { scratchLib: [] as number[], hitLib: [] as number[], scratchCli: [] as number[], hitCli: [] as number[] };
  // The cache: a store that built the demo, pushed.
  const seed = freshDir('demo-seed');
  const built = cairn(['--store', seed, 'realize', file, '-q']).stdout.trim().split('\n').pop()! as RRef;
  const seedStore = LocalStore.open(seed);
  try {
    await pushClosure(seedStore, await blobOf('demo'), [built], { key });
  } finally {
    seedStore.close();
  }
  const { targets } = await loadStageFile(file);
  const graph = instantiate(targets);
  let cliError: string | undefined;
  for (let rep = 1; rep <= REPS; rep++) {
    log(`  demo: rep ${rep}/${REPS}`);
    for (const hit of [false, true]) {
      const store = LocalStore.open(freshDir('demo-lib'));
      try {
        const subs: Substituter[] = [];
        if (hit) {
          const blob = await blobOf('demo');
          const cache = await CacheStore.open({ blob, trustedKeys, localDir: freshDir('demo-cache-local') });
          subs.push({
            name: 'bench',
            store: cache,
            fetch: async (into, rrefs) => {
              await pullClosure(blob, into, rrefs, { trustedKeys });
            },
          });
        }
        let builds = -1;
        resetCalls();
        const ms = await timed(async () => {
          builds = (await realize(graph, { store, substituters: subs })).builds;
        });
        if (hit && builds !== 0) throw new Error(`demo from the cache built ${builds} stage(s); it should build none`);
        if (!hit && builds === 0) throw new Error('demo from scratch built nothing');
        (hit ? r.hitLib : r.scratchLib).push(ms);
        if (hit) demoCalls = fmtCalls();
      } finally {
        store.close();
      }
    }
    r.scratchCli.push(cairn(['--store', freshDir('demo-cli'), 'realize', file, '-q', '--no-substituters']).ms);
    if (cliError === undefined) {
      try {
        const pub = path.join(work, 'bench.public');
        const out = cairn([
          '--store',
          freshDir('demo-cli'),
          'realize',
          file,
          '--json',
          '--substituter',
          urlOf('demo'),
          '--trusted-key',
          pub,
        ]);
        const builds = (JSON.parse(out.stdout) as { builds?: number }).builds;
        if (builds !== 0) throw new Error(`cairn realize --substituter built ${builds} stage(s); it should build none`);
        r.hitCli.push(out.ms);
      } catch (e) {
        cliError = firstLine((e as Error).message);
      }
    }
  }
  demoCliError = cliError;
  return r;
}
let demoCliError: string | undefined;
let demoCalls = '';

// ---- the run ----

try {
  log(`bench: work directory ${work}, bucket ${bucket} at ${endpoint}`);
  const salt = randomBytes(6).toString('hex');
  log(`realizing ${SMALL} small realizations...`);
  const small = realizeInto('small', smallFile(SMALL, salt));
  const smallTrees = exportTrees(small.store, small.closure);
  log(`  ${small.closure.length} realizations, ${smallTrees.files} files, ${smallTrees.bytes} bytes`);
  const smallT = await transfer('small', small.store, small.top, smallTrees.dir);

  log(`realizing one ${BIG_MIB} MiB realization...`);
  const big = realizeInto('big', bigFile(BIG_MIB, salt));
  const bigTrees = exportTrees(big.store, big.closure);
  const bigT = await transfer('big', big.store, big.top, bigTrees.dir);
  fs.rmSync(bigTrees.dir, { recursive: true, force: true });
  log('profiling the big case...');
  const profile = await profileBig(big.store, big.top, bigTrees.bytes);
  fs.rmSync(big.store, { recursive: true, force: true });

  log('the ML demo: from the cache vs built...');
  const demoT = await demo();
  const loadAfter = os.loadavg();

  // ---- the report ----

  const rowsOf = (label: string, t: Transfer): Row[] => [
    {
      label: `${label}: push`,
      lib: stats(t.pushLib),
      cli: stats(t.pushCli),
      rclone: stats(t.up),
      cliError: t.cliError,
    },
    {
      label: `${label}: pull`,
      lib: stats(t.pullLib),
      cli: stats(t.pullCli),
      rclone: stats(t.down),
      cliError: t.cliError,
    },
  ];
  const smallLabel = `${small.closure.length} small realizations (${smallTrees.files} files, ${smallTrees.bytes} B)`;
  const bigLabel = `1 realization of ${BIG_MIB} MiB`;
  const rows: Row[] = [...rowsOf(smallLabel, smallT), ...rowsOf(bigLabel, bigT)];
  const table = md([
    ['case', 'Cairn library', 'Cairn CLI', 'rclone copy', 'library / rclone', 'CLI / rclone'],
    ...rows.map((r) => [
      r.label,
      fmtStats(r.lib),
      fmtStats(r.cli),
      fmtStats(r.rclone),
      fmtRatio(ratio(r.lib, r.rclone)),
      fmtRatio(ratio(r.cli, r.rclone)),
    ]),
  ]);
  const dScratchLib = stats(demoT.scratchLib);
  const dHitLib = stats(demoT.hitLib);
  const dScratchCli = stats(demoT.scratchCli);
  const dHitCli = stats(demoT.hitCli);
  const demoTable = md([
    ['ML demo on an empty store', 'library (realize())', 'CLI (cairn realize)'],
    ['built from scratch', fmtStats(dScratchLib), fmtStats(dScratchCli)],
    ['from the cache (0 builds)', fmtStats(dHitLib), fmtStats(dHitCli)],
    ['cache / build', fmtRatio(ratio(dHitLib, dScratchLib)), fmtRatio(ratio(dHitCli, dScratchCli))],
  ]);

  /** A goal's verdict on the CLI ratio (whole process against whole process), else the library's. */
  function goal(name: string, row: Row, target: number): string {
    const cli = ratio(row.cli, row.rclone);
    const lib = ratio(row.lib, row.rclone);
    const r = cli ?? lib;
    const basis = cli !== null ? 'CLI' : 'library (no CLI figure)';
    const verdict = r === null ? 'NO VERDICT' : r <= target ? 'met' : 'MISSED';
    return `- ${verdict}: ${name}: ${fmtRatio(r)} on the ${basis}; library ${fmtRatio(lib)} (goal ≤ ${target}×)`;
  }
  const hitRatio = ratio(dHitCli, dScratchCli) ?? ratio(dHitLib, dScratchLib);
  const goals = [
    goal('pull of the small realizations vs rclone', rows[1]!, GOAL_SMALL_PULL),
    goal(`push of ${BIG_MIB} MiB vs rclone`, rows[2]!, GOAL_BIG),
    goal(`pull of ${BIG_MIB} MiB vs rclone`, rows[3]!, GOAL_BIG),
    `- ${hitRatio === null ? 'NO VERDICT' : hitRatio < 1 ? 'met' : 'MISSED'}: a cache hit for the ML demo beats ` +
      `building it: ${fmtRatio(hitRatio)} of the build time (${dHitCli ? 'CLI' : 'library'})`,
  ];
  const cliNotes = [
    ...((smallT.cliError ?? bigT.cliError)
      ? [`Cairn CLI push/pull: not measured, the CLI refused: ${smallT.cliError ?? bigT.cliError}`]
      : []),
    ...(demoCliError ? [`Cairn CLI realize --substituter: not measured, the CLI refused: ${demoCliError}`] : []),
  ];
  const JOBS = os.availableParallelism();
  const busy = Math.max(loadBefore[0]!, loadAfter[0]!) > 0.5 * JOBS;
  const debian = fs.existsSync('/etc/debian_version')
    ? `, Debian ${fs.readFileSync('/etc/debian_version', 'utf8').trim()}`
    : '';
  const report = [
    `Binary cache vs rclone, ${started.toISOString()}: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}; ` +
      `${os.type()} ${os.release()}${debian}; Node ${process.version}; ${rcloneVersion}; Cairn ${gitDescribe()}.`,
    `Swift s3api at ${endpoint} (scripts/swift.sh, one proxy process) on the same machine; ` +
      `${REPS} repetition(s), median (min); wall time; load average ` +
      `${loadBefore.map((x) => x.toFixed(2)).join(' ')} before, ${loadAfter.map((x) => x.toFixed(2)).join(' ')} after.`,
    ...(busy
      ? [
          `Note: the machine was busy (load average above ${0.5 * JOBS}); other processes shared the ` +
            `${os.cpus().length} cores, so the figures are noisy. Compare medians and mins.`,
        ]
      : []),
    `rclone: copy ${RCLONE_PARALLEL.join(' ')}. Cairn library: pushClosure/pullClosure in-process (SDK loaded); ` +
      'Cairn CLI and rclone: whole processes.',
    '',
    table,
    '',
    demoTable,
    '',
    'Goals:',
    ...goals,
    ...(cliNotes.length > 0 ? ['', ...cliNotes] : []),
    '',
    'Requests of one library run (BlobStore calls; `has` counts keys, one HEAD each; rclone makes one PUT or GET ' +
      'per file, 1 GiB in multipart parts, plus a listing):',
    '',
    md([
      ['case', 'push', 'pull'],
      [smallLabel, smallT.pushCalls ?? '', smallT.pullCalls ?? ''],
      [bigLabel, bigT.pushCalls ?? '', bigT.pullCalls ?? ''],
      ['ML demo from the cache (realize with a substituter)', '', demoCalls],
    ]),
    '',
    `Where the ${BIG_MIB} MiB push and pull spend their time (each step alone, once):`,
    '',
    md(profile),
  ].join('\n');
  process.stdout.write('\n' + report + '\n');
  if (process.env.BENCH_OUT) fs.writeFileSync(process.env.BENCH_OUT, report + '\n');
} finally {
  // The bucket's objects go with the bucket; the store directories with the work directory.
  try {
    rclone(['purge', `cairnbench:${bucket}`]);
  } catch (e) {
    log(`bench: warning: could not delete bucket ${bucket}: ${firstLine((e as Error).message)}`);
  }
  if (!KEEP) fs.rmSync(work, { recursive: true, force: true });
}

function gitDescribe(): string {
  const r = spawnSync('git', ['-C', ROOT, 'describe', '--always', '--dirty'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}
