/**
 * `cairn builder-worker`: one long-lived build worker on a builder host,
 * as Nix's `nix-store --serve`. The coordinator starts one per ssh slot
 * over the shared ssh connection and sends it builds one after another on
 * stdin; replies (log lines, reports, result closures) go back on stdout.
 * It saves each build a Node start, a `sync` round trip of rsync and ssh
 * sessions, and a `build-drv` process. Protocol: worker-frames.ts.
 *
 * Requests: `have` (which of these refs are here), `closure` (take in the
 * inputs' closure: a tar, through the verified all-or-nothing import),
 * `build` (the derivation export + the exact inputs; answered by `log`
 * lines, then `built` with the closure tar of its realizations, or
 * `error`). A failed build is an `error` reply, and the worker serves the
 * next request.
 *
 * Lifetime: the end of stdin (the coordinator closed it, or the ssh
 * connection went away) while a request runs is treated like SIGTERM: the
 * build's process groups are ended, this process's temporary directories
 * removed, and it exits (build-processes.ts, guardRealize). Idle, it just
 * exits. Anything the builds print on stdout goes to stderr instead: stdout
 * carries the frames alone.
 */
import * as os from 'node:os';
import type { Readable } from 'node:stream';
import { isCairnError } from '../../errors.js';
import { importDerivations } from '../../store/drv-export.js';
import { importClosure, writeClosureFile } from '../../store/export.js';
import type { DRef, RRef } from '../../store/refs.js';
import type { TempRoots } from '../../store/interface.js';
import type { LocalStore } from '../../store/store.js';
import { codeOf, haveRefs, listClosure } from '../../store/sync.js';
import { planTransfer } from '../../store/sync-plan.js';
import { importAndBuild } from '../build-drv.js';
import { guardRealize } from '../build-processes.js';
import { discard, FrameChannel, withTempFile, type Frame, type FrameOutput } from './worker-channel.js';
import {
  checkVersion,
  parseRequest,
  protocolError,
  WORKER_PROTOCOL_VERSION,
  type WorkerReply,
  type WorkerRequest,
} from './worker-frames.js';
import { divertStdout } from '../../stdout-divert.js';

/** What `ps` shows for a worker: which derivation it is building, if any. */
const title = (what: string): void => {
  process.title = `cairn builder-worker: ${what}`;
};

/**
 * Serves requests from `input` until it ends; returns the exit status. The
 * caller hands over stdout as `output` after diverting process.stdout
 * (see takeStdout).
 */
export async function serveBuilderWorker(store: LocalStore, input: Readable, output: FrameOutput): Promise<number> {
  const unguard = guardRealize(store.tempArea());
  const ch = new FrameChannel<WorkerRequest, WorkerReply>(input, output, parseRequest, () =>
    store.makeTempDir('worker-in'),
  );
  let busy = false;
  // Inputs sent for this session stay gc roots until it ends: they have no other root on this host.
  const held: TempRoots[] = [];
  // The coordinator went away in the middle of a request: stop as on SIGTERM (guardRealize's handler).
  void ch.closed.then(() => {
    if (busy) process.kill(process.pid, 'SIGTERM');
  });
  const reply = (m: WorkerReply, payload?: string): Promise<void> => ch.send(m, payload);
  const fail = (e: unknown): Promise<void> =>
    reply({
      t: 'error',
      code: isCairnError(e) ? e.code : 'E_BUILDER_FAILED',
      message: (e as Error)?.message ?? String(e),
    });
  try {
    title('idle');
    let first: Frame<WorkerRequest> | null;
    try {
      first = await ch.read();
    } catch (e) {
      await fail(e).catch(() => {});
      return 1;
    }
    if (first === null) return 0;
    try {
      if (first.msg.t !== 'hello') throw protocolError(`the first message is ${first.msg.t}, not hello`);
      checkVersion(first.msg.version, 'the coordinator');
    } catch (e) {
      discard(first);
      await fail(e).catch(() => {});
      return 1;
    }
    await reply({ t: 'hello', version: WORKER_PROTOCOL_VERSION, host: os.hostname() });
    for (;;) {
      let f: Frame<WorkerRequest> | null;
      try {
        f = await ch.read();
      } catch (e) {
        // A malformed stream cannot be resynchronised: say why, then stop.
        await fail(e).catch(() => {});
        return 1;
      }
      if (f === null) return 0;
      busy = true;
      try {
        await handle(store, f, reply, held);
      } catch (e) {
        await fail(e);
      } finally {
        discard(f);
        busy = false;
        title('idle');
      }
    }
  } finally {
    await Promise.allSettled(held.map((r) => r.release()));
    unguard();
  }
}

async function handle(
  store: LocalStore,
  f: Frame<WorkerRequest>,
  reply: (m: WorkerReply, payload?: string) => Promise<void>,
  held: TempRoots[],
): Promise<void> {
  const m = f.msg;
  switch (m.t) {
    case 'hello':
      throw protocolError('hello was sent twice');
    case 'have':
      return reply({ t: 'have', have: haveRefs(store, m.refs) });
    case 'closure': {
      let drefs: DRef[] = [];
      const r = await importClosure(store, f.payload!.file, { check: (m) => void (drefs = m.drefs) });
      // The receive held them while it ran; the moment between its release and these is gc's only window.
      held.push(await store.addTempRoots(drefs, 'builder-worker'));
      return reply({ t: 'received', realizations: r.received.length });
    }
    case 'build': {
      title(`building ${m.dref}`);
      // importAndBuild holds the derivation and its inputs' derivations as roots from before the import.
      const report = await importAndBuild(store, m.dref as DRef, () => importDerivations(store, f.payload!.file), {
        inputs: m.inputs as RRef[],
        force: m.force === true,
        onLog: (line) => void reply({ t: 'log', line }).catch(() => {}),
      });
      // The result: its realizations alone (the coordinator has the derivation and the inputs it sent).
      const mine = new Set<string>(report.realizations);
      const { nodes } = listClosure(store, report.realizations);
      const manifest = planTransfer(
        report.realizations,
        nodes,
        (ref) => !mine.has(ref),
        (d) => codeOf(store, d),
      );
      return withTempFile(store, 'worker-out', (file) => {
        writeClosureFile(store, manifest, file);
        return reply({ t: 'built', report }, file);
      });
    }
  }
}

/**
 * Takes stdout for the frames: returns a writer to it, and sends whatever
 * else writes to process.stdout (a build's console.log) to stderr.
 */
export function takeStdout(): FrameOutput {
  const { write } = divertStdout();
  return (bytes) =>
    new Promise((resolve, reject) => {
      write(bytes, (e?: Error | null) => (e ? reject(e) : resolve()));
    });
}
