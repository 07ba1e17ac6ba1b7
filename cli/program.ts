import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import type * as CommanderTypes from 'commander';
import { CairnError, isCairnError } from '../src/errors.js';
import { inputHashStats, instantiate } from '../src/stages/instantiate.js';
import { loadStageFile } from '../src/stages/load.js';
import { realize } from '../src/stages/realize.js';
import { parseDisplayPath } from '../src/store/fsutil.js';
import { parseRef, type RRef } from '../src/store/refs.js';
import { defaultStoreRoot, Store } from '../src/store/store.js';
import { collectGarbage } from '../src/store/gc.js';
import { failedLogs } from '../src/store/failed-logs.js';
import { addNamedRoot, listRoots, removeNamedRoot } from '../src/store/roots.js';
import { verifyStore } from '../src/store/verify.js';
import { parseDuration } from '../src/duration.js';
import { formatBytes, listTree } from './format.js';
import { progressReporter } from './progress.js';
import { registerSync } from './sync.js';
import { registerMachine } from './machine.js';
import { registerServices } from './services.js';
import { registerServer } from './server.js';

// require(), not import: ESM importing a CommonJS package runs Node's
// cjs-module-lexer over it on every start (see src/store/index-db.ts).
const { Command, Option } = createRequire(import.meta.url)('commander') as typeof CommanderTypes;

/** The first word that is neither an option nor the value of `--store`: the command. */
export function commandWord(words: readonly string[]): string | undefined {
  return words.find((w, i) => !w.startsWith('-') && words[i - 1] !== '--store');
}

export interface CliProgram {
  program: CommanderTypes.Command;
  /** Closes every store the command opened. */
  closeStores(): void;
}

/**
 * A fresh `cairn` command tree for one run: `argv` is a full process argv
 * (node, script, words...). The standalone CLI makes one per process; a
 * server worker makes one per request, so no parsed state carries over, and
 * asks for `exitOverride` (commander then throws instead of exiting).
 */
