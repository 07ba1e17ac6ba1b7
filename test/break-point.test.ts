/**
 * Stepping into a stage's build (issue 20 item 5): `realize --break STAGE`
 * and `realizePaused`. The pipeline is prep -> train -> report; the break
 * is at train, whose inputs are realized first. What is written by hand
 * becomes train's realization (its promises checked) and report is built
 * on it; a cancel stores nothing of train and leaves STORE/tmp empty.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { all, LocalStore, realize, realizePaused, stage, type DRef, type Stage } from '../src/index.js';
import {
  cairn,
  drefOf,
  expectError,
  isCode,
  isolateModuleCache,
  lastLine,
  ok,
  tempDir,
  tmpEntries,
} from './helpers.js';

isolateModuleCache(after);

function pipeline(salt: string): { prep: Stage; train: Stage<{ data: Stage; lr: number }>; report: Stage } {
  const prep = stage({
    name: 'prep',
    config: { salt },
    build: ({ out }) => fs.writeFileSync(path.join(out, 'data.txt'), `data ${salt}\n`),
  });
  const train = stage({
    name: 'train',
    config: { data: prep, lr: 0.5 },
    outputs: ['model.txt'],
    build: ({ out }) => fs.writeFileSync(path.join(out, 'model.txt'), 'by the build function\n'),
  });
  const report = stage({
    name: 'report',
    config: { model: train },
    build: ({ out, config }) =>
      fs.writeFileSync(
        path.join(out, 'report.txt'),
        `report of ${fs.readFileSync(config.model.file('model.txt'), 'utf8')}`,
      ),
  });
  return { prep, train, report };
}

function withStore(fn: (store: LocalStore, dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const t = tempDir('cairn-break');
    const store = LocalStore.open(path.join(t.dir, 'store'));
    try {
      await fn(store, t.dir);
    } finally {
      store.close();
      t.cleanup();
    }
  };
}

describe('realizePaused', () => {
  it(
    'stops before the stage with its inputs realized, and continue() stores what was written and goes on',
    withStore(async (store) => {
      const { prep, train, report } = pipeline('a');
      const p = await realizePaused(report, { store, breakAt: 'train' });
      assert.equal(p.name, 'train');
      assert.equal(p.dref, drefOf(train));
      assert.deepEqual(p.promised, ['model.txt']);
      // The input is realized and resolved: in the config, the inputs and the environment.
      assert.equal(p.inputs.length, 1);
      assert.equal(p.inputs[0]!.name, 'prep');
      assert.equal(p.inputs[0]!.dref, drefOf(prep));
      const data = path.join(p.inputs[0]!.paths[0]!, 'data.txt');
      assert.equal(fs.readFileSync(data, 'utf8'), 'data a\n');
      assert.equal(p.env.CAIRN_INPUT_PREP, p.inputs[0]!.paths[0]);
      assert.equal(p.env.CAIRN_OUT, p.out);
      assert.equal(p.env.CAIRN_OUTS, undefined);
      const config = JSON.parse(fs.readFileSync(p.env.CAIRN_CONFIG!, 'utf8')) as { data: { path: string }; lr: number };
      assert.deepEqual([config.lr, config.data.path], [0.5, p.inputs[0]!.paths[0]]);
      assert.equal((p.config as { lr: number }).lr, 0.5);
      assert.match(p.hint, /\$CAIRN_OUT/);
      assert.match(p.hint, /model\.txt/);
      assert.match(p.hint, /exit 1 to cancel/);
      // Nothing of train or report exists yet.
      assert.deepEqual(await store.realizationsOf(drefOf(train)), []);

      fs.writeFileSync(path.join(p.out, 'model.txt'), 'by hand\n');
      const r = await p.continue();
      assert.equal(r.plan.find((e) => e.name === 'train')!.action, 'force');
      const model = store.outPath(r.plan.find((e) => e.name === 'train')!.rrefs[0]!);
      assert.equal(fs.readFileSync(path.join(model, 'model.txt'), 'utf8'), 'by hand\n');
      const rep = store.outPath(r.targets[0]!.rrefs[0]!);
      assert.equal(fs.readFileSync(path.join(rep, 'report.txt'), 'utf8'), 'report of by hand\n');
      assert.match((await store.readLog(r.plan.find((e) => e.name === 'train')!.rrefs[0]!)).toString(), /by hand/);
      assert.deepEqual(tmpEntries(store.location), []);
      // The hand-made realization is an ordinary one: the next realize uses it.
      const again = await realize(report, { store });
      assert.equal(again.builds, 0);
    }),
  );

  it(
    'cancel() stores nothing of the stage or after it, and removes its directories',
    withStore(async (store) => {
      const { prep, train, report } = pipeline('b');
      const p = await realizePaused(report, { store, breakAt: drefOf(train) });
      fs.writeFileSync(path.join(p.out, 'model.txt'), 'by hand\n');
      await p.cancel();
      assert.deepEqual(await store.realizationsOf(drefOf(train)), []);
      assert.deepEqual(await store.realizationsOf(drefOf(report)), []);
      assert.equal((await store.realizationsOf(drefOf(prep))).length, 1, 'the inputs stay realized');
      assert.deepEqual(tmpEntries(store.location), []);
      assert.equal(fs.existsSync(p.out), false);
      assert.equal(fs.existsSync(path.join(store.location, 'failed-logs')), false, 'a cancel is not a failure');
      await assert.rejects(p.continue(), isCode('E_BREAK_CANCELLED'));
    }),
  );

  it(
    'a promised file left unwritten fails continue() with E_PROMISE_BROKEN and stores nothing',
    withStore(async (store) => {
      const { train, report } = pipeline('c');
      const p = await realizePaused(report, { store, breakAt: 'train' });
      fs.writeFileSync(path.join(p.out, 'other.txt'), 'not the model\n');
      await assert.rejects(p.continue(), isCode('E_PROMISE_BROKEN'));
      assert.deepEqual(await store.realizationsOf(drefOf(train)), []);
      assert.deepEqual(tmpEntries(store.location), []);
    }),
  );

  it(
    'stops at a stage that is already realized (it is built again), and at one with n outputs',
    withStore(async (store) => {
      const { train } = pipeline('d');
      const first = await realize(train, { store });
      const p = await realizePaused(train, { store, breakAt: 'train' });
      fs.writeFileSync(path.join(p.out, 'model.txt'), 'second, by hand\n');
      const r = await p.continue();
      assert.notEqual(r.targets[0]!.rrefs[0], first.targets[0]!.rrefs[0]);

      const many = stage({ name: 'many', n: 2, matcher: all(), config: { x: 1 }, build: () => {} });
      const q = await realizePaused(many, { store, breakAt: 'many' });
      assert.equal(q.outs.length, 2);
      assert.equal(q.env.CAIRN_OUTS, q.outs.join('\n'));
      assert.equal(q.env.CAIRN_OUT_1, q.outs[1]);
      q.outs.forEach((o, i) => fs.writeFileSync(path.join(o, 'seed'), String(i)));
      const rr = await q.continue();
      assert.equal(rr.targets[0]!.rrefs.length, 2);
    }),
  );

  it(
    'an unknown stage is refused with E_NO_SUCH_STAGE, listing the stage names, before anything is built',
    withStore(async (store) => {
      const { prep, report } = pipeline('e');
      await assert.rejects(realizePaused(report, { store, breakAt: 'trian' }), (e: Error) => {
        isCode('E_NO_SUCH_STAGE')(e);
        assert.match(e.message, /stages: prep, report, train/);
        return true;
      });
      assert.deepEqual(await store.realizationsOf(drefOf(prep)), []);
    }),
  );
});

const STAGES = `
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stage } from 'cairn';
const salt = process.env.SALT ?? '';
const prep = stage({ name: 'prep', config: { salt }, build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'data.txt'), 'data ' + salt + '\\n');
} });
const train = stage({ name: 'train', config: { data: prep, lr: 0.25 }, outputs: ['model.txt'], build: ({ out }) => {
  fs.writeFileSync(path.join(out, 'model.txt'), 'by the build function\\n');
} });
export default stage({ name: 'report', config: { model: train }, build: ({ out, config }) => {
  fs.writeFileSync(path.join(out, 'report.txt'), 'report of ' + fs.readFileSync(config.model.file('model.txt')));
} });
`;

/** The store's realizations of the stage named `name` (read with a store opened for the check). */
async function realizationsNamed(storeDir: string, name: string): Promise<string[]> {
  const store = LocalStore.open(storeDir);
  try {
    const out: string[] = [];
    for (const d of fs.readdirSync(path.join(storeDir, 'd')).filter((d) => d.endsWith(`-${name}`)))
      out.push(...(await store.realizationsOf(d as DRef)).map((r) => r.rref));
    return out;
  } finally {
    store.close();
  }
}

