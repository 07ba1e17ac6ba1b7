/**
 * What starting a build's program costs: the spawn helper (dist/bin/cairn-spawn,
 * src/stages/spawn-helper.ts) against Node's spawn, in one run, from a small
 * Node process and from one with a large heap (as a server worker is; Node's
 * spawn forks the whole process). Each exec starts `/bin/sh -c 'echo 1 >
 * /dev/null'` with pipes and waits for it to end; the rounds alternate the
 * two ways so that load changes hit both alike. Also: the floor (a small C
 * program doing the same with posix_spawn, if cc is there), the whole
 * `exec` of a build (log, echo, process group) through the helper, and
 * throughput of a program's stdout (BENCH_SPAWN_MB, default 200 MB).
 *
 *   npm run build && node --import tsx bench/spawn.ts
 *
 * BENCH_SPAWN_N (300) execs per round, BENCH_SPAWN_ROUNDS (5), BENCH_SPAWN_HEAP_MB (400).
 * Prints a Markdown table with the load average; see docs/benchmarks.md.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execLogged } from '../src/stages/build-context.js';
import { BuildGroups } from '../src/stages/build-processes.js';
import { nodeStart, spawnHelperPid, startProgram, type ProgramSpec } from '../src/stages/spawn-helper.js';

const N = Number(process.env.BENCH_SPAWN_N ?? 300);
const ROUNDS = Number(process.env.BENCH_SPAWN_ROUNDS ?? 5);
const HEAP_MB = Number(process.env.BENCH_SPAWN_HEAP_MB ?? 400);
const MB = Number(process.env.BENCH_SPAWN_MB ?? 200);
const SH: ProgramSpec = { cmd: '/bin/sh', args: ['-c', 'echo 1 > /dev/null'], env: process.env };

type Start = typeof startProgram;
function once(start: Start, spec: ProgramSpec, onOut?: (b: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    start(spec, {
      started: () => {},
      stdout: onOut ?? (() => {}),
      stderr: () => {},
      exit: () => {},
      error: reject,
      close: (code) => (code === 0 ? resolve() : reject(new Error(`exit ${code}`))),
    }),
  );
}

async function perExec(run: () => Promise<void>): Promise<number> {
  await run();
  const t = performance.now();
  for (let i = 0; i < N; i++) await run();
  return (performance.now() - t) / N;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ms = (x: number): string => `${x.toFixed(2)} ms`;

/** The floor: posix_spawn and waitpid from a 20-line C program, with a pipe for stdout. */
function floor(dir: string): number | undefined {
  const src = path.join(dir, 'floor.c');
  const bin = path.join(dir, 'floor');
  fs.writeFileSync(
    src,
    `#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
  int n = atoi(argv[1]);
  char *args[] = {"/bin/sh", "-c", "echo 1 > /dev/null", NULL};
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; i++) {
    int p[2]; pid_t pid; char buf[256];
    if (pipe(p)) return 1;
    posix_spawn_file_actions_t fa; posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1); posix_spawn_file_actions_addclose(&fa, p[0]);
    if (posix_spawn(&pid, args[0], &fa, NULL, args, environ)) return 1;
    close(p[1]); while (read(p[0], buf, sizeof buf) > 0) {} close(p[0]); waitpid(pid, NULL, 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%f\\n", ((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6) / n);
  return 0;
}
`,
  );
  if (spawnSync('cc', ['-O2', '-o', bin, src]).status !== 0) return undefined;
  const r = spawnSync(bin, [String(N)], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout) : undefined;
}

async function throughput(start: Start): Promise<number> {
  let n = 0;
  const t = performance.now();
  await once(start, { cmd: 'head', args: ['-c', String(MB << 20), '/dev/zero'], env: process.env }, (b) => {
    n += b.length;
  });
  if (n !== MB << 20) throw new Error(`got ${n} bytes`);
  return MB / ((performance.now() - t) / 1000);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-spawn-'));
try {
  const load0 = os.loadavg();
  const rows: [string, string][] = [];
  const rounds = async (label: string): Promise<void> => {
    const helper: number[] = [];
    const node: number[] = [];
    const exec: number[] = [];
    const floors: number[] = [];
    const groups = new BuildGroups();
    const log = path.join(dir, 'log');
    for (let r = 0; r < ROUNDS; r++) {
      helper.push(await perExec(() => once(startProgram, SH)));
      node.push(await perExec(() => once(nodeStart, SH)));
      exec.push(await perExec(() => execLogged({ file: log, groups }, SH.cmd, SH.args).then(() => {})));
      fs.rmSync(log, { force: true });
      const f = floor(dir);
      if (f !== undefined) floors.push(f);
    }
    if (spawnHelperPid() === undefined) throw new Error('the helper did not run: build first (npm run build)');
    const span = (xs: number[]): string => `${ms(median(xs))} (${ms(Math.min(...xs))}–${ms(Math.max(...xs))})`;
    rows.push([`${label}: helper`, span(helper)]);
    rows.push([`${label}: Node's spawn`, span(node)]);
    rows.push([`${label}: whole exec (log, group) through the helper`, span(exec)]);
    if (floors.length > 0) rows.push([`${label}: floor (C, posix_spawn)`, span(floors)]);
    rows.push([`${label}: Node's spawn / helper`, `${(median(node) / median(helper)).toFixed(2)}×`]);
  };
  await rounds(`small process (${Math.round(process.memoryUsage().rss / 2 ** 20)} MB RSS)`);
  // A heap like a server worker's after some work: Node's fork copies its page tables.
  const ballast: number[][] = [];
  while (process.memoryUsage().rss < HEAP_MB * 2 ** 20) ballast.push(Array.from({ length: 1 << 16 }, (_, i) => i));
  await rounds(`large process (${Math.round(process.memoryUsage().rss / 2 ** 20)} MB RSS)`);
  ballast.length = 0;
  const tHelper = await throughput(startProgram);
  const tNode = await throughput(nodeStart);
  rows.push([`stdout throughput, ${MB} MB: helper`, `${Math.round(tHelper)} MB/s`]);
  rows.push([`stdout throughput, ${MB} MB: Node's spawn`, `${Math.round(tNode)} MB/s`]);
  const load1 = os.loadavg();
  const la = (l: number[]): string => l.map((x) => x.toFixed(2)).join(' ');
  console.log(
    `Per exec, median of ${ROUNDS} rounds of ${N} (min–max); load average ${la(load0)} before, ${la(load1)} after.`,
  );
  console.log('\n| what | cost |\n|---|---|');
  for (const [k, v] of rows) console.log(`| ${k} | ${v} |`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
