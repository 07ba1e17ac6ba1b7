/**
 * A second process for the Store conformance suite (test/store-conformance.ts):
 *
 *     node --import tsx test/store-conformance-child.ts MODULE ARG
 *
 * opens the store through MODULE's `openForChild(ARG)`, then reads one JSON
 * command a line on stdin and answers with JSON lines on stdout (each
 * carries the command's `id`). It exits when stdin ends and its commands
 * are done. Stdout is a pipe, which Node writes synchronously on Linux, so
 * an answer is out before any kill that it prompts.
 */
import * as fs from 'node:fs';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import type { Added, Store } from '../src/store/interface.js';
import { writeOutput, type ChildStore, type OutputSpec, type RequestSpec } from './store-conformance.js';

type Command =
  | { op: 'add'; id: number; req: RequestSpec; outs: OutputSpec[]; pause?: boolean }
  | { op: 'loop'; id: number; req: RequestSpec; outs: OutputSpec[][] }
  | { op: 'count'; id: number; key: string; file: string; n: number }
  | { op: 'hold'; id: number; key: string }
  | { op: 'roots'; id: number; drefs: RequestSpec['dref'][] }
  | { op: 'probe'; id: number; key: string; dref: RequestSpec['dref']; ctx: string }
  | { op: 'release'; id: number };

const say = (msg: object): void => {
  process.stdout.write(JSON.stringify(msg) + '\n');
};

/** Blocks this process for good: a pause point where the parent kills it. */
function freeze(): never {
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

async function addOnce(c: ChildStore, req: RequestSpec, outs: OutputSpec[], pause = false): Promise<Added[]> {
  const outputs = [];
  for (const o of outs) {
    const dir = await c.stage();
    writeOutput(dir, o);
    outputs.push({ dir, created: o.created });
  }
  return c.store.add(
    { ...req, outputs },
    pause
      ? {
          onReadable: (added) => {
            say({ event: 'readable', rrefs: added.map((a) => a.meta.rref) });
            freeze();
          },
        }
      : {},
  );
}

async function main(): Promise<void> {
  const [module, arg] = process.argv.slice(2);
  const opener = (await import(pathToFileURL(module!).href)) as { openForChild(arg: string): Promise<ChildStore> };
  const c = await opener.openForChild(arg!);
  const store: Store = c.store;
  const releases = new Map<number, () => void>();
  const running: Promise<void>[] = [];
  say({ event: 'ready' });

  const run = async (cmd: Command): Promise<void> => {
    switch (cmd.op) {
      case 'add': {
        const added = await addOnce(c, cmd.req, cmd.outs, cmd.pause);
        say({ id: cmd.id, rrefs: added.map((a) => a.meta.rref), merged: added.map((a) => a.merged) });
        return;
      }
      case 'loop':
        for (const [i, outs] of cmd.outs.entries()) {
          say({ id: cmd.id, event: 'start', i });
          const added = await addOnce(c, cmd.req, outs);
          say({ id: cmd.id, event: 'done', i, rrefs: added.map((a) => a.meta.rref) });
        }
        return;
      case 'count':
        for (let i = 0; i < cmd.n; i++) {
          await store.withLock(cmd.key, 'counting', async () => {
            const v = Number(fs.readFileSync(cmd.file, 'utf8'));
            await new Promise((r) => setImmediate(r));
            fs.writeFileSync(cmd.file, String(v + 1));
          });
        }
        say({ id: cmd.id, event: 'counted' });
        return;
      case 'hold':
        await store.withLock(cmd.key, 'held by a conformance child', async () => {
          const released = new Promise<void>((r) => releases.set(cmd.id, r));
          say({ id: cmd.id, event: 'held' });
          await released;
        });
        return;
      case 'roots': {
        const roots = await store.addTempRoots(cmd.drefs, 'conformance-child');
        const released = new Promise<void>((r) => releases.set(cmd.id, r));
        say({ id: cmd.id, event: 'rooted' });
        await released;
        await roots.release();
        return;
      }
      case 'probe': {
        // Takes the lock, then looks: what a second realize of the same build does.
        const rrefs = await store.withLock(
          cmd.key,
          'probing',
          async () => (await store.candidates(cmd.dref, cmd.ctx)).map((c) => c.rref),
          { timeoutMs: 10_000 },
        );
        say({ id: cmd.id, rrefs });
        return;
      }
      case 'release':
        releases.get(cmd.id)?.();
        return;
    }
  };

  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line) as Command;
    running.push(
      run(cmd).catch((e: unknown) => {
        const err = e as { code?: string; message?: string };
        say({ id: cmd.id, error: err.code ?? 'internal', message: err.message ?? String(e) });
      }),
    );
  }
  await Promise.all(running);
  store.close();
}

await main();
