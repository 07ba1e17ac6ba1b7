/**
 * The machine backend registry (src/stages/machine.ts): importing Cairn
 * registers no backend and starts nothing; the built-in backends (qemu,
 * docker) are loaded on first use; a backend the user registers replaces
 * the built-in one; a state naming an unknown backend, whatever the name,
 * is refused with E_MACHINE_INCOMPATIBLE. No VM or Docker engine needed:
 * the states here are machine.json files only.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { machine, registerBackend, stage, type MachineBackend, type Stage } from '../src/index.js';
import { machineBackend, registeredBackends } from '../src/stages/machine.js';
import { isCode, repoRoot, storePerTest } from './helpers.js';

let store: Parameters<Parameters<typeof storePerTest>[1]>[0]['store'];
storePerTest('cairn-backends', (t) => {
  store = t.store;
});

/** A base state that is only a machine.json naming `kind` (nothing to resume). */
const fakeState = (kind: string): Stage =>
  stage({
    name: 'fake-state',
    config: { kind },
    outputs: ['machine.json'],
    build: ({ config, out }) => {
      const d = {
        format: 1,
        backend: config.kind,
        state: { backend: config.kind },
        expiresAt: null,
        files: [],
        step: null,
      };
      fs.writeFileSync(path.join(out, 'machine.json'), JSON.stringify(d));
    },
  });

describe('machine backends', () => {
  it("import('cairn') registers no backend, loads no driver state, and leaves nothing running", () => {
    // A fresh process: the package entry as users import it (dist, through package.json "exports").
    const script = [
      "await import('cairn');",
      "const m = await import('./dist/src/stages/machine.js');",
      'await new Promise((r) => setImmediate(r));',
      'console.log(JSON.stringify({ registered: m.registeredBackends(), running: process.getActiveResourcesInfo() }));',
    ].join('\n');
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: repoRoot,
      encoding: 'utf8',
    });
    assert.deepEqual(JSON.parse(out), { registered: [], running: [] });
  });

  it('loads a built-in backend on first use and registers it then', async () => {
    assert.ok(!registeredBackends().includes('qemu'));
    const b = await machineBackend('qemu');
    assert.equal(b.kind, 'qemu');
    assert.ok(registeredBackends().includes('qemu'));
    assert.equal(await machineBackend('qemu'), b, 'the same backend on every use');
  });

  it('refuses a state naming an unknown backend with E_MACHINE_INCOMPATIBLE, whatever the name', async () => {
    for (const kind of ['nope', '__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      await assert.rejects(
        machine(fakeState(kind)).use(() => 'ran', { store }),
        (e: Error) => {
          assert.ok(isCode('E_MACHINE_INCOMPATIBLE')(e), kind);
          assert.match(e.message, /known: docker, qemu, ssh\)/, kind);
          return true;
        },
      );
    }
  });

  // Last: it leaves a replacement registered in this process.
  it('uses a backend registered by the user instead of the built-in one of the same kind', async () => {
    const resumed: string[] = [];
    const mine: MachineBackend = {
      kind: 'docker',
      resume: async (stateDir) => {
        resumed.push(stateDir);
        const vm = {
          backend: 'docker',
          exec: async () => ({ stdout: 'mine\n', stderr: '', exitCode: 0 }),
          console: { send: async () => {}, expect: async () => '' },
          upload: async () => {},
          download: async () => {},
        };
        return { machine: vm, save: async () => ({ backend: 'docker' }), discard: async () => {} };
      },
    };
    registerBackend(mine);
    const seen = await machine(fakeState('docker')).use(async (vm) => (await vm.exec('true')).stdout, { store });
    assert.equal(seen, 'mine\n');
    assert.equal(resumed.length, 1);
    assert.equal(await machineBackend('docker'), mine);
  });
});
