/**
 * LocalStore permissions whatever the umask (issue 13): a store made under
 * `umask 000` or 022 cannot be changed by another local user; a store root
 * someone else can write to is refused (E_STORE_UNSAFE); `store verify`
 * reports entries that do not belong and permissive modes, and goes on.
 *
 * Real users: a system user is added with useradd for this file (the tests
 * fail, not skip, where that is impossible) and removed afterwards; its
 * attempts run in a process with its uid and gid and no other groups.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isCairnError, LocalStore } from '../src/index.js';
import { cairn, cairnBin, expectError, isolateModuleCache, lastLine, ok, repoRoot, tempDir } from './helpers.js';
import { assertVerifyClean, verify } from './fixtures/torture/support.js';
import { storeIndex } from '../src/store/internals.js';

const CHAIN = path.join(repoRoot, 'test', 'fixtures', 'chain.ts');

isolateModuleCache(after);

const USER = `cairnperm${process.pid}`.slice(0, 30);
let uid = -1;
let gid = -1;

before(() => {
  const r = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', USER], {
    encoding: 'utf8',
  });
  assert.equal(
    r.status,
    0,
    `useradd ${USER} must work for this test (it needs root and useradd): ${r.error ?? r.stderr}`,
  );
  uid = Number(spawnSync('id', ['-u', USER], { encoding: 'utf8' }).stdout);
  gid = Number(spawnSync('id', ['-g', USER], { encoding: 'utf8' }).stdout);
  assert.ok(uid > 0 && gid > 0, `${USER} has a uid and gid`);
});
after(() => {
  spawnSync('userdel', [USER]);
});

/** Runs `argv` as the other user: its uid and gid, no supplementary groups. */
function asOther(argv: string[], opts: { cwd?: string } = {}): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', ...argv], {
    encoding: 'utf8',
    cwd: opts.cwd ?? '/',
    env: { PATH: process.env.PATH, HOME: '/nonexistent' },
  });
  assert.equal(r.error, undefined, `setpriv must work for this test: ${r.error}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs `cairn --store STORE ARGS` in a child process with `umask`; returns its last line of output. */
function cairnUnder(umask: string, store: string, args: string[]): string {
  const r = spawnSync(
    'sh',
    ['-c', `umask ${umask}; exec "$0" "$@"`, process.execPath, cairnBin, '--store', store, ...args],
    { cwd: repoRoot, encoding: 'utf8' },
  );
  assert.equal(r.status, 0, `cairn ${args.join(' ')} under umask ${umask}: ${r.stderr}`);
  return r.stdout.trim() === '' ? '' : lastLine(r.stdout);
}

/** Realizes the chain in a child process with `umask`; returns the final RRef. */
function realizeUnder(umask: string, store: string, extra: string[] = []): string {
  return cairnUnder(umask, store, ['realize', CHAIN, '-q', ...extra]);
}

/**
 * Every way the other user might change the store, each tried on its own.
 * Prints {attempt: error code, or "OK" if it went through}.
 */
const ATTACK = String.raw`
const fs = require('node:fs');
const path = require('node:path');
const [store, rref, dref, rhash, sqlite] = process.argv.slice(1);
const rz = path.join(store, 'd', dref, 'r', rhash);
const out = path.join(rz, 'out');
const file = path.join(out, 'b.txt');
const res = {};
const attempt = (name, fn) => { try { fn(); res[name] = 'OK'; } catch (e) { res[name] = String(e.code); } };
const forged = 'forged\n';
attempt('write an output file', () => fs.writeFileSync(file, forged));
attempt('append to an output file', () => fs.appendFileSync(file, forged));
attempt('chmod an output file', () => fs.chmodSync(file, 0o666));
attempt('replace an output file (rename over it)', () => fs.renameSync(path.join(out, 'sub', 'nested.txt'), file));
attempt('remove an output file', () => fs.unlinkSync(file));
attempt('create a file in out/', () => fs.writeFileSync(path.join(out, 'extra'), forged));
attempt('create a file in an output subdirectory', () => fs.writeFileSync(path.join(out, 'sub', 'extra'), forged));
attempt('write meta.json', () => fs.writeFileSync(path.join(rz, 'meta.json'), '{}'));
attempt('remove meta.json', () => fs.unlinkSync(path.join(rz, 'meta.json')));
attempt('write build.log', () => fs.appendFileSync(path.join(rz, 'build.log'), forged));
attempt('chmod the realization directory', () => fs.chmodSync(rz, 0o777));
attempt('rename the realization directory', () => fs.renameSync(rz, rz + 'x'));
attempt('remove the realization directory', () => fs.rmSync(rz, { recursive: true }));
attempt('create an entry in r/', () => fs.mkdirSync(path.join(store, 'd', dref, 'r', 'a'.repeat(32))));
attempt('rename the derivation directory', () =>
  fs.renameSync(path.join(store, 'd', dref), path.join(store, 'd', dref + 'x')));
attempt('write drv.json', () => fs.writeFileSync(path.join(store, 'd', dref, 'drv.json'), '{}'));
attempt('create an entry in d/', () => fs.mkdirSync(path.join(store, 'd', 'a'.repeat(32) + '-evil')));
attempt('write index.sqlite', () => fs.appendFileSync(path.join(store, 'index.sqlite'), forged, { flag: 'r+' }));
attempt('write index.sqlite-wal', () => fs.writeFileSync(path.join(store, 'index.sqlite-wal'), forged, { flag: 'r+' }));
attempt('write index.sqlite-shm', () => fs.writeFileSync(path.join(store, 'index.sqlite-shm'), forged, { flag: 'r+' }));
attempt('create index.sqlite-journal', () =>
  fs.writeFileSync(path.join(store, 'index.sqlite-journal'), forged, { flag: 'wx' }));
attempt('take a lock in the index', () => {
  const Database = require(sqlite);
  const db = new Database(path.join(store, 'index.sqlite'), { timeout: 2000 });
  db.prepare('INSERT INTO lock (key, owner, since, what) VALUES (?, ?, ?, ?)').run('evil', '1-1', 0, 'evil');
});
attempt('create a locks directory', () => fs.mkdirSync(path.join(store, 'locks')));
attempt('create a lock file', () => fs.writeFileSync(path.join(store, 'lock'), forged, { flag: 'wx' }));
attempt('write a named root', () => fs.writeFileSync(path.join(store, 'roots', 'named', 'keep'), rref + '\n'));
attempt('create a named root', () => fs.writeFileSync(path.join(store, 'roots', 'named', 'evil'), rref + '\n'));
attempt('create an out-link root', () => fs.symlinkSync('/', path.join(store, 'roots', 'auto', 'evil')));
attempt('create in tmp/', () => fs.mkdirSync(path.join(store, 'tmp', '1-1-evil')));
attempt('write store.json', () => fs.writeFileSync(path.join(store, 'store.json'), '{}'));
attempt('create quarantine/', () => fs.mkdirSync(path.join(store, 'quarantine')));
process.stdout.write(JSON.stringify(res));
`;

const rzOf = (store: string, rref: string): string => path.join(store, 'd', rref.slice(33), 'r', rref.slice(0, 32));

function digest(p: string): string {
  return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

describe('another user cannot change a store', () => {
  for (const umask of ['000', '002', '022', '077']) {
    it(
      `created under umask ${umask}: every write, rename, create and lock attempt fails; ` +
        `realize gives the same RRef`,
      () => {
        const t = tempDir('cairn-perm');
        try {
          // The other user must be able to reach the store, or nothing is tested.
          fs.chmodSync(t.dir, 0o755);
          const store = path.join(t.dir, 'store');
          const final = realizeUnder(umask, store, ['--out-link', path.join(t.dir, 'result')]);
          const b = realizeUnder(umask, store, ['--stage', 'b']);
          cairnUnder(umask, store, ['root', 'add', 'keep', final]);
          const bFile = path.join(rzOf(store, b), 'out', 'b.txt');
          const before = { b: digest(bFile), index: digest(path.join(store, 'index.sqlite')) };

          // An open store keeps the index's -wal and -shm files, so attacks on them are real.
          const open = LocalStore.open(store);
          try {
            storeIndex(open).all();
            for (const f of ['index.sqlite-wal', 'index.sqlite-shm'])
              assert.ok(fs.existsSync(path.join(store, f)), `${f} exists`);
            const sqlite = path.join(repoRoot, 'node_modules', 'better-sqlite3');
            const r = asOther([process.execPath, '-e', ATTACK, store, b, b.slice(33), b.slice(0, 32), sqlite]);
            assert.equal(r.code, 0, `the attack script ran: ${r.stderr}`);
            const res = JSON.parse(r.stdout) as Record<string, string>;
            assert.ok(Object.keys(res).length >= 30, 'every attempt was made');
            const through = Object.entries(res).filter(([name, code]) =>
              name === 'take a lock in the index' ? !code.startsWith('SQLITE_') : code !== 'EACCES' && code !== 'EPERM',
            );
            assert.deepEqual(
              through,
              [],
              `attempts that did not fail with EACCES/EPERM (or a SQLite refusal): ${JSON.stringify(res, null, 2)}`,
            );
            const locks = storeIndex(open).db.prepare("SELECT count(*) AS n FROM lock WHERE key = 'evil'").get() as {
              n: number;
            };
            assert.equal(locks.n, 0, 'no lock row was added');
          } finally {
            open.close();
          }

          // The CLI as the other user cannot add a root either.
          const cli = asOther([process.execPath, cairnBin, '--store', store, 'root', 'add', 'evil', final], {
            cwd: repoRoot,
          });
          assert.notEqual(cli.code, 0, `cairn root add as ${USER} must fail: ${cli.stdout}`);
          assert.ok(!fs.existsSync(path.join(store, 'roots', 'named', 'evil')));

          assert.equal(digest(bFile), before.b);
          assert.equal(digest(path.join(store, 'index.sqlite')), before.index);
          assert.equal(realizeUnder('022', store), final, 'a realize afterwards yields the same RRef');
          assertVerifyClean(store);
        } finally {
          t.cleanup();
        }
      },
    );
  }
});

describe('Store.open refuses a store another user can change (E_STORE_UNSAFE)', () => {
  function refused(store: string, what: string): void {
    assert.throws(
      () => LocalStore.open(store),
      (e: unknown) => isCairnError(e, 'E_STORE_UNSAFE') && /chmod go-w/.test(e.message),
      `${what}: LocalStore.open throws E_STORE_UNSAFE with a fix`,
    );
    expectError(cairn(store, ['du']), 'E_STORE_UNSAFE');
  }

  const cases: { name: string; spoil: (store: string) => void }[] = [
    { name: 'a world-writable root', spoil: (s) => fs.chmodSync(s, 0o777) },
    { name: 'a world-writable sticky root', spoil: (s) => fs.chmodSync(s, 0o1777) },
    { name: 'a group-writable root', spoil: (s) => fs.chmodSync(s, 0o775) },
    { name: 'a world-writable d/', spoil: (s) => fs.chmodSync(path.join(s, 'd'), 0o777) },
    { name: 'a group-writable tmp/', spoil: (s) => fs.chmodSync(path.join(s, 'tmp'), 0o775) },
    { name: 'a world-writable index.sqlite', spoil: (s) => fs.chmodSync(path.join(s, 'index.sqlite'), 0o666) },
    {
      name: 'index.sqlite a symlink',
      spoil: (s) => {
        fs.renameSync(path.join(s, 'index.sqlite'), path.join(s, '..', 'elsewhere.sqlite'));
        fs.symlinkSync(path.join(s, '..', 'elsewhere.sqlite'), path.join(s, 'index.sqlite'));
      },
    },
    { name: 'a root owned by another user', spoil: (s) => fs.chownSync(s, uid, gid) },
    { name: 'd/ owned by another user', spoil: (s) => fs.chownSync(path.join(s, 'd'), uid, gid) },
  ];
  for (const c of cases) {
    it(`${c.name} is refused, with a command that fixes it`, () => {
      const t = tempDir('cairn-perm-open');
      try {
        const store = path.join(t.dir, 'store');
        LocalStore.open(store).close();
        c.spoil(store);
        refused(store, c.name);
      } finally {
        t.cleanup();
      }
    });
  }

  it('a new store gets explicit modes under umask 000: 0755 directories, 0644 index, 0444 sealed files', () => {
    const t = tempDir('cairn-perm-modes');
    try {
      const store = path.join(t.dir, 'store');
      const rref = realizeUnder('000', store, ['--out-link', path.join(t.dir, 'result')]);
      cairnUnder('000', store, ['root', 'add', 'keep', rref]);
      const mode = (p: string): string => (fs.lstatSync(path.join(store, p)).mode & 0o7777).toString(8);
      const dref = rref.slice(33);
      const expect: Record<string, string> = {
        '.': '755',
        d: '755',
        tmp: '755',
        'index.sqlite': '644',
        'store.json': '444',
        roots: '755',
        'roots/named': '755',
        'roots/named/keep': '644',
        'roots/auto': '755',
        [`d/${dref}`]: '755',
        [`d/${dref}/r`]: '755',
        [`d/${dref}/drv.json`]: '444',
        [`d/${dref}/r/${rref.slice(0, 32)}`]: '555',
        [`d/${dref}/r/${rref.slice(0, 32)}/meta.json`]: '444',
      };
      assert.deepEqual(Object.fromEntries(Object.keys(expect).map((p) => [p, mode(p)])), expect);
    } finally {
      t.cleanup();
    }
  });
});

describe('store verify: unknown entries and permissive modes', () => {
  it('reports stray entries under d/ and a real corruption in the same run, and --repair moves them aside', () => {
    const t = tempDir('cairn-perm-verify');
    try {
      const store = path.join(t.dir, 'store');
      const c = realizeUnder('022', store);
      const b = ok(cairn(store, ['realize', CHAIN, '-q', '--stage', 'b']))
        .stdout.trim()
        .split('\n')
        .pop()!;
      const a = ok(cairn(store, ['realize', CHAIN, '-q', '--stage', 'a']))
        .stdout.trim()
        .split('\n')
        .pop()!;
      const r = path.dirname(rzOf(store, b));
      // Junk in r/, a symlink with a realization's name, a file where a derivation belongs,
      // a junk directory name in d/, a non-UTF-8 name, and junk next to drv.json.
      fs.writeFileSync(path.join(r, 'junk'), 'x');
      fs.symlinkSync(rzOf(store, a), path.join(r, 'b'.repeat(32)));
      fs.writeFileSync(path.join(store, 'd', `${'c'.repeat(32)}-file`), 'x');
      fs.mkdirSync(path.join(store, 'd', 'not-a-dref'));
      fs.writeFileSync(Buffer.concat([Buffer.from(path.join(store, 'd') + '/'), Buffer.from([0xff, 0xfe])]), 'x');
      fs.writeFileSync(path.join(store, 'd', c.slice(33), 'stray'), 'x');
      // And a real corruption of another realization, found in the same run.
      const cFile = path.join(rzOf(store, c), 'out', 'c.txt');
      fs.chmodSync(cFile, 0o644);
      fs.writeFileSync(cFile, 'forged\n');
      fs.chmodSync(cFile, 0o444);

      const v = verify(store);
      assert.equal(v.code, 1);
      const kinds = v.report.problems.map((p) => `${p.kind} ${p.ref}`).sort();
      const rel = (p: string): string => path.relative(store, p);
      assert.deepEqual(
        kinds,
        [
          `modified ${c}`,
          `unknown ${rel(path.join(r, 'b'.repeat(32)))}`,
          `unknown ${rel(path.join(r, 'junk'))}`,
          `unknown d/${'c'.repeat(32)}-file`,
          `unknown d/${c.slice(33)}/stray`,
          'unknown d/not-a-dref',
          'unknown d/\\xff\\xfe', // by its bytes, as lsref shows names
        ].sort(),
      );
      assert.equal(v.report.checked, 3, 'every realization was checked');

      const rep = verify(store, { repair: true });
      assert.equal(rep.code, 0, rep.stderr);
      assert.ok(fs.existsSync(rzOf(store, a)), 'the symlink was moved, not what it points to');
      assert.equal(
        fs.readdirSync(path.join(store, 'quarantine')).length,
        7,
        'six unknown entries and the corrupt realization',
      );
      assertVerifyClean(store, 'verify after --repair');
      assert.equal(realizeUnder('022', store), c, 'realize rebuilds the quarantined realization');
    } finally {
      t.cleanup();
    }
  });

  it('reports group- and other-writable store directories, and --repair clears those bits', () => {
    const t = tempDir('cairn-perm-verify-modes');
    try {
      const store = path.join(t.dir, 'store');
      const c = realizeUnder('022', store);
      const dref = path.join('d', c.slice(33));
      fs.chmodSync(path.join(store, dref), 0o777);
      fs.chmodSync(path.join(store, dref, 'r'), 0o775);
      ok(cairn(store, ['root', 'add', 'keep', c]));
      fs.chmodSync(path.join(store, 'roots', 'named'), 0o757);
      const v = verify(store);
      assert.equal(v.code, 1);
      assert.deepEqual(
        v.report.problems.map((p) => `${p.kind} ${p.ref}`).sort(),
        [`permissive ${dref}`, `permissive ${dref}/r`, 'permissive roots/named'].sort(),
      );
      assert.equal(verify(store, { repair: true }).code, 0);
      for (const p of [dref, `${dref}/r`, 'roots/named']) {
        assert.equal(fs.statSync(path.join(store, p)).mode & 0o777, 0o755, `${p} is 0755 again`);
      }
      assertVerifyClean(store);
    } finally {
      t.cleanup();
    }
  });
});
