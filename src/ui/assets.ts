/**
 * The web view's static files, read once at start-up into memory and served
 * from a fixed table: a URL either names one of them or is a 404, so no
 * request path ever reaches the filesystem (no traversal to guard against).
 *
 * Preact and htm come from the installed packages' own ES module builds;
 * hooks import `preact` by its bare name, which a browser cannot resolve
 * without an import map (an inline script, which the CSP forbids), so that
 * one specifier is rewritten to the file served next to it.
 */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CairnError } from '../errors.js';

export interface Asset {
  type: string;
  body: Buffer;
}

const JS = 'text/javascript; charset=utf-8';

/** src/ui/assets when run from the sources, the same directory from dist/src/ui (the package ships src/ui/assets). */
function assetsDir(): string {
  for (const rel of ['./assets/', '../../../src/ui/assets/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (fs.existsSync(dir + 'app.js')) return dir;
  }
  throw new CairnError('E_UI_ASSETS', "the web view's files (src/ui/assets) are missing from this installation");
}

function vendorFile(specifier: string): Buffer {
  try {
    return fs.readFileSync(fileURLToPath(import.meta.resolve(specifier)));
  } catch (e) {
    throw new CairnError(
      'E_UI_ASSETS',
      `cannot read ${specifier} for the web view: ${(e as Error).message}`,
      {},
      {
        cause: e,
      },
    );
  }
}

/** Rewrites exactly the bare `preact` imports of a module; refuses a build it does not recognise. */
export function pointAtPreact(body: Buffer, specifier: string): Buffer {
  const text = body.toString('utf8');
  const bare = /(from\s*)(["'])preact\2/g;
  if (!bare.test(text)) {
    throw new CairnError('E_UI_ASSETS', `${specifier} does not import preact as this view expects`);
  }
  return Buffer.from(text.replace(bare, '$1"./preact.mjs"'));
}

export function loadAssets(): Map<string, Asset> {
  const dir = assetsDir();
  const own = (file: string, type: string): Asset => ({ type, body: fs.readFileSync(dir + file) });
  return new Map<string, Asset>([
    ['/', own('index.html', 'text/html; charset=utf-8')],
    ['/app.js', own('app.js', JS)],
    ['/plot.js', own('plot.js', JS)],
    ['/format.js', own('format.js', JS)],
    ['/style.css', own('style.css', 'text/css; charset=utf-8')],
    ['/vendor/preact.mjs', { type: JS, body: vendorFile('preact') }],
    ['/vendor/hooks.mjs', { type: JS, body: pointAtPreact(vendorFile('preact/hooks'), 'preact/hooks') }],
    ['/vendor/htm.mjs', { type: JS, body: vendorFile('htm') }],
  ]);
}
