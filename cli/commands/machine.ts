/**
 * `cairn machine BASE [+ STEP ...] [+ shell]`, `cairn machine ls` and
 * `cairn machine gc`. Words are split on `+`; each group is a step:
 * `[transient] NAME ARG... [--key=value] [--flag] [--cache=DUR] [--transient[=always|last|never]]`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError } from '../../src/errors.js';
import { durationFlag } from '../library-errors.js';
import { machineBase, MACHINE_BASES } from '../../src/stages/bases/registry.js';
import type { BaseOptions } from '../../src/stages/bases/booted-state.js';
import { parseNetOption } from '../../src/backends/qemu/net.js';
import { killLiveVms } from '../../src/backends/qemu/vm.js';
import { DOWNLOADS, logForwards, machine, type ApplyOptions, type Machine } from '../../src/stages/machine.js';
import { hostDestination, replaceWith } from '../../src/backends/qemu/transfer.js';
import { realize } from '../../src/stages/realize.js';
import type { Stage } from '../../src/stages/stage.js';
import { collectMachineGarbage, listMachineStates } from '../../src/stages/machine-states.js';
import { resolveStep, type CliWords } from '../../src/stages/machine-steps.js';
import { formatStepArgs } from '../../src/stages/step-args-text.js';
import type { RunningMachine } from '../../src/backends/machine.js';
import { instantiate } from '../../src/stages/instantiate.js';
import { addNamedRoot } from '../../src/store/roots.js';
import type { LocalStore } from '../../src/store/store.js';
import { formatBytes } from '../format.js';
import type { CliContext } from '../context.js';
import { progressReporter } from '../progress.js';

interface Group {
  transient: boolean;
  name: string;
  words: CliWords;
}

/** Splits `a b + c --k=v --flag + d` into step groups. */
export function parseMachineWords(words: readonly string[]): Group[] {
  const groups: string[][] = [[]];
  for (const w of words) {
    if (w === '+') groups.push([]);
    else groups[groups.length - 1]!.push(w);
  }
  return groups.map((g, i) => {
    if (g.length === 0)
      throw new CairnError(
        'E_USAGE',
        i === 0
          ? `machine: name a base first (${[...MACHINE_BASES.keys()].join(', ')})`
          : `machine: nothing between a '+' and the next (step ${i})`,
      );
    const transient = g[0] === 'transient';
    const [name, ...rest] = transient ? g.slice(1) : g;
    if (!name) throw new CairnError('E_USAGE', "machine: 'transient' needs a step after it");
    const w: CliWords = { positional: [], named: {} };
    for (const word of rest) {
      const m = /^--([A-Za-z][\w.-]*)(?:=(.*))?$/s.exec(word);
      if (m) w.named[m[1]!] = m[2] ?? true;
      else w.positional.push(word);
    }
    return { transient, name, words: w };
  });
}

function stepsDirs(opt: string[] | undefined): string[] {
  const dirs = [...(opt ?? []), ...(process.env.CAIRN_STEPS ?? '').split(':').filter(Boolean)];
  if (dirs.length === 0 && fs.existsSync('steps')) dirs.push('steps');
  return dirs.map((d) => path.resolve(d));
}

function baseOptions(w: CliWords): BaseOptions {
  const { memory, smp, net, forward, ...rest } = w.named;
  if (w.positional.length || Object.keys(rest).length)
    throw new CairnError(
      'E_USAGE',
      'a base takes only --memory=MB, --smp=N, --net[=restrict] and --forward=[HOSTPORT:]GUESTPORT[,...]',
    );
  const num = (v: string | true | undefined, flag: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1)
      throw new CairnError('E_USAGE', `--${flag} needs a whole number, not ${JSON.stringify(v)}`);
    return n;
  };
  return { memoryMb: num(memory, 'memory'), smp: num(smp, 'smp'), ...netOption(net, forward) };
}

/** `--net`, `--net=user|restrict`, `--forward=SPEC[,SPEC...]` (forwards imply `--net`). */
function netOption(net: string | true | undefined, forward: string | true | undefined): Pick<BaseOptions, 'net'> {
  if (net !== undefined && net !== true && net !== 'user' && net !== 'restrict')
    throw new CairnError('E_USAGE', `--net takes no value, or user or restrict, not ${JSON.stringify(net)}`);
  if (forward === true)
    throw new CairnError('E_USAGE', '--forward needs a port, e.g. --forward=80 or --forward=8080:80');
  if (net === undefined && forward === undefined) return {};
  const mode = net === 'restrict' ? 'restrict' : 'user';
  const specs = forward === undefined ? [] : forward.split(',');
  try {
    const parsed = parseNetOption({ mode, forward: specs });
    return { net: { mode, forward: parsed.forwards } };
  } catch (e) {
    if (e instanceof CairnError) throw new CairnError('E_USAGE', e.message.replace(/^net: /, '--forward: '));
    throw e;
  }
}

