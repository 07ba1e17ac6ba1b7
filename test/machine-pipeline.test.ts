/**
 * The machine pipeline on the tiny guest, through the library API and real
 * QEMU: states are realizations; resuming them restores memory and disk;
 * restores are isolated; transient steps, expiry and dependOnFile behave
 * exactly; the QEMU command line is rebuilt from machine.json with
 * store-relative references.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalStore } from '../src/store/store.js';
import { verifyStore } from '../src/store/verify.js';
import { machine, step, readDescription, type StepMachine } from '../src/stages/machine.js';
import { exec } from '../src/stages/machine-steps.js';
import { tiny } from '../src/stages/bases/tiny.js';
import { qcow2Backing } from '../src/backends/qemu/disk.js';
import { requireQemu } from './fixtures/qemu/tiny.js';
import { drefOf, isCode, tempDir } from './helpers.js';
import { storeIndex } from '../src/store/internals.js';

requireQemu();
const { dir, cleanup } = tempDir('cairn-machine');
const store = LocalStore.open(path.join(dir, 'store'));
after(() => cleanup());

const shell = step<{ cmd: string }>({
  name: 'shell-exec',
  async run(vm, { cmd }) {
    await vm.exec(cmd, { check: true, shell: true });
  },
});

/** Realizations in the store, by count. */
const count = (): number => storeIndex(store).all().length;

let builds = 0;
const events = {
  built: () => {
    builds++;
  },
};

before(async () => {
  // The base (files + booted state) is built once for the whole file.
  await machine(tiny()).realize({ store });
});

