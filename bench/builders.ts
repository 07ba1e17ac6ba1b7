/**
 * Fan-out over builders: 16 independent stages that each sleep 2 s (and a
 * report on them), built
 *   - locally with -j 2 (ideal: 16 x 2 s / 2 slots = 16 s), and
 *   - on two ssh hosts (network namespaces with their own sshd,
 *     test/fixtures/hosts.ts) with maxJobs=2 each (ideal: 8 s);
 * wall time against the ideal (work / slots); the difference is the
 * overhead (process start, stage file load, bundling, ssh and transfers).
 * Each is run first with builds that do nothing (sleep 0, fresh salts): that
 * wall time is the fixed overhead, and (wall - fixed) / ideal says how close
 * the builds themselves come to the ideal.
 *
 *   npm run build && node --import tsx bench/builders.ts
 *
 * Environment: BENCH_STAGES (16), BENCH_SLEEP_MS (2000). Runs as root
 * (namespaces). Prints a Markdown table; see docs/benchmarks.md ("Builders").
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startHosts, type Host } from '../test/fixtures/hosts.js';
import { cairnBin } from '../test/helpers.js';
import { writeFanout } from '../test/fixtures/builders/fanout.js';

const STAGES = Number(process.env.BENCH_STAGES ?? 16);
const SLEEP = Number(process.env.BENCH_SLEEP_MS ?? 2000);
const log = (s: string): void => {
  process.stderr.write(s + '\n');
};

const hosts = await startHosts('bbench', 3, '10.200.19');
try {
  const [a, b, c] = hosts.hosts as [Host, Host, Host];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-builders-'));
  const env = { ...process.env, XDG_CACHE_HOME: path.join(dir, 'cache') };
  const onA = (args: string[]): { ms: number; stdout: string } => {
    const t0 = performance.now();
    const r = spawnSync('ip', ['netns', 'exec', a.ns, process.execPath, cairnBin, ...args], {
      encoding: 'utf8',
      env,
      maxBuffer: 1 << 26,
    });
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`cairn ${args.slice(0, 4).join(' ')} failed: ${r.stderr}`);
    return { ms, stdout: r.stdout };
  };
  const rows: string[] = [];
  /** One realize of the fan-out with builds of `sleepMs`; its wall time and where the builds ran. */
  const realize = (salt: string, sleepMs: number, extra: string[]): { ms: number; where: string } => {
    const file = writeFanout(dir, { salt, parts: STAGES, sleepMs });
    const store = path.join(dir, `store-${salt}`);
    const { ms, stdout } = onA(['--store', store, 'realize', file, '--json', '-q', ...extra]);
    const res = JSON.parse(stdout) as { builds: number; plan: { where?: { builder: string } }[] };
    const where = new Map<string, number>();
    for (const p of res.plan) where.set(p.where?.builder ?? 'local', (where.get(p.where?.builder ?? 'local') ?? 0) + 1);
    return { ms, where: [...where].map(([k, v]) => `${k.replace(/\/tmp\/\S+/, '')}: ${v}`).join(', ') };
  };
  // The report stage costs ~nothing, but it is one more round (ssh: its inputs travel to a builder).
  const run = (label: string, salt: string, slots: number, extra: string[]): void => {
    log(`${label}, no work...`);
    const fixed = realize(`${salt}-0`, 0, extra).ms;
    log(`${label}...`);
    const { ms, where } = realize(salt, SLEEP, extra);
    const ideal = Math.ceil(STAGES / slots) * SLEEP;
    rows.push(
      `| ${label} | ${slots} | ${(ideal / 1000).toFixed(1)} s | ${(ms / 1000).toFixed(2)} s | ` +
        `${(ms / ideal).toFixed(2)}x | ${((ms - ideal) / 1000).toFixed(2)} s | ${(fixed / 1000).toFixed(2)} s | ` +
        `${((ms - fixed) / ideal).toFixed(2)}x | ${where} |`,
    );
  };
  const stamp = Date.now().toString(36);
  run('local, -j 2', `local-${stamp}`, 2, ['-j', '2']);
  const builders = [b, c].flatMap((h) => ['--builders', `ssh://root@${h.addr}${h.store}?maxJobs=2`]);
  run('2 ssh hosts, maxJobs=2 each', `ssh-${stamp}`, 4, [
    ...builders,
    '--builders-ssh',
    hosts.ssh,
    '--remote-cairn',
    hosts.remoteCairn,
  ]);
  process.stdout.write(
    `${STAGES} stages of ${SLEEP / 1000} s each, then a report; ${os.availableParallelism()} cores, ` +
      `load ${os.loadavg()[0]!.toFixed(1)}\n\n` +
      '| run | slots | ideal (work/slots) | wall | ratio | overhead | fixed (no work) | (wall - fixed) / ideal ' +
      '| where |\n' +
      '|---|---|---|---|---|---|---|---|---|\n' +
      rows.join('\n') +
      '\n',
  );
  fs.rmSync(dir, { recursive: true, force: true });
} finally {
  await hosts.stop();
}
