/**
 * `cairn sync push` of a 1,000-realization closure between two hosts
 * (network namespaces with their own sshd, test/fixtures/hosts.ts), against
 * plain `rsync -a` of the whole store over the same ssh: first sync into an
 * empty target, and a no-op re-sync.
 *
 *   npx tsc -p tsconfig.json && node --import tsx bench/sync.ts
 *
 * Environment: BENCH_REPS=n (default 3 first syncs, 3n no-op syncs),
 * BENCH_STAGES=n (default 1000). Runs as root (namespaces). Prints a
 * Markdown table; see docs/benchmarks.md ("Sync").
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startHosts, type Host } from '../test/fixtures/hosts.js';
import { cairnBin } from '../test/helpers.js';

const REPS = Number(process.env.BENCH_REPS ?? 3);
const STAGES = Number(process.env.BENCH_STAGES ?? 1000);
const log = (s: string): void => {
  process.stderr.write(s + '\n');
};

const STAGE_FILE = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
let prev = null;
for (let i = 0; i < ${STAGES}; i++) {
  prev = stage({
    name: 's' + i,
    config: { i, dep: prev },
    build: ({ config, out }) => { fs.writeFileSync(path.join(out, 'v.txt'), 'value ' + config.i + '\\n'); },
  });
}
export default prev;
`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

const hosts = await startHosts('bench', 2);
try {
  const [a, b] = hosts.hosts as [Host, Host];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-bench-sync-'));
  const file = path.join(dir, 'chain.mjs');
  fs.writeFileSync(file, STAGE_FILE);
  const env = { ...process.env, XDG_CACHE_HOME: path.join(dir, 'cache') };
  const onA = (cmd: string, args: string[]): { ms: number; stdout: string } => {
    const t0 = performance.now();
    const r = spawnSync('ip', ['netns', 'exec', a.ns, cmd, ...args], { encoding: 'utf8', env, maxBuffer: 1 << 28 });
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 4).join(' ')} failed: ${r.stderr}`);
    return { ms, stdout: r.stdout };
  };
  log(`realizing a chain of ${STAGES} stages on host a...`);
  const t0 = performance.now();
  const top = onA(process.execPath, [cairnBin, '--store', a.store, 'realize', file, '-q'])
    .stdout.trim()
    .split('\n')
    .pop()!;
  log(`  ${((performance.now() - t0) / 1000).toFixed(1)} s; target ${top}`);

  const plain = path.join(hosts.dir, 'plain-b');
  const cairnPush = (): { ms: number; report: { plan: { rrefs: string[] }; transfer: unknown } } => {
    const r = onA(process.execPath, [
      cairnBin,
      '--store',
      a.store,
      'sync',
      'push',
      ...hosts.syncOpts(),
      b.remote,
      top,
      '--json',
    ]);
    return { ms: r.ms, report: JSON.parse(r.stdout) as { plan: { rrefs: string[] }; transfer: unknown } };
  };
  const plainRsync = (): number => onA('rsync', ['-a', '-e', hosts.ssh, `${a.store}/`, `root@${b.addr}:${plain}/`]).ms;
  const wipe = (p: string): void => {
    spawnSync('chmod', ['-R', 'u+w', p]);
    fs.rmSync(p, { recursive: true, force: true });
  };

  const rows: Record<string, number[]> = { 'cairn first': [], 'cairn no-op': [], 'rsync first': [], 'rsync no-op': [] };
  for (let i = 0; i < REPS; i++) {
    wipe(b.store);
    wipe(plain);
    const first = cairnPush();
    if (first.report.plan.rrefs.length !== STAGES)
      throw new Error(`pushed ${first.report.plan.rrefs.length} realizations, expected ${STAGES}`);
    rows['cairn first']!.push(first.ms);
    rows['rsync first']!.push(plainRsync());
    for (let j = 0; j < 3; j++) {
      const noop = cairnPush();
      if (noop.report.plan.rrefs.length !== 0 || noop.report.transfer !== null)
        throw new Error('the no-op push sent something');
      rows['cairn no-op']!.push(noop.ms);
      rows['rsync no-op']!.push(plainRsync());
    }
    log(
      `  rep ${i + 1}: cairn first ${first.ms.toFixed(0)} ms, rsync ` +
        `first ${rows['rsync first']!.at(-1)!.toFixed(0)} ms`,
    );
  }
  const verify = spawnSync(process.execPath, [cairnBin, '--store', b.store, 'store', 'verify'], { encoding: 'utf8' });
  if (verify.status !== 0) throw new Error(`the target does not verify: ${verify.stdout}`);
  const storeFiles = Number(
    spawnSync('sh', ['-c', `find ${a.store} -type f | wc -l`], { encoding: 'utf8' }).stdout.trim(),
  );
  console.log(`| case (${STAGES} realizations, ${storeFiles} files in the store) | median | min | runs |`);
  console.log('| --- | --- | --- | --- |');
  for (const [k, v] of Object.entries(rows)) {
    console.log(
      `| ${k} | ${(median(v) / 1000).toFixed(2)} s | ${(Math.min(...v) / 1000).toFixed(2)} s | ${v.length} |`,
    );
  }
  wipe(dir);
} finally {
  await hosts.stop();
}