export function createProgram(argv: readonly string[], opts: { exitOverride?: boolean } = {}): CliProgram {
  const program = new Command('cairn')
    .description('Content-addressed store and build system: stages, derivations, realizations, matchers.')
    .option('--store <dir>', 'store root (default: $CAIRN_STORE, else $XDG_DATA_HOME/cairn)')
    .showHelpAfterError()
    .configureOutput({ outputError: (s, write) => write(s) });
  // Set before any command is added: commands copy it when created. A server
  // worker must not let commander end its process (help, usage errors).
  if (opts.exitOverride) program.exitOverride();

  // Every store a command opens is closed when the command ends (see
  // closeStores), which matters to a server worker that runs many commands.
  const stores: Store[] = [];
  const openStore = (): Store => {
    const store = Store.open(program.opts<{ store?: string }>().store ?? defaultStoreRoot());
    stores.push(store);
    return store;
  };
  const out = (s: string): void => { process.stdout.write(s.endsWith('\n') ? s : s + '\n'); };

  /** A DRef stands for its newest realization where one realization is needed. */
  function oneRealization(store: Store, ref: string): RRef {
    const rrefs = store.resolve(ref);
    if (rrefs.length === 0) throw new CairnError('E_NO_SUCH_REF', `${ref} has no realizations`, { ref });
    if (rrefs.length > 1) process.stderr.write(`note: ${ref} has ${rrefs.length} realizations; using the newest, ${rrefs[rrefs.length - 1]}\n`);
    return rrefs[rrefs.length - 1]!;
  }

  function parseCount(v: string, flag: string): number {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new CairnError('E_USAGE', `${flag} needs a whole number >= 1, not ${JSON.stringify(v)}`);
    return n;
  }
  const parseJobs = (v: string): number => parseCount(v, '-j');

  program.command('realize')
    .description('realize the stages of FILE and print the target RRefs as the last line of stdout')
    .argument('<file>', 'stage file (.ts or .js), or a pipeline (cairn.yaml, dvc.yaml)')
    .option('-s, --stage <name...>', 'export or stage name to realize (default: the default export)')
    .option('-j, --jobs <n>', 'builds at once (default: cores)', parseJobs)
    .option('-f, --force [name...]', 'rebuild these stages (all stages when no name is given)')
    .option('-n, --dry-run', 'print what would be built, build nothing')
    .option('--keep-failed', 'keep the build directory of a failed build under STORE/failed/')
    .option('-v, --verbose',
      'show build logs live on stderr, with what programs run through exec print, each line prefixed by its stage')
    .option('-q, --quiet', 'no progress output')
    .option('-o, --out-link <path>', 'make PATH a symlink to the target output and a gc root (more targets: PATH-2, PATH-3, ...)')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o: { stage?: string[]; jobs?: number; force?: true | string[]; dryRun?: boolean; keepFailed?: boolean; verbose?: boolean; quiet?: boolean; json?: boolean; outLink?: string }) => {
      // A server worker runs many commands: count this one's hashing only.
      const hashing = inputHashStats();
      const loaded = await loadStageFile(file, o.stage ?? []);
      const graph = instantiate(loaded.targets);
      const now = inputHashStats();
      const hashed = {
        files: now.files - hashing.files, hashedFiles: now.hashedFiles - hashing.hashedFiles,
        hashedBytes: now.hashedBytes - hashing.hashedBytes, cacheHits: now.cacheHits - hashing.cacheHits,
      };
      const store = openStore();
      const tty = process.stderr.isTTY === true;
      const progress = progressReporter(graph.order.length, { tty, verbose: !!o.verbose, quiet: !!o.quiet || (!!o.json && !tty) });
      const t0 = performance.now();
      let result;
      try {
        result = await realize(graph, { store, jobs: o.jobs, force: o.force, dryRun: o.dryRun, keepFailed: o.keepFailed, outLink: o.outLink, events: progress });
      } finally {
        progress.finish();
      }
      const ms = performance.now() - t0;
      if (o.json) {
        out(JSON.stringify({
          store: store.root, dryRun: !!o.dryRun, builds: result.builds, ms: Math.round(ms), targets: result.targets, plan: result.plan,
          ...(result.inputs.length > 0 ? { inputs: result.inputs, hashed } : {}),
        }, null, 2));
        return;
      }
      if (o.dryRun) {
        for (const p of result.inputs) out(`${p.action === 'cached' ? 'cached' : 'import'} ${p.dref}`);
        for (const p of result.plan) out(`${p.action.padEnd(6)} ${p.dref}`);
        const n = result.plan.filter((p) => p.action !== 'cached').length;
        const imports = result.inputs.filter((p) => p.action !== 'cached').length;
        out(`${n} to build, ${result.plan.length - n} cached${imports > 0 ? `, ${imports} file input(s) to import` : ''}`);
        return;
      }
      if (!o.quiet) {
        const cached = result.plan.filter((p) => p.action === 'cached').length;
        const imported = result.inputs.filter((p) => p.action !== 'cached').length;
        process.stderr.write(`realized ${result.plan.length} stage(s) in ${(ms / 1000).toFixed(2)}s: ${result.plan.length - cached} built (${result.builds} build run(s)), ${cached} cached${imported > 0 ? `, ${imported} file input(s) imported` : ''}\n`);
      }
      out(result.targets.flatMap((t) => t.rrefs).join(' '));
    });

  program.command('instantiate')
    .description('print the DRefs of the stages of FILE (dependencies first), building nothing')
    .argument('<file>')
    .option('-s, --stage <name...>', 'export or stage name')
    .option('--json', 'print derivations as JSON, with their canonical configs')
    .action(async (file: string, o: { stage?: string[]; json?: boolean }) => {
      const graph = instantiate((await loadStageFile(file, o.stage ?? [])).targets);
      if (o.json) {
        out(JSON.stringify({
          targets: graph.targets,
          derivations: graph.order.map((d) => {
            const n = graph.nodes.get(d)!;
            return { dref: d, name: n.name, deps: n.deps, drv: JSON.parse(n.drvJson) as unknown };
          }),
        }, null, 2));
      } else {
        for (const d of graph.order) out(d);
      }
    });

  program.command('lsref')
    .description('list the realizations of a DRef, or the files of an RRef')
    .argument('<ref>')
    .action((ref: string) => {
      const store = openStore();
      const p = parseRef(ref);
      if (p.kind === 'drv') {
        for (const rref of store.resolve(ref)) {
          const row = store.index.get(rref)!;
          out(`${rref}  ${new Date(row.created).toISOString()}  ${formatBytes(row.bytes)}`);
        }
        return;
      }
      store.resolve(ref);
      for (const line of listTree(store.outPath(p.rref))) out(line);
    });

  program.command('catref')
    .description('print a file of a realization')
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .argument('<path>', 'path inside the output')
    .action((ref: string, rel: string) => {
      const store = openStore();
      const base = store.outPath(oneRealization(store, ref));
      const file = path.resolve(base, rel);
      if (file !== base && !file.startsWith(base + path.sep)) throw new CairnError('E_NO_SUCH_PATH', `${rel} is outside the realization`, { path: rel });
      let data: Buffer;
      try { data = fs.readFileSync(file); } catch {
        // A name that is not UTF-8, as lsref shows it (`a\xff`): argv cannot carry its bytes.
        const bytes = parseDisplayPath(file);
        try {
          if (bytes === null) throw new Error('no escapes');
          data = fs.readFileSync(bytes);
        } catch {
          throw new CairnError('E_NO_SUCH_PATH', `${rel} does not exist in ${ref} (or is a directory); see cairn lsref`,
            { path: rel });
        }
      }
      process.stdout.write(data);
    });

  program.command('shellref')
    .description("open a shell in a realization's output directory")
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .option('-c, --command <cmd>', 'run this command instead of an interactive shell')
    .action((ref: string, o: { command?: string }) => {
      const store = openStore();
      const rref = oneRealization(store, ref);
      const dir = store.outPath(rref);
      const shell = process.env.SHELL || '/bin/sh';
      const r = spawnSync(shell, o.command ? ['-c', o.command] : [], {
        cwd: dir, stdio: 'inherit', env: { ...process.env, CAIRN_RREF: rref, CAIRN_OUT: dir, CAIRN_STORE: store.root },
      });
      process.exitCode = r.status ?? 1;
    });

  program.command('rmref')
    .description('remove a realization, or every realization of a derivation and the derivation')
    .argument('<ref...>')
    .option('--force', 'remove even if other realizations were built from it')
    .action((refs: string[], o: { force?: boolean }) => {
      const store = openStore();
      for (const ref of refs) {
        const p = parseRef(ref);
        const rrefs = store.resolve(ref);
        for (const r of rrefs) store.remove(r, o);
        if (p.kind === 'drv') store.removeDrv(p.dref);
        out(`removed ${ref}${p.kind === 'drv' ? ` (${rrefs.length} realization(s))` : ''}`);
      }
    });

  program.command('du')
    .description('disk use: of the whole store by derivation, or of one reference and its closure')
    .argument('[ref]')
    .option('--bytes', 'print plain byte counts')
    .action((ref: string | undefined, o: { bytes?: boolean }) => {
      const store = openStore();
      const fmt = (n: number): string => (o.bytes ? String(n) : formatBytes(n));
      if (ref) {
        const own = store.resolve(ref);
        const sum = (rs: RRef[]): number => rs.reduce((a, r) => a + (store.index.get(r)?.bytes ?? 0), 0);
        const closure = store.closure(own);
        out(`${fmt(sum(own))}\t${ref} (${own.length} realization(s))`);
        out(`${fmt(sum(closure))}\tclosure (${closure.length} realization(s))`);
        return;
      }
      const byDrv = new Map<string, { bytes: number; count: number }>();
      for (const row of store.index.all()) {
        const e = byDrv.get(row.dref) ?? { bytes: 0, count: 0 };
        e.bytes += row.bytes;
        e.count++;
        byDrv.set(row.dref, e);
      }
      let total = 0;
      let count = 0;
      for (const [dref, e] of [...byDrv].sort((a, b) => b[1].bytes - a[1].bytes)) {
        out(`${fmt(e.bytes)}\t${e.count}\t${dref}`);
        total += e.bytes;
        count += e.count;
      }
      out(`${fmt(total)}\t${count}\ttotal`);
    });

  program.command('log')
    .description('print the build log of a realization, or with --failed the kept log of a failed build')
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .option('--failed', "print the newest failed build's log of the DRef (kept in STORE/failed-logs/)")
    .option('--list', 'with --failed: list the kept failed logs, oldest first, with their times')
    .action((ref: string, o: { failed?: boolean; list?: boolean }) => {
      const store = openStore();
      if (o.list && !o.failed) throw new CairnError('E_USAGE', '--list goes with --failed');
      if (o.failed) {
        const p = parseRef(ref);
        if (p.kind !== 'drv') {
          throw new CairnError('E_USAGE', `--failed needs a DRef (failed builds have no RRef), not ${ref}`, { ref });
        }
        const logs = failedLogs(store, p.dref);
        if (logs.length === 0) {
          throw new CairnError('E_NO_SUCH_REF', `no failed build of ${ref} has a kept log`, { ref });
        }
        if (o.list) for (const l of logs) out(`${new Date(l.time).toISOString()}  ${l.file}`);
        else process.stdout.write(fs.readFileSync(logs[logs.length - 1]!.file));
        return;
      }
      const p = parseRef(ref);
      if (p.kind === 'drv' && store.resolve(ref).length === 0 && failedLogs(store, p.dref).length > 0) {
        const hint = `its builds failed: see cairn log ${ref} --failed`;
        throw new CairnError('E_NO_SUCH_REF', `${ref} has no realizations; ${hint}`, { ref });
      }
      process.stdout.write(fs.readFileSync(path.join(store.rzDir(oneRealization(store, ref)), 'build.log')));
    });

  const storeCmd = program.command('store').description('store upkeep: garbage collection and verification');

  storeCmd.command('gc')
    .description('delete realizations not reachable from a root (named roots, out-links, running builds)')
    .option('-n, --dry-run', 'report what would be deleted')
    .option('--keep-last <n>', 'also keep the N newest realizations of every derivation', (v) => parseCount(v, '--keep-last'))
    .option('--keep-best <n>', 'also keep the N best-scoring realizations of every derivation, scored as best() does',
      (v) => parseCount(v, '--keep-best'))
    .option('--score-file <path>', 'with --keep-best: the file in each output that holds the score', 'score.txt')
    .option('--score-key <key>', 'with --keep-best: the score is this numeric field of the JSON object in the file')
    .option('--lowest', 'with --keep-best: lower scores are better')
    .option('--older-than <duration>',
      'only delete realizations (and failed-build logs) older than this (e.g. 30d, 12h, 45m)', parseDuration)
    .option('--json', 'print the report as JSON')
    .action(async (o: {
      dryRun?: boolean; keepLast?: number; keepBest?: number; scoreFile: string; scoreKey?: string; lowest?: boolean;
      olderThan?: number; json?: boolean;
    }) => {
      const store = openStore();
      const keepBest = o.keepBest === undefined
        ? undefined
        : { n: o.keepBest, file: o.scoreFile, key: o.scoreKey, lowest: !!o.lowest };
      const r = await collectGarbage(store, {
        dryRun: o.dryRun, keepLast: o.keepLast, keepBest, olderThanMs: o.olderThan,
      });
      if (o.json) return out(JSON.stringify(r, null, 2));
      // A moved or deleted out-link no longer protects what it pointed to: say so, dry or not.
      for (const d of r.droppedOutLinks) {
        out(`${o.dryRun ? 'would drop' : 'dropped'} out-link root ${d.link ?? '(unknown)'}: ${d.reason}`);
      }
      if (o.dryRun) for (const rref of r.realizations) out(`would delete ${rref}`);
      if (o.dryRun) for (const f of r.failedLogs) out(`would delete failed-build log ${f}`);
      const logs = r.failedLogs.length > 0 ? ` and ${r.failedLogs.length} failed-build log(s)` : '';
      out(`${o.dryRun ? 'would delete' : 'deleted'} ${r.realizations.length} realization(s)${logs} and ${r.derivations.length} derivation(s), ${o.dryRun ? 'freeing' : 'freed'} ${formatBytes(r.bytes)} (${r.bytes} bytes); kept ${r.kept} realization(s) reachable from ${r.roots} root(s)`);
    });

  storeCmd.command('verify')
    .description('re-hash realizations and compare the index with the files (the files are the truth)')
    .argument('[ref...]', 'only these DRefs or RRefs')
    .option('--repair', 'quarantine corrupt realizations, clear write bits, rebuild the index from the files')
    .option('--json', 'print the report as JSON')
    .action(async (refs: string[], o: { repair?: boolean; json?: boolean }) => {
      const store = openStore();
      const r = await verifyStore(store, { repair: o.repair, refs });
      if (o.json) out(JSON.stringify(r, null, 2));
      else {
        for (const p of r.problems) out(`${p.kind.padEnd(8)} ${p.ref}: ${p.detail}`);
        out(`checked ${r.checked} realization(s): ${r.problems.length === 0 ? 'all intact' : `${r.problems.length} problem(s)${r.repaired ? ', repaired' : '; run with --repair to fix'}`}`);
      }
      if (r.problems.length > 0 && !r.repaired) process.exitCode = 1;
    });

  const rootCmd = program.command('root').description('named gc roots');

  rootCmd.command('add')
    .description('make NAME a root for these realizations (a DRef means all its realizations)')
    .argument('<name>')
    .argument('<ref...>')
    .action((name: string, refs: string[]) => {
      const store = openStore();
      addNamedRoot(store, name, refs.flatMap((r) => store.resolve(r)));
    });

  rootCmd.command('rm')
    .description('remove a named root')
    .argument('<name>')
    .action((name: string) => removeNamedRoot(openStore(), name));

  rootCmd.command('ls')
    .description('list roots: named roots and live out-links')
    .action(() => {
      for (const r of listRoots(openStore()).roots) out(`${r.kind.padEnd(8)} ${r.name}\t${r.rrefs.join(' ')}`);
    });

  program.command('hash')
    .description('print the hash to declare for fetchlocal or a catalog: sha256 of a file, tree-sha256 of a directory')
    .argument('<path>')
    .option('--type <type>', 'sha256, sha512 or tree-sha256 (default: by what the path is)')
    .action(async (p: string, o: { type?: string }) => {
      const { hashPath, parseHash } = await import('../src/stages/builtins/hashes.js');
      let isDir: boolean;
      try { isDir = fs.statSync(p).isDirectory(); } catch {
        throw new CairnError('E_USAGE', `${p} does not exist`);
      }
      const type = o.type ?? (isDir ? 'tree-sha256' : 'sha256');
      parseHash('0'.repeat(type === 'sha512' ? 128 : 64), type);
      const h = await hashPath(p, type as 'sha256');
      out(`${h.type}:${h.hex}`);
    });

  const catalogCmd = program.command('catalog').description('image catalogs: YAML lists of image versions to fetch, unpack and act on');

  interface SelectOpts { version?: string; index?: string; deviceType?: string }
  const withSelection = (c: CommanderTypes.Command): CommanderTypes.Command => c
    .option('--version <v>', 'the entry with this version (or name)')
    .option('--index <i>', 'the entry at this position in the history; negative counts from the end (-1 = newest)')
    .option('--device-type <t>', 'only entries for this device type (raspberry-pi matches raspberry-pi/3b)');
  const selection = (o: SelectOpts) => {
    if (o.version !== undefined && o.index !== undefined) throw new CairnError('E_USAGE', 'give --version or --index, not both');
    const index = o.index === undefined ? undefined : Number(o.index);
    if (index !== undefined && !Number.isInteger(index)) throw new CairnError('E_USAGE', `--index needs a whole number, not ${JSON.stringify(o.index)}`);
    return { version: o.version, index, deviceType: o.deviceType };
  };

  catalogCmd.command('list')
    .description('list the entries of a catalog; * marks the default')
    .argument('<file>')
    .option('--device-type <t>', 'only entries for this device type')
    .option('--json', 'print entries as JSON')
    .action(async (file: string, o: { deviceType?: string; json?: boolean }) => {
      const { loadCatalog, deviceTypeMatches, redactEntryUrls } = await import('../src/stages/catalog.js');
      const cat = loadCatalog(file);
      const entries = o.deviceType === undefined ? cat.entries : cat.entries.filter((e) => e.deviceTypes.some((d) => deviceTypeMatches(d, o.deviceType!)));
      if (o.json) return out(JSON.stringify({ name: cat.name, entries: entries.map(redactEntryUrls) }, null, 2));
      out(`${cat.name} (${o.deviceType === undefined ? '' : `${entries.length} of `}${cat.entries.length} entries, oldest first)`);
      for (const e of entries) {
        out(`${e.isDefault ? '*' : ' '} ${String(e.index).padStart(3)}  ${e.version.padEnd(20)} ${(e.date ?? '').padEnd(10)}  ${e.deviceTypes.join(', ')}`);
      }
    });

  withSelection(catalogCmd.command('fetch'))
    .description('fetch the selected entry into the store (and unpack it), write a manifest, print the store path')
    .argument('<file>')
    .option('--unpack', 'also unpack the fetched archive')
    .option('--manifest <out.yml>', 'write the manifest here')
    .option('-o, --out-link <path>', 'make PATH a symlink to the result and a gc root')
    .action(async (file: string, o: SelectOpts & { unpack?: boolean; manifest?: string; outLink?: string }) => {
      const { loadCatalog, selectEntry } = await import('../src/stages/catalog.js');
      const { fetchEntry, writeManifest } = await import('../src/stages/catalog-run.js');
      const cat = loadCatalog(file);
      const entry = selectEntry(cat, selection(o));
      const store = openStore();
      // Verbose: download progress from the build log is worth seeing here.
      const progress = progressReporter(o.unpack ? 2 : 1, { tty: process.stderr.isTTY === true, verbose: true, quiet: false });
      const m = await fetchEntry(store, cat, entry, { unpack: o.unpack, outLink: o.outLink, events: progress }).finally(() => progress.finish());
      if (o.manifest) await writeManifest(o.manifest, m);
      process.stderr.write(`${cat.name} ${entry.version}: ${m.rref}\n`);
      out(m.path);
    });

  withSelection(catalogCmd.command('run'))
    .description('fetch the selected entry, then run ACTION (declared in the catalog, or exported by <catalog>.actions.ts / actions.ts)')
    .argument('<file>')
    .argument('<action>')
    .option('--unpack', 'unpack before running the action')
    .option('--manifest <out.yml>', 'where to write the manifest (default: a temporary file)')
    .action(async (file: string, action: string, o: SelectOpts & { unpack?: boolean; manifest?: string }) => {
      const { loadCatalog, selectEntry } = await import('../src/stages/catalog.js');
      const { fetchEntry, findAction, runAction, writeManifest } = await import('../src/stages/catalog-run.js');
      const cat = loadCatalog(file);
      const entry = selectEntry(cat, selection(o));
      const found = await findAction(cat, action);
      const store = openStore();
      const m = await fetchEntry(store, cat, entry, { unpack: o.unpack });
      const tmpDir = o.manifest ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-manifest-'));
      const manifestPath = path.resolve(o.manifest ?? path.join(tmpDir!, 'manifest.yml'));
      try {
        await writeManifest(manifestPath, m);
        process.exitCode = await runAction(found, { manifest: m, manifestPath, storePath: m.path, catalog: cat, entry });
      } finally {
        if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
      }
    });

  program.command('demo')
    .description('run the ML-style demo pipeline twice on the store: built, then fully cached')
    .addOption(new Option('--runs <n>', 'how many times to realize').default('2'))
    .action(async (o: { runs: string }) => {
      const { runDemo } = await import('./demo.js');
      await runDemo(program.opts<{ store?: string }>().store ?? defaultStoreRoot(), Number(o.runs));
    });

  registerSync(program, openStore, () => program.opts<{ store?: string }>().store ?? defaultStoreRoot());
  // `cairn machine` passes every word after the base on to the steps
  // (`--cache=1h`, step options), which commander allows only with positional
  // program options. Those are turned on for that command alone, so
  // `cairn realize F --store S` keeps working.
  const command = commandWord(argv.slice(2));
  if (command === 'machine') program.enablePositionalOptions();
  registerMachine(program, openStore, command === 'machine');
  registerServices(program, openStore);
  registerServer(program);

  return {
    program,
    closeStores: () => { for (const s of stores.splice(0)) s.close(); },
  };
}

/** Reports an error the way every `cairn` command does; returns the exit code. */
export function reportError(e: unknown): number {
  if (isCairnError(e)) {
    process.stderr.write(`cairn: error ${e.code}: ${e.message}\n`);
    return e.code === 'E_USAGE' ? 2 : 1;
  }
  process.stderr.write(`cairn: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return 70;
}