/** A CLI `download` whose files the CLI copies from its state to a host path once the chain is realized. */
interface CopyOut {
  stage: Stage;
  name: string;
  hostPath: string;
}

/** `ssh://... [--identity=FILE] [--known-hosts=FILE]`. */
function sshBaseOptions(w: CliWords): { identityFile?: string; knownHostsFile?: string } {
  const { identity, 'known-hosts': knownHosts, ...rest } = w.named;
  if (w.positional.length || Object.keys(rest).length)
    throw new CairnError('E_USAGE', 'an ssh base takes only --identity=FILE and --known-hosts=FILE');
  const file = (v: string | true | undefined, flag: string): { [k: string]: string } => {
    if (v === true || v === '') throw new CairnError('E_USAGE', `--${flag} needs a file, e.g. --${flag}=PATH`);
    return v === undefined ? {} : { [flag === 'identity' ? 'identityFile' : 'knownHostsFile']: v };
  };
  return { ...file(identity, 'identity'), ...file(knownHosts, 'known-hosts') };
}

async function buildMachine(
  groups: Group[],
  dirs: string[],
): Promise<{ m: Machine; shell: boolean; copyOuts: CopyOut[] }> {
  const copyOuts: CopyOut[] = [];
  const [base, ...steps] = groups;
  if (base!.transient) throw new CairnError('E_USAGE', 'a base cannot be transient');
  let m = machine(
    base!.name.startsWith('ssh://')
      ? (await import('../../src/stages/bases/ssh-base.js')).sshBase(base!.name, sshBaseOptions(base!.words))
      : machineBase(base!.name, baseOptions(base!.words)),
  );
  let shell = false;
  for (const [i, g] of steps.entries()) {
    if (g.name === 'shell') {
      if (i !== steps.length - 1) throw new CairnError('E_USAGE', "'+ shell' must be the last step");
      if (g.transient || g.words.positional.length || Object.keys(g.words.named).length)
        throw new CairnError('E_USAGE', "'shell' takes no arguments and is always transient");
      shell = true;
      continue;
    }
    const def = await resolveStep(g.name, dirs);
    const { cache, transient, ...named } = g.words.named;
    if (cache === true) throw new CairnError('E_USAGE', '--cache needs a duration, e.g. --cache=1h');
    const mode = transientFlag(transient);
    if (g.transient && mode !== undefined && mode !== true)
      throw new CairnError('E_USAGE', `step ${g.name}: 'transient' and --transient=${transient} disagree`);
    const opts: ApplyOptions = {
      ...(g.transient ? { transient: true } : mode !== undefined ? { transient: mode } : {}),
      ...(cache !== undefined ? { cache: durationFlag('--cache')(cache) } : {}),
    };
    let args: unknown;
    try {
      args = def.fromCli({ positional: g.words.positional, named });
    } catch (e) {
      // `exec ls --color=never` reads --color as a step option; say how to pass it through.
      if (e instanceof CairnError && e.code === 'E_STEP_ARGS' && Object.keys(named).length)
        e.message += ` (to pass options to a command, quote it: ${g.name} 'cmd --opt')`;
      throw e;
    }
    const host = g.name === 'download' ? g.words.positional[1] : undefined;
    if (g.name === 'download' && opts.transient === true) {
      // A transient step is never saved: its files go straight to the host path.
      const to = host ?? (args as { to: string }).to;
      args = { ...(args as object), to: path.resolve(to) + (to.endsWith('/') ? '/' : '') };
    }
    m = m.apply(def.step, args, opts);
    // Saved (this very application is the newest saved stage): the CLI copies its files out afterwards.
    const saved = m.saved.config as { step?: string; args?: unknown };
    if (g.name === 'download' && host !== undefined && saved.step === 'download' && saved.args === args)
      copyOuts.push({ stage: m.saved, name: (args as { to: string }).to, hostPath: host });
  }
  return { m, shell, copyOuts };
}

