/**
 * `cairn services up|start|stop|down|reload|status|logs|exec|run FILE`:
 * service ensembles on the Docker engine (see docs/services.md).
 */
import * as os from 'node:os';
import type { Command } from 'commander';
import { CairnError } from '../../src/errors.js';
import { collect, out, type CliContext } from '../context.js';
import type { ServiceReport } from '../../src/services/runner.js';

function parseTimeout(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0)
    throw new CairnError('E_USAGE', `--timeout needs a number of seconds > 0, not ${JSON.stringify(v)}`);
  return n * 1000;
}

interface Common {
  stateDir?: string;
  quiet?: boolean;
  projectName?: string;
}

function printReports(
  reports: readonly {
    name: string;
    outcome: string;
    detail?: string;
    error?: { code: string; message: string };
    ms?: number;
  }[],
): void {
  const w = Math.max(7, ...reports.map((r) => r.name.length));
  for (const r of reports) {
    const why = r.error ? `${r.error.code}: ${r.error.message}` : (r.detail ?? '');
    const ms = r.ms === undefined ? '' : ` (${(r.ms / 1000).toFixed(1)}s)`;
    out(`${r.name.padEnd(w)}  ${r.outcome}${ms}${why ? `  ${why}` : ''}`);
  }
}

export function registerServices(ctx: CliContext): void {
  const { program, openStore } = ctx;
  const cmd = program
    .command('services')
    .description('service ensembles on the Docker engine: up, start, stop, down, reload, status, logs, exec, run')
    // exec and run pass every word after SERVICE on to the command (see cli/program.ts).
    .enablePositionalOptions();
  const common = (c: Command): Command =>
    c
      .option('--state-dir <dir>', 'where the context file lives (default: .cairn-services/ next to FILE)')
      .option(
        '-p, --project-name <name>',
        "the project: names containers, network, volumes and context (default: FILE's directory-ensemble name)",
      )
      .option('-q, --quiet', 'no progress lines on stderr');
  const setup = async (file: string, o: Common) => {
    const { loadEnsembleFile } = await import('../../src/services/load.js');
    const e = await loadEnsembleFile(file);
    const tty = process.stderr.isTTY === true;
    let shown = false;
    // On a terminal the image phase's status line is rewritten in place; a log line clears it first.
    const status = (line: string): void => {
      if (!tty || o.quiet) return;
      process.stderr.write(`\r\x1b[K${line}`);
      shown = line !== '';
    };
    const log = o.quiet
      ? undefined
      : (line: string) => {
          if (shown) status('');
          process.stderr.write(`${line}\n`);
        };
    return {
      e,
      base: {
        store: openStore(),
        file,
        stateDir: o.stateDir,
        project: o.projectName,
        log,
        status: tty ? status : undefined,
      },
    };
  };

  /**
   * Runs a start-like command with Ctrl-C handling: the first SIGINT (or
   * SIGTERM) lets running docker calls finish and starts nothing new (see
   * RunnerOptions.signal), then the reports are printed and cairn exits 130
   * (143); a second signal exits at once. The handlers go when the command
   * ends: a server worker runs its next command in the same process.
   */
  const interruptible = async (go: (signal: AbortSignal) => Promise<ServiceReport[]>, verb: string): Promise<void> => {
    const ac = new AbortController();
    let got: NodeJS.Signals | undefined;
    const handlers = (['SIGINT', 'SIGTERM'] as const).map((sig) => {
      const h = (): void => {
        if (got) process.exit(128 + os.constants.signals[got]);
        got = sig;
        process.stderr.write(`cairn: ${sig}: finishing the docker calls under way (again to exit now)\n`);
        ac.abort();
      };
      process.on(sig, h);
      return [sig, h] as const;
    });
    try {
      let reports: ServiceReport[];
      try {
        reports = await go(ac.signal);
      } catch (e) {
        // Interrupted before any service began (the network, the image phase): nothing to report.
        if (got === undefined) throw e;
        reports = [];
      }
      printReports(reports);
      const { checkReports } = await import('../../src/services/runner.js');
      try {
        checkReports(reports, verb, { brief: true });
      } catch (e) {
        if (got === undefined) throw e;
      }
      if (got !== undefined) {
        process.stderr.write(`cairn: error E_INTERRUPTED: ${verb} interrupted by ${got}; run it again to finish\n`);
        process.exitCode = 128 + os.constants.signals[got];
      }
    } finally {
      for (const [sig, h] of handlers) process.off(sig, h);
    }
  };

  common(cmd.command('up'))
    .description(
      'converge to FILE: create what is missing, recreate what changed (and its dependants), start what is stopped',
    )
    .argument('<file>', 'ensemble file (.ts or .js)')
    .argument('[service...]', 'only these services and their dependencies (default: all)')
    .option('--timeout <s>', 'seconds a service may take to answer its ping (default 300)', parseTimeout)
    .action(async (file: string, names: string[], o: Common & { timeout?: number }) => {
      const { e, base } = await setup(file, o);
      const { upEnsemble } = await import('../../src/services/runner.js');
      await interruptible((signal) => upEnsemble(e, { ...base, services: names, timeoutMs: o.timeout, signal }), 'up');
    });

  common(cmd.command('start'))
    .description(
      'start the services of FILE in dependency order (independent ones in parallel); ' +
        'leaves running containers alone, even changed ones (up recreates those)',
    )
    .argument('<file>', 'ensemble file (.ts or .js)')
    .option('-x, --exclude <name...>', 'services not to start (none of the started ones may depend on them)')
    .option('--timeout <s>', 'seconds a service may take to answer its ping (default 300)', parseTimeout)
    .action(async (file: string, o: Common & { exclude?: string[]; timeout?: number }) => {
      const { e, base } = await setup(file, o);
      const { startEnsemble } = await import('../../src/services/runner.js');
      await interruptible(
        (signal) => startEnsemble(e, { ...base, exclude: o.exclude, timeoutMs: o.timeout, signal }),
        'start',
      );
    });

  common(cmd.command('stop'))
    .description('stop the services of FILE, dependants first')
    .argument('<file>')
    .option('-x, --exclude <name...>', 'services to leave running (none of their dependencies may be stopped)')
    .option('--remove', 'also remove the containers (and, with nothing excluded, the network and the context file)')
    .action(async (file: string, o: Common & { exclude?: string[]; remove?: boolean }) => {
      const { e, base } = await setup(file, o);
      const { stopEnsemble } = await import('../../src/services/runner.js');
      printReports(await stopEnsemble(e, { ...base, exclude: o.exclude, remove: o.remove }));
    });

  common(cmd.command('down'))
    .description('stop and remove the containers, network and context of the project (--volumes: its volumes too)')
    .argument('<file>')
    .option('-v, --volumes', 'also remove the named volumes of the project (their data is lost)')
    .action(async (file: string, o: Common & { volumes?: boolean }) => {
      const { e, base } = await setup(file, o);
      const { downEnsemble } = await import('../../src/services/runner.js');
      const r = await downEnsemble(e, { ...base, volumes: o.volumes });
      printReports(r.reports);
      for (const v of r.volumes) out(`volume ${v} removed`);
    });

  common(cmd.command('reload'))
    .description('rebuild the image of one service and replace its container, with the saved context')
    .argument('<file>')
    .argument('<name>')
    .option('--timeout <s>', 'seconds the service may take to answer its ping (default 300)', parseTimeout)
    .action(async (file: string, name: string, o: Common & { timeout?: number }) => {
      const { e, base } = await setup(file, o);
      const { reloadService } = await import('../../src/services/runner.js');
      await interruptible(
        async (signal) => [await reloadService(e, name, { ...base, timeoutMs: o.timeout, signal })],
        'reload',
      );
    });

  common(cmd.command('status'))
    .description('show the state and health (each running service pinged now) of each service of FILE')
    .argument('<file>')
    .option('--json', 'print JSON')
    .option('--no-ping', 'do not ping the running services')
    .option('--watch', 'stay in the foreground: periodic pings (health), restarts by policy, events; until Ctrl-C')
    .action(async (file: string, o: Common & { json?: boolean; ping: boolean; watch?: boolean }) => {
      const { e, base } = await setup(file, o);
      const { Runner, contextFile } = await import('../../src/services/runner.js');
      const { checkHealth, watchHealth } = await import('../../src/services/health.js');
      const { FileContext } = await import('../../src/services/context.js');
      const runner = new Runner(e, base);
      const plain = await runner.status();
      const status = o.ping ? await checkHealth(runner, plain) : plain;
      const project = runner.project.name;
      const context = FileContext.read(contextFile(base, project));
      if (o.json) out(JSON.stringify({ ensemble: e.name, project, services: status, context }, null, 2));
      else printStatus(status, context, project);
      if (!o.watch) return;
      await untilSignal((signal) =>
        watchHealth(runner, {
          signal,
          report: (service, event) => out(`${new Date().toISOString().slice(11, 19)} ${service}: ${event}`),
        }),
      );
    });

  common(cmd.command('logs'))
    .description("the services' output, each line prefixed with its service (coloured on a terminal)")
    .argument('<file>')
    .argument('[services...]', 'the services to show (default: all)')
    .option('-f, --follow', 'keep printing new lines, also across restarts, until Ctrl-C')
    .option('-n, --tail <n>', 'lines of history per service (default: all)', parseTail)
    .option('--since <time>', 'only lines since a time (2026-01-02T03:04:05Z, 1700000000) or a duration ago (10m)')
    .option('-t, --timestamps', "show the engine's timestamps")
    .option('--no-color', 'no colours, even on a terminal (NO_COLOR does the same)')
    .action(
      async (
        file: string,
        names: string[],
        o: Common & { follow?: boolean; tail?: number; since?: string; timestamps?: boolean; color: boolean },
      ) => {
        const { isSinceValue, useColour } = await import('../../src/services/log-lines.js');
        if (o.since !== undefined && !isSinceValue(o.since))
          throw new CairnError(
            'E_USAGE',
            `--since takes a time or a duration like 10m, not ${JSON.stringify(o.since)}`,
          );
        const { e, base } = await setup(file, o);
        const { Runner } = await import('../../src/services/runner.js');
        const { ensembleLogs } = await import('../../src/services/logs.js');
        const runner = new Runner(e, base);
        await untilSignal((signal) =>
          ensembleLogs(runner, {
            services: names,
            follow: o.follow,
            tail: o.tail,
            since: o.since,
            timestamps: o.timestamps,
            colour: o.color && useColour(process.stdout, process.env),
            write: (line) => void process.stdout.write(line),
            signal,
          }),
        );
      },
    );

  const attached = (c: Command): Command =>
    common(c)
      .option('-T, --no-TTY', 'no pseudo-TTY (the default when stdin is not a terminal)')
      .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [] as string[])
      .option('-u, --user <user>', 'run as this user')
      .option('-w, --workdir <dir>', 'working directory in the container')
      .passThroughOptions();
  interface AttachedOpts extends Common {
    TTY: boolean;
    env: string[];
    user?: string;
    workdir?: string;
  }
  const attachOptions = (o: AttachedOpts) => ({
    // As compose: a TTY only when asked for and possible (stdin is a terminal).
    tty: o.TTY && process.stdin.isTTY === true,
    env: o.env,
    user: o.user,
    workdir: o.workdir,
  });

  attached(cmd.command('exec'))
    .description("run CMD in SERVICE's running container; its exit status is cairn's (options before FILE)")
    .argument('<file>')
    .argument('<service>')
    .argument('<cmd...>')
    .action(async (file: string, service: string, argv: string[], o: AttachedOpts) => {
      const { e, base } = await setup(file, o);
      const { Runner } = await import('../../src/services/runner.js');
      const { execInService } = await import('../../src/services/exec.js');
      process.exitCode = await execInService(new Runner(e, base), service, argv, attachOptions(o));
    });

  attached(cmd.command('run'))
    .description(
      "a one-off container of SERVICE (its image, env and network; its command, or CMD); its exit status is cairn's",
    )
    .argument('<file>')
    .argument('<service>')
    .argument('[cmd...]')
    .option('--rm', 'remove the container when it exits (also on Ctrl-C)')
    .option('--no-deps', "do not start the service's dependencies first")
    .option('--timeout <s>', 'seconds a dependency may take to answer its ping (default 300)', parseTimeout)
    .action(
      async (
        file: string,
        service: string,
        argv: string[],
        o: AttachedOpts & { rm?: boolean; deps: boolean; timeout?: number },
      ) => {
        const { e, base } = await setup(file, o);
        const { Runner } = await import('../../src/services/runner.js');
        const { runOnce } = await import('../../src/services/run-once.js');
        const runner = new Runner(e, { ...base, timeoutMs: o.timeout });
        process.exitCode = await runOnce(runner, service, argv, {
          ...attachOptions(o),
          rm: !!o.rm,
          deps: o.deps,
          log: base.log,
        });
      },
    );
}

