/**
 * The ssh builders' long-lived `cairn builder-worker` (one per slot, over the
 * shared ssh connection), against a real sshd in network namespaces
 * (10.200.31.0/24, prefix `bwk`): host a coordinates, b builds.
 *  - one worker serves every build of its slot, and the build logs come back;
 *  - a build that fails in a worker leaves it usable for the next;
 *  - hostile frames to a real worker are refused with stable codes, nothing written;
 *  - Ctrl-C of the coordinator mid-build leaves nothing running or lying around on the host.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { cairnBin, isolateModuleCache } from './helpers.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, rzDir, tmpEntries } from './fixtures/torture/support.js';
import { LocalStore } from '../src/store/store.js';
import type { DRef } from '../src/store/refs.js';
import type { Derivation } from '../src/stages/instantiate.js';
import { BuilderWorker } from '../src/stages/builders/worker-client.js';
import { buildOnWorker } from '../src/stages/builders/ssh-worker-build.js';
import {
  encodeFrame,
  FrameDecoder,
  parseReply,
  WORKER_PROTOCOL_VERSION,
} from '../src/stages/builders/worker-frames.js';

isolateModuleCache(after, 'cairn-builders-worker-cache');

let h: Hosts;
let a: Host;
let b: Host;

before(async () => {
  h = await startHosts('bwk', 2, '10.200.31');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

/** Stages `w-0..3` (logging, and printing on stdout, which must not reach the protocol), `sum`, `bad`, `slow`. */
function writeStages(salt: string): string {
  const file = path.join(h.dir, `worker-${salt}.ts`);
  fs.writeFileSync(
    file,
    `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';

const salt = ${JSON.stringify(salt)};
export const parts = [0, 1, 2, 3].map((i) =>
  stage({
    name: \`w-\${i}\`,
    config: { i, salt },
    build: async ({ config, out, log }) => {
      log(\`hello from part \${config.i}\`);
      console.log('noise on stdout');
      fs.writeFileSync(path.join(out, 'v.txt'), \`\${config.i} \${config.salt}\\n\`);
    },
  }),
);
export const bad = stage({ name: 'bad', config: { salt }, build: () => { throw new Error('boom on purpose'); } });
export const slow = stage({
  name: 'slow',
  config: { salt },
  build: async ({ exec, out }) => {
    await exec('sleep', ['300']);
    fs.writeFileSync(path.join(out, 'never.txt'), 'x');
  },
});
export default stage({
  name: 'sum',
  config: { parts, salt },
  build: ({ config, out }) => {
    const text = config.parts.map((p) => fs.readFileSync(p.file('v.txt'), 'utf8')).join('');
    fs.writeFileSync(path.join(out, 'sum.txt'), text);
  },
});
`,
  );
  return file;
}

/** The cairn command on b: logs each start of a worker, then runs this checkout's cairn. */
function countingCairn(): { cmd: string; starts: () => number } {
  const log = path.join(h.dir, `starts-${Date.now()}.log`);
  const wrapper = path.join(h.dir, `counting-${Date.now()}.sh`);
  fs.writeFileSync(wrapper, `#!/bin/sh\necho "$3" >> ${log}\nexec ${h.remoteCairn} "$@"\n`, { mode: 0o755 });
  const starts = (): number =>
    fs.existsSync(log)
      ? fs
          .readFileSync(log, 'utf8')
          .split('\n')
          .filter((l) => l === 'builder-worker').length
      : 0;
  return { cmd: `sh ${wrapper}`, starts };
}

const builderB = (extra = ''): string => `ssh://root@${b.addr}${b.store}${extra}`;

