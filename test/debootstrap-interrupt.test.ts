/**
 * Ctrl-C during a real debootstrap stage (issue 18, bug 2: it left /proc
 * mounted under STORE/tmp, and every later realize on the store failed in
 * the temporary sweep). As root, with the real debootstrap and Debian's
 * mirror (through a local caching mirror, so the base system is downloaded
 * once per run; the mirror is not part of the stage's identity). A
 * `debootstrap({ variant: 'minbase', install: ['procps'] })` stage is
 * realized through the CLI on a fresh store and stopped at the moments when
 * something is mounted in the new root:
 *
 * - in debootstrap's second stage, once its /proc is mounted in the root
 *   (seen in the build's own mountinfo), with SIGINT, and with SIGKILL to
 *   cairn and every process of the build at once (a cgroup kill);
 * - during the chroot's `apt-get install`, held by the mirror while it
 *   fetches procps, with /proc mounted and policy-rc.d in place.
 *
 * Afterwards nothing may be mounted under the store (in this process's and
 * in the host's mount namespace), no process of the build may live on, the
 * next realize on the same store must succeed without a warning, and
 * STORE/tmp must hold nothing. Fails, never skips, without debootstrap or
 * the network.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountPointsBelow, parseMountPoints } from '../src/store/mounts.js';
import { startCachingMirror, type CachingMirror } from './caching-mirror.js';
import { cairn, cairnBin, isolateModuleCache, ok, repoRoot, tempDir, tmpEntries } from './helpers.js';

isolateModuleCache(after);

const STAGES = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { debootstrap, stage } from 'cairn';
export const rootfs = debootstrap({ variant: 'minbase', install: ['procps'], mirror: process.env.MIRROR! });
export const tiny = stage({ name: 'tiny', config: { salt: process.env.SALT ?? '' }, build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'ok'), 'ok');
} });
`;

/** How long one phase may take to be reached: a minbase debootstrap takes 1–2.5 min on the 2-core test VM. */
const PHASE_MS = 240_000;

let mirror: CachingMirror;
const cache = tempDir('cairn-deboot-mirror');

interface Env {
  dir: string;
  store: string;
  file: string;
  cleanup: () => void;
}

function setup(): Env {
  const t = tempDir('cairn-deboot');
  const file = path.join(t.dir, 'stages.ts');
  fs.writeFileSync(file, STAGES);
  const store = path.join(t.dir, 'store');
  return {
    dir: t.dir,
    store,
    file,
    cleanup: () => {
      // Whatever a failed assertion left (the unfixed code leaves /proc and /sys mounted): never let it outlive us.
      for (const pid of buildProcesses(t.dir)) signal(pid, 'SIGKILL');
      for (const m of mountsIn('/proc/self/mountinfo', t.dir)) spawnSync('umount', ['-l', m]);
      t.cleanup();
    },
  };
}

/** `dir`'s real path, also before it exists (a store is made by the first realize). */
function real(dir: string): string {
  try {
    return fs.realpathSync(dir);
  } catch {
    return path.join(fs.realpathSync(path.dirname(dir)), path.basename(dir));
  }
}

/** Mount points at or below `dir` in the mount namespace whose mountinfo is `file`. */
function mountsIn(file: string, dir: string): string[] {
  let text: Buffer;
  try {
    text = fs.readFileSync(file);
  } catch {
    return [];
  }
  return mountPointsBelow(parseMountPoints(text), Buffer.from(real(dir))).map(String);
}

