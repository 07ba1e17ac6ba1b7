/**
 * `cairn key generate` and `cairn cache push|pull|ls|verify|gc`: commander
 * wiring only; the cache itself is src/store/cache/.
 */
import * as path from 'node:path';
import { CairnError } from '../../src/errors.js';
import type { CliContext } from '../context.js';
import { out, parseCount } from '../context.js';
import { formatBytes } from '../format.js';

const repeat = (v: string, prev: string[] = []): string[] => [...prev, v];

function parseKeep(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new CairnError('E_USAGE', `--keep-last needs a whole number >= 0, not ${JSON.stringify(v)}`);
  return n;
}

export function registerCache(ctx: CliContext): void {
  const { program, openStore } = ctx;

  const keyCmd = program.command('key').description('signing keys for binary caches');
  keyCmd
    .command('generate')
    .description('make an ed25519 key pair: NAME.secret (keep it private) and NAME.public (NAME:BASE64, to trust)')
    .argument('<name>', 'the key name, also the file prefix (a path may come before it)')
    .action(async (name: string) => {
      const { writeKeyPair } = await import('../../src/store/cache/sign.js');
      const r = writeKeyPair(name, path.basename(name));
      out(`wrote ${r.secretFile} and ${r.publicFile}`);
      out(r.publicKey);
    });

  const cacheCmd = program
    .command('cache')
    .description('binary caches: file:///DIR, s3://BUCKET/PREFIX, http(s):// (read-only)');

  /** Trusted keys: the store's config.json, plus --trusted-key. */
  const trusted = async (extra: string[] | undefined, root: string) => {
    const { readTrustedKey, parsePublicKey } = await import('../../src/store/cache/sign.js');
    const { readStoreConfig } = await import('../../src/store/config.js');
    const fromConfig = readStoreConfig(root).trustedPublicKeys.map(parsePublicKey);
    return [...fromConfig, ...(extra ?? []).map(readTrustedKey)];
  };
  const blobOf = async (url: string) => (await import('../../src/store/cache/open-blob.js')).openBlobStore(url);

  cacheCmd
    .command('push')
    .description('upload the closures of REFs, signed with --key')
    .argument('<url>')
    .argument('<ref...>', 'DRefs or RRefs')
    .requiredOption('--key <file>', 'the secret key file (from cairn key generate) that signs the entries')
    .option('-j, --jobs <n>', 'uploads in flight', (v: string) => parseCount(v, '--jobs'), 16)
    .option('--json', 'print the report as JSON')
    .action(async (url: string, refs: string[], o: { key: string; jobs: number; json?: boolean }) => {
      const { readSecretKeyFile } = await import('../../src/store/cache/sign.js');
      const { pushClosure } = await import('../../src/store/cache/push.js');
      const key = readSecretKeyFile(o.key);
      const r = await pushClosure(openStore(), await blobOf(url), refs, { key, concurrency: o.jobs });
      if (o.json) return out(JSON.stringify(r, null, 2));
      out(
        `pushed ${r.pushed.length} realization(s) of a closure of ${r.closure} (${r.present.length} already there` +
          (r.signed.length > 0 ? `, ${r.signed.length} signed again` : '') +
          '); ' +
          `${r.archives} archive(s), ${formatBytes(r.archiveBytes)}` +
          (r.codePointers?.length ? `; ${r.codePointers.length} derivation(s) with their code` : ''),
      );
    });

  cacheCmd
    .command('pull')
    .description('download the closures of REFs into the store; entries must be signed by a trusted key')
    .argument('<url>')
    .argument('<ref...>', 'DRefs (every realization the cache has) or RRefs')
    .option('--trusted-key <key>', 'NAME:BASE64 or a .public file, besides config.json (repeatable)', repeat)
    .option('--json', 'print the report as JSON')
    .action(async (url: string, refs: string[], o: { trustedKey?: string[]; json?: boolean }) => {
      const { pullClosure } = await import('../../src/store/cache/pull.js');
      const store = openStore();
      const trustedKeys = await trusted(o.trustedKey, store.root);
      const r = await pullClosure(await blobOf(url), store, refs, { trustedKeys });
      if (o.json) return out(JSON.stringify({ ...r, receive: undefined }, null, 2));
      for (const k of r.skipped) process.stderr.write(`cairn: warning: skipped ${k.rref}: ${k.code}\n`);
      out(`pulled ${r.received.length} realization(s) of a closure of ${r.closure} (${r.present.length} already here)`);
    });

  cacheCmd
    .command('ls')
    .description('list the realizations in a cache (of one DRef): RRef, creation time, size, signing keys')
    .argument('<url>')
    .argument('[dref]')
    .option('--json', 'print JSON')
    .action(async (url: string, dref: string | undefined, o: { json?: boolean }) => {
      const { listCache } = await import('../../src/store/cache/list.js');
      const rows = await listCache(await blobOf(url), dref);
      if (o.json) return out(JSON.stringify(rows, null, 2));
      for (const r of rows) {
        out(
          r.problem
            ? `${r.rref}  unusable: ${r.problem}`
            : `${r.rref}  ${new Date(r.created!).toISOString()}  ${formatBytes(r.bytes!)}  ` +
                `signed by ${r.keys!.join(', ') || 'nobody'}`,
        );
      }
    });

  cacheCmd
    .command('verify')
    .description(
      'check every entry: well formed, signed by a trusted key, objects present, archives hash to their trees',
    )
    .argument('<url>')
    .option('--trusted-key <key>', 'NAME:BASE64 or a .public file, besides config.json (repeatable)', repeat)
    .option('--shallow', 'do not download archives; check only metadata and existence')
    .option('--json', 'print the report as JSON')
    .action(async (url: string, o: { trustedKey?: string[]; shallow?: boolean; json?: boolean }) => {
      const { verifyCache } = await import('../../src/store/cache/verify.js');
      const r = await verifyCache(await blobOf(url), {
        // Read without opening (and so creating) a store: verify needs none.
        trustedKeys: await trusted(o.trustedKey, ctx.storeRoot()),
        shallow: o.shallow,
      });
      if (o.json) out(JSON.stringify(r, null, 2));
      else {
        for (const p of r.problems) out(`${p.rref}: ${p.code}: ${p.detail}`);
        for (const p of r.codeProblems) out(`${p.key}: ${p.code}: ${p.detail}`);
        out(`${r.ok} of ${r.entries} entries are usable`);
        if (r.codePointers > 0)
          out(`${r.codePointers - r.codeProblems.length} of ${r.codePointers} code pointers are usable`);
      }
      if (r.problems.length > 0 || r.codeProblems.length > 0) process.exitCode = 1;
    });

  cacheCmd
    .command('gc')
    .description('delete old realizations, keeping closures whole (entries first, then unreferenced archives)')
    .argument('<url>')
    .option('--keep-last <n>', 'keep the newest N realizations of each DRef', parseKeep)
    .option('--older-than <duration>', 'delete only realizations older than this (e.g. 30d, 12h)')
    .option('-n, --dry-run', 'report what would be deleted')
    .option('--json', 'print the report as JSON')
    .action(async (url: string, o: { keepLast?: number; olderThan?: string; dryRun?: boolean; json?: boolean }) => {
      if (o.keepLast === undefined && o.olderThan === undefined) {
        throw new CairnError('E_USAGE', 'cache gc needs --keep-last and/or --older-than: it never deletes by default');
      }
      const { parseDuration } = await import('../../src/duration.js');
      const { cacheGc } = await import('../../src/store/cache/gc.js');
      const olderThanMs = o.olderThan === undefined ? undefined : parseDuration(o.olderThan);
      const r = await cacheGc(await blobOf(url), { keepLast: o.keepLast, olderThanMs, dryRun: o.dryRun });
      if (o.json) return out(JSON.stringify(r, null, 2));
      out(
        `${o.dryRun ? 'would delete' : 'deleted'} ${r.deleted.length} realization(s) and ` +
          `${r.broken.length} unusable entr(ies); ` +
          `kept ${r.kept}; ${r.objects} object(s) removed`,
      );
    });
}
