/**
 * The package as users get it: `npm pack`, then a real `npm ci` of the
 * tarball into a project made by `npm init -y` (CommonJS), with only
 * TypeScript and @types/node beside it. Checks that the published types
 * need no development package, that the install builds the C client when
 * a compiler exists and installs the Node fallback otherwise, and that
 * stage files with ES module syntax realize in a CommonJS project.
 *
 * Offline when the npm cache holds the dependencies (the repository's own
 * install fills it): the project's lockfile is written from the repository's,
 * so npm needs only tarballs it already has, never a registry listing.
 * better-sqlite3's install script (a prebuilt download, else a compile of
 * SQLite, minutes on a small machine) is denied through npm's allowScripts,
 * and the addon this checkout already built is copied in instead, as the
 * download would.
 */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { lastLine, repoRoot, tempDir } from './helpers.js';

interface LockEntry {
  version?: string;
  resolved?: string;
  integrity?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  dev?: boolean;
  devOptional?: boolean;
  peer?: boolean;
  [key: string]: unknown;
}
interface Lock {
  packages: Record<string, LockEntry>;
}

const RREF = /^[0-9a-df-np-sv-z]{32}-[0-9a-df-np-sv-z]{32}-[A-Za-z0-9_][A-Za-z0-9._+-]*$/;
const repoPkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  dependencies: Record<string, string>;
  bin: Record<string, string>;
  engines: Record<string, string>;
  license: string;
};
const repoLock = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8')) as Lock;

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  const started = Date.now();
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
  const took = (Date.now() - started) / 1000;
  if (took > 2) console.log(`# ${cmd} ${args.slice(0, 4).join(' ')}: ${took.toFixed(1)} s`);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** Where Node would find package `name` from the lockfile location `from` (nearest node_modules first). */
function resolveIn(lock: Lock, from: string, name: string): string {
  for (let dir = from; ; dir = dir.slice(0, Math.max(0, dir.lastIndexOf('/node_modules/')))) {
    const at = `${dir ? `${dir}/` : ''}node_modules/${name}`;
    if (lock.packages[at]) return at;
    if (!dir) throw new Error(`package-lock.json has no ${name} for ${from || 'the root'}`);
  }
}

/** The repository's lock entries that `roots` need (their closure), as a consumer's lockfile holds them. */
function closureOf(roots: string[]): Record<string, LockEntry> {
  const out: Record<string, LockEntry> = {};
  const todo = roots.map((n) => resolveIn(repoLock, '', n));
  while (todo.length > 0) {
    const at = todo.pop()!;
    if (out[at]) continue;
    const { dev: _d, devOptional: _o, peer: _p, ...entry } = repoLock.packages[at]!;
    // With the tarball's address and hash, npm takes it from its cache by
    // hash; without an address it would first ask the registry for a listing.
    const name = at.slice(at.lastIndexOf('node_modules/') + 'node_modules/'.length);
    entry.resolved ??= `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${entry.version}.tgz`;
    out[at] = entry;
    const deps = { ...entry.dependencies, ...entry.optionalDependencies };
    for (const name of Object.keys(deps)) {
      try {
        todo.push(resolveIn(repoLock, at, name));
      } catch (e) {
        if (!entry.optionalDependencies?.[name]) throw e;
      }
    }
  }
  return out;
}