/** Processes working in `dir`: their command line names a path in it, or they are chrooted below it. */
function buildProcesses(dir: string): number[] {
  const at = real(dir) + '/';
  const out: number[] = [];
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n) || Number(n) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${n}/cmdline`, 'latin1');
      const stat = fs.readFileSync(`/proc/${n}/stat`, 'latin1');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue;
      if (cmd.includes(at) || fs.readlinkSync(`/proc/${n}/root`).startsWith(at)) out.push(Number(n));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** Mount points under the store in the build's own mount namespaces (debootstrap's, the chroot install's). */
function buildMounts(store: string): string[] {
  const seen = new Set<string>();
  for (const pid of buildProcesses(store)) for (const m of mountsIn(`/proc/${pid}/mountinfo`, store)) seen.add(m);
  return [...seen];
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

async function until<T>(what: string, probe: () => T | undefined, running: () => string | undefined): Promise<T> {
  const deadline = Date.now() + PHASE_MS;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    const ended = running();
    assert.equal(ended, undefined, `the realize ended before ${what}: ${ended}`);
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Run {
  pid: number;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
  /** Undefined while it runs; its stderr once it has ended. */
  ended: () => string | undefined;
}

function startRealize(e: Env): Run {
  const child = spawn(process.execPath, [cairnBin, '--store', e.store, 'realize', e.file, '-s', 'rootfs'], {
    cwd: repoRoot,
    env: { ...process.env, MIRROR: mirror.url },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  let finished = false;
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, sig) => {
      finished = true;
      resolve({ code, signal: sig, stderr });
    }),
  );
  return { pid: child.pid!, done, ended: () => (finished ? stderr || '(no output)' : undefined) };
}

/**
 * Whether the new root's /proc is mounted: in the build's own mount namespaces (the fixed builtin's), or
 * in ours (where the unfixed builtin mounted it).
 */
function procMounted(store: string): boolean {
  return [...buildMounts(store), ...mountsIn('/proc/self/mountinfo', store)].some((m) => m.endsWith('/root/proc'));
}

/** Waits until debootstrap's second stage has mounted /proc in the new root. */
async function secondStage(e: Env, run: Run): Promise<void> {
  const mounted = (): true | undefined => (procMounted(e.store) ? true : undefined);
  await until("debootstrap's second stage with /proc mounted", mounted, run.ended);
}

/** After an interrupt: nothing mounted, no build process alive, and the next realize on the store succeeds. */
function assertClean(e: Env, salt: string): void {
  assert.deepEqual(mountsIn('/proc/self/mountinfo', e.store), [], 'nothing is mounted under the store here');
  assert.deepEqual(
    mountsIn('/proc/1/mountinfo', e.store),
    [],
    "nothing is mounted under the store in pid 1's namespace",
  );
  assert.deepEqual(buildProcesses(e.store), [], 'no process of the build lives on');
  const r = ok(cairn(e.store, ['realize', e.file, '-s', 'tiny'], { env: { MIRROR: mirror.url, SALT: salt } }));
  assert.doesNotMatch(r.stderr, /warning|internal error/, r.stderr);
  assert.deepEqual(tmpEntries(e.store), [], 'STORE/tmp holds nothing');
  assert.deepEqual(mountsIn('/proc/self/mountinfo', e.store), []);
}

describe('a real debootstrap stage interrupted', { timeout: 2 * PHASE_MS + 60_000 }, () => {
  // The apt-get case needs a whole debootstrap first: it runs from the start, alongside the other two cases.
  let install: { e: Env; run: Run; fetching?: string } | undefined;

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'debootstrap needs root');
    const which = spawnSync('sh', ['-c', 'command -v debootstrap'], { encoding: 'utf8' });
    assert.equal(which.status, 0, 'debootstrap is not installed (scripts/system-deps.sh installs it)');
    mirror = await startCachingMirror(cache.dir);
    // apt-get fetches procps after `apt-get update`, with /proc mounted: the mirror holds that request.
    // Only the chroot install fetches procps (minbase does not hold it).
    mirror.hold(/\/procps_[^/]*\.deb$/, () => {
      if (install) install.fetching = 'procps';
    });
    const e = setup();
    install = { e, run: startRealize(e) };
  });
  after(async () => {
    if (install) signal(install.run.pid, 'SIGKILL');
    install?.e.cleanup();
    await mirror?.close();
    cache.cleanup();
  });

  it('by SIGINT in its second stage exits 130, leaves nothing mounted, and the store stays usable', async () => {
    const e = setup();
    const run = startRealize(e);
    try {
      await secondStage(e, run);
      signal(run.pid, 'SIGINT');
      const r = await run.done;
      assert.equal(r.code, 130, r.stderr);
      assert.doesNotMatch(r.stderr, /internal error/, r.stderr);
      assert.deepEqual(tmpEntries(e.store), [], 'cairn removed its build directory before exiting');
      assertClean(e, 'int-second-stage');
    } finally {
      signal(run.pid, 'SIGKILL');
      e.cleanup();
    }
  });

  it('by SIGKILL to cairn and all its build processes in the second stage: the next realize sweeps it', async () => {
    const e = setup();
    const run = startRealize(e);
    try {
      await secondStage(e, run);
      // Every process of the realize at once, as a cgroup kill or the OOM killer would: cairn and its builds' groups.
      const groups = childGroups(run.pid);
      assert.ok(groups.length > 0, 'the build runs in a process group of its own');
      signal(run.pid, 'SIGKILL');
      for (const g of groups) signal(-g, 'SIGKILL');
      const r = await run.done;
      assert.equal(r.signal, 'SIGKILL');
      const gone = (): true | undefined => (buildProcesses(e.store).length === 0 ? true : undefined);
      await until('the killed processes to disappear', gone, () => undefined);
      assert.notDeepEqual(tmpEntries(e.store), [], 'the killed build left its directory');
      assertClean(e, 'kill');
    } finally {
      signal(run.pid, 'SIGKILL');
      e.cleanup();
    }
  });

  it('by SIGINT during apt-get install in the chroot exits 130, leaves nothing mounted, the store works', async () => {
    const { e, run } = install!;
    await until('apt-get install fetching procps', () => install!.fetching, run.ended);
    const roots = fs.readdirSync(path.join(e.store, 'tmp')).map((n) => path.join(e.store, 'tmp', n, 'root'));
    assert.ok(
      roots.some((r) => fs.existsSync(path.join(r, 'usr/sbin/policy-rc.d'))),
      'policy-rc.d is in the root during the install',
    );
    assert.ok(procMounted(e.store), "the chroot's /proc is mounted");
    signal(run.pid, 'SIGINT');
    const r = await run.done;
    assert.equal(r.code, 130, r.stderr);
    assert.doesNotMatch(r.stderr, /internal error/, r.stderr);
    assert.deepEqual(tmpEntries(e.store), [], 'cairn removed its build directory before exiting');
    assertClean(e, 'int-apt-install');
  });
});

/**
 * The process groups that `pid`'s children lead (each build program runs in a group of its own); never
 * ours, which cairn and any helper it did not detach share.
 */
function childGroups(pid: number): number[] {
  // The groups led by cairn's descendants: its programs are children of its spawn helper (or of cairn itself).
  const rows: { pid: number; ppid: number; pgrp: number }[] = [];
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${n}/stat`, 'latin1');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      rows.push({ pid: Number(n), ppid: Number(f[1]), pgrp: Number(f[2]) });
    } catch {
      /* gone meanwhile */
    }
  }
  const below = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const r of rows)
      if (below.has(r.ppid) && !below.has(r.pid)) {
        below.add(r.pid);
        grew = true;
      }
  }
  return rows.filter((r) => r.pid !== pid && below.has(r.pid) && r.pgrp === r.pid).map((r) => r.pid);
}
