/**
 * A sync killed with SIGKILL in the middle of its transfer (the cairn
 * process, its rsync and its ssh: the whole process group) leaves both
 * stores consistent (`store verify` clean, nothing half-entered), and a
 * re-run completes, re-using the bytes the killed run left in the staging
 * directory (rsync --partial): it sends less file data than the file holds.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { isolateModuleCache, lastLine, repoRoot } from './helpers.js';
import { startHosts, type Host, type Hosts } from './fixtures/hosts.js';
import { ok, rzDir, type VerifyReport } from './fixtures/torture/support.js';

const CLOSURE = path.join(repoRoot, 'test', 'fixtures', 'sync', 'closure.ts');
const MB = 48;
isolateModuleCache(after, 'cairn-sync-kill-cache');

let h: Hosts;
let a: Host;
let b: Host;

before(async () => {
  h = await startHosts('synk');
  [a, b] = h.hosts as [Host, Host];
});
after(async () => {
  await h?.stop();
});

async function assertVerifyClean(host: Host): Promise<void> {
  const r = await h.cairn(host, ['store', 'verify', '--json']);
  const report = JSON.parse(r.stdout) as VerifyReport;
  assert.deepEqual(report.problems, [], `store verify on ${host.name} found problems`);
  assert.equal(r.code, 0);
}

/** Bytes of regular files under `dir` (0 if it does not exist). */
function bytesUnder(dir: string): number {
  let total = 0;
  const walk = (p: string): void => {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(path.join(p, n));
    else if (st.isFile()) total += st.size;
  };
  walk(dir);
  return total;
}

/**
 * Runs the sync on `on` slowly, kills its process group with SIGKILL once
 * at least 4 MiB have landed in the receiver's staging area, and returns
 * how many bytes were there.
 */
async function killMidTransfer(on: Host, args: string[], receiver: Host): Promise<number> {
  const { child, done } = h.spawnCairn(on, args);
  const deadline = Date.now() + 60_000;
  let landed = 0;
  while ((landed = bytesUnder(path.join(receiver.store, 'incoming'))) < 4 << 20) {
    assert.ok(Date.now() < deadline, 'the transfer never got going');
    assert.equal(child.exitCode, null, 'the sync finished before it could be killed; slow it down');
    await sleep(50);
  }
  process.kill(-child.pid!, 'SIGKILL');
  const r = await done;
  assert.equal(r.signal, 'SIGKILL');
  // The remote half of rsync notices the dropped connection and exits.
  await sleep(500);
  return landed;
}

interface Report {
  plan: { rrefs: string[] };
  transfer: { literalBytes: number; fileBytes: number } | null;
}

describe('a sync killed in the middle of its transfer', () => {
  let big = '';

  before(async () => {
    big = lastLine(
      ok(await h.cairn(a, ['realize', CLOSURE, '-q', '-s', 'big'], { env: { SYNC_BIG_MB: String(MB) } }), 'realize big')
        .stdout,
    );
  });

  for (const direction of ['push', 'pull'] as const) {
    it(
      `${direction}: both stores verify clean after the kill, and ` + `the re-run completes re-using the bytes`,
      async () => {
        const on = direction === 'push' ? a : b;
        const other = direction === 'push' ? b : a;
        const target = b;
        const args = ['sync', direction, ...h.syncOpts(), other.remote, big];
        const landed = await killMidTransfer(on, [...args.slice(0, 2), '--bwlimit', '6000', ...args.slice(2)], target);
        assert.ok(landed < MB << 20, 'killed before the whole file arrived');
        assert.equal(
          fs.existsSync(path.join(rzDir(target.store, big), 'out')),
          false,
          'nothing half-entered the store',
        );
        await assertVerifyClean(a);
        await assertVerifyClean(b);

        const r = JSON.parse(ok(await h.cairn(on, [...args, '--json']), `${direction} re-run`).stdout) as Report;
        assert.ok(r.plan.rrefs.includes(big));
        assert.ok(r.transfer!.fileBytes >= MB << 20);
        assert.ok(
          r.transfer!.literalBytes < (MB << 20) - (2 << 20),
          `the re-run sent ${r.transfer!.literalBytes} bytes of data; the ` +
            `${landed} bytes already there should have been re-used`,
        );
        await assertVerifyClean(a);
        await assertVerifyClean(b);
        assert.equal(
          fs
            .readFileSync(path.join(rzDir(target.store, big), 'out', 'big.bin'))
            .equals(fs.readFileSync(path.join(rzDir(a.store, big), 'out', 'big.bin'))),
          true,
        );
        assert.deepEqual(fs.readdirSync(path.join(target.store, 'incoming')), [], 'the staging directory is gone');
        // Fresh start for the other direction: b forgets big (and its base).
        ok(await h.cairn(b, ['rmref', big]));
        ok(await h.cairn(b, ['store', 'gc']));
      },
    );
  }
});
