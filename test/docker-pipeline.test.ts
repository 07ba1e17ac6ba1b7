/**
 * A container machine through the machine pipeline API: a docker base from
 * the fixture image, a saved step (docker commit + save into the store),
 * and use() of the saved state, which sees the step's file.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { docker } from '../src/backends/containers/docker.js';
import { dockerMachineBase } from '../src/stages/bases/docker-base.js';
import { machine, step } from '../src/stages/machine.js';
import { fixtureImage, debianPgImage } from './fixtures/services/images.js';

const store = async () => (await fixtureImage()).store;

before(async () => {
  await fixtureImage();
});
after(async () => {
  const left = await docker(['ps', '-aq', '--filter', 'label=cairn.machine=1']);
  for (const id of left.stdout.split('\n').filter(Boolean)) await docker(['rm', '-f', id], { check: false });
});

describe('docker machine through the pipeline', () => {
  it('saves a step as a state and resumes it with use()', async () => {
    const write = step({
      name: 'write-marker',
      version: '1',
      run: async (vm, args: { text: string }) => {
        await vm.exec(`echo ${args.text} > /root/marker`, { check: true });
      },
    });
    const m = machine(dockerMachineBase(debianPgImage, 'debian-pg-machine')).apply(write, { text: 'from-a-step' });
    const s = await store();
    const t0 = performance.now();
    const state = await m.realize({ store: s });
    process.stderr.write(`# docker pipeline realize ${((performance.now() - t0) / 1000).toFixed(1)}s\n`);
    assert.equal(state.description.backend, 'docker');
    assert.equal(state.description.state.format, 'docker-save');
    const seen = await m.use(async (vm) => (await vm.exec('cat /root/marker')).stdout, { store: s });
    assert.equal(seen, 'from-a-step\n');
    // Cached: a second realize gives the same state.
    assert.equal((await m.realize({ store: s })).rref, state.rref);
  });
});
