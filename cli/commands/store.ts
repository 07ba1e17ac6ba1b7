/**
 * The commands on what the store holds: lsref, catref, shellref, rmref, du,
 * log, `store gc|verify` (upkeep) and `root add|rm|ls` (named gc roots).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { CairnError } from '../../src/errors.js';
import { durationFlag } from '../library-errors.js';
import { refUsage, storeUsage } from '../../src/store/du.js';
import { failedLogs } from '../../src/store/failed-logs.js';
import { collectGarbage } from '../../src/store/gc.js';
import { localOutputDir, outputTree, readBuildLog, readRealizationFile } from '../../src/store/realization-files.js';
import { newestRealization, realizationRecords } from '../../src/store/ref-queries.js';
import { parseRef, type RRef } from '../../src/store/refs.js';
import { removeRef } from '../../src/store/remove-ref.js';
import { addNamedRoot, listRoots, removeNamedRoot } from '../../src/store/roots.js';
import type { LocalStore } from '../../src/store/store.js';
import { verifyStore } from '../../src/store/verify.js';
import { out, parseCount, type CliContext } from '../context.js';
import { formatBytes, formatTree } from '../format.js';

/** A DRef stands for its newest realization where one realization is needed; says so when it had a choice. */
function oneRealization(store: LocalStore, ref: string): RRef {
  const { rref, of } = newestRealization(store, ref);
  if (of > 1) process.stderr.write(`note: ${ref} has ${of} realizations; using the newest, ${rref}\n`);
  return rref;
}

export function registerStore(ctx: CliContext): void {
  registerRefCommands(ctx);
  registerUpkeep(ctx);
  registerRoots(ctx);
}

function registerRefCommands(ctx: CliContext): void {
  const { program } = ctx;
  program
    .command('lsref')
    .description('list the realizations of a DRef, or the files of an RRef')
    .argument('<ref>')
    .action((ref: string) => {
      const store = ctx.openStore();
      const p = parseRef(ref);
      if (p.kind === 'drv') {
        for (const r of realizationRecords(store, ref)) {
          out(`${r.rref}  ${new Date(r.created).toISOString()}  ${formatBytes(r.bytes)}`);
        }
        return;
      }
      store.resolve(ref);
      for (const line of formatTree(outputTree(store, p.rref))) out(line);
    });

  program
    .command('catref')
    .description('print a file of a realization')
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .argument('<path>', 'path inside the output')
    .action(async (ref: string, rel: string) => {
      const store = ctx.openStore();
      const data = await readRealizationFile(store, oneRealization(store, ref), rel);
      if (data === null) {
        throw new CairnError('E_NO_SUCH_PATH', `${rel} does not exist in ${ref} (or is a directory); see cairn lsref`, {
          path: rel,
        });
      }
      process.stdout.write(data);
    });

  program
    .command('shellref')
    .description("open a shell in a realization's output directory")
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .option('-c, --command <cmd>', 'run this command instead of an interactive shell')
    .action((ref: string, o: { command?: string }) => {
      const store = ctx.openStore();
      const rref = oneRealization(store, ref);
      const dir = localOutputDir(store, rref);
      const shell = process.env.SHELL || '/bin/sh';
      const env = { ...process.env, CAIRN_RREF: rref, CAIRN_OUT: dir, CAIRN_STORE: ctx.storeRoot() };
      const r = spawnSync(shell, o.command ? ['-c', o.command] : [], { cwd: dir, stdio: 'inherit', env });
      process.exitCode = r.status ?? 1;
    });

  program
    .command('rmref')
    .description('remove a realization, or every realization of a derivation and the derivation')
    .argument('<ref...>')
    .option('--force', 'remove even if other realizations were built from it')
    .action((refs: string[], o: { force?: boolean }) => {
      const store = ctx.openStore();
      for (const ref of refs) {
        const r = removeRef(store, ref, o);
        out(`removed ${ref}${r.drv ? ` (${r.rrefs.length} realization(s))` : ''}`);
      }
    });

  program
    .command('du')
    .description('disk use: of the whole store by derivation, or of one reference and its closure')
    .argument('[ref]')
    .option('--bytes', 'print plain byte counts')
    .action((ref: string | undefined, o: { bytes?: boolean }) => {
      const store = ctx.openStore();
      const fmt = (n: number): string => (o.bytes ? String(n) : formatBytes(n));
      if (ref) {
        const u = refUsage(store, ref);
        out(`${fmt(u.own.bytes)}\t${ref} (${u.own.count} realization(s))`);
        out(`${fmt(u.closure.bytes)}\tclosure (${u.closure.count} realization(s))`);
        return;
      }
      const u = storeUsage(store);
      for (const d of u.byDrv) out(`${fmt(d.bytes)}\t${d.count}\t${d.dref}`);
      out(`${fmt(u.total.bytes)}\t${u.total.count}\ttotal`);
    });

  program
    .command('log')
    .description('print the build log of a realization, or with --failed the kept log of a failed build')
    .argument('<ref>', 'RRef, or DRef for its newest realization')
    .option('--failed', "print the newest failed build's log of the DRef (kept in STORE/failed-logs/)")
    .option('--list', 'with --failed: list the kept failed logs, oldest first, with their times')
    .action(async (ref: string, o: { failed?: boolean; list?: boolean }) => {
      const store = ctx.openStore();
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
      process.stdout.write(await readBuildLog(store, oneRealization(store, ref)));
    });
}