/** Command lines of the processes in host's namespace (NULs as spaces). */
function processesOn(host: Host): { pid: number; cmd: string }[] {
  const pids = h.exec(host, 'ip', ['netns', 'pids', host.ns]).stdout.split('\n').filter(Boolean);
  const out: { pid: number; cmd: string }[] = [];
  for (const pid of pids) {
    try {
      out.push({ pid: Number(pid), cmd: fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ') });
    } catch {
      /* gone */
    }
  }
  return out;
}
const workersOn = (host: Host): string[] =>
  processesOn(host)
    .map((p) => p.cmd)
    .filter((c) => c.includes('builder-worker'));

const incomingEntries = (store: string): string[] =>
  fs.existsSync(path.join(store, 'incoming')) ? fs.readdirSync(path.join(store, 'incoming')) : [];

/** Polls `cond` for up to `ms` (a bound for the test, not a timing claim). */
async function eventually(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await sleep(100);
  }
  return cond();
}

interface Plan {
  name: string;
  dref: string;
  rrefs: string[];
  where?: { builder: string };
}

describe('builder workers', () => {
  it('one worker per slot serves every build of the realize, with the build logs; closed at the end', async () => {
    const file = writeStages('seq');
    const { cmd, starts } = countingCairn();
    const args = ['--builders', builderB(), '--builders-ssh', h.ssh, '--remote-cairn', cmd];
    // -v shows the build logs (as --json would not).
    const r = ok(await h.cairn(a, ['realize', file, '-v', '--explain', ...args]), 'realize on one worker');
    assert.match(r.stderr, /realized 5 stage\(s\) in [\d.]+s: 5 built/);
    for (const name of ['w-0', 'w-1', 'w-2', 'w-3', 'sum'])
      assert.match(r.stderr, new RegExp(`${name}: built on ssh://root@10\\.200\\.31\\.2\\S*: a slot was free`));
    assert.equal(starts(), 1, 'one worker for the five builds (maxJobs=1)');
    // The remote build log comes back line by line.
    for (let i = 0; i < 4; i++) assert.match(r.stderr, new RegExp(`w-${i}> hello from part ${i}`));
    assert.doesNotMatch(r.stderr, /builder worker protocol/);
    const res = JSON.parse(ok(await h.cairn(a, ['realize', file, '--json', '-q', ...args])).stdout) as {
      builds: number;
      plan: Plan[];
      targets: { rrefs: string[] }[];
    };
    assert.equal(res.builds, 0);
    assert.equal(starts(), 1, 'a run with nothing to build starts no worker');
    // A local build's stdout noise goes to stderr too: the JSON parses as it is.
    const local = ok(await h.cairn(a, ['--store', path.join(h.dir, 'ref-seq'), 'realize', file, '--json', '-q']));
    const reference = JSON.parse(local.stdout) as { plan: Plan[] };
    for (const p of res.plan)
      assert.deepEqual(p.rrefs, reference.plan.find((q) => q.name === p.name)!.rrefs, `${p.name} as built locally`);
    const sum = res.targets[0]!.rrefs[0]!;
    assert.equal(
      fs.readFileSync(path.join(rzDir(a.store, sum), 'out', 'sum.txt'), 'utf8'),
      '0 seq\n1 seq\n2 seq\n3 seq\n',
    );
    // Closed when the realize ended: no worker left on b, no temporary files on either side.
    assert.ok(await eventually(() => workersOn(b).length === 0, 10_000), workersOn(b).join('\n'));
    assert.deepEqual(tmpEntries(b.store), []);
    assert.deepEqual(tmpEntries(a.store), []);
    assert.deepEqual(incomingEntries(a.store), []);
  });

  it('realize --force builds again on the builder (not its old realization) and says which builder', async () => {
    // Not deterministic: a forced build on the host gives a realization of its own.
    const file = path.join(h.dir, 'forced.ts');
    fs.writeFileSync(
      file,
      `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
export default stage({ name: 'noisy', config: { salt: 'forced' }, build: async ({ out }) => {
  fs.writeFileSync(path.join(out, 'r.txt'), String(Math.random()));
} });
`,
    );
    const args = ['--builders', builderB(), '--builders-ssh', h.ssh, '--remote-cairn', h.remoteCairn];
    const first = ok(await h.cairn(a, ['realize', file, ...args]), 'first realize');
    const again = ok(await h.cairn(a, ['realize', file, '--force', ...args]), 'forced realize');
    const [r1, r2] = [first, again].map((r) => r.stdout.trim().split('\n').at(-1)!);
    assert.notEqual(r2, r1, 'the forced build made a new realization');
    assert.match(again.stderr, new RegExp(`^built noisy on ssh://root@10\\.200\\.31\\.2\\S* in [\\d.]+s: ${r2}$`, 'm'));
    // Both are in the builder's store and here.
    for (const r of [r1, r2]) {
      assert.ok(fs.existsSync(rzDir(b.store, r!)), `${r} on b`);
      assert.ok(fs.existsSync(rzDir(a.store, r!)), `${r} here`);
    }
  });

  it('a build that fails on the builder keeps its log here: the hint `cairn log DREF --failed` works', async () => {
    const file = path.join(h.dir, 'failing-log.ts');
    fs.writeFileSync(
      file,
      `import { stage } from 'cairn';
export default stage({ name: 'fails', config: { salt: 'failed-log' }, build: async ({ exec }) => {
  await exec('/bin/sh', ['-c', 'echo first line of the log; echo the reason >&2; exit 3']);
} });
`,
    );
    const args = ['--builders', builderB(), '--builders-ssh', h.ssh, '--remote-cairn', h.remoteCairn];
    const r = await h.cairn(a, ['realize', file, ...args]);
    assert.equal(r.code, 1, r.stderr);
    const dref = ok(await h.cairn(a, ['instantiate', file]))
      .stdout.trim()
      .split('\n')
      .at(-1)!;
    assert.match(r.stderr, /E_BUILD_FAILED: on ssh:\/\/root@10\.200\.31\.2\S*: .*the reason/);
    // The hint is given once, and it is true in this store.
    assert.equal(r.stderr.split(`(log: cairn log ${dref} --failed)`).length, 2, r.stderr);
    const log = ok(await h.cairn(a, ['log', dref, '--failed']), 'the failed log here');
    assert.match(log.stdout, /first line of the log/);
    assert.match(log.stdout, /the reason/);
  });

  it('four slots starting at once share one ssh connection to the host', async () => {
    const gate = path.join(h.dir, 'release-four');
    const file = path.join(h.dir, 'four.ts');
    fs.writeFileSync(
      file,
      `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
// Four builds at once, each held until the test has counted the connections (the hosts share this filesystem).
export default [0, 1, 2, 3].map((i) =>
  stage({ name: \`four-\${i}\`, config: { i, gate: ${JSON.stringify(gate)} }, build: async ({ config, out }) => {
    while (!fs.existsSync(config.gate)) await new Promise((r) => setTimeout(r, 50));
    fs.writeFileSync(path.join(out, 'v'), String(config.i));
  } }),
);
`,
    );
    const args = ['--builders', builderB('?maxJobs=4'), '--builders-ssh', h.ssh, '--remote-cairn', h.remoteCairn];
    const run = h.spawnCairn(a, ['realize', file, '-j', '1', ...args]);
    try {
      const busy = (): string[] => workersOn(b).filter((c) => c.includes('building'));
      assert.ok(await eventually(() => busy().length === 4, 60_000), workersOn(b).join('\n'));
      // One connection: the other three ride on it as sessions (one sshd "root@notty" process per connection).
      const connections = processesOn(b).filter((p) => p.cmd.startsWith('sshd: root@notty'));
      assert.equal(
        connections.length,
        1,
        processesOn(b)
          .map((p) => p.cmd)
          .join('\n'),
      );
    } finally {
      fs.writeFileSync(gate, '');
    }
    ok(await run.done, 'realize on four slots');
  });

  it('an idle worker that died is replaced, not counted as a failure of its host', async () => {
    const marker = path.join(h.dir, 'release-hold');
    const file = path.join(h.dir, 'idle-death.ts');
    fs.writeFileSync(
      file,
      `import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';

const p = stage({ name: 'p', config: { v: 1 }, build: ({ out }) => fs.writeFileSync(path.join(out, 'p'), 'p') });
// Waits for the test (the hosts share this filesystem), so that p's worker sits idle meanwhile.
const hold = stage({
  name: 'hold',
  config: { marker: ${JSON.stringify(marker)} },
  build: async ({ config, out }) => {
    while (!fs.existsSync(config.marker)) await new Promise((r) => setTimeout(r, 50));
    fs.writeFileSync(path.join(out, 'h'), 'h');
  },
});
// Two builds at once after hold: one takes hold's worker, the other the idle one that died.
const write = (out: string): void => fs.writeFileSync(path.join(out, 'x'), 'x');
const after = [1, 2].map((i) =>
  stage({ name: \`after-\${i}\`, config: { p, hold, i }, build: ({ out }) => write(out) }),
);
export default stage({ name: 'end', config: { after }, build: ({ out }) => write(out) });
`,
    );
    const run = h.spawnCairn(a, [
      'realize',
      file,
      '--json',
      '--builders',
      builderB('?maxJobs=2'),
      '--builders-ssh',
      h.ssh,
      '--remote-cairn',
      h.remoteCairn,
    ]);
    const idle = (): { pid: number; cmd: string }[] =>
      processesOn(b).filter((x) => x.cmd.includes('builder-worker: idle'));
    const holding = (): boolean =>
      processesOn(b).some((x) => x.cmd.includes('builder-worker: building') && x.cmd.includes('-hold'));
    assert.ok(await eventually(() => idle().length === 1 && holding(), 60_000), 'p built, hold building');
    for (const x of idle()) process.kill(x.pid, 'SIGKILL');
    assert.ok(await eventually(() => idle().length === 0, 10_000));
    // Let the coordinator see that worker's ssh session end before `after` becomes ready.
    await sleep(1000);
    fs.writeFileSync(marker, '');
    const r = await run.done;
    ok(r, 'realize');
    const res = JSON.parse(r.stdout) as { plan: Plan[]; warnings?: string[] };
    for (const name of ['after-1', 'after-2', 'end']) {
      const where = res.plan.find((x) => x.name === name)!.where as { builder: string; failures: unknown[] };
      assert.ok(where.builder.startsWith(builderB()), `${name}: ${JSON.stringify(res)}`);
      assert.deepEqual(where.failures, [], name);
    }
    assert.deepEqual(res.warnings ?? [], []);
  });

  it('a build that fails in a worker is reported with its code; the next build on that worker works', async () => {
    const file = writeStages('fail');
    // Derivations and code objects in a's store (the realize of `bad` fails, as it should).
    const made = await h.cairn(a, ['realize', file, '--self-contained', '-s', 'bad', '-s', 'parts', '-q']);
    assert.equal(made.code, 1, made.stderr);
    const drefs = ok(await h.cairn(a, ['instantiate', file, '-s', 'bad', '-s', 'parts']))
      .stdout.trim()
      .split('\n');
    const bad = drefs.find((d) => d.endsWith('-bad'))! as DRef;
    const good = drefs.filter((d) => /-w-\d$/.test(d)) as DRef[];
    const store = LocalStore.open(a.store);
    const argv = ['ip', 'netns', 'exec', a.ns, ...h.ssh.split(' '), '--', `root@${b.addr}`];
    const w = await BuilderWorker.start(store, {
      argv: [...argv, `${h.remoteCairn} --store ${b.store} builder-worker`],
      name: 'b',
    });
    try {
      const lines: string[] = [];
      const job = (dref: DRef): Parameters<typeof buildOnWorker>[3] => ({
        node: { dref } as Derivation,
        inputs: [],
        log: (l) => lines.push(l),
      });
      await assert.rejects(buildOnWorker(store, 'b', w, job(bad)), (e: { code: string; message: string }) => {
        assert.equal(e.code, 'E_BUILD_FAILED');
        assert.match(e.message, /boom on purpose/);
        return true;
      });
      assert.equal(w.broken, false);
      for (const d of good.slice(0, 2)) {
        // a may have built these itself before `bad` failed: the worker builds them in b's store regardless.
        const rrefs = await buildOnWorker(store, 'b', w, job(d));
        assert.equal(rrefs.length, 1);
        assert.ok(store.has(rrefs[0]!), `${d} arrived in a's store`);
      }
      assert.ok(
        lines.some((l) => /hello from part 0/.test(l)),
        lines.join('\n'),
      );
    } finally {
      await w.close();
    }
    assert.ok(await eventually(() => workersOn(b).length === 0, 10_000), workersOn(b).join('\n'));
    assert.deepEqual(tmpEntries(b.store), []);
    assert.deepEqual(tmpEntries(a.store), []);
  });

  it('hostile frames to a real worker: refused with stable codes, the worker exits, nothing written', async () => {
    const store = path.join(h.dir, 'hostile-store');
    ok(await h.cairn(a, ['--store', store, 'store', 'gc']));
    const hello = encodeFrame({ t: 'hello', version: WORKER_PROTOCOL_VERSION });
    const prefix = (hl: number, pl: bigint): Buffer => {
      const x = Buffer.alloc(12);
      x.writeUInt32BE(hl, 0);
      x.writeBigUInt64BE(pl, 4);
      return x;
    };
    const json = Buffer.from('{"t": nope');
    const cases: [string, Buffer, string][] = [
      ['a huge header length', Buffer.concat([hello, prefix(0x7fffffff, 0n)]), 'E_WORKER_PROTOCOL'],
      ['a huge payload length', Buffer.concat([hello, prefix(20, 2n ** 62n)]), 'E_WORKER_PROTOCOL'],
      ['bad JSON', Buffer.concat([hello, prefix(json.length, 0n), json]), 'E_WORKER_PROTOCOL'],
      ['an unknown type', Buffer.concat([hello, encodeFrame({ t: 'shell' } as never)]), 'E_WORKER_PROTOCOL'],
      [
        'a truncated payload',
        Buffer.concat([hello, encodeFrame({ t: 'closure' }, 4096), Buffer.alloc(100)]),
        'E_WORKER_PROTOCOL',
      ],
      ['another version', encodeFrame({ t: 'hello', version: 99 }), 'E_WORKER_VERSION'],
      ['no hello first', encodeFrame({ t: 'have', refs: [] }), 'E_WORKER_PROTOCOL'],
    ];
    for (const [what, bytes, code] of cases) {
      const { status, replies } = await rawWorker(store, bytes);
      assert.equal(status, 1, what);
      const last = replies.at(-1) as { t: string; code?: string };
      assert.equal(last?.t, 'error', `${what}: ${JSON.stringify(replies)}`);
      assert.equal(last.code, code, what);
      assert.deepEqual(tmpEntries(store), [], `${what}: nothing left in tmp/`);
      const d = path.join(store, 'd');
      assert.deepEqual(fs.existsSync(d) ? fs.readdirSync(d) : [], [], `${what}: nothing in d/`);
    }
    // A well-framed closure that is not a tar: an error reply, and the worker goes on serving.
    const junk = Buffer.from('not a tar at all');
    const { status, replies } = await rawWorker(
      store,
      Buffer.concat([hello, encodeFrame({ t: 'closure' }, junk.length), junk, encodeFrame({ t: 'have', refs: [] })]),
      3,
    );
    assert.equal(status, 0);
    assert.deepEqual(
      replies.map((r) => (r as { t: string }).t),
      ['hello', 'error', 'have'],
    );
    assert.deepEqual(tmpEntries(store), []);
  });

  it('Ctrl-C of the coordinator mid-build: no build process, worker or temporary file left on the host', async () => {
    const file = writeStages('int');
    const run = h.spawnCairn(a, [
      'realize',
      file,
      '-s',
      'slow',
      '--builders',
      builderB(),
      '--builders-ssh',
      h.ssh,
      '--remote-cairn',
      h.remoteCairn,
    ]);
    const sleeping = (): boolean => processesOn(b).some((p) => p.cmd.trim() === 'sleep 300');
    assert.ok(await eventually(sleeping, 60_000), 'the build started its program on b');
    assert.ok(tmpEntries(b.store).length > 0, 'the build has its directory on b');
    process.kill(run.child.pid!, 'SIGINT');
    const r = await run.done;
    assert.equal(r.code, 130, r.stderr);
    assert.ok(
      await eventually(() => !sleeping() && workersOn(b).length === 0, 15_000),
      processesOn(b)
        .map((p) => p.cmd)
        .join('\n'),
    );
    assert.deepEqual(tmpEntries(b.store), []);
    assert.deepEqual(incomingEntries(b.store), []);
    assert.deepEqual(tmpEntries(a.store), []);
    // Nor is the shared ssh connection left on a for its ControlPersist time (it held cairn's output pipes).
    const masters = (): string[] =>
      processesOn(a)
        .map((p) => p.cmd)
        .filter((c) => c.includes('[mux]'));
    assert.ok(await eventually(() => masters().length === 0, 10_000), masters().join('\n'));
  });
});

/**
 * Runs a worker here (no ssh) on `store` and writes `bytes` to it; closes its stdin at once, or once
 * `waitFor` replies came (the end of its input in the middle of a request stops it like SIGTERM).
 * Returns its exit status and replies.
 */
async function rawWorker(
  store: string,
  bytes: Buffer,
  waitFor = 0,
): Promise<{ status: number | null; replies: unknown[] }> {
  const child = spawn(process.execPath, [cairnBin, '--store', store, 'builder-worker'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  const counter = new FrameDecoder();
  let seen = 0;
  child.stdout.on('data', (d: Buffer) => {
    out.push(d);
    seen += counter.push(d).filter((e) => e.kind === 'end').length;
    if (waitFor > 0 && seen >= waitFor) child.stdin.end();
  });
  child.stderr.resume();
  child.stdin.on('error', () => {});
  if (waitFor > 0) child.stdin.write(bytes);
  else child.stdin.end(bytes);
  const status = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  const d = new FrameDecoder();
  const replies = d
    .push(Buffer.concat(out))
    .flatMap((e) => (e.kind === 'header' ? [parseReply(e.header, e.payloadBytes)] : []));
  return { status, replies };
}
