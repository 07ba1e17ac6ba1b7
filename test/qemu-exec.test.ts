/**
 * RunningMachine.exec on the QEMU backend (tiny guest, busybox sh): stdout
 * and stderr come apart over the one serial line, the exit status is the
 * command's, `exit` ends only the command unless `shell` is set, variables
 * and `cd` persist with `shell`, and `check` turns a failure into
 * E_MACHINE_EXEC carrying stderr.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { bootSession } from '../src/backends/qemu/qemu-machine.js';
import type { BackendSession } from '../src/backends/machine.js';
import { tinyFixture } from './fixtures/qemu/tiny.js';
import { isCode, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('cairn-exec');
let session: BackendSession;
before(async () => {
  const fx = await tinyFixture();
  session = await bootSession({ kernel: fx.kernel, initramfs: fx.initramfs }, path.join(dir, 'vm'), null);
});
after(async () => {
  await session?.discard();
  cleanup();
});

describe('qemu exec', () => {
  it('separates stdout and stderr and returns the exit status', async () => {
    const vm = session.machine;
    assert.deepEqual(await vm.exec('echo out; echo err >&2; exit 3'), {
      stdout: 'out\n',
      stderr: 'err\n',
      exitCode: 3,
    });
    assert.deepEqual(await vm.exec('printf no-newline'), { stdout: 'no-newline', stderr: '', exitCode: 0 });
    assert.deepEqual(await vm.exec('printf "a\\n\\nb\\n\\n"'), { stdout: 'a\n\nb\n\n', stderr: '', exitCode: 0 });
    assert.deepEqual(await vm.exec("echo 'it''s' \"$((6*7))\"; false"), {
      stdout: 'its 42\n',
      stderr: '',
      exitCode: 1,
    });
  });

  it('runs in a subshell by default, in the shell itself with shell: true', async () => {
    const vm = session.machine;
    assert.equal((await vm.exec('X=sub; cd /tmp; exit 5')).exitCode, 5);
    assert.equal((await vm.exec('echo "[$X]"; pwd')).stdout, '[]\n/root\n', 'the subshell changed nothing');
    assert.equal((await vm.exec('X=kept; cd /tmp', { shell: true })).exitCode, 0);
    assert.equal((await vm.exec('echo "[$X]"; pwd')).stdout, '[kept]\n/tmp\n');
    assert.equal((await vm.exec('(exit 7)', { shell: true })).exitCode, 7);
  });

  it('check: true rejects with E_MACHINE_EXEC and the stderr', async () => {
    await assert.rejects(session.machine.exec('echo nope >&2; exit 2', { check: true }), (e: unknown) => {
      isCode('E_MACHINE_EXEC')(e);
      assert.match((e as Error).message, /exited 2[\s\S]*nope/);
      return true;
    });
    // Only this command's own stderr file exists while it runs.
    assert.equal(
      (await session.machine.exec('ls /tmp/.cairn-stderr-* | wc -l')).stdout.trim(),
      '1',
      'earlier stderr files were removed',
    );
  });
});
