/**
 * `cairn services start|stop|reload|status FILE`: service ensembles on the
 * Docker engine (see docs/services.md).
 */
import type { Command } from 'commander';
import { CairnError } from '../../src/errors.js';
import type { CliContext } from '../context.js';

const out = (s: string): void => {
  process.stdout.write(s.endsWith('\n') ? s : s + '\n');
};

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
    .description('service ensembles on the Docker engine: start, stop, down, reload, status');
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
    const log = o.quiet ? undefined : (line: string) => process.stderr.write(`${line}\n`);
    return { e, base: { store: openStore(), file, stateDir: o.stateDir, project: o.projectName, log } };
  };

  common(cmd.command('start'))
    .description(
      'start the services of FILE in dependency order (independent ones in parallel); leaves running containers alone',
    )
    .argument('<file>', 'ensemble file (.ts or .js)')
    .option('-x, --exclude <name...>', 'services not to start (none of the started ones may depend on them)')
    .option('--timeout <s>', 'seconds a service may take to answer its ping (default 300)', parseTimeout)
    .action(async (file: string, o: Common & { exclude?: string[]; timeout?: number }) => {
      const { e, base } = await setup(file, o);
      const { startEnsemble, checkReports } = await import('../../src/services/runner.js');
      const reports = await startEnsemble(e, { ...base, exclude: o.exclude, timeoutMs: o.timeout });
      printReports(reports);
      checkReports(reports, 'start');
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
      const { reloadService, checkReports } = await import('../../src/services/runner.js');
      const r = await reloadService(e, name, { ...base, timeoutMs: o.timeout });
      printReports([r]);
      checkReports([r], 'reload');
    });

  common(cmd.command('status'))
    .description('show the state of each service of FILE')
    .argument('<file>')
    .option('--json', 'print JSON')
    .action(async (file: string, o: Common & { json?: boolean }) => {
      const { e, base } = await setup(file, o);
      const { ensembleStatus, contextFile, projectOf } = await import('../../src/services/runner.js');
      const { FileContext } = await import('../../src/services/context.js');
      const status = await ensembleStatus(e, base);
      const project = projectOf(e, base).name;
      const context = FileContext.read(contextFile(base, project));
      if (o.json) {
        out(JSON.stringify({ ensemble: e.name, project, services: status, context }, null, 2));
        return;
      }
      const w = Math.max(7, ...status.map((s) => s.name.length));
      for (const s of status) {
        const ports = Object.entries(s.ports)
          .map(([c, h]) => `${h}->${c}`)
          .join(', ');
        out(
          `${s.name.padEnd(w)}  ${s.state.padEnd(8)}  ${s.container ?? '-'.padEnd(12)}  ` +
            `${ports || '-'}${s.dependsOn.length ? `  (after ${s.dependsOn.join(', ')})` : ''}`,
        );
      }
      for (const [k, v] of Object.entries(context)) out(`context ${k}=${v}`);
      out(`project ${project}`);
    });
}