/** `--transient` (or `=always`), `--transient=last`, `--transient=never`: a step's transient mode, per step. */
function transientFlag(v: string | true | undefined): boolean | 'last' | undefined {
  if (v === undefined) return undefined;
  if (v === true || v === 'always') return true;
  if (v === 'last') return 'last';
  if (v === 'never') return false;
  throw new CairnError('E_USAGE', `--transient takes always, last or never, not ${JSON.stringify(v)}`);
}

export function registerMachine(ctx: CliContext, passThrough: boolean): void {
  const cmd = ctx.program
    .command('machine')
    .description(
      `build and resume machines step by step: machine BASE [+ STEP ...] [+ shell]; machine ls; machine gc
  bases: ${[...MACHINE_BASES.keys()].join(', ')}, ssh://[user@]host[:port] [--identity=F] [--known-hosts=F];
  steps: exec CMD, script.run FILE, upload SRC DST, download SRC [DST], self_test.greeting, shell, or a TS module
  (path, or NAME in --steps DIR / $CAIRN_STEPS / ./steps).
  Prefix a step with 'transient' (or give --transient[=always|last|never]) to run it on a throwaway copy
  and never save its result; --cache=DUR caps how long it is reused (script.run is transient when last;
  --cache=0: never reused, so never saved; it runs every time and the steps after it see its effects).
  Base options: --memory=MB --smp=N --net[=restrict] --forward=[HOSTPORT:]GUESTPORT,... (guest sees the host
  at 10.0.2.2; a forward's host port, chosen per run when not given, is printed).`,
    )
    .argument('<words...>')
    .option('--steps <dir>', 'a directory of step modules (repeatable)', (v: string, prev: string[] = []) => [
      ...prev,
      v,
    ])
    .option('--root <name>', 'keep the final state as a named gc root')
    .option('-q, --quiet', 'no progress or step output')
    .allowUnknownOption();
  if (passThrough) cmd.passThroughOptions();
  cmd.action(async (words: string[], o: { steps?: string[]; root?: string; quiet?: boolean }) => {
    if ((words[0] === 'ls' || words[0] === 'gc') && words.some((w) => w === '--help' || w === '-h')) {
      process.stdout.write(
        words[0] === 'ls'
          ? 'Usage: cairn machine ls [--json]\n\nmachine states: RRef, step and its args, size, ' +
              'creation time, expiry or staleness, and whether a root keeps them\n'
          : 'Usage: cairn machine gc [-n|--dry-run]\n\ndelete the machine states no root reaches (states that rooted ' +
              'ones stand on are kept; other realizations are left alone)\n',
      );
      return;
    }
    const store = ctx.openStore();
    if (words[0] === 'ls') return machineLs(store, flags(words, ['--json']).has('--json'));
    if (words[0] === 'gc') return machineGc(store, flags(words, ['--dry-run', '-n']).size > 0);
    const { m, shell, copyOuts } = await buildMachine(parseMachineWords(words), stepsDirs(o.steps));
    const tty = process.stderr.isTTY === true;
    const progress = progressReporter(instantiate(m.saved).order.length, { tty, verbose: true, quiet: !!o.quiet });
    const stepLog = (name: string, line: string): void => {
      if (!o.quiet) process.stderr.write(`${name} (transient)> ${line}\n`);
    };
    // Interrupted, the VMs go too, and with them this process's scratch directories (resumed disks,
    // memory images): nothing else uses them. The handlers go when the command ends: a server worker
    // runs its next command in the same process.
    const onSignal = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((sig) => {
      const h = (): void => {
        killLiveVms();
        store.removeOwnTemp();
        process.exit(128 + os.constants.signals[sig]);
      };
      process.once(sig, h);
      return [sig, h] as const;
    });
    let rref: string;
    try {
      if (shell) {
        const run = (vm: RunningMachine): Promise<void> => {
          // The host ports chosen for this run: how the user reaches the guest's services.
          logForwards(vm, (line) => process.stderr.write(`machine: ${line}\n`));
          return process.stdin.isTTY ? interactiveShell(vm) : scriptedShell(vm);
        };
        await m.use(run, {
          store,
          events: progress,
          stepLog,
        });
        return;
      }
      rref = (await m.realize({ store, events: progress, stepLog })).rref;
      // The files come from the download step's state, built just now or cached: the same either way.
      for (const c of copyOuts) {
        const state = (await realize(c.stage, { store })).targets[0]!.rrefs[0]!;
        const from = path.join(store.outPath(state), DOWNLOADS, c.name);
        const to = hostDestination(c.hostPath, c.name, c.name);
        replaceWith(from, to, { copy: true });
        if (!o.quiet) process.stderr.write(`download: ${DOWNLOADS}/${c.name} of ${state} -> ${to}\n`);
      }
    } finally {
      for (const [sig, h] of onSignal) process.off(sig, h);
      progress.finish();
    }
    if (o.root) addNamedRoot(store, o.root, [rref as never]);
    process.stdout.write(rref + '\n');
  });
}

