/**
 * Moving derivations to another store, unbuilt, with the code objects that
 * define them: what a coordinator sends a builder ("build this") before
 * `cairn build-drv`, over ssh stdin or as a file. A plain tar:
 *
 *   manifest.json        {"format": "cairn-drvs-1", "drvs": [{"dref": ..., "code": ...}]}
 *   d/<dref>/drv.json    each derivation, canonical JSON
 *   code/<hash>          each code object (code-object.ts)
 *
 * The receiver trusts none of it: the tar is checked entry by entry before
 * anything is extracted (extract.ts: no absolute or `..` names, no links,
 * no devices, size limits), every file must be one the manifest names, each
 * drv.json must hash to its DRef and each code object to its name. One bad
 * entry and nothing enters the store (E_BAD_DRV_EXPORT, E_CODE_CORRUPT, or
 * the archive's own codes).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { CairnError } from '../errors.js';
import { isCodeName, parseCodeObject } from './code-object.js';
import { codePath, readCodePointer } from './code-files.js';
import { TarWriter } from './export.js';
import { extractTar } from './extract.js';
import { removeTree, withRegularFile } from './fsutil.js';
import { shortHash } from './hash.js';
import type { DerivationRecord } from './interface.js';
import { parseRef, type DRef } from './refs.js';
import type { LocalStore } from './store.js';

export const DRV_EXPORT_FORMAT = 'cairn-drvs-1';

export interface DrvExportManifest {
  format: typeof DRV_EXPORT_FORMAT;
  drvs: { dref: DRef; code: string }[];
}

export interface DrvExportReport {
  derivations: DRef[];
  /** The code objects written or taken in. */
  code: string[];
}

/** An export may not be larger than this, nor hold more entries: derivations and bundles are small. */
const LIMITS = { bytes: 1024 * 1024 * 1024, entries: 100_000 };

/**
 * Writes `drefs` and their code objects as a tar to the descriptor `fd` (a
 * file, a pipe to ssh). E_NO_SUCH_REF for a derivation the store lacks,
 * E_NO_CODE for one with no code object: it could not be built elsewhere.
 */
export function writeDerivations(store: LocalStore, drefs: readonly DRef[], fd: number): DrvExportReport {
  const list: { dref: DRef; code: string; text: Buffer }[] = [];
  for (const dref of [...new Set(drefs)].sort()) {
    if (parseRef(dref).kind !== 'drv') throw new CairnError('E_BAD_REF', `${dref} is not a DRef`, { ref: dref });
    const dir = store.drvDir(dref);
    const text = regularFile(path.join(dir, 'drv.json'));
    if (text === null) throw new CairnError('E_NO_SUCH_REF', `derivation ${dref} is not in the store`, { ref: dref });
    const code = readCodePointer(dir);
    if (code === undefined) {
      throw new CairnError(
        'E_NO_CODE',
        `derivation ${dref} has no code object: realize its stage file with self-contained code first`,
        { dref },
      );
    }
    list.push({ dref, code, text });
  }
  const codes = [...new Set(list.map((d) => d.code))].sort();
  const w = new TarWriter(fd);
  const manifest: DrvExportManifest = {
    format: DRV_EXPORT_FORMAT,
    drvs: list.map(({ dref, code }) => ({ dref, code })),
  };
  w.file(Buffer.from('manifest.json'), Buffer.from(JSON.stringify(manifest) + '\n'));
  for (const d of list) w.file(Buffer.from(`d/${d.dref}/drv.json`), d.text);
  for (const c of codes) {
    const text = regularFile(codePath(store.root, c));
    if (text === null) throw new CairnError('E_NO_CODE', `the code object ${c} is missing from the store`, { code: c });
    // Never send what the receiver would refuse: a damaged object is found here.
    parseCodeObject(text, c);
    w.file(Buffer.from(`code/${c}`), text);
  }
  w.end();
  return { derivations: list.map((d) => d.dref), code: codes };
}

/** Parses and checks an export's manifest.json (pure). */
export function parseDrvManifest(json: unknown): DrvExportManifest {
  const bad = (why: string): CairnError => new CairnError('E_BAD_DRV_EXPORT', `derivation export: ${why}`);
  const m = json as Partial<DrvExportManifest> | null;
  if (typeof m !== 'object' || m === null || m.format !== DRV_EXPORT_FORMAT)
    throw bad(`manifest.json is not of format ${DRV_EXPORT_FORMAT}`);
  if (!Array.isArray(m.drvs)) throw bad('manifest.json lists no derivations');
  const seen = new Set<string>();
  for (const d of m.drvs as unknown[]) {
    const e = d as { dref?: unknown; code?: unknown } | null;
    let ok = false;
    try {
      ok = typeof e?.dref === 'string' && parseRef(e.dref).kind === 'drv';
    } catch {
      /* not a ref */
    }
    if (!ok) throw bad(`manifest.json lists ${JSON.stringify(e?.dref)}, not a DRef`);
    if (typeof e!.code !== 'string' || !isCodeName(e!.code)) throw bad(`${String(e!.dref)} names no code object`);
    if (seen.has(e!.dref as string)) throw bad(`manifest.json lists ${String(e!.dref)} twice`);
    seen.add(e!.dref as string);
  }
  return m as DrvExportManifest;
}

