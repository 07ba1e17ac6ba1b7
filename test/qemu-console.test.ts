/**
 * The serial console of the tiny guest: expect, and run() returning output
 * and exit status reliably (quotes, multi-line, no trailing newline, shell
 * state kept between commands, a hung command timing out).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ConsoleError } from '../src/backends/qemu/console.js';
import { Vm } from '../src/backends/qemu/vm.js';
import { tinyFixture } from './fixtures/qemu/tiny.js';
import { tempDir } from './helpers.js';

let vm: Vm;
const { dir, cleanup } = tempDir('cairn-console');
before(async () => {
  const fx = await tinyFixture();
  vm = await Vm.boot({ kernel: fx.kernel, initramfs: fx.initramfs }, `${dir}/vm`);
});
after(async () => {
  await vm?.kill();
  cleanup();
});

describe('SerialConsole', () => {
  it('runs commands and returns output and exit status', async () => {
    assert.deepEqual(await vm.run('echo hello'), { output: 'hello\n', exitCode: 0 });
    assert.deepEqual(await vm.run('printf abc'), { output: 'abc', exitCode: 0 });
    assert.deepEqual(await vm.run('true'), { output: '', exitCode: 0 });
    assert.deepEqual(await vm.run('exit_code() { return 7; }; exit_code'), { output: '', exitCode: 7 });
    assert.deepEqual(await vm.run('ls /nonexistent'), {
      output: 'ls: /nonexistent: No such file or directory\n',
      exitCode: 1,
    });
    assert.deepEqual(await vm.run(`echo "it's" 'a "quote"' \\$HOME`), {
      output: `it's a "quote" $HOME\n`,
      exitCode: 0,
    });
    assert.deepEqual(await vm.run('for i in 1 2 3\ndo echo $i\ndone'), { output: '1\n2\n3\n', exitCode: 0 });
    assert.deepEqual(await vm.run('seq 1 2000 | tail -1'), { output: '2000\n', exitCode: 0 });
  });

  it('keeps shell state between commands', async () => {
    await vm.console.check0('V=kept; cd /tmp');
    assert.equal(await vm.console.check0('echo $V; pwd'), 'kept\n/tmp\n');
    await assert.rejects(vm.console.check0('false'), ConsoleError);
  });

  it('expect() sees output already received and times out with the console tail', async () => {
    vm.console.send('echo marker-$((6*7))\n');
    await vm.console.expect(/marker-42/, 10_000);
    await assert.rejects(
      vm.console.expect(/never-printed/, 200),
      (e: unknown) => e instanceof ConsoleError && /timed out/.test(e.message),
    );
    await assert.rejects(vm.run('sleep 5', 300), ConsoleError);
    // The shell recovers once the slow command ends; a later run is not confused by the stale one.
    assert.deepEqual(await vm.run('echo after', 15_000), { output: 'after\n', exitCode: 0 });
  });
});
