/**
 * Machine pipelines, timed as whole CLI processes (`node dist/cli/main.js
 * machine ...`) on the tiny guest:
 *
 *   (a) cold boot to a shell (the booted state rebuilt with realize -f)
 *       against a restore to a responsive shell (`machine tiny + transient
 *       exec true` on the cached base);
 *   (b) a fully cached 3-step pipeline, and the same plus one uncached exec;
 *   (c) the cost of one uncached step per disk clone mode: reflink (a store
 *       on a loop-mounted XFS), qcow2 overlay and full copy (ext4 stores,
 *       CAIRN_DISK_CLONE=overlay|copy), plus the clone operation alone.
 *
 * Also in-process figures (no node start-up, no store): restore to a shell
 * answering a command, and cloneDisk alone; and (d) file transfer over the
 * 9p share: a 50 MB file up and down (goal >= 100 MB/s each way) and a
 * tree of 1000 small files.
 *
 * The CLI restore is also timed through the warm server (`cairn server
 * start`, then the C client dist/bin/cairn), interleaved with the Node CLI
 * in the same loop so both see the same load; BENCH_ONLY=restore runs just
 * that comparison.
 *
 *   npx tsc -p tsconfig.json && node --import tsx bench/machines.ts
 *
 * BENCH_REPS=n (default 7) repetitions per figure; BENCH_KEEP=1 keeps the
 * work directory; BENCH_ONLY=transfer runs (d) alone (no root needed). Needs root (loop mount), QEMU, mkfs.xfs. Writes
 * bench/machines-results.json. See docs/benchmarks.md, "Machines".
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LocalStore } from '../src/store/store.js';
import { asRRef } from '../src/store/refs.js';
import { readDescription } from '../src/stages/machine.js';
import { qemuBackend, type QemuState } from '../src/backends/qemu/qemu-machine.js';
import { cloneDisk, type CloneMode } from '../src/backends/qemu/disk.js';
import { allRealizations } from '../src/store/ref-queries.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NODE = process.execPath;
const REPS = Number(process.env.BENCH_REPS ?? 7);
const KEEP = process.env.BENCH_KEEP === '1';
const GOAL_RESTORE = 0.3;
const GOAL_CACHED3 = 0.5;
/** BENCH_ONLY=restore: just the restore figures (Node CLI, server, in-process), to machines-restore-results.json. */
const ONLY_RESTORE = process.env.BENCH_ONLY === 'restore';

const log = (s: string): void => {
  process.stderr.write(s + '\n');
};
function die(msg: string): never {
  process.stderr.write(`bench: error: ${msg}\n`);
  process.exit(1);
}

