/**
 * The machine states of a store (src/stages/machine-states.ts): which
 * realizations are states, what `cairn machine ls` shows of them, and the
 * gc that collects only unrooted states. The states here are made by plain
 * stages that write a machine description: listing and gc never boot one.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { instantiate, realize, stage, type BuildContext, type RRef, type Stage, LocalStore } from '../src/index.js';
import { DESCRIPTION, type MachineDescription } from '../src/stages/machine.js';
import { collectMachineGarbage, isMachineState, listMachineStates } from '../src/stages/machine-states.js';
import { addNamedRoot } from '../src/store/roots.js';
import { one, storePerTest, tempDir } from './helpers.js';

let store: LocalStore;
storePerTest('cairn-machine-states', (t) => ({ store } = t));

/** A stage whose output looks like a machine state: a description and a 1000-byte disk. */
const state = (name: string, d: Partial<MachineDescription>, parent?: Stage): Stage =>
  stage({
    name,
    config: { d, ...(parent ? { parent } : {}) },
    build: ({ out }: BuildContext<unknown>) => {
      const desc: MachineDescription = {
        format: 1,
        backend: 'qemu',
        state: { backend: 'qemu' },
        expiresAt: null,
        files: [],
        step: null,
        ...d,
      };
      fs.writeFileSync(path.join(out, DESCRIPTION), JSON.stringify(desc));
      fs.writeFileSync(path.join(out, 'disk.qcow2'), Buffer.alloc(1000));
    },
  });
const plain = stage({ name: 'plain', config: {}, build: ({ out }) => fs.writeFileSync(path.join(out, 'f'), 'x') });

const build = async (s: Stage): Promise<RRef> => one(await realize(instantiate(s), { store }));

describe('machine states: listing', () => {
  it('lists only realizations holding a machine description, oldest first: step, size, expiry, roots', async () => {
    const base = await build(state('base', {}));
    const notState = await build(plain);
    const expires = Date.now() + 3_600_000;
    const step = await build(state('step', { step: { name: 'exec', args: ['true'] }, expiresAt: expires }));
    addNamedRoot(store, 'keep', [step]);

    assert.equal(isMachineState(store, base), true);
    assert.equal(isMachineState(store, notState), false);
    const states = listMachineStates(store);
    assert.deepEqual(
      states.map((s) => [s.rref, s.step, s.expiresAt, s.stale, s.rooted]),
      [
        [base, '(base)', null, null, false],
        [step, 'exec', expires, null, true],
      ],
    );
    const descBytes = fs.statSync(path.join(store.outPath(base), DESCRIPTION)).size;
    assert.equal(states[0]!.bytes, 1000 + descBytes);
    assert.ok(states[0]!.created < states[1]!.created);
  });

  it('says why a state is stale: expired, or a host file it depends on changed', async () => {
    const t = tempDir('cairn-machine-states-file');
    try {
      const file = path.join(t.dir, 'script.sh');
      fs.writeFileSync(file, 'echo changed\n');
      const expired = await build(state('expired', { expiresAt: Date.now() - 1000 }));
      const changed = await build(state('changed', { files: [{ path: file, sha256: '0'.repeat(64) }] }));
      const byRref = new Map(listMachineStates(store).map((s) => [s.rref, s.stale]));
      assert.match(byRref.get(expired) ?? '', /^expired at /);
      assert.equal(byRref.get(changed), `${file} changed`);
    } finally {
      t.cleanup();
    }
  });

  it('an empty store has no states', () => {
    assert.deepEqual(listMachineStates(store), []);
  });
});

describe('machine states: gc', () => {
  it('deletes unrooted states, keeps rooted ones and what they stand on, leaves other realizations alone', async () => {
    const parentStage = state('parent', {});
    const parent = await build(parentStage);
    const child = await build(state('child', { step: { name: 'exec', args: ['a'] } }, parentStage));
    const loose = await build(state('loose', { step: { name: 'exec', args: ['b'] } }));
    const notState = await build(plain);
    addNamedRoot(store, 'keep', [child]);

    const dry = await collectMachineGarbage(store, { dryRun: true });
    assert.deepEqual(dry.realizations, [loose]);
    assert.equal(store.has(loose), true, 'a dry run deletes nothing');

    const r = await collectMachineGarbage(store);
    assert.deepEqual(r.realizations, [loose]);
    assert.deepEqual(
      [parent, child, loose, notState].map((x) => store.has(x)),
      [true, true, false, true],
    );
    assert.deepEqual(
      listMachineStates(store).map((s) => s.rref),
      [parent, child],
    );
  });
});