/** The file's first bytes say which client it is: the compiled one (ELF) or the shell fallback. */
function clientKind(file: string): 'compiled' | 'fallback' | 'other' {
  const head = fs.readFileSync(file).subarray(0, 9);
  if (head.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return 'compiled';
  return head.toString('latin1') === '#!/bin/sh' ? 'fallback' : 'other';
}

describe('the packed package, installed into a fresh CommonJS project', () => {
  const t = tempDir('cairn-pkg');
  const pack = path.join(t.dir, 'pack');
  const project = path.join(t.dir, 'project');
  let tarball = '';
  let packedFiles: string[] = [];
  // Every command of the project: its own store and module cache, and no
  // server (a server started elsewhere on this machine must not answer).
  const env: NodeJS.ProcessEnv = {
    CAIRN_STORE: path.join(t.dir, 'store'),
    XDG_CACHE_HOME: path.join(t.dir, 'cache'),
    CAIRN_SERVER_SOCKET: path.join(t.dir, 'no-server.sock'),
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
  };
  const installed = path.join(project, 'node_modules', 'cairn', 'dist', 'bin', 'cairn');
  const npx = (args: string[], extra: NodeJS.ProcessEnv = {}) =>
    run('npx', ['--no', '--', ...args], project, { ...env, ...extra });

  before(() => {
    const started = Date.now();
    fs.mkdirSync(pack);
    fs.mkdirSync(project);
    // npm pack runs "prepare" (the build) and "postpack", as a publish does.
    const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', pack], repoRoot, env).stdout) as {
      filename: string;
      files: { path: string }[];
    }[];
    tarball = path.join(pack, packed[0]!.filename);
    packedFiles = packed[0]!.files.map((f) => f.path);

    run('npm', ['init', '-y'], project, env);
    const pkg = JSON.parse(fs.readFileSync(path.join(project, 'package.json'), 'utf8')) as Record<string, unknown>;
    const deps: Record<string, string> = {
      [repoPkg.name]: `file:${path.relative(project, tarball)}`,
      typescript: repoLock.packages['node_modules/typescript']!.version!,
      '@types/node': repoLock.packages['node_modules/@types/node']!.version!,
    };
    pkg.dependencies = deps;
    pkg.allowScripts = { [repoPkg.name]: true, 'better-sqlite3': false };
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');
    const integrity = `sha512-${createHash('sha512').update(fs.readFileSync(tarball)).digest('base64')}`;
    const lock = {
      name: pkg.name,
      version: pkg.version,
      lockfileVersion: 3,
      requires: true,
      packages: {
        '': { name: pkg.name, version: pkg.version, license: pkg.license, dependencies: deps },
        ...closureOf([...Object.keys(repoPkg.dependencies), 'typescript', '@types/node']),
        [`node_modules/${repoPkg.name}`]: {
          version: repoPkg.version,
          resolved: deps[repoPkg.name],
          integrity,
          hasInstallScript: true,
          license: repoPkg.license,
          dependencies: repoPkg.dependencies,
          bin: repoPkg.bin,
          engines: repoPkg.engines,
        },
      },
    };
    fs.writeFileSync(path.join(project, 'package-lock.json'), JSON.stringify(lock, null, 2) + '\n');
    run('npm', ['ci', '--prefer-offline'], project, env);
    const addon = path.join(
      path.dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json')),
      'build',
      'Release',
      'better_sqlite3.node',
    );
    const into = path.join(project, 'node_modules', 'better-sqlite3', 'build', 'Release');
    fs.mkdirSync(into, { recursive: true });
    fs.copyFileSync(addon, path.join(into, 'better_sqlite3.node'));
    console.log(`# pack and install took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });
  after(() => t.cleanup());

  it('ships no machine code: the command in the tarball is the Node fallback', () => {
    assert.ok(packedFiles.includes('dist/bin/cairn'), 'the bin entry is in the tarball, so npm can link it');
    assert.ok(packedFiles.includes('cli/client/cairn.c') && packedFiles.includes('scripts/install-client.sh'));
    assert.ok(packedFiles.includes('cli/client/spawn.c'), 'the spawn helper is built at install');
    assert.ok(!packedFiles.includes('dist/bin/cairn-spawn'), 'no spawn helper binary in the tarball');
    const script = run('tar', ['-xzOf', tarball, 'package/dist/bin/cairn'], pack).stdout;
    assert.match(script, /^#!\/bin\/sh\n/);
    assert.match(script, /cli\/main\.js/);
    // postpack built this checkout's own client again
    assert.equal(clientKind(path.join(repoRoot, 'dist', 'bin', 'cairn')), 'compiled');
  });

  it('type-checks in a strict NodeNext project with skipLibCheck false and no @types/better-sqlite3', () => {
    assert.equal(fs.existsSync(path.join(project, 'node_modules', '@types', 'better-sqlite3')), false);
    fs.writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify(
        {
          compilerOptions: {
            strict: true,
            module: 'NodeNext',
            moduleResolution: 'NodeNext',
            target: 'ES2022',
            skipLibCheck: false,
            noEmit: true,
          },
          files: ['check.mts'],
        },
        null,
        2,
      ),
    );
    fs.writeFileSync(
      path.join(project, 'check.mts'),
      [
        "import { stage, realize, LocalStore, type Store, best } from 'cairn';",
        "const data = stage({ name: 'data', config: { n: 3 }, build: ({ out }) => { void out; } });",
        "const store = LocalStore.open('/tmp/unused');\nconst asInterface: Store = store;\nvoid asInterface;",
        'const result = await realize([data], { store });',
        'console.log(result, best);',
        '',
      ].join('\n'),
    );
    npx(['tsc', '-p', 'tsconfig.json']);
  });

  it('the install compiled the C client here, and the command runs', () => {
    assert.equal(clientKind(installed), 'compiled');
    assert.equal(fs.realpathSync(path.join(project, 'node_modules', '.bin', 'cairn')), installed);
    const helper = path.join(path.dirname(installed), 'cairn-spawn');
    assert.equal(fs.readFileSync(helper).subarray(0, 4).toString('latin1'), '\x7fELF', 'the spawn helper was built');
    fs.writeFileSync(
      path.join(project, 'one.ts'),
      "import { stage } from 'cairn';\nexport default stage({ name: 'one', config: { n: 1 }, build: () => {} });\n",
    );
    assert.match(lastLine(npx(['cairn', 'realize', 'one.ts']).stdout), RREF);
  });

  it('without a C compiler, or with one that fails, the install succeeds with the Node fallback', () => {
    for (const cc of ['/nonexistent/cc', 'false']) {
      const r = run('npm', ['rebuild', 'cairn', '--foreground-scripts'], project, { ...env, CC: cc });
      assert.match(r.stderr + r.stdout, /runs the Node CLI directly/);
      assert.equal(clientKind(installed), 'fallback', `CC=${cc}`);
      assert.match(lastLine(npx(['cairn', 'realize', 'one.ts']).stdout), RREF);
    }
    run('npm', ['rebuild', 'cairn'], project, env);
    assert.equal(clientKind(installed), 'compiled');
  });

  it('realizes stage files with ES module syntax in the CommonJS project that npm init -y makes', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(project, 'package.json'), 'utf8')) as { type?: string };
    assert.notEqual(pkg.type, 'module');
    fs.writeFileSync(path.join(project, 'helper.js'), 'module.exports = { twice: (x) => 2 * x };\n');
    fs.writeFileSync(path.join(project, 'lib.ts'), 'export const greeting: string = "hi";\n');
    // TypeScript with import.meta and top-level await (TS1470 and TS1309 under tsc in a CommonJS
    // project), a local TypeScript import, and a CommonJS helper.
    fs.writeFileSync(
      path.join(project, 'pipeline.ts'),
      [
        "import { stage } from 'cairn';",
        "import * as fs from 'node:fs/promises';",
        "import { greeting } from './lib.js';",
        "import helper from './helper.js';",
        "const here = new URL('.', import.meta.url);",
        "const pkg = JSON.parse(await fs.readFile(new URL('package.json', here), 'utf8')) as { name: string };",
        'export default stage({',
        "  name: 'pipeline', config: { name: pkg.name, greeting, n: helper.twice(21) },",
        '  build: async ({ config, out }) => {',
        '    await fs.writeFile(`${out}/said.txt`, `${config.greeting} ${config.n}`);',
        '  },',
        '});',
        '',
      ].join('\n'),
    );
    // JavaScript with import syntax and a bare package import (module hooks), where Node would
    // take the .js file for CommonJS.
    fs.writeFileSync(
      path.join(project, 'pipeline.js'),
      [
        "import { stage } from 'cairn';",
        "import ts from 'typescript';",
        "import helper from './helper.js';",
        "export default stage({ name: 'js', config: { ts: ts.version, n: helper.twice(2) }, build: () => {} });",
        '',
      ].join('\n'),
    );
    const ts = lastLine(npx(['cairn', 'realize', 'pipeline.ts']).stdout);
    assert.match(ts, RREF);
    assert.equal(npx(['cairn', 'catref', ts, 'said.txt']).stdout, 'hi 42');
    assert.match(lastLine(npx(['cairn', 'realize', 'pipeline.js']).stdout), RREF);
  });

  it('the fix the README names for tsc in a CommonJS project: a .mts stage file type-checks and realizes', () => {
    fs.writeFileSync(
      path.join(project, 'typed.mts'),
      [
        "import { stage } from 'cairn';",
        "import * as fs from 'node:fs/promises';",
        "const text = await fs.readFile(new URL('package.json', import.meta.url), 'utf8');",
        'const pkg = JSON.parse(text) as { name: string };',
        "export default stage({ name: 'typed', config: { name: pkg.name }, build: () => {} });",
        '',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(project, 'tsconfig.mts.json'),
      JSON.stringify({
        // Cairn's own types were checked above: this checks the stage file.
        compilerOptions: { strict: true, module: 'NodeNext', target: 'ES2022', skipLibCheck: true, noEmit: true },
        files: ['typed.mts'],
      }),
    );
    npx(['tsc', '-p', 'tsconfig.mts.json']);
    assert.match(lastLine(npx(['cairn', 'realize', 'typed.mts']).stdout), RREF);
  });
});
