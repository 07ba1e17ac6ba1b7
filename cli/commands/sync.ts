/**
 * The CLI of sync, export and import, and the plumbing commands sync runs on
 * the other host through ssh (`cairn store have|closure|receive`).
 */
import { CairnError } from '../../src/errors.js';
import { storeExistsAt } from '../../src/store/exists.js';
import { out, type CliContext } from '../context.js';
import { formatBytes } from '../format.js';

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (d: string) => {
      text += d;
    });
    process.stdin.on('end', () => resolve(text));
    process.stdin.on('error', reject);
  });
}

function parseKbps(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new CairnError('E_USAGE', `--bwlimit needs a whole number of KiB/s >= 1, not ${JSON.stringify(v)}`);
  return n;
}

interface SyncCliOpts {
  ssh?: string;
  remoteCairn?: string;
  dryRun?: boolean;
  bwlimit?: number;
  json?: boolean;
}

/**
 * Registers `sync push|pull`, `export`, `import` and the store plumbing.
 * `storeRoot` gives the --store root without opening it, for plumbing that
 * must not create a store by asking about it.
 */
export function registerSync(ctx: CliContext): void {
  const { program, openStore, storeArg: storeRoot } = ctx;
  const syncCmd = program
    .command('sync')
    .description('copy closures between stores on different hosts (rsync over ssh)');
  for (const direction of ['push', 'pull'] as const) {
    syncCmd
      .command(direction)
      .description(
        direction === 'push'
          ? 'send the closure of REFs (default: of every root) to [user@]host:STORE'
          : 'fetch the closure of REFs (default: of every root there) from [user@]host:STORE',
      )
      .argument('<remote>', '[user@]host:STORE')
      .argument('[ref...]', 'DRefs or RRefs')
      .option('-e, --ssh <cmd>', "the ssh command, as for rsync -e (e.g. 'ssh -i KEY -p 2222')")
      .option('--remote-cairn <cmd>', 'the cairn command on the remote host', 'cairn')
      .option('-n, --dry-run', 'report what would be sent; write nothing on either side')
      .option('--bwlimit <kbps>', 'limit rsync to this many KiB/s', parseKbps)
      .option('--json', 'print the report as JSON')
      .action(async (remote: string, refs: string[], o: SyncCliOpts) => {
        const { push, pull } = await import('../../src/store/sync.js');
        const { parseRemote } = await import('../../src/store/sync-plan.js');
        parseRemote(remote); // a bad remote is refused before any store is opened
        const opts = { ssh: o.ssh, remoteCairn: o.remoteCairn, dryRun: o.dryRun, bwlimit: o.bwlimit };
        // A dry-run pull into a store that does not exist yet must not create it.
        const fresh = !storeExistsAt(storeRoot());
        const r =
          direction === 'push'
            ? await push(openStore(), remote, refs, opts)
            : await pull(o.dryRun && fresh ? null : openStore(), remote, refs, opts);
        if (o.json) return out(JSON.stringify(r, null, 2));
        const verb = direction === 'push' ? 'send' : 'fetch';
        if (r.dryRun) {
          for (const d of r.plan.drvs) out(`would ${verb} ${d}`);
          for (const rref of r.plan.rrefs) out(`would ${verb} ${rref}`);
        }
        const t = r.transfer;
        out(
          `${r.dryRun ? `would ${verb}` : verb === 'send' ? 'sent' : 'fetched'} ${r.plan.rrefs.length} ` +
            `realization(s) and ${r.plan.drvs.length} derivation(s)` +
            ` of a closure of ${r.closure} (${r.present} already there)` +
            (t ? `; rsync moved ${t.files} file(s), ${formatBytes(t.literalBytes)} of data` : ''),
        );
      });
  }

  program
    .command('export')
    .description('write the closure of REFs (realizations, their contexts, their derivations) to a tar file')
    .argument('<ref...>')
    .requiredOption('-o, --output <file>', 'the tar file to write')
    .action(async (refs: string[], o: { output: string }) => {
      const { exportClosure } = await import('../../src/store/export.js');
      const r = await exportClosure(openStore(), refs, o.output);
      out(`exported ${r.realizations} realization(s) and ${r.derivations} derivation(s) to ${r.file}`);
    });

  program
    .command('import')
    .description('take in a closure written by cairn export; every hash is checked before anything enters the store')
    .argument('<file>')
    .option('--json', 'print the report as JSON')
    .action(async (file: string, o: { json?: boolean }) => {
      const { importClosure } = await import('../../src/store/export.js');
      const r = await importClosure(openStore(), file);
      if (o.json) return out(JSON.stringify(r, null, 2));
      out(
        `imported ${r.received.length} realization(s) and ${r.drvs.length}` +
          ` derivation(s); ${r.present.length} were already present`,
      );
    });

  const storeCmd = program.commands.find((c) => c.name() === 'store');
  if (!storeCmd) throw new Error('registerSync: the store command must be registered first');

  storeCmd
    .command('have')
    .description('plumbing (run by sync over ssh): print as JSON which of the RRefs and DRefs on stdin the store has')
    .option('--stage <key>', 'also prepare the staging directory STORE/incoming/KEY if anything is missing')
    .action(async (o: { stage?: string }) => {
      const { haveRefs, prepareIncoming } = await import('../../src/store/sync.js');
      const { parseRef } = await import('../../src/store/refs.js');
      const refs = (await readStdin())
        .split('\n')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const r of refs) parseRef(r);
      // Asking must not create a store (sync --dry-run writes nothing).
      if (!storeExistsAt(storeRoot()) && !o.stage) {
        return out(JSON.stringify({ have: [], staging: null }));
      }
      const store = openStore();
      const have = haveRefs(store, refs);
      const staging = o.stage && have.length < refs.length ? prepareIncoming(store, o.stage) : null;
      out(JSON.stringify({ have, staging }));
    });

  storeCmd
    .command('closure')
    .description('plumbing (run by sync pull over ssh): list the closure of REFs (default: of every root)')
    .argument('[ref...]')
    .option('--json', "print the listing as JSON, with each realization's context")
    .action(async (refs: string[], o: { json?: boolean }) => {
      const { listClosure } = await import('../../src/store/sync.js');
      if (!storeExistsAt(storeRoot())) {
        throw new CairnError('E_NO_SUCH_REF', `there is no store at ${storeRoot()}`, { root: storeRoot() });
      }
      const listing = listClosure(openStore(), refs);
      if (o.json) return out(JSON.stringify(listing));
      for (const n of listing.nodes) out(n.rref);
    });

  storeCmd
    .command('receive')
    .description(
      'plumbing (run by sync push over ssh): verify and take in ' +
        'STORE/incoming/KEY, given the closure manifest on stdin',
    )
    .argument('<key>')
    .option('--json', 'print the report as JSON')
    .action(async (key: string, o: { json?: boolean }) => {
      const { receiveIncoming } = await import('../../src/store/sync.js');
      const { parseManifest } = await import('../../src/store/sync-plan.js');
      let json: unknown;
      try {
        json = JSON.parse(await readStdin());
      } catch {
        throw new CairnError('E_BAD_CLOSURE', 'the closure manifest on stdin is not JSON');
      }
      const r = await receiveIncoming(openStore(), key, parseManifest(json));
      if (o.json) return out(JSON.stringify(r));
      out(
        `received ${r.received.length} realization(s) and ${r.drvs.length}` +
          ` derivation(s); ${r.present.length} were already present`,
      );
    });
}
