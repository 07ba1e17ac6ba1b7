/**
 * One build on a builder worker (ssh.ts), and the workers of one ssh
 * builder: at most one per slot (the pool never runs more builds on a
 * builder than it has slots), each started on first use and reused by the
 * builds after it. A worker that failed is dropped, never reused; one whose
 * build failed on its own (E_BUILD_FAILED, ...) is still good.
 */
import * as fs from 'node:fs';
import { CairnError } from '../../errors.js';
import { writeDerivations } from '../../store/drv-export.js';
import { importClosure, writeClosureFile } from '../../store/export.js';
import { keepFailedLogData } from '../../store/failed-logs.js';
import { parseRRef, type DRef, type RRef } from '../../store/refs.js';
import type { LocalStore } from '../../store/store.js';
import { listClosure } from '../../store/sync.js';
import { planTransfer } from '../../store/sync-plan.js';
import { checkBuildDrvReport } from './build-drv-report.js';
import { isDerivationFault, type RemoteJob } from './pool.js';
import { discard, withTempFile } from './worker-channel.js';
import { BuilderWorker, type WorkerCommand } from './worker-client.js';

export interface WorkerSlots {
  /** Runs `fn` on an idle worker (started if none is idle). */
  run<T>(fn: (w: BuilderWorker) => Promise<T>): Promise<T>;
  /** Ends every worker. */
  close(): Promise<void>;
}

/**
 * `connected` says whether the host's shared connection is up, so that
 * workers after the first start as soon as it is (not when the first
 * worker has answered).
 */
export function workerSlots(store: LocalStore, cmd: WorkerCommand, connected: () => boolean): WorkerSlots {
  const idle: BuilderWorker[] = [];
  const all = new Set<BuilderWorker>();
  let closed = false;
  // The first ssh call to a host becomes the shared connection's master. Workers started at the same time
  // race it (each finds no socket yet and dials a connection of its own, and sshd's MaxStartups refuses
  // connections past 10 in the handshake), so later starts wait for that connection, or for the first
  // start to end, whatever became of it.
  let first: Promise<unknown> | undefined;
  let firstDone = false;
  const start = async (): Promise<BuilderWorker> => {
    if (first === undefined) {
      const w = BuilderWorker.start(store, cmd);
      first = w.then(
        () => void (firstDone = true),
        () => void (firstDone = true),
      );
      return w;
    }
    while (!firstDone && !connected()) await new Promise((r) => setTimeout(r, 10));
    return BuilderWorker.start(store, cmd);
  };
  return {
    async run(fn) {
      if (closed) throw new CairnError('E_BUILDER_FAILED', `${cmd.name}: the builder was closed`);
      let w: BuilderWorker | undefined;
      while ((w = idle.pop()) && w.broken) {
        all.delete(w);
        void w.close();
      }
      w ??= await start();
      all.add(w);
      let keep = false;
      try {
        const value = await fn(w);
        keep = true;
        return value;
      } catch (e) {
        keep = isDerivationFault(e);
        throw e;
      } finally {
        if (keep && !w.broken && !closed) idle.push(w);
        else {
          all.delete(w);
          void w.close();
        }
      }
    },
    async close() {
      closed = true;
      idle.length = 0;
      await Promise.all([...all].map((w) => w.close()));
      all.clear();
    },
  };
}

export async function buildOnWorker(
  store: LocalStore,
  builder: string,
  w: BuilderWorker,
  job: RemoteJob,
): Promise<RRef[]> {
  const { node, inputs } = job;
  if (inputs.length > 0) {
    // One round trip: which of the inputs' closure the host lacks.
    const { roots, nodes, code } = listClosure(store, inputs);
    const asked = [...nodes.map((n) => n.rref), ...new Set(nodes.map((n) => parseRRef(n.rref).dref))];
    const have = await w.have(asked);
    const plan = planTransfer(
      roots,
      nodes,
      (r) => have.has(r),
      (d) => code?.[d],
    );
    if (plan.rrefs.length > 0 || plan.drvs.length > 0) {
      await withTempFile(store, 'worker-send', async (file) => {
        writeClosureFile(store, plan, file);
        await w.sendClosure(file);
      });
      job.log(`${builder}: sent ${plan.rrefs.length} input realization(s)`);
    }
  }
  const tail = logTail(job.log);
  const { report, result } = await withTempFile(store, 'worker-drv', async (file) => {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      writeDerivations(store, [node.dref], fd);
    } finally {
      fs.closeSync(fd);
    }
    try {
      return await w.build(node.dref, inputs, file, tail.add, job.force === true);
    } catch (e) {
      if (isDerivationFault(e)) keepRemoteFailedLog(store, node.dref, tail.text(), e as CairnError);
      throw e;
    }
  });
  try {
    const checked = checkBuildDrvReport(report, node.dref, builder);
    job.log(`${builder}: built on ${checked.host} in ${checked.buildMs} ms`);
    const asked = new Set<string>(checked.realizations);
    await importClosure(store, result.payload!.file, {
      check: (m) => {
        const extra = [...m.rrefs, ...m.drvs].find((r) => !asked.has(r) && r !== node.dref);
        if (extra !== undefined)
          throw new CairnError('E_BUILDER_FAILED', `${builder} sent ${extra}, which is not a result of ${node.dref}`, {
            builder,
          });
      },
    });
    // The import verified what it took in; anything it did not take in is not ours to return.
    for (const r of checked.realizations)
      if (!store.has(r))
        throw new CairnError('E_BUILDER_FAILED', `${builder} built ${r} but it did not arrive`, { rref: r });
    return checked.realizations;
  } finally {
    discard(result);
  }
}

/** At most this much of a remote build's log is held here, its end, for a failed build's kept log. */
const FAILED_LOG_TAIL_BYTES = 1 << 20;

/** Passes each line on and keeps the last FAILED_LOG_TAIL_BYTES of them. */
function logTail(pass: (line: string) => void): { add: (line: string) => void; text: () => string } {
  let lines: string[] = [];
  let head = 0;
  let bytes = 0;
  return {
    add: (line) => {
      pass(line);
      lines.push(line);
      bytes += line.length + 1;
      while (bytes > FAILED_LOG_TAIL_BYTES && lines.length - head > 1) bytes -= lines[head++]!.length + 1;
      // Dropped lines are cut off now and then, not on every line (no quadratic shifting).
      if (head > 4096 && head * 2 > lines.length) [lines, head] = [lines.slice(head), 0];
    },
    text: () => lines.slice(head).join('\n') + (lines.length > head ? '\n' : ''),
  };
}

/**
 * A build that failed on the builder: its log (the lines the worker sent) is
 * kept in this store, as a local failure's is, so the hint the builder put
 * in the message (`cairn log DREF --failed`, true only in the builder's
 * store) is true here.
 */
function keepRemoteFailedLog(store: LocalStore, dref: DRef, log: string, e: CairnError): void {
  const hint = ` (log: cairn log ${dref} --failed)`;
  const saved = log.length > 0 ? keepFailedLogData(store, dref, log) : undefined;
  if (saved) e.details.failedLog = saved;
  else delete e.details.failedLog;
  const rest = e.message.replace(hint, '');
  e.message = saved ? rest + hint : rest;
}
