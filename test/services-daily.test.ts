/**
 * The daily service commands through the CLI against the real engine, on a
 * PostgreSQL ensemble (ping = SQL SELECT 1): logs (merged, prefixed,
 * coloured only on a terminal; -f following lines as they are written and
 * across a restart, ended by SIGINT), exec (exit status, stdin, options of
 * the command), run --rm (context env, the network, exit status, removed
 * also on SIGINT; leftovers removed by stop --remove), the restart policy
 * bringing back a service whose process was killed from the host, and
 * health: an unhealthy service shown by status and restarted by
 * status --watch.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { cairn, cairnBin, expectError, isolateModuleCache, ok, tempDir } from './helpers.js';
import { docker } from '../src/backends/containers/docker.js';
import { FIXTURE_STORE, fixtureImage } from './fixtures/services/images.js';
import { fixtureFile, inspect, removeEnsemble, services } from './fixtures/services/support.js';

isolateModuleCache(after, 'cairn-services-daily-cache');

const NAME = 'daily-t';
const file = fixtureFile('daily.ts');
let state: { dir: string; cleanup: () => void };
let env: NodeJS.ProcessEnv;
const run = (...args: string[]) => services([...args.slice(0, 1), '--state-dir', state.dir, ...args.slice(1)], env);
const started: ChildProcess[] = [];

before(async () => {
  await fixtureImage();
  await removeEnsemble(NAME);
  state = tempDir('cairn-services-daily');
  env = { SVC_ENSEMBLE: NAME };
});
after(async () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await removeEnsemble(NAME);
  state?.cleanup();
});

/** A `cairn services …` process left running, with its output so far and a way to wait for a line. */
function background(args: string[]) {
  const child = spawn(
    process.execPath,
    [cairnBin, '--store', FIXTURE_STORE, 'services', args[0]!, '-p', NAME, ...args.slice(1)],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  started.push(child);
  const o = { out: '', err: '' };
  child.stdout.setEncoding('utf8').on('data', (d: string) => (o.out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (o.err += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const waitFor = async (re: RegExp, what: string, ms = 30_000): Promise<void> => {
    for (const t0 = Date.now(); !re.test(o.out); await sleep(100))
      if (Date.now() - t0 > ms || child.exitCode !== null)
        assert.fail(`${what}: no ${re} in\n${o.out}\nstderr: ${o.err}`);
  };
  return { child, o, exited, waitFor };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  for (const t0 = Date.now(); ; await sleep(250)) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
  }
}

/** Writes a line to the service's log, as its main process would (pid 1's stdout is the log). */
const say = (service: string, text: string) =>
  docker(['exec', `cairn.${NAME}.${service}`, 'sh', '-c', `printf '%s\\n' '${text}' > /proc/1/fd/1`]);

const policy = (service: string) =>
  docker(['inspect', '--format', '{{.HostConfig.RestartPolicy.Name}}', `cairn.${NAME}.${service}`]);

const oneOffs = async (): Promise<string[]> =>
  (await docker(['ps', '-aq', '--filter', `label=cairn.ensemble=${NAME}`, '--filter', 'label=cairn.oneoff'])).stdout
    .split('\n')
    .filter(Boolean);

/** The host pid of the service's main process: the child of its init (tini, from --init). */
async function mainPid(service: string): Promise<number> {
  const init = (await docker(['inspect', '--format', '{{.State.Pid}}', `cairn.${NAME}.${service}`])).stdout.trim();
  const children = fs.readFileSync(`/proc/${init}/task/${init}/children`, 'utf8').trim().split(/\s+/);
  assert.equal(children.length, 1, `init of ${service} has one child: ${children.join(' ')}`);
  return Number(children[0]);
}

interface Status {
  services: {
    name: string;
    state: string;
    health?: string;
    healthDetail?: string;
    restarts?: number;
    container: string;
  }[];
}
const status = async (): Promise<Status> => JSON.parse(ok(await run('status', file, '--json')).stdout) as Status;

describe('services: daily commands', () => {
  it('exec needs a running service: E_SERVICE_NOT_RUNNING; an unknown one is E_SERVICE_INVALID', async () => {
    const r = await run('exec', file, 'db', 'true');
    expectError(r, 'E_SERVICE_NOT_RUNNING');
    assert.match(r.stderr, /db is not running \(no container\)/);
    expectError(await run('exec', file, 'nope', 'true'), 'E_SERVICE_INVALID');
    expectError(await run('logs', file, 'nope'), 'E_SERVICE_INVALID');
    expectError(await run('logs', file, '--since', 'yesterday'), 'E_USAGE');
    expectError(await run('logs', file, '--tail', '-3'), 'E_USAGE');
  });

  it('starts the ensemble with the engine restart policy of each service', async () => {
    const r = ok(await run('start', file));
    assert.match(r.stdout, /^db\s+created/m);
    assert.equal((await policy('db')).stdout.trim(), 'on-failure');
    assert.equal((await policy('app')).stdout.trim(), 'no');
    // A changed policy updates the running container in place: same container, no second postStartInit.
    const id = (await inspect(NAME, 'db'))!.Id;
    const again = ok(await services(['start', '--state-dir', state.dir, file], { ...env, SVC_RESTART: 'always' }));
    assert.match(again.stdout, /^db\s+running/m);
    const now = await docker(['inspect', '--format', '{{.Id}} {{.HostConfig.RestartPolicy.Name}}', `cairn.${NAME}.db`]);
    assert.equal(now.stdout.trim(), `${id} unless-stopped`);
    ok(await run('start', file));
    assert.equal((await policy('db')).stdout.trim(), 'on-failure');
  });

  it('logs: merged by time, prefixed and aligned; no colour when piped or with NO_COLOR, colour on a TTY', async () => {
    await say('app', 'second line');
    const r = ok(await run('logs', file));
    assert.match(r.stdout, /^db {2}\| .*database system is ready to accept connections$/m);
    assert.match(r.stdout, /^app \| app up, db postgres\napp \| second line$/m);
    assert.doesNotMatch(r.stdout, /\x1b\[/);
    const ready = r.stdout.indexOf('ready to accept connections');
    assert.ok(ready >= 0 && ready < r.stdout.indexOf('app up'), 'db was ready before app started');
    assert.equal(ok(await run('logs', file, '--tail', '1', 'app')).stdout, 'app | second line\n');
    assert.match(ok(await run('logs', file, '-t', 'app')).stdout, /^app \| \d{4}-\d\d-\d\dT[\d:.]+Z app up/m);
    assert.equal(ok(await run('logs', file, '--since', '1h', 'app', '--tail', 'all')).stdout.split('\n').length, 3);
    // On a terminal (script(1) gives it one): coloured prefixes, unless NO_COLOR.
    const onTty = (extra: NodeJS.ProcessEnv) => {
      const cmd = [
        process.execPath,
        cairnBin,
        '--store',
        FIXTURE_STORE,
        'services',
        'logs',
        '-p',
        NAME,
        '--state-dir',
        state.dir,
      ]
        .concat([file, 'app'])
        .map((a) => `'${a}'`)
        .join(' ');
      const s = spawnSync('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, ...env, ...extra } });
      assert.equal(s.status, 0, String(s.stderr));
      return s.stdout.toString();
    };
    assert.match(onTty({}), /\x1b\[36mapp \| \x1b\[0mapp up/);
    assert.doesNotMatch(onTty({ NO_COLOR: '1' }), /\x1b\[3/);
  });

  it('logs -f prints lines as they are written, whole, across a restart, until SIGINT (exit 0)', async () => {
    const f = background(['logs', '--state-dir', state.dir, '-f', '--tail', '1', file]);
    await f.waitFor(/^app \| second line$/m, 'history');
    await f.waitFor(/^db {2}\| /m, 'history of db');
    await say('app', 'marker-1');
    await f.waitFor(/^app \| marker-1$/m, 'a line written while following');
    // A line written in two pieces is printed whole.
    await docker([
      'exec',
      `cairn.${NAME}.app`,
      'sh',
      '-c',
      "printf 'part-' > /proc/1/fd/1; sleep 0.3; echo two > /proc/1/fd/1",
    ]);
    await f.waitFor(/^app \| part-two$/m, 'a line written in two pieces');
    await docker(['restart', '--time', '1', `cairn.${NAME}.app`]);
    await f.waitFor(/part-two\n(.*\n)*app \| app up, db postgres$/m, 'the output after the restart');
    await say('app', 'marker-2');
    await f.waitFor(/^app \| marker-2$/m, 'a line written after the restart');
    f.child.kill('SIGINT');
    assert.equal(await f.exited, 0, f.o.err);
    assert.equal(f.o.out.match(/marker-1/g)?.length, 1, 'no line is printed twice after the restart');
    assert.equal(f.o.err, '');
    const left = spawnSync('pgrep', ['-f', `logs --follow --timestamps .*cairn\\.${NAME}\\.`]);
    assert.equal(left.stdout.toString(), '', 'the docker logs processes end with it');
  });

  it('logs -f into a closed pipe (`| head`) stops its docker processes and exits 0, as a follow ends', async () => {
    const f = background(['logs', '--state-dir', state.dir, '-f', '--tail', '1', file, 'app']);
    await f.waitFor(/^app \| /m, 'history');
    f.child.stdout.destroy(); // the reader is gone; the next line cairn writes fails with EPIPE
    await say('app', 'after-close');
    assert.equal(await f.exited, 0, f.o.err);
    assert.equal(f.o.err, '');
    const left = spawnSync('pgrep', ['-f', `logs --follow --timestamps .*cairn\\.${NAME}\\.`]);
    assert.equal(left.stdout.toString(), '', 'the docker logs processes end with it');
  });

  it('exec: exit status, stdin, the command keeps its options; -e, -u', async () => {
    assert.equal((await run('exec', file, 'db', 'sh', '-c', 'exit 3')).code, 3);
    const cat = cairn(
      FIXTURE_STORE,
      ['services', 'exec', '-p', NAME, '--state-dir', state.dir, '-T', file, 'db', 'cat'],
      {
        env,
        input: 'through stdin\n',
      },
    );
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'through stdin\n');
    const ls = await run('exec', file, 'db', 'ls', '-d', '/tmp');
    assert.equal(ls.stdout, '/tmp\n');
    const who = ok(await run('exec', '-u', 'postgres', '-e', 'X=y z', file, 'db', 'sh', '-c', 'echo "$(id -un) $X"'));
    assert.equal(who.stdout, 'postgres y z\n');
    expectError(await run('exec', '-e', 'no-equals', file, 'db', 'true'), 'E_SERVICE_INVALID');
    // The engine's status for a command it cannot find (126 on this engine; 127 on others).
    assert.ok([126, 127].includes((await run('exec', file, 'db', 'no-such-command')).code!));
  });

  it('run --rm: the service image and context env, on the network, exit status passed on, container gone', async () => {
    const r = await run(
      'run',
      '--rm',
      file,
      'app',
      'sh',
      '-c',
      'echo "DB=$DB"; runuser -u postgres -- psql -h db -tAc "SELECT 40+2"; exit 7',
    );
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'DB=postgres\n42\n');
    assert.deepEqual(await oneOffs(), []);
  });

  it('run --rm: SIGINT removes the one-off at once and exits 130', async () => {
    const f = background(['run', '--state-dir', state.dir, '--rm', '--no-deps', file, 'app', 'sleep', '300']);
    const id = await until('the one-off to run', async () => {
      const ids = await oneOffs();
      return ids.length === 1 && (await docker(['inspect', '--format', '{{.State.Running}}', ids[0]!])).stdout.trim()
        ? ids[0]
        : undefined;
    });
    assert.ok(id);
    f.child.kill('SIGINT');
    assert.equal(await f.exited, 130, f.o.err);
    assert.deepEqual(await oneOffs(), []);
  });

  it('a one-off is never counted as the service; stop --remove removes leftovers', async () => {
    const appId = (await inspect(NAME, 'app'))!.Id;
    assert.equal((await run('run', '--no-deps', file, 'app', 'true')).code, 0);
    assert.equal((await oneOffs()).length, 1, 'without --rm the one-off is kept');
    const st = await status();
    assert.equal(st.services.find((s) => s.name === 'app')!.container, appId.slice(0, 12));
    assert.equal(st.services.length, 2);
    ok(await run('stop', file, '--exclude', 'db'));
    assert.equal((await oneOffs()).length, 1, 'stop without --remove leaves one-offs');
    // Removing app (db stays) takes app's one-offs with it.
    ok(await run('stop', file, '--remove', '--exclude', 'db'));
    assert.deepEqual(await oneOffs(), []);
    ok(await run('start', file));
  });

  it('the restart policy brings back a service whose main process was killed from the host', async () => {
    const before = (await inspect(NAME, 'db'))!;
    process.kill(await mainPid('db'), 'SIGKILL');
    await until('db to be restarted by the engine', async () => {
      const r = await docker(['inspect', '--format', '{{.RestartCount}} {{.State.Running}}', `cairn.${NAME}.db`]);
      return /^[1-9]\d* true$/.test(r.stdout.trim()) ? true : undefined;
    });
    assert.equal((await inspect(NAME, 'db'))!.Id, before.Id, 'the same container');
    const st = await until('db to answer its ping again', async () => {
      const s = await status();
      return s.services[0]!.health === 'healthy' ? s : undefined;
    });
    assert.ok((st.services[0]!.restarts ?? 0) >= 1);
    assert.match(ok(await run('status', file)).stdout, /^db\s+running\s+healthy .*restarts: [1-9]/m);
  });

  it('status shows a hung service unhealthy; status --watch restarts it by its policy, until SIGINT', async () => {
    process.kill(await mainPid('db'), 'SIGSTOP');
    const st = await status();
    const db = st.services.find((s) => s.name === 'db')!;
    assert.equal(db.state, 'running');
    assert.equal(db.health, 'unhealthy');
    assert.match(db.healthDetail ?? '', /no answer within 2\.0s|timed out/);
    assert.match(ok(await run('status', file)).stdout, /^db\s+running\s+unhealthy /m);
    const w = background(['status', '--state-dir', state.dir, '--watch', file]);
    await w.waitFor(/db: unhealthy: .*; restarting it \(policy on-failure\)/, 'the watch to restart db', 60_000);
    await w.waitFor(/db: restarted$/m, 'the restart', 30_000);
    await w.waitFor(/db: healthy again$/m, 'db to answer after the restart', 60_000);
    w.child.kill('SIGINT');
    assert.equal(await w.exited, 0, w.o.err);
    assert.equal((await status()).services[0]!.health, 'healthy');
  });

  it('down removes one-offs left behind, with the rest of the project', async () => {
    assert.equal((await run('run', '--no-deps', file, 'app', 'true')).code, 0);
    assert.equal((await oneOffs()).length, 1);
    ok(await run('down', file));
    assert.deepEqual(await oneOffs(), []);
    assert.equal(await inspect(NAME, 'db'), undefined);
  });
});
