/** `cairn catalog list|fetch|run`: image catalogs (YAML lists of image versions). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { CairnError } from '../../src/errors.js';
import { out, type CliContext } from '../context.js';
import { progressReporter } from '../progress.js';

interface SelectOpts {
  version?: string;
  index?: string;
  deviceType?: string;
}

const withSelection = (c: Command): Command =>
  c
    .option('--version <v>', 'the entry with this version (or name)')
    .option('--index <i>', 'the entry at this position in the history; negative counts from the end (-1 = newest)')
    .option('--device-type <t>', 'only entries for this device type (raspberry-pi matches raspberry-pi/3b)');

function selection(o: SelectOpts): { version?: string; index?: number; deviceType?: string } {
  if (o.version !== undefined && o.index !== undefined) {
    throw new CairnError('E_USAGE', 'give --version or --index, not both');
  }
  const index = o.index === undefined ? undefined : Number(o.index);
  if (index !== undefined && !Number.isInteger(index)) {
    throw new CairnError('E_USAGE', `--index needs a whole number, not ${JSON.stringify(o.index)}`);
  }
  return { version: o.version, index, deviceType: o.deviceType };
}

export function registerCatalog(ctx: CliContext): void {
  const catalogCmd = ctx.program
    .command('catalog')
    .description('image catalogs: YAML lists of image versions to fetch, unpack and act on');

  catalogCmd
    .command('list')
    .description('list the entries of a catalog; * marks the default')
    .argument('<file>')
    .option('--device-type <t>', 'only entries for this device type')
    .option('--json', 'print entries as JSON')
    .action(async (file: string, o: { deviceType?: string; json?: boolean }) => {
      const { loadCatalog, deviceTypeMatches, redactEntryUrls } = await import('../../src/stages/catalog.js');
      const cat = loadCatalog(file);
      const entries =
        o.deviceType === undefined
          ? cat.entries
          : cat.entries.filter((e) => e.deviceTypes.some((d) => deviceTypeMatches(d, o.deviceType!)));
      if (o.json) return out(JSON.stringify({ name: cat.name, entries: entries.map(redactEntryUrls) }, null, 2));
      const shown = o.deviceType === undefined ? '' : `${entries.length} of `;
      out(`${cat.name} (${shown}${cat.entries.length} entries, oldest first)`);
      for (const e of entries) {
        out(
          `${e.isDefault ? '*' : ' '} ${String(e.index).padStart(3)}  ${e.version.padEnd(20)} ` +
            `${(e.date ?? '').padEnd(10)}  ${e.deviceTypes.join(', ')}`,
        );
      }
    });

  withSelection(catalogCmd.command('fetch'))
    .description('fetch the selected entry into the store (and unpack it), write a manifest, print the store path')
    .argument('<file>')
    .option('--unpack', 'also unpack the fetched archive')
    .option('--manifest <out.yml>', 'write the manifest here')
    .option('-o, --out-link <path>', 'make PATH a symlink to the result and a gc root')
    .action(async (file: string, o: SelectOpts & { unpack?: boolean; manifest?: string; outLink?: string }) => {
      const { loadCatalog, selectEntry } = await import('../../src/stages/catalog.js');
      const { fetchEntry, writeManifest } = await import('../../src/stages/catalog-run.js');
      const cat = loadCatalog(file);
      const entry = selectEntry(cat, selection(o));
      const store = ctx.openStore();
      // Verbose: download progress from the build log is worth seeing here.
      const tty = process.stderr.isTTY === true;
      const progress = progressReporter(o.unpack ? 2 : 1, { tty, verbose: true, quiet: false });
      const m = await fetchEntry(store, cat, entry, { unpack: o.unpack, outLink: o.outLink, events: progress }).finally(
        () => progress.finish(),
      );
      if (o.manifest) await writeManifest(o.manifest, m);
      process.stderr.write(`${cat.name} ${entry.version}: ${m.rref}\n`);
      out(m.path);
    });

  withSelection(catalogCmd.command('run'))
    .description(
      'fetch the selected entry, then run ACTION (declared in the catalog, ' +
        'or exported by <catalog>.actions.ts / actions.ts)',
    )
    .argument('<file>')
    .argument('<action>')
    .option('--unpack', 'unpack before running the action')
    .option('--manifest <out.yml>', 'where to write the manifest (default: a temporary file)')
    .action(async (file: string, action: string, o: SelectOpts & { unpack?: boolean; manifest?: string }) => {
      const { loadCatalog, selectEntry } = await import('../../src/stages/catalog.js');
      const { fetchEntry, findAction, runAction, writeManifest } = await import('../../src/stages/catalog-run.js');
      const cat = loadCatalog(file);
      const entry = selectEntry(cat, selection(o));
      const found = await findAction(cat, action);
      const store = ctx.openStore();
      const m = await fetchEntry(store, cat, entry, { unpack: o.unpack });
      const tmpDir = o.manifest ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-manifest-'));
      const manifestPath = path.resolve(o.manifest ?? path.join(tmpDir!, 'manifest.yml'));
      try {
        await writeManifest(manifestPath, m);
        const action = { manifest: m, manifestPath, storePath: m.path, catalog: cat, entry };
        process.exitCode = await runAction(found, action);
      } finally {
        if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
      }
    });
}
