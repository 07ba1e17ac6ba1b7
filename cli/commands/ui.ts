/**
 * `cairn ui`: wiring only. The server, its API and its page are src/ui.
 */
import { CairnError } from '../../src/errors.js';
import { startUiServer } from '../../src/ui/server.js';
import { resolveUiTargets } from '../../src/ui/targets.js';
import { out, type CliContext } from '../context.js';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

function parsePort(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    throw new CairnError('E_USAGE', `--port needs a port number 0-65535 (0: any free port), not ${JSON.stringify(v)}`);
  }
  return n;
}

export function registerUi(ctx: CliContext): void {
  ctx.program
    .command('ui')
    .description('a local, read-only web view of a pipeline: its DAG, experiments, metrics, logs and disk use')
    .argument('[targets...]', 'stage files, DRefs/RRefs or named roots (default: every derivation in the store)')
    .option('--port <n>', 'port to listen on (default 8470, or any free one if taken; 0: any free port)', parsePort)
    .option('--host <host>', 'address to listen on (default 127.0.0.1; others expose the store to the network)')
    .option('--stage <name...>', 'in stage files: show these exports or stage names instead of the default export')
    .action(async (args: string[], o: { port?: number; host?: string; stage?: string[] }) => {
      const host = o.host ?? '127.0.0.1';
      if (!LOOPBACK.test(host)) {
        process.stderr.write(
          `warning: listening on ${host}: anyone who can reach it can read this store (no authentication)\n`,
        );
      }
      const store = ctx.openStore();
      const targets = await resolveUiTargets(store, args, o.stage ?? []);
      const server = await startUiServer({ store, targets, host, ...(o.port === undefined ? {} : { port: o.port }) });
      // Handlers first: whoever reads the URL may stop the server at once.
      const stopped = new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          process.off('SIGHUP', stop);
          void server.close().then(resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
        process.on('SIGHUP', stop);
      });
      out(server.url);
      process.stderr.write(`cairn ui: serving ${targets.label} from ${store.root}; Ctrl-C stops it\n`);
      await stopped;
    });
}