describe('machine states', () => {
  it('a state keeps the shell, memory and disk; a cached chain runs nothing', async () => {
    const m = machine(tiny()).apply(shell, {
      cmd: 'export X=forty-two; echo in-memory > /tmp/m; echo on-disk > /mnt/d',
    });
    builds = 0;
    const s1 = await m.realize({ store, events });
    assert.equal(builds, 1);
    assert.deepEqual(fs.readdirSync(s1.dir).sort(), ['disk.qcow2', 'machine.json', 'memory.bin']);
    const d = readDescription(s1.dir);
    assert.equal(d.backend, 'qemu');
    assert.deepEqual(d.step, {
      name: 'shell-exec',
      args: { cmd: 'export X=forty-two; echo in-memory > /tmp/m; echo on-disk > /mnt/d' },
    });
    // References to other realizations are relative, so the store can move.
    const st = d.state as Record<string, unknown>;
    assert.match(String(st.kernel), /^\.\.\/\.\.\/\.\.\/\.\.\/[a-z0-9]{32}-tiny-files\/r\/[a-z0-9]{32}\/out\/vmlinuz$/);
    const backing = qcow2Backing(path.join(s1.dir, 'disk.qcow2'));
    assert.ok(backing && !path.isAbsolute(backing), `backing file ${backing} is relative`);
    assert.ok(fs.existsSync(path.resolve(s1.dir, backing)));
    for (const f of ['disk.qcow2', 'memory.bin'])
      assert.equal(fs.statSync(path.join(s1.dir, f)).mode & 0o222, 0, `${f} is read-only`);

    const seen = await m.use((vm) => vm.exec('echo $X; cat /tmp/m /mnt/d'), { store });
    assert.deepEqual(seen, { stdout: 'forty-two\nin-memory\non-disk\n', stderr: '', exitCode: 0 });

    builds = 0;
    const s2 = await m.realize({ store, events });
    assert.equal(builds, 0, 'cached');
    assert.equal(s2.rref, s1.rref);
  });

  it('exec gives stdout, stderr and the exit code apart; check turns failure into E_MACHINE_EXEC', async () => {
    await machine(tiny()).use(
      async (vm) => {
        assert.deepEqual(await vm.exec('echo out; echo err >&2; exit 3'), {
          stdout: 'out\n',
          stderr: 'err\n',
          exitCode: 3,
        });
        await assert.rejects(vm.exec('false', { check: true }), isCode('E_MACHINE_EXEC'));
        // The shell survived the `exit 3` above.
        assert.equal((await vm.exec('echo still here')).stdout, 'still here\n');
        const host = path.join(dir, 'up.bin');
        const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7) & 0xff));
        fs.writeFileSync(host, bytes, { mode: 0o750 });
        await vm.upload(host, '/tmp/up.bin');
        assert.equal((await vm.exec('stat -c %a /tmp/up.bin')).stdout, '750\n');
        await vm.download('/tmp/up.bin', path.join(dir, 'down.bin'));
        assert.deepEqual(fs.readFileSync(path.join(dir, 'down.bin')), bytes);
        await vm.console.send('echo con$((40+2))sole\n');
        assert.equal(await vm.console.expect(/con42sole/, 10_000), 'con42sole');
      },
      { store },
    );
  });

  it("two restores of one state do not see each other's writes, and the state stays intact", async () => {
    const m = machine(tiny()).apply(exec, { cmd: 'echo base > /mnt/shared' });
    await m.realize({ store });
    const write = (who: string) =>
      m.use(
        async (vm) => {
          await vm.exec(`echo ${who} > /mnt/shared; echo ${who} > /mnt/${who}; sync`, { check: true });
          await sleep(300); // both machines are running and have written
          return (await vm.exec('cat /mnt/shared; ls /mnt')).stdout;
        },
        { store },
      );
    const [a, b] = await Promise.all([write('a'), write('b')]);
    assert.match(a, /^a\n/);
    assert.doesNotMatch(a, /\bb\b/);
    assert.match(b, /^b\n/);
    assert.doesNotMatch(b, /\ba\b/);
    const after = await m.use((vm) => vm.exec('cat /mnt/shared; ls /mnt/a /mnt/b 2>/dev/null; true'), { store });
    assert.equal(after.stdout, 'base\n');
    const v = await verifyStore(store);
    assert.deepEqual(v.problems, []);
  });

  it('a transient step runs but leaves nothing; transient-when-last is saved once followed', async () => {
    const parent = machine(tiny()).apply(exec, { cmd: 'echo keep > /mnt/keep' });
    const p = await parent.realize({ store });
    const before = count();
    const t = parent.apply(exec, { cmd: 'rm -f /mnt/keep; echo gone' }, { transient: true });
    builds = 0;
    const r = await t.realize({ store, events });
    assert.equal(r.rref, p.rref, 'the result is the parent');
    assert.equal(count(), before, 'no new realization');
    assert.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), []);
    assert.equal(
      (await t.use((vm) => vm.exec('ls /mnt/keep 2>&1; true'), { store })).stdout,
      'ls: /mnt/keep: No such file or directory\n',
      'use() runs the transient step first',
    );
    assert.equal((await parent.use((vm) => vm.exec('cat /mnt/keep'), { store })).stdout, 'keep\n');
    // A failing transient step still fails the run.
    await assert.rejects(
      parent.apply(exec, { cmd: 'exit 7' }, { transient: true }).realize({ store }),
      isCode('E_MACHINE_EXEC'),
    );

    const last = parent.apply(exec, { cmd: 'echo once > /mnt/once' }, { transient: 'last' });
    assert.equal((await last.realize({ store })).rref, p.rref);
    assert.deepEqual(last.transientSteps, ['exec']);
    const followed = last.apply(exec, { cmd: 'cat /mnt/once' });
    assert.deepEqual(followed.transientSteps, []);
    const f = await followed.realize({ store });
    assert.equal(count(), before + 2, 'the formerly transient step and its follower are saved');
    assert.equal(readDescription(f.dir).step!.name, 'exec');
  });

  it('expiry: a state is reused until it expires, then rebuilt, and its dependants follow', async () => {
    const capped = step<{ ms: number }>({
      name: 'capped',
      async run(vm: StepMachine, { ms }) {
        vm.expiration.cap(ms);
        await vm.exec('date +%s%N > /mnt/stamp', { check: true });
      },
    });
    const m = machine(tiny()).apply(capped, { ms: 4000 });
    const child = m.apply(exec, { cmd: 'cat /mnt/stamp' });
    const s1 = await child.realize({ store });
    const parent1 = (await m.realize({ store })).rref;
    assert.ok(
      readDescription(s1.dir).expiresAt! <= readDescription(store.outPath(parent1)).expiresAt!,
      'the child inherits the expiry',
    );
    builds = 0;
    assert.equal((await child.realize({ store, events })).rref, s1.rref);
    assert.equal(builds, 0);
    const wait = readDescription(store.outPath(parent1)).expiresAt! - Date.now();
    await sleep(Math.max(0, wait) + 50);
    builds = 0;
    const s2 = await child.realize({ store, events });
    assert.equal(builds, 2, 'the expired step and its dependant run again');
    assert.notEqual(s2.rref, s1.rref);
    // The --cache option caps the same way.
    const opt = machine(tiny()).apply(exec, { cmd: 'true' }, { cache: '1h' });
    const e = readDescription((await opt.realize({ store })).dir).expiresAt!;
    assert.ok(Math.abs(e - (Date.now() + 3_600_000)) < 60_000);
  });

  it('dependOnFile: a changed file rebuilds; the old content finds the old state again', async () => {
    const file = path.join(dir, 'input.txt');
    const reads = step<{ file: string }>({
      name: 'reads-file',
      async run(vm, { file: f }) {
        vm.dependOnFile(f);
        await vm.upload(f, '/mnt/input');
      },
    });
    const m = machine(tiny()).apply(reads, { file });
    fs.writeFileSync(file, 'one\n');
    const s1 = await m.realize({ store });
    assert.deepEqual(
      readDescription(s1.dir).files.map((f) => f.path),
      [file],
    );
    builds = 0;
    assert.equal((await m.realize({ store, events })).rref, s1.rref);
    assert.equal(builds, 0, 'same content: cached');
    fs.writeFileSync(file, 'two\n');
    const s2 = await m.realize({ store, events });
    assert.equal(builds, 1);
    assert.notEqual(s2.rref, s1.rref);
    assert.equal((await m.use((vm) => vm.exec('cat /mnt/input'), { store })).stdout, 'two\n');
    fs.writeFileSync(file, 'one\n');
    builds = 0;
    assert.equal((await m.realize({ store, events })).rref, s1.rref, 'back to the first state');
    assert.equal(builds, 0);
  });

  it("a step's identity covers its code and args; non-JSON args are refused", () => {
    const a = machine(tiny()).apply(exec, { cmd: 'echo a' });
    const b = machine(tiny()).apply(exec, { cmd: 'echo b' });
    assert.notEqual(drefOf(a.saved), drefOf(b.saved));
    assert.equal(
      drefOf(a.saved),
      drefOf(machine(tiny()).apply(exec, { cmd: 'echo a' }).saved),
      'same step, same args: same DRef',
    );
    const v1 = step({
      name: 's',
      run: async (vm) => {
        await vm.exec('true');
      },
    });
    const v2 = step({
      name: 's',
      run: async (vm) => {
        await vm.exec('true ');
      },
    });
    assert.notEqual(v1.code, v2.code);
    assert.throws(
      () => machine(tiny()).apply(exec, { cmd: (() => 1) as unknown as string }),
      isCode('E_CONFIG_NOT_JSON'),
    );
    assert.throws(() => step({ name: 'bad name!', run: () => {} }), isCode('E_BAD_NAME'));
  });
});
