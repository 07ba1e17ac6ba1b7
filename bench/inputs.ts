/**
 * Hashing speed of file inputs (`files` on a stage), on a 2 GB file and on a
 * directory of 10,000 files:
 *
 *   cold     stat cache empty, the files evicted from the page cache (read from disk)
 *   rehash   no stat cache, page cache warm: raw read + sha256 throughput (goal >= 1 GB/s)
 *   warm     stat cache hit: one lstat per file, nothing read
 *
 * and, for the 2 GB file, the first realize (import into the store: copy,
 * hash of the copy, seal) and a cached realize through the CLI.
 *
 *   npm run build && node --import tsx bench/inputs.ts
 *
 * Knobs: BENCH_INPUT_GB (default 2), BENCH_INPUT_FILES (default 10000),
 * BENCH_INPUT_FILE_KB (default 64), BENCH_REPS (default 3), BENCH_DIR
 * (default the OS temp dir; the filesystem under test). Writes
 * bench/inputs-results.json. Eviction uses posix_fadvise(DONTNEED) through
 * python3; without it, `cold` is left out.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InputHasher } from '../src/stages/inputs/input-hash.js';
import { openStatCache, RACY_MARGIN_NS } from '../src/stages/inputs/stat-cache.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const num = (v: string | undefined, d: number): number => (v ? Number(v) : d);
const GB = num(process.env.BENCH_INPUT_GB, 2);
const FILES = num(process.env.BENCH_INPUT_FILES, 10_000);
const FILE_KB = num(process.env.BENCH_INPUT_FILE_KB, 64);
const REPS = num(process.env.BENCH_REPS, 3);
const GOAL_GBPS = 1;

const work = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? os.tmpdir(), 'cairn-bench-inputs-'));
const big = path.join(work, 'big.bin');
const tree = path.join(work, 'tree');

function evict(paths: string[]): boolean {
  spawnSync('sync');
  const py =
    'import os,sys\nfor p in sys.stdin.read().split("\\0"):\n  if p:\n    fd=os.open(p,os.O_RDONLY); ' +
    'os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)\n';
  return spawnSync('python3', ['-c', py], { input: paths.join('\0') }).status === 0;
}

function listFiles(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Row {
  case: string;
  mode: string;
  ms: number;
  bytes: number;
  gbps: number;
  hashedFiles: number;
  cacheHits: number;
}
const rows: Row[] = [];

function measure(label: string, mode: string, target: string, cacheFile: string | null, before?: () => void): Row {
  const times: number[] = [];
  let last: InputHasher | undefined;
  let bytes = 0;
  for (let i = 0; i < REPS; i++) {
    before?.();
    const cache = cacheFile ? openStatCache(cacheFile) : undefined;
    const h = new InputHasher(cache);
    const t0 = performance.now();
    const d = h.digest(target, label);
    h.flush();
    times.push(performance.now() - t0);
    cache?.close();
    bytes = d.bytes;
    last = h;
  }
  const ms = median(times);
  const row = {
    case: label,
    mode,
    ms: Math.round(ms * 10) / 10,
    bytes,
    gbps: Math.round((bytes / 1e9 / (ms / 1000)) * 100) / 100,
    hashedFiles: last!.stats.hashedFiles,
    cacheHits: last!.stats.cacheHits,
  };
  rows.push(row);
  console.log(
    `${label.padEnd(24)} ${mode.padEnd(7)} ${row.ms.toFixed(1).padStart(9)}` +
      ` ms  ${row.gbps.toFixed(2).padStart(6)} GB/s` +
      `  read ${row.hashedFiles} file(s), ${row.cacheHits} stat-cache hit(s)`,
  );
  return row;
}

function cliMs(args: string[], env: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cairn ${args.join(' ')} failed: ${r.stderr}`);
  return performance.now() - t0;
}

try {
  console.log(`writing a ${GB} GB file and ${FILES} files of ${FILE_KB} KiB under ${work}`);
  const block = randomBytes(64 << 20);
  const fd = fs.openSync(big, 'w');
  for (let left = GB * 1024 ** 3; left > 0; left -= block.length)
    fs.writeSync(fd, block, 0, Math.min(block.length, left));
  fs.closeSync(fd);
  const body = randomBytes(FILE_KB * 1024);
  for (let i = 0; i < FILES; i++) {
    const d = path.join(tree, `d${i % 100}`);
    if (i < 100) fs.mkdirSync(d, { recursive: true });
    body.writeUInt32LE(i, 0);
    fs.writeFileSync(path.join(d, `f${i}.bin`), body);
  }
  // The ceiling on this machine right now: sha256 of a buffer in memory
  // (the machine may be shared; the ratio to it is the figure to compare).
  const mem = Buffer.alloc(8 << 20, 1);
  const memTimes = Array.from({ length: REPS }, () => {
    const t0 = performance.now();
    const h = createHash('sha256');
    for (let i = 0; i < 128; i++) h.update(mem);
    h.digest();
    return performance.now() - t0;
  });
  const memGbps = Math.round(((128 * mem.length) / 1e9 / (median(memTimes) / 1000)) * 100) / 100;
  console.log(
    `${'sha256 of memory'.padEnd(24)} ${''.padEnd(7)} ${median(memTimes).toFixed(1).padStart(9)} ms  ` +
      `${memGbps.toFixed(2).padStart(6)} GB/s  (the ceiling)`,
  );
  // Files younger than the racy margin are never cached: wait it out.
  await new Promise((r) => setTimeout(r, Number(RACY_MARGIN_NS / 1_000_000n) + 500));
  const treeFiles = listFiles(tree);

  for (const [label, target, files] of [
    [`file ${GB} GB`, big, [big]],
    [`dir ${FILES} files`, tree, treeFiles],
  ] as const) {
    const cacheFile = path.join(work, `stat-${rows.length}.sqlite`);
    if (evict([...files])) {
      measure(label, 'cold', target, cacheFile, () => {
        fs.rmSync(cacheFile, { force: true });
        evict([...files]);
      });
    }
    measure(label, 'rehash', target, null);
    measure(label, 'warm', target, cacheFile);
  }

  // End to end: import the 2 GB file into a store, then a cached realize.
  const stageFile = path.join(work, 'stages.ts');
  fs.writeFileSync(
    stageFile,
    `import { stage } from 'cairn';\nexport default stage({ name: ` +
      `'uses-big', config: {}, files: ['big.bin'], build: () => {} });\n`,
  );
  const env = { XDG_CACHE_HOME: path.join(work, 'cache') };
  const store = path.join(work, 'store');
  const importMs = cliMs(['--store', store, 'realize', '-q', stageFile], env);
  const cached = Array.from({ length: REPS }, () => cliMs(['--store', store, 'realize', '-q', stageFile], env));
  console.log(
    `realize, ${GB} GB input   import  ${importMs.toFixed(0).padStart(9)} ms  (hash, copy, hash of the copy, seal)`,
  );
  console.log(
    `realize, ${GB} GB input   cached  ${median(cached).toFixed(0).padStart(9)} ms  (whole process, warm stat cache)`,
  );
  const rehash = rows.filter((r) => r.mode === 'rehash');
  const missed = rehash.filter((r) => r.gbps < GOAL_GBPS);
  for (const r of missed) console.log(`MISSED: ${r.case} rehash ${r.gbps} GB/s < ${GOAL_GBPS} GB/s`);
  fs.writeFileSync(
    path.join(ROOT, 'bench', 'inputs-results.json'),
    JSON.stringify(
      {
        date: new Date().toISOString(),
        cpu: os.cpus()[0]?.model,
        node: process.version,
        reps: REPS,
        loadavg: os.loadavg(),
        memGbps,
        rows,
        realize: { importMs: Math.round(importMs), cachedMs: Math.round(median(cached)) },
      },
      null,
      2,
    ) + '\n',
  );
} finally {
  spawnSync('chmod', ['-R', 'u+w', work]);
  fs.rmSync(work, { recursive: true, force: true });
}
