/**
 * chain-200-sh (200 chained stages, each starting /bin/sh through `exec`,
 * as in bench/run.ts) with the spawn helper and without it
 * (CAIRN_SPAWN_HELPER=off), interleaved run by run so that the load of a
 * shared machine hits both alike; through a warm `cairn server` (one per
 * setting) and as a Node process; the in-process chain (no /bin/sh) for
 * reference. Whole-process wall time, fresh store each run. Nix is not run
 * here: bench/run.ts compares with Nix.
 *
 *   npm run build && node --import tsx bench/spawn-chain.ts
 *
 * BENCH_REPS (5), BENCH_STAGES (200). Prints a Markdown table with the load average.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const CLIENT = path.join(ROOT, 'dist', 'bin', 'cairn');
const REPS = Number(process.env.BENCH_REPS ?? 5);
const N = Number(process.env.BENCH_STAGES ?? 200);
const JOBS = String(os.availableParallelism());

function stageFile(sh: boolean): string {
  const build = sh
    ? `async ({ config, out, exec }: { config: { i: number }; out: string; exec: Exec }): Promise<void> => {
  await exec('/bin/sh', ['-c', \`echo \${config.i} > "$1/v"\`, 'sh', out]);
}`
    : `({ config, out }: { config: { i: number }; out: string }): void => {
  fs.writeFileSync(path.join(out, 'v'), \`\${config.i}\\n\`);
}`;
  return `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage, type Stage } from 'cairn';
type Exec = (cmd: string, args: string[]) => Promise<unknown>;
void fs, path;
const build = ${build};
export default (): Stage<unknown> => {
  let prev: Stage<unknown> | null = null;
  for (let i = 0; i < ${N}; i++) prev = stage({ name: \`c\${i}\`, version: '1', config: { i, prev }, build });
  return prev!;
};
`;
}

interface Mode {
  label: string;
  file: 'sh' | 'fs';
  server: boolean;
  helper: boolean;
}
const MODES: Mode[] = [
  { label: 'server, helper', file: 'sh', server: true, helper: true },
  { label: "server, Node's spawn", file: 'sh', server: true, helper: false },
  { label: 'server, in-process chain', file: 'fs', server: true, helper: true },
  { label: 'Node process, helper', file: 'sh', server: false, helper: true },
  { label: "Node process, Node's spawn", file: 'sh', server: false, helper: false },
  { label: 'Node process, in-process chain', file: 'fs', server: false, helper: true },
];

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-spawn-chain-'));
const socket = (helper: boolean): string => path.join(work, helper ? 'on' : 'off', 'server.sock');
const envOf = (m: Mode, store: string): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    XDG_CACHE_HOME: path.join(path.dirname(store), 'cache'),
    CAIRN_SERVER_SOCKET: socket(m.helper),
    CAIRN_SERVER_DEBUG: '1',
  };
  delete env.NODE_OPTIONS;
  delete env.CAIRN_STORE;
  if (m.helper) delete env.CAIRN_SPAWN_HELPER;
  else env.CAIRN_SPAWN_HELPER = 'off';
  return env;
};

try {
  for (const sh of [true, false]) fs.writeFileSync(path.join(work, `${sh ? 'sh' : 'fs'}.ts`), stageFile(sh));
  for (const helper of [true, false]) {
    fs.mkdirSync(path.dirname(socket(helper)), { mode: 0o700 });
    const env = { ...process.env, CAIRN_SERVER_SOCKET: socket(helper) };
    const r = spawnSync(CLIENT, ['server', 'start', '--workers', '2'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cairn server start: ${r.stderr}`);
  }
  const load0 = os.loadavg();
  const times = new Map<string, number[]>(MODES.map((m) => [m.label, []]));
  let k = 0;
  for (let rep = 0; rep < REPS; rep++) {
    // The order rotates each rep, so no mode always runs right after another's store deletion.
    for (let j = 0; j < MODES.length; j++) {
      const m = MODES[(j + rep) % MODES.length]!;
      const store = path.join(work, `run-${k++}`, 'store');
      fs.mkdirSync(path.dirname(store));
      const args = ['--store', store, 'realize', path.join(work, `${m.file}.ts`), '-q', '-j', JOBS];
      const t = performance.now();
      const r = m.server
        ? spawnSync(CLIENT, args, { env: envOf(m, store), encoding: 'utf8' })
        : spawnSync(process.execPath, [CLI, ...args], { env: envOf(m, store), encoding: 'utf8' });
      const ms = performance.now() - t;
      if (r.status !== 0) throw new Error(`${m.label}: ${r.stderr}`);
      if (m.server && r.stderr.includes('running without the server')) throw new Error(`${m.label}: not served`);
      times.get(m.label)!.push(ms);
      fs.rmSync(path.dirname(store), { recursive: true, force: true });
    }
  }
  const load1 = os.loadavg();
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const la = (l: number[]): string => l.map((x) => x.toFixed(2)).join(' ');
  console.log(`chain of ${N}, ${REPS} reps interleaved; load average ${la(load0)} before, ${la(load1)} after.\n`);
  console.log('| mode | median | min | per stage beyond the in-process chain (median) |\n|---|---|---|---|');
  for (const m of MODES) {
    const xs = times.get(m.label)!;
    const base = median(times.get(MODES.find((b) => b.file === 'fs' && b.server === m.server)!.label)!);
    const extra = m.file === 'sh' ? `${((median(xs) - base) / N).toFixed(2)} ms` : '';
    console.log(`| ${m.label} | ${Math.round(median(xs))} ms | ${Math.round(Math.min(...xs))} ms | ${extra} |`);
  }
} finally {
  for (const helper of [true, false])
    spawnSync(CLIENT, ['server', 'stop'], { env: { ...process.env, CAIRN_SERVER_SOCKET: socket(helper) } });
  fs.rmSync(work, { recursive: true, force: true });
}
