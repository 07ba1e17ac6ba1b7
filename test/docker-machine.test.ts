/**
 * The Docker machine backend against the real engine: resume an image
 * state, exec, console, upload/download, save (commit + docker save),
 * resume the saved state, isolation between two resumes. Fails, never
 * skips, when no engine answers (scripts/dockerd.sh starts one).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { docker } from '../src/backends/containers/docker.js';
import { DockerBackend } from '../src/backends/containers/docker-machine.js';
import { readImageDescription } from '../src/backends/containers/image.js';
import type { BackendSession, BackendState } from '../src/backends/machine.js';
import { isCode, tempDir } from './helpers.js';
import { fixtureImage } from './fixtures/services/images.js';

const LABEL = 'cairn.test=docker-machine';
const backend = new DockerBackend({ labels: { 'cairn.test': 'docker-machine' } });
let base: { dir: string; state: BackendState };
let work: { dir: string; cleanup: () => void };
const sessions: BackendSession[] = [];
const savedImages: string[] = [];

// The docker backend ignores save()'s second argument (it references no
// other realization), whose type the machine pipeline is still changing.
const saveTo = (s: BackendSession, out: string): Promise<BackendState> =>
  (s.save as (outDir: string) => Promise<BackendState>)(out);

async function resume(stateDir: string, state: BackendState): Promise<BackendSession> {
  const wd = fs.mkdtempSync(path.join(work.dir, 'wd-'));
  const s = await backend.resume(stateDir, state, wd);
  sessions.push(s);
  return s;
}

before(async () => {
  const img = await fixtureImage();
  base = { dir: img.dir, state: readImageDescription(img.dir) };
  work = tempDir('cairn-docker-machine');
});

after(async () => {
  for (const s of sessions) await s.discard();
  const left = await docker(['ps', '-aq', '--filter', `label=${LABEL}`]);
  for (const id of left.stdout.split('\n').filter(Boolean)) await docker(['rm', '-f', id], { check: false });
  for (const id of savedImages) await docker(['rmi', '-f', id], { check: false });
  work?.cleanup();
});

describe('docker machine backend', () => {
  it('execs commands with stdout, stderr and exit code; check and timeouts reject with stable codes', async () => {
    const s = await resume(base.dir, base.state);
    const r = await s.machine.exec('echo out; echo err >&2; exit 3');
    assert.deepEqual(r, { stdout: 'out\n', stderr: 'err\n', exitCode: 3 });
    assert.equal((await s.machine.exec("printf '%s' \"a'b\"")).stdout, "a'b");
    await assert.rejects(s.machine.exec('false', { check: true }), isCode('E_MACHINE_EXEC'));
    await assert.rejects(s.machine.exec('sleep 5', { timeoutMs: 300 }), isCode('E_MACHINE_TIMEOUT'));
    assert.match((await s.machine.exec('cat /etc/debian_version')).stdout, /^12\./);
    await s.discard();
  });

  it('has a console with send/expect, and copies files in and out', async () => {
    const s = await resume(base.dir, base.state);
    await s.machine.console.send('X=41; echo "val=$((X+1))"\n');
    assert.equal(await s.machine.console.expect(/val=\d+/), 'val=42');
    await s.machine.console.send('echo "still $X"\n');
    assert.equal(await s.machine.console.expect(/still \d+/), 'still 41');
    await assert.rejects(s.machine.console.expect(/never-printed/, 200), isCode('E_MACHINE_TIMEOUT'));
    const host = path.join(work.dir, 'up.txt');
    fs.writeFileSync(host, 'uploaded\n');
    await s.machine.upload(host, '/tmp/up.txt');
    assert.equal((await s.machine.exec('cat /tmp/up.txt')).stdout, 'uploaded\n');
    await s.machine.exec('mkdir -p /srv/d && echo inner > /srv/d/f', { check: true });
    await s.machine.download('/srv/d', path.join(work.dir, 'down'));
    assert.equal(fs.readFileSync(path.join(work.dir, 'down', 'f'), 'utf8'), 'inner\n');
    await s.discard();
  });

  it('saves a state (commit + docker save) that resumes with the file; two resumes are isolated', async () => {
    const s = await resume(base.dir, base.state);
    await s.machine.exec('echo kept > /root/marker', { check: true });
    const out = fs.mkdtempSync(path.join(work.dir, 'state-'));
    const t0 = performance.now();
    const saved = await saveTo(s, out);
    const saveMs = performance.now() - t0;
    assert.equal(saved.backend, 'docker');
    assert.equal(saved.format, 'docker-save');
    assert.ok(fs.statSync(path.join(out, 'image.tar')).size > 1e6);
    savedImages.push(saved.imageId as string);
    // The container is gone after save.
    await assert.rejects(saveTo(s, out), isCode('E_MACHINE_STATE'));

    // Resume after the engine forgot the image: it is loaded from image.tar.
    await docker(['rmi', '-f', saved.imageId as string]);
    const t1 = performance.now();
    const a = await resume(out, saved);
    const resumeMs = performance.now() - t1;
    const b = await resume(out, saved);
    assert.equal((await a.machine.exec('cat /root/marker')).stdout, 'kept\n');
    await a.machine.exec('echo only-a > /root/a', { check: true });
    assert.equal((await b.machine.exec('test -e /root/a; echo $?')).stdout, '1\n');
    assert.equal((await b.machine.exec('cat /root/marker')).stdout, 'kept\n');
    // The base state does not see what the saved one holds.
    const c = await resume(base.dir, base.state);
    assert.equal((await c.machine.exec('test -e /root/marker; echo $?')).stdout, '1\n');
    process.stderr.write(
      `# docker save ${(saveMs / 1000).toFixed(1)}s, resume with docker load ${(resumeMs / 1000).toFixed(1)}s\n`,
    );
    for (const x of [a, b, c]) await x.discard();
  });

  it('refuses a state of another backend', async () => {
    await assert.rejects(backend.resume(base.dir, { backend: 'qemu' }, work.dir), isCode('E_MACHINE_STATE'));
  });
});