interface GcOpts {
  dryRun?: boolean;
  keepLast?: number;
  keepBest?: number;
  scoreFile: string;
  scoreKey?: string;
  lowest?: boolean;
  olderThan?: number;
  json?: boolean;
}

function registerUpkeep(ctx: CliContext): void {
  const storeCmd = ctx.program.command('store').description('store upkeep: garbage collection and verification');

  storeCmd
    .command('gc')
    .description('delete realizations not reachable from a root (named roots, out-links, running builds)')
    .option('-n, --dry-run', 'report what would be deleted')
    .option('--keep-last <n>', 'also keep the N newest realizations of every derivation', (v) =>
      parseCount(v, '--keep-last'),
    )
    .option(
      '--keep-best <n>',
      'also keep the N best-scoring realizations of every derivation, scored as best() does',
      (v) => parseCount(v, '--keep-best'),
    )
    .option('--score-file <path>', 'with --keep-best: the file in each output that holds the score', 'score.txt')
    .option('--score-key <key>', 'with --keep-best: the score is this numeric field of the JSON object in the file')
    .option('--lowest', 'with --keep-best: lower scores are better')
    .option(
      '--older-than <duration>',
      'only delete realizations (and failed-build logs) older than this (e.g. 30d, 12h, 45m)',
      durationFlag('--older-than'),
    )
    .option('--json', 'print the report as JSON')
    .action(async (o: GcOpts) => {
      const store = ctx.openStore();
      const keepBest =
        o.keepBest === undefined
          ? undefined
          : { n: o.keepBest, file: o.scoreFile, key: o.scoreKey, lowest: !!o.lowest };
      const r = await collectGarbage(store, {
        dryRun: o.dryRun,
        keepLast: o.keepLast,
        keepBest,
        olderThanMs: o.olderThan,
      });
      if (o.json) return out(JSON.stringify(r, null, 2));
      // A moved or deleted out-link no longer protects what it pointed to: say so, dry or not.
      for (const d of r.droppedOutLinks) {
        out(`${o.dryRun ? 'would drop' : 'dropped'} out-link root ${d.link ?? '(unknown)'}: ${d.reason}`);
      }
      if (o.dryRun) for (const rref of r.realizations) out(`would delete ${rref}`);
      if (o.dryRun) for (const f of r.failedLogs) out(`would delete failed-build log ${f}`);
      const logs =
        (r.failedLogs.length > 0 ? ` and ${r.failedLogs.length} failed-build log(s)` : '') +
        (r.code.length > 0 ? ` and ${r.code.length} code object(s)` : '');
      out(
        `${o.dryRun ? 'would delete' : 'deleted'} ${r.realizations.length} realization(s)${logs}` +
          ` and ${r.derivations.length} derivation(s), ${o.dryRun ? 'freeing' : 'freed'} ${formatBytes(r.bytes)}` +
          ` (${r.bytes} bytes); kept ${r.kept} realization(s) reachable from ${r.roots} root(s)`,
      );
    });

  storeCmd
    .command('verify')
    .description('re-hash realizations and compare the index with the files (the files are the truth)')
    .argument('[ref...]', 'only these DRefs or RRefs')
    .option('--repair', 'quarantine corrupt realizations, clear write bits, rebuild the index from the files')
    .option('--json', 'print the report as JSON')
    .action(async (refs: string[], o: { repair?: boolean; json?: boolean }) => {
      const store = ctx.openStore();
      const r = await verifyStore(store, { repair: o.repair, refs });
      if (o.json) out(JSON.stringify(r, null, 2));
      else {
        for (const p of r.problems) out(`${p.kind.padEnd(8)} ${p.ref}: ${p.detail}`);
        const found = `${r.problems.length} problem(s)${r.repaired ? ', repaired' : '; run with --repair to fix'}`;
        out(`checked ${r.checked} realization(s): ${r.problems.length === 0 ? 'all intact' : found}`);
      }
      if (r.problems.length > 0 && !r.repaired) process.exitCode = 1;
    });
}

function registerRoots(ctx: CliContext): void {
  const rootCmd = ctx.program.command('root').description('named gc roots');

  rootCmd
    .command('add')
    .description('make NAME a root for these realizations (a DRef means all its realizations)')
    .argument('<name>')
    .argument('<ref...>')
    .action((name: string, refs: string[]) => {
      const store = ctx.openStore();
      addNamedRoot(
        store,
        name,
        refs.flatMap((r) => store.resolve(r)),
      );
    });

  rootCmd
    .command('rm')
    .description('remove a named root')
    .argument('<name>')
    .action((name: string) => removeNamedRoot(ctx.openStore(), name));

  rootCmd
    .command('ls')
    .description('list roots: named roots and live out-links')
    .action(() => {
      for (const r of listRoots(ctx.openStore()).roots) out(`${r.kind.padEnd(8)} ${r.name}\t${r.rrefs.join(' ')}`);
    });
}