function parseTail(v: string): number | undefined {
  if (v === 'all') return undefined;
  if (!/^\d+$/.test(v))
    throw new CairnError('E_USAGE', `--tail takes a number of lines or all, not ${JSON.stringify(v)}`);
  return Number(v);
}

/**
 * Runs a follow or watch loop until it ends or SIGINT, SIGTERM or SIGHUP
 * ends it: then the loop stops its docker processes and the command exits 0,
 * which is how a follow ends. A closed stdout (`| head`) ends it too.
 */
async function untilSignal(loop: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const ac = new AbortController();
  const stop = (): void => ac.abort();
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const sig of signals) process.on(sig, stop);
  const onError = (e: NodeJS.ErrnoException): void => {
    if (e.code === 'EPIPE') stop();
  };
  process.stdout.on('error', onError);
  try {
    await loop(ac.signal);
  } finally {
    for (const sig of signals) process.off(sig, stop);
    process.stdout.off('error', onError);
  }
}

function printStatus(
  status: readonly {
    name: string;
    state: string;
    container?: string;
    ports: Record<string, string>;
    dependsOn: string[];
    health?: string;
    healthDetail?: string;
    restarts?: number;
    stale?: boolean;
    staleReasons?: string[];
  }[],
  context: Record<string, string>,
  project: string,
): void {
  const w = Math.max(7, ...status.map((s) => s.name.length));
  for (const s of status) {
    const ports = Object.entries(s.ports)
      .map(([c, h]) => `${h}->${c}`)
      .join(', ');
    const health = s.health === undefined ? '-' : s.health;
    out(
      `${s.name.padEnd(w)}  ${s.state.padEnd(8)}  ${health.padEnd(9)}  ${s.container ?? '-'.padEnd(12)}  ` +
        `${ports || '-'}${s.dependsOn.length ? `  (after ${s.dependsOn.join(', ')})` : ''}` +
        `${s.restarts ? `  restarts: ${s.restarts}` : ''}${s.healthDetail ? `  ${s.healthDetail}` : ''}` +
        (s.stale ? `  stale: ${(s.staleReasons ?? []).join('; ')}` : ''),
    );
  }
  for (const [k, v] of Object.entries(context)) out(`context ${k}=${v}`);
  out(`project ${project}`);
}