/** `ls --json`, `gc -n`: the words after the subcommand, which must all be known flags. */
function flags(words: string[], known: string[]): Set<string> {
  const rest = words.slice(1);
  const bad = rest.filter((w) => !known.includes(w));
  if (bad.length)
    throw new CairnError(
      'E_USAGE',
      `machine ${words[0]}: unknown argument ${bad.join(' ')} (known: ${known.join(', ')})`,
    );
  return new Set(rest);
}

/** A terminal on the console until Ctrl-]. */
async function interactiveShell(vm: RunningMachine): Promise<void> {
  if (!vm.console.attach) throw new CairnError('E_USAGE', `the ${vm.backend} backend has no interactive console`);
  process.stdin.setRawMode(true);
  process.stderr.write('connected to the machine console; Ctrl-] leaves (changes are thrown away)\n');
  try {
    await vm.console.attach(process.stdin, process.stdout);
  } finally {
    process.stdin.setRawMode(false);
    process.stdin.pause();
  }
}

/**
 * Piped input is a script for the machine's shell: run as a whole, its
 * output printed as it comes and its exit status passed on (`echo cmd |
 * cairn machine tiny + shell` works in scripts and tests). stdout streams
 * (so an interrupted script has shown what it printed); stderr comes apart
 * from it only when the script ends.
 */
async function scriptedShell(vm: RunningMachine): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  let streamed = false;
  // A child of the machine's shell, so the script's `exit 3` ends the script, not the console.
  const r = await vm.exec(Buffer.concat(chunks).toString('utf8'), {
    timeoutMs: 3_600_000,
    onStdout(text) {
      streamed = true;
      process.stdout.write(text);
    },
  });
  if (!streamed) process.stdout.write(r.stdout); // a backend that does not stream
  process.stderr.write(r.stderr);
  process.exitCode = r.exitCode;
}

function machineLs(store: LocalStore, json: boolean): void {
  const rows = listMachineStates(store).map((s) => ({
    rref: s.rref,
    step: s.step,
    args: s.args,
    created: new Date(s.created).toISOString(),
    expiresAt: s.expiresAt === null ? null : new Date(s.expiresAt).toISOString(),
    stale: s.stale,
    rooted: s.rooted,
    bytes: s.bytes,
    backend: s.backend,
    liveHost: s.liveHost,
  }));
  if (json) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  for (const r of rows) {
    const expiry = r.stale ? `stale: ${r.stale}` : r.expiresAt ? `expires ${r.expiresAt}` : '';
    const live = r.liveHost ? `${r.liveHost}: host record, not a snapshot; steps on it always run` : '';
    const flags = [r.rooted ? 'root' : '', live, expiry].filter(Boolean).join(', ');
    const step = r.args === null ? r.step : `${r.step} ${formatStepArgs(r.args)}`;
    process.stdout.write(
      `${r.rref}  ${step.padEnd(20)} ${formatBytes(r.bytes).padStart(10)}  ${r.created}` +
        `${flags ? `  (${flags})` : ''}\n`,
    );
  }
  process.stdout.write(`${rows.length} machine state(s)\n`);
}

async function machineGc(store: LocalStore, dryRun: boolean): Promise<void> {
  const r = await collectMachineGarbage(store, { dryRun });
  for (const rref of r.realizations) process.stdout.write(`${dryRun ? 'would delete' : 'deleted'} ${rref}\n`);
  process.stdout.write(
    `${dryRun ? 'would delete' : 'deleted'} ${r.realizations.length} machine state(s), ` +
      `${formatBytes(r.bytes)}; kept ${r.kept} realization(s) (rooted states, what they stand on, and everything ` +
      `that is not a machine state); ${r.roots} root(s)\n`,
  );
}