const isDir = (st: fs.Stats | undefined): boolean => st?.isDirectory() === true;

/** A regular file's bytes; null when it is missing, a symlink or not a regular file. */
function regularFile(p: string): Buffer | null {
  try {
    return withRegularFile(p, (f) => fs.readFileSync(f));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw e;
  }
}
function lstat(p: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch {
    return undefined;
  }
}

/**
 * Takes in the derivations of an export (`file`: a tar written by
 * writeDerivations), all or nothing: see the header for what is checked.
 */
export async function importDerivations(store: LocalStore, file: string): Promise<DrvExportReport> {
  if (!fs.existsSync(file)) throw new CairnError('E_NO_SUCH_FILE', `${file} does not exist`, { file });
  const staging = store.makeTempDir('import-drvs');
  try {
    await extractTar(path.resolve(file), 'tar', staging, { limits: LIMITS });
    const bad = (why: string): CairnError =>
      new CairnError('E_BAD_DRV_EXPORT', `derivation export ${file}: ${why}; nothing was taken in`, { file });
    let json: unknown;
    try {
      json = JSON.parse(regularFile(path.join(staging, 'manifest.json'))?.toString('utf8') ?? 'null');
    } catch {
      throw bad('manifest.json is missing or not JSON');
    }
    const manifest = parseDrvManifest(json);
    const drefs = new Set<string>(manifest.drvs.map((d) => d.dref));
    const codes = new Set(manifest.drvs.map((d) => d.code));
    // Only what the manifest names, each of its kind: anything else means the sender is not cairn.
    for (const top of fs.readdirSync(staging)) {
      const st = lstat(path.join(staging, top));
      if (top === 'manifest.json' && st?.isFile()) continue;
      if (!((top === 'd' || top === 'code') && isDir(st))) throw bad(`unexpected entry ${JSON.stringify(top)}`);
    }
    const dDir = path.join(staging, 'd');
    for (const name of isDir(lstat(dDir)) ? fs.readdirSync(dDir) : []) {
      if (!drefs.has(name) || !isDir(lstat(path.join(dDir, name))))
        throw bad(`unexpected entry d/${JSON.stringify(name)}`);
      const inner = fs.readdirSync(path.join(dDir, name));
      if (inner.length !== 1 || inner[0] !== 'drv.json') throw bad(`d/${name} holds more than drv.json`);
    }
    const cDir = path.join(staging, 'code');
    const sent = isDir(lstat(cDir)) ? fs.readdirSync(cDir) : [];
    for (const name of sent) if (!codes.has(name)) throw bad(`unexpected entry code/${JSON.stringify(name)}`);

    const records: DerivationRecord[] = [];
    for (const { dref, code } of manifest.drvs) {
      const text = regularFile(path.join(dDir, dref, 'drv.json'));
      if (text === null) throw bad(`d/${dref}/drv.json is missing or not a regular file`);
      const drvJson = text.toString('utf8').replace(/\n$/, '');
      const name = parseRef(dref).name;
      if (`${shortHash(drvJson)}-${name}` !== dref) throw bad(`d/${dref}/drv.json does not hash to its DRef`);
      records.push({ dref, name, drvJson, code });
    }
    const texts: string[] = [];
    for (const code of codes) {
      const bytes = regularFile(path.join(cDir, code));
      if (bytes === null) {
        if (fs.existsSync(codePath(store.root, code)) && !sent.includes(code)) continue;
        throw bad(`code object ${code} is neither sent nor in the store`);
      }
      parseCodeObject(bytes, code);
      texts.push(bytes.toString('utf8'));
    }
    // Everything checked: now it enters, code first (derivations point to it).
    for (const t of texts) await store.addCode(t);
    await store.addDerivations(records);
    return { derivations: records.map((r) => r.dref), code: [...codes].sort() };
  } finally {
    removeTree(staging);
  }
}

/** writeDerivations into a stream (ssh's stdin, stdout): through a temporary file, as tar writes are synchronous. */
export async function exportDerivationsTo(
  store: LocalStore,
  drefs: readonly DRef[],
  to: NodeJS.WritableStream,
): Promise<DrvExportReport> {
  const dir = store.makeTempDir('export-drvs');
  try {
    const file = path.join(dir, 'drvs.tar');
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    let report: DrvExportReport;
    try {
      report = writeDerivations(store, drefs, fd);
    } finally {
      fs.closeSync(fd);
    }
    await pipeline(fs.createReadStream(file), to, { end: false });
    return report;
  } finally {
    removeTree(dir);
  }
}

/** importDerivations from a stream (ssh stdin): kept in a temporary file of the store first. */
export async function importDerivationsFrom(store: LocalStore, from: NodeJS.ReadableStream): Promise<DrvExportReport> {
  const dir = store.makeTempDir('import-drvs-in');
  try {
    const file = path.join(dir, 'drvs.tar');
    await pipeline(from, fs.createWriteStream(file, { flags: 'wx', mode: 0o600 }));
    return await importDerivations(store, file);
  } finally {
    removeTree(dir);
  }
}