interface Stats {
  median: number;
  min: number;
  max: number;
  samples: number[];
}
const round = (x: number): number => Math.round(x * 10) / 10;
function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median: round(median), min: round(s[0]!), max: round(s[s.length - 1]!), samples: samples.map(round) };
}
const ms = (x: number): string => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`);
const fmt = (s: Stats): string => `${ms(s.median)} (min ${ms(s.min)})`;

function sh(cmd: string, args: string[], what = `${cmd} ${args.join(' ')}`): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`${what}: ${r.error?.message ?? r.stderr}`);
  return r.stdout;
}

function preflight(): void {
  if (process.getuid?.() !== 0) die('needs root (mounts a loop XFS for the reflink store)');
  for (const [bin, arg] of [
    ['qemu-system-x86_64', '--version'],
    ['qemu-img', '--version'],
    ['mkfs.xfs', '-V'],
  ] as const) {
    const r = spawnSync(bin, [arg]);
    if (r.error || r.status !== 0) die(`${bin} does not run; install it (qemu-system-x86, qemu-utils, xfsprogs)`);
  }
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) die('dist/ is missing: npx tsc -p tsconfig.json');
}

/** Runs dist/ from a copy, so a rebuild of dist/ during the run cannot mix versions. */
function snapshotCli(work: string): string {
  const pkg = path.join(work, 'cairn-pkg');
  fs.mkdirSync(pkg, { recursive: true });
  fs.cpSync(path.join(ROOT, 'dist'), path.join(pkg, 'dist'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
  fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(pkg, 'node_modules'));
  return path.join(pkg, 'dist', 'cli', 'main.js');
}

class Cli {
  constructor(
    readonly cli: string,
    readonly store: string,
    readonly env: NodeJS.ProcessEnv = {},
  ) {}
  /** One timed whole process; throws if it fails. */
  run(args: string[]): { ms: number; stdout: string; stderr: string } {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...this.env,
      XDG_CACHE_HOME: path.join(path.dirname(this.store), 'cache'),
    };
    delete env.NODE_OPTIONS;
    delete env.CAIRN_STORE;
    const t0 = performance.now();
    const r = spawnSync(NODE, [this.cli, '--store', this.store, ...args], {
      env,
      encoding: 'utf8',
      maxBuffer: 1 << 26,
    });
    const ms = performance.now() - t0;
    if (r.error || r.status !== 0)
      throw new Error(`cairn ${args.join(' ')} failed (${r.status}): ${r.error?.message ?? r.stderr.slice(-2000)}`);
    return { ms, stdout: r.stdout, stderr: r.stderr };
  }
  times(n: number, args: (i: number) => string[]): Stats {
    const xs: number[] = [];
    for (let i = 0; i < n; i++) xs.push(this.run(args(i)).ms);
    return stats(xs);
  }
}

const load = (): number[] => os.loadavg().map((x) => Math.round(x * 100) / 100);
// Options go before the words: after them they would be words of the last step.
const PIPE = [
  'machine',
  '-q',
  'tiny',
  '+',
  'exec',
  'echo a > /mnt/a',
  '+',
  'exec',
  'echo b >> /mnt/a',
  '+',
  'exec',
  'echo c >> /mnt/a',
];

/** The same commands through the C client (dist/bin/cairn of the copy) and a warm server of that copy. */
class ServedCli extends Cli {
  constructor(
    readonly client: string,
    cli: string,
    store: string,
    readonly socket: string,
  ) {
    super(cli, store, { CAIRN_SERVER_SOCKET: socket });
  }
  override run(args: string[]): { ms: number; stdout: string; stderr: string } {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...this.env,
      XDG_CACHE_HOME: path.join(path.dirname(this.store), 'cache'),
    };
    delete env.NODE_OPTIONS;
    delete env.CAIRN_STORE;
    delete env.CAIRN_NO_SERVER;
    const t0 = performance.now();
    const r = spawnSync(this.client, ['--store', this.store, ...args], { env, encoding: 'utf8', maxBuffer: 1 << 26 });
    const ms = performance.now() - t0;
    if (r.error || r.status !== 0)
      throw new Error(`cairn ${args.join(' ')} failed (${r.status}): ${r.error?.message ?? r.stderr.slice(-2000)}`);
    return { ms, stdout: r.stdout, stderr: r.stderr };
  }
  served(): number {
    return (JSON.parse(this.run(['server', 'status', '--json']).stdout) as { served: number }).served;
  }
}

const RESTORE = ['machine', '-q', 'tiny', '+', 'transient', 'exec', 'true'];

/**
 * `machine tiny + transient exec true` as a whole process, by the Node CLI
 * and through a warm server, alternately (one untimed run of each first, so
 * both find the files in the page cache and the worker has run it once).
 */
function restoreDirectAndServed(direct: Cli, work: string): { direct: Stats; served: Stats; workers: number } {
  const client = path.join(path.dirname(path.dirname(direct.cli)), 'bin', 'cairn');
  if (fs.readFileSync(client).subarray(0, 4).toString('latin1') !== '\x7fELF')
    throw new Error(`${client} is not the compiled client (no C compiler when dist/ was built?)`);
  const runDir = path.join(work, 'run');
  fs.mkdirSync(runDir, { mode: 0o700 });
  const served = new ServedCli(client, direct.cli, direct.store, path.join(runDir, 'server.sock'));
  const workers = 2;
  served.run(['server', 'start', '--workers', String(workers)]);
  try {
    direct.run(RESTORE);
    served.run(RESTORE);
    const before = served.served();
    const d: number[] = [];
    const v: number[] = [];
    for (let i = 0; i < REPS; i++) {
      d.push(direct.run(RESTORE).ms);
      v.push(served.run(RESTORE).ms);
    }
    const n = served.served() - before;
    if (n !== REPS) throw new Error(`the server ran ${n} of the ${REPS} served restores (see its log in ${runDir})`);
    return { direct: stats(d), served: stats(v), workers };
  } finally {
    served.run(['server', 'stop']);
  }
}

/** In-process: resume the newest state of `store` to a shell that has answered a command, then discard. */
async function inProcessRestore(storeDir: string, n: number): Promise<Stats> {
  const store = LocalStore.open(storeDir);
  const rows = allRealizations(store).filter((r) => fs.existsSync(path.join(store.outPath(r.rref), 'machine.json')));
  const dir = store.outPath(rows[rows.length - 1]!.rref);
  const d = readDescription(dir);
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    const work = store.makeTempDir('bench');
    const t0 = performance.now();
    const s = await qemuBackend.resume(dir, d.state, work);
    xs.push(performance.now() - t0);
    await s.discard();
    fs.rmSync(work, { recursive: true, force: true });
  }
  return stats(xs);
}

/** In-process: cloneDisk of the newest state's disk in `storeDir` with `mode`. */
async function cloneOnly(storeDir: string, mode: CloneMode, n: number): Promise<{ stats: Stats; bytes: number }> {
  const store = LocalStore.open(storeDir);
  const rows = allRealizations(store).filter(
    (r) =>
      fs.existsSync(path.join(store.outPath(r.rref), 'disk.qcow2')) &&
      fs.existsSync(path.join(store.outPath(r.rref), 'machine.json')),
  );
  const src = path.join(store.outPath(rows[rows.length - 1]!.rref), 'disk.qcow2');
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    const work = store.makeTempDir('bench-clone');
    const t0 = performance.now();
    await cloneDisk(src, path.join(work, 'disk.qcow2'), mode);
    xs.push(performance.now() - t0);
    fs.rmSync(work, { recursive: true, force: true });
  }
  return { stats: stats(xs), bytes: fs.statSync(src).size };
}

const GOAL_TRANSFER_MBPS = 100;
const TRANSFER_BYTES = 50 * 1024 * 1024;

interface TransferFigures {
  upload50: Stats;
  download50: Stats;
  uploadTree1000: Stats;
  downloadTree1000: Stats;
}

/** (d) In-process, on one resumed tiny machine: vm.upload/vm.download of a 50 MB file and of 1000 small files. */
async function transferBench(storeDir: string, work: string, n: number): Promise<TransferFigures> {
  const { machine } = await import('../src/stages/machine.js');
  const { tiny } = await import('../src/stages/bases/tiny.js');
  const store = LocalStore.open(storeDir);
  const big = path.join(work, 'transfer-50mb.bin');
  fs.writeFileSync(big, (await import('node:crypto')).randomBytes(TRANSFER_BYTES));
  const tree = path.join(work, 'transfer-tree');
  for (let i = 0; i < 1000; i++) {
    fs.mkdirSync(path.join(tree, `d${i % 10}`), { recursive: true });
    fs.writeFileSync(path.join(tree, `d${i % 10}`, `f${i}`), `file ${i}\n`);
  }
  const timed = async (f: () => Promise<void>): Promise<number> => {
    const t0 = performance.now();
    await f();
    return performance.now() - t0;
  };
  const r = { up: [] as number[], down: [] as number[], treeUp: [] as number[], treeDown: [] as number[] };
  await machine(tiny()).use(
    async (vm) => {
      for (let i = 0; i < n; i++) {
        r.up.push(await timed(() => vm.upload(big, '/tmp/big.bin')));
        r.down.push(await timed(() => vm.download('/tmp/big.bin', path.join(work, 'transfer-back.bin'))));
        r.treeUp.push(await timed(() => vm.upload(tree, '/tmp/')));
        r.treeDown.push(await timed(() => vm.download('/tmp/transfer-tree', path.join(work, 'transfer-tree-back'))));
        await vm.exec('rm -rf /tmp/big.bin /tmp/transfer-tree', { check: true });
      }
    },
    { store },
  );
  return {
    upload50: stats(r.up),
    download50: stats(r.down),
    uploadTree1000: stats(r.treeUp),
    downloadTree1000: stats(r.treeDown),
  };
}

function transferRows(t: TransferFigures): [string, string][] {
  const mbps = (s: Stats): string => `${(TRANSFER_BYTES / 1e6 / (s.median / 1000)).toFixed(0)} MB/s`;
  return [
    ['(d) upload a 50 MiB file (9p)', `${fmt(t.upload50)}, ${mbps(t.upload50)}`],
    ['(d) download a 50 MiB file (9p)', `${fmt(t.download50)}, ${mbps(t.download50)}`],
    ['(d) upload a tree of 1000 small files', fmt(t.uploadTree1000)],
    ['(d) download a tree of 1000 small files', fmt(t.downloadTree1000)],
  ];
}

function transferGoals(t: TransferFigures): void {
  for (const [name, s] of [
    ['upload', t.upload50],
    ['download', t.download50],
  ] as const) {
    const rate = TRANSFER_BYTES / 1e6 / (s.median / 1000);
    process.stdout.write(
      `${rate >= GOAL_TRANSFER_MBPS ? 'met' : 'MISSED'}: ${name} of 50 MiB median ${rate.toFixed(0)} MB/s ` +
        `(goal ${GOAL_TRANSFER_MBPS} MB/s)\n`,
    );
  }
}

/** BENCH_ONLY=transfer: (d) alone, on a store of its own. */
async function transferOnly(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-transfer-'));
  try {
    const loadBefore = load();
    log(`bench: transfer only; work dir ${work}; ${REPS} reps; load ${loadBefore.join(' ')}`);
    const t = await transferBench(path.join(work, 'store'), work, REPS);
    const rows = transferRows(t);
    const w = Math.max(...rows.map((r) => r[0].length));
    for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
    process.stdout.write(`load average before ${loadBefore.join(' ')}, after ${load().join(' ')}\n`);
    transferGoals(t);
    fs.writeFileSync(
      path.join(ROOT, 'bench', 'machines-transfer-results.json'),
      JSON.stringify({ date: new Date().toISOString(), reps: REPS, load: loadBefore, transfer: t }, null, 2) + '\n',
    );
  } finally {
    if (!KEEP) fs.rmSync(work, { recursive: true, force: true });
  }
}

type RestoreBoth = ReturnType<typeof restoreDirectAndServed>;

function restoreRows(r: RestoreBoth): [string, string][] {
  return [
    ['(a) restore, CLI, alternating with the next row: Node CLI', fmt(r.direct)],
    [`(a) restore, CLI, through the server (C client, ${r.workers} warm workers)`, fmt(r.served)],
    ['(a) restore, Node CLI / server (medians)', `${(r.direct.median / r.served.median).toFixed(2)}x`],
  ];
}

function reportRestore(r: RestoreBoth, inProcess: Stats, nodeStart: number[], loadBefore: number[]): void {
  const results = { date: new Date().toISOString(), reps: REPS, load: { before: loadBefore, after: load() } };
  const all = { ...results, nodeStartup: stats(nodeStart), restoreInProcess: inProcess, restoreDirectVsServed: r };
  fs.writeFileSync(path.join(ROOT, 'bench', 'machines-restore-results.json'), JSON.stringify(all, null, 2) + '\n');
  const rows: [string, string][] = [
    ['node -e 0', fmt(all.nodeStartup)],
    ...restoreRows(r),
    ['(a) restore, in-process (resume + first command)', fmt(inProcess)],
  ];
  const w = Math.max(...rows.map((x) => x[0].length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
  process.stdout.write(`load average before ${loadBefore.join(' ')}, after ${results.load.after.join(' ')}\n`);
  for (const [name, s] of [
    ['Node CLI', r.direct],
    ['through the server', r.served],
  ] as const)
    process.stdout.write(
      `${s.median / 1000 <= GOAL_RESTORE ? 'met' : 'MISSED'}: restore (CLI, ${name}) median ` +
        `${(s.median / 1000).toFixed(2)} s (goal ${GOAL_RESTORE} s)\n`,
    );
}

async function main(): Promise<void> {
  if (process.env.BENCH_ONLY === 'transfer') return transferOnly();
  preflight();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-machines-'));
  const mnt = path.join(work, 'xfs');
  const image = path.join(work, 'xfs.img');
  let mounted = false;
  const cleanup = (): void => {
    if (mounted) {
      for (let i = 0; i < 20 && spawnSync('umount', [mnt]).status !== 0; i++) spawnSync('sleep', ['0.25']);
      if (spawnSync('mountpoint', ['-q', mnt]).status === 0) spawnSync('umount', ['-l', mnt]);
      mounted = false;
    }
    for (const line of (spawnSync('losetup', ['-j', image], { encoding: 'utf8' }).stdout ?? '').split('\n')) {
      const dev = line.split(':')[0];
      if (dev) spawnSync('losetup', ['-d', dev]);
    }
    if (!KEEP) fs.rmSync(work, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    const cli = snapshotCli(work);
    const loadBefore = load();
    log(`bench: work dir ${work}; ${REPS} reps; load ${loadBefore.join(' ')}`);

    const nodeStart: number[] = [];
    for (let i = 0; i < REPS; i++) {
      const t0 = performance.now();
      sh(NODE, ['-e', '0']);
      nodeStart.push(performance.now() - t0);
    }

    // ---- (a) + (b) on an ext4 store (clone auto = overlay here)
    const ext4 = new Cli(cli, path.join(work, 'ext4', 'store'));
    log('bench: setting up the tiny base and a 3-step pipeline (ext4 store)');
    ext4.run(PIPE);
    const bootFile = path.join(work, 'boot.ts');
    fs.writeFileSync(
      bootFile,
      `import { tiny } from ` +
        JSON.stringify(path.join(path.dirname(path.dirname(cli)), 'src', 'stages', 'bases', 'tiny.js')) +
        `;\nexport default tiny();\n`,
    );
    const cliHelp = ONLY_RESTORE ? stats([0]) : ext4.times(REPS, () => ['machine', 'ls']);
    const restore = ONLY_RESTORE ? stats([0]) : ext4.times(REPS, () => RESTORE);
    const cached3 = ONLY_RESTORE ? stats([0]) : ext4.times(REPS, () => PIPE);
    const tag = Date.now();
    const plus1 = ONLY_RESTORE
      ? stats([0])
      : ext4.times(REPS, (i) => [...PIPE, '+', 'exec', `echo ${tag}-${i} > /mnt/u`]);
    const restoreInProcess = await inProcessRestore(ext4.store, REPS);
    const restoreBoth = restoreDirectAndServed(ext4, work);
    if (ONLY_RESTORE) return reportRestore(restoreBoth, restoreInProcess, nodeStart, loadBefore);
    const transfer = await transferBench(ext4.store, work, REPS);
    // In a store of its own: a rebuilt base state would be the newest, and
    // the pipeline above would no longer be cached on top of it.
    const boot = new Cli(cli, path.join(work, 'boot', 'store'));
    boot.run(['machine', '-q', 'tiny']);
    const cold = boot.times(Math.max(3, Math.ceil(REPS / 2)), () => ['realize', bootFile, '-f', 'tiny', '-q']);
    const loadAB = load();

    // ---- (c) one uncached step per clone mode
    fs.mkdirSync(mnt);
    sh('truncate', ['-s', '4G', image]);
    sh('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
    sh('mount', ['-o', 'loop', image, mnt]);
    mounted = true;
    const modes: { mode: CloneMode; c: Cli }[] = [
      { mode: 'reflink', c: new Cli(cli, path.join(mnt, 'store')) },
      { mode: 'overlay', c: new Cli(cli, path.join(work, 'overlay', 'store'), { CAIRN_DISK_CLONE: 'overlay' }) },
      { mode: 'copy', c: new Cli(cli, path.join(work, 'copy', 'store'), { CAIRN_DISK_CLONE: 'copy' }) },
    ];
    const perMode: Record<string, { step: Stats; clone: Stats; diskBytes: number; chain: number }> = {};
    for (const { mode, c } of modes) {
      log(`bench: setting up a ${mode} store`);
      const rref = c.run(PIPE).stdout.trim();
      const st = readDescription(LocalStore.open(c.store).outPath(asRRef(rref))).state as unknown as QemuState;
      if (st.clone !== mode) throw new Error(`the ${mode} store cloned with ${st.clone}`);
      if (mode !== 'overlay' && st.chain !== 0) throw new Error(`the ${mode} store has a backing chain of ${st.chain}`);
      const step = c.times(REPS, (i) => [...PIPE, '+', 'exec', `echo ${mode}-${tag}-${i} > /mnt/u`]);
      const clone = await cloneOnly(c.store, mode, REPS);
      perMode[mode] = { step, clone: clone.stats, diskBytes: clone.bytes, chain: st.chain };
    }
    // The clone alone on a bigger image: 256 MiB of random data in a standalone qcow2.
    const bigRaw = path.join(work, 'big.raw');
    sh('sh', ['-c', `head -c 256M /dev/urandom > ${bigRaw}`]);
    const bigClone: Record<string, Stats> = {};
    for (const { mode, at } of [
      { mode: 'reflink', at: mnt },
      { mode: 'overlay', at: work },
      { mode: 'copy', at: work },
    ] as const) {
      const src = path.join(at, `big-${mode}.qcow2`);
      sh('qemu-img', ['convert', '-O', 'qcow2', bigRaw, src]);
      const xs: number[] = [];
      for (let i = 0; i < REPS; i++) {
        const dst = path.join(at, `big-${mode}-clone.qcow2`);
        const t0 = performance.now();
        await cloneDisk(src, dst, mode);
        xs.push(performance.now() - t0);
        fs.rmSync(dst);
      }
      bigClone[mode] = stats(xs);
      fs.rmSync(src);
    }
    fs.rmSync(bigRaw);
    const loadC = load();

    const results = {
      date: new Date().toISOString(),
      machine: {
        cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}`,
        node: process.version,
        qemu: sh('qemu-system-x86_64', ['--version']).split('\n')[0],
        accel: 'tcg',
      },
      reps: REPS,
      load: { before: loadBefore, afterAB: loadAB, afterC: loadC },
      nodeStartup: stats(nodeStart),
      cliMachineLs: cliHelp,
      coldBoot: cold,
      restoreCli: restore,
      restoreInProcess,
      restoreDirectVsServed: restoreBoth,
      cached3,
      cached3PlusOne: plus1,
      perMode,
      cloneBig: bigClone,
      transfer,
    };
    fs.writeFileSync(path.join(ROOT, 'bench', 'machines-results.json'), JSON.stringify(results, null, 2) + '\n');
    const rows: [string, string][] = [
      ['node -e 0', fmt(results.nodeStartup)],
      ['cairn machine ls (CLI floor)', fmt(cliHelp)],
      ['(a) cold boot to a shell (realize -f tiny)', fmt(cold)],
      ['(a) restore to a shell, CLI: machine tiny + transient exec true', fmt(restore)],
      ['(a) restore to a shell, in-process (resume + first command)', fmt(restoreInProcess)],
      ...restoreRows(restoreBoth),
      ['(b) cached 3-step pipeline', fmt(cached3)],
      ['(b) cached 3 steps + 1 uncached exec', fmt(plus1)],
      ...Object.entries(perMode).flatMap(([m, r]): [string, string][] => [
        [`(c) one uncached step, ${m} (chain ${r.chain})`, fmt(r.step)],
        [`(c) clone alone, ${m} (${(r.diskBytes / 2 ** 20).toFixed(1)} MiB image)`, fmt(r.clone)],
      ]),
      ...Object.entries(bigClone).map(([m, st]): [string, string] => [
        `(c) clone alone, ${m}, 256 MiB random-data qcow2`,
        fmt(st),
      ]),
      ...transferRows(transfer),
    ];
    const w = Math.max(...rows.map((r) => r[0].length));
    for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
    process.stdout.write(
      `load average before ${loadBefore.join(' ')}, after (a)(b) ${loadAB.join(' ')}, after (c) ${loadC.join(' ')}\n`,
    );
    const goal = (name: string, s: Stats, limit: number): void => {
      process.stdout.write(
        `${s.median / 1000 <= limit ? 'met' : 'MISSED'}: ${name} median ` +
          `${(s.median / 1000).toFixed(2)} s (goal ${limit} s)\n`,
      );
    };
    goal('restore (CLI)', restore, GOAL_RESTORE);
    goal('restore (in-process)', restoreInProcess, GOAL_RESTORE);
    goal('restore (CLI, alternating run: Node CLI)', restoreBoth.direct, GOAL_RESTORE);
    goal('restore (CLI, alternating run: through the server)', restoreBoth.served, GOAL_RESTORE);
    goal('cached 3-step pipeline (CLI)', cached3, GOAL_CACHED3);
    transferGoals(transfer);
  } finally {
    cleanup();
  }
}

await main();