describe('cairn realize --break', () => {
  const setup = (): { dir: string; store: string; file: string; cleanup: () => void } => {
    const t = tempDir('cairn-break-cli');
    const file = path.join(t.dir, 'stages.ts');
    fs.writeFileSync(file, STAGES);
    return { dir: t.dir, store: path.join(t.dir, 'store'), file, cleanup: t.cleanup };
  };

  it('with SHELL a script: what it writes is stored, the pipeline goes on, and SIGINT is left to the shell', () => {
    const e = setup();
    try {
      const script = path.join(e.dir, 'shell.sh');
      // Reads its input and config from the environment; a Ctrl-C (SIGINT to cairn) must not end the realize.
      fs.writeFileSync(
        script,
        '#!/bin/sh\nset -e\nkill -INT $PPID\nsleep 0.2\n' +
          'lr=$(grep -o \'"lr": [0-9.]*\' "$CAIRN_CONFIG" | cut -d" " -f2)\n' +
          'echo "model from $(cat "$CAIRN_INPUT_PREP/data.txt") lr=$lr in $(basename "$PWD")" > model.txt\n',
        { mode: 0o755 },
      );
      const r = ok(cairn(e.store, ['realize', e.file, '--break', 'train'], { env: { SHELL: script, SALT: 's' } }));
      assert.match(r.stderr, /stopped before building train/);
      assert.match(r.stderr, /\$CAIRN_INPUT_PREP = /);
      const out = ok(cairn(e.store, ['catref', lastLine(r.stdout), 'report.txt']));
      assert.equal(out.stdout, 'report of model from data s lr=0.25 in out\n');
      assert.deepEqual(tmpEntries(e.store), []);
    } finally {
      e.cleanup();
    }
  });

  it('with commands on stdin: the end of input continues; exit 1 cancels and stores nothing', async () => {
    const e = setup();
    try {
      const env = { SHELL: '/bin/sh', SALT: 'p' };
      const cancelled = cairn(e.store, ['realize', e.file, '--break', 'train'], {
        env,
        input: 'echo by hand > model.txt\nexit 1\n',
      });
      expectError(cancelled, 'E_BREAK_CANCELLED', e.store);
      assert.match(
        cancelled.stderr,
        /cancelled at the break point before train: the shell exited with 1; nothing of it was stored/,
      );
      assert.deepEqual(await realizationsNamed(e.store, 'train'), []);
      assert.deepEqual(await realizationsNamed(e.store, 'report'), []);
      assert.equal((await realizationsNamed(e.store, 'prep')).length, 1, 'the input was realized first');

      const missing = cairn(e.store, ['realize', e.file, '--break', 'train'], { env, input: 'touch other\n' });
      expectError(missing, 'E_PROMISE_BROKEN', e.store);
      assert.deepEqual(await realizationsNamed(e.store, 'train'), []);

      const done = ok(
        cairn(e.store, ['realize', e.file, '--break', 'train'], {
          env,
          input: 'cp "$CAIRN_INPUT_PREP/data.txt" model.txt\n',
        }),
      );
      const shown = ok(cairn(e.store, ['catref', lastLine(done.stdout), 'report.txt']));
      assert.equal(shown.stdout, 'report of data p\n');
      assert.equal((await realizationsNamed(e.store, 'train')).length, 1);
    } finally {
      e.cleanup();
    }
  });

  it('with --json, what the shell prints goes to stderr and stdout stays JSON', () => {
    const e = setup();
    try {
      const r = ok(
        cairn(e.store, ['realize', e.file, '--break', 'train', '--json'], {
          env: { SHELL: '/bin/sh', SALT: 'j' },
          input: 'echo noise from the shell\necho m > model.txt\n',
        }),
      );
      const result = JSON.parse(r.stdout) as { plan: { name: string; action: string }[] };
      assert.equal(result.plan.find((p) => p.name === 'train')!.action, 'force');
      assert.match(r.stderr, /noise from the shell/);
    } finally {
      e.cleanup();
    }
  });

  it('an unknown stage: E_NO_SUCH_STAGE listing the stage names, nothing built', () => {
    const e = setup();
    try {
      const r = cairn(e.store, ['realize', e.file, '--break', 'nope'], { env: { SHELL: '/bin/false' } });
      expectError(r, 'E_NO_SUCH_STAGE');
      assert.match(r.stderr, /stages: prep, report, train/);
    } finally {
      e.cleanup();
    }
  });
});
