/**
 * Actions for debian-cloud-kernel.yml that are TypeScript functions: run one
 * with `cairn catalog run examples/catalog/debian-cloud-kernel.yml describe --unpack`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface Context {
  manifestPath: string;
  storePath: string;
  manifest: { catalog: string; version: string; rref: string };
}

export function describe(ctx: Context): number {
  const boot = path.join(ctx.storePath, 'boot');
  const kernels = fs.existsSync(boot) ? fs.readdirSync(boot).filter((f) => f.startsWith('vmlinuz-')) : [];
  console.log(`${ctx.manifest.catalog} ${ctx.manifest.version} (${ctx.manifest.rref})`);
  console.log(`manifest: ${ctx.manifestPath}`);
  for (const k of kernels) console.log(`kernel: ${path.join(boot, k)} (${fs.statSync(path.join(boot, k)).size} bytes)`);
  return kernels.length > 0 ? 0 : 1;
}
