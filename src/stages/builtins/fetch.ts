import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';
import { redactUrl } from '../../redact-url.js';
import { displayPath, joinPath } from '../../store/fsutil.js';
import { checkName } from '../../store/refs.js';
import { only } from '../matchers.js';
import { stage, type Stage } from '../stage.js';
import { download, type DownloadOptions } from './download.js';
import { checkHash, parseHash, showHash, type HashType } from './hashes.js';

/** The config of a fetched file: its name and declared hash, and nothing else. */
export interface FixedOutput {
  file: string;
  hash: string;
}

export interface FetchUrlSpec extends Omit<DownloadOptions, 'log'> {
  /** One URL, or several mirrors tried in turn. */
  url?: string;
  urls?: readonly string[];
  /** File name inside the output (default: the last path segment of the first URL). */
  file?: string;
  /** Stage name (default: the file name). */
  name?: string;
  /** Hex, `sha256:<hex>` or SRI (`sha256-<base64>`); sha256 or sha512. */
  hash: string;
  hashType?: HashType;
}

function fileNameOf(url: string): string {
  const shown = redactUrl(url);
  if (url.startsWith('apt:')) {
    throw new CairnError('E_BAD_STAGE_SPEC', `an apt: URL names no file; give one with \`file\` (${shown})`, {
      url: shown,
    });
  }
  try {
    const last = decodeURIComponent(new URL(url).pathname.split('/').pop() ?? '');
    if (last) return last;
  } catch {
    /* not a URL */
  }
  throw new CairnError('E_BAD_STAGE_SPEC', `cannot take a file name from ${shown}; give one with \`file\``, {
    url: shown,
  });
}

function checkFileName(file: string): string {
  if (file === '' || file === '.' || file === '..' || file.includes('/') || file.includes('\0')) {
    throw new CairnError('E_BAD_NAME', `file name ${JSON.stringify(file)} must be a single path component`, { file });
  }
  return file;
}

/**
 * A file downloaded into the store: `out/<file>`. Its identity is
 * fixed-output: the DRef depends on the file name and the declared hash only,
 * not on the URLs, so mirrors can be added, removed or reordered without a
 * rebuild. The content is checked against the hash before it can enter the
 * store; a mismatch is E_HASH_MISMATCH showing both hashes. URLs are
 * redacted wherever they are shown (build log, errors): see redactUrl.
 */
export function fetchurl(spec: FetchUrlSpec): Stage<FixedOutput> {
  const urls = [...(spec.urls ?? []), ...(spec.url ? [spec.url] : [])];
  if (urls.length === 0) throw new CairnError('E_BAD_STAGE_SPEC', 'fetchurl needs `url` or `urls`');
  const file = checkFileName(spec.file ?? fileNameOf(urls[0]!));
  const expected = parseHash(spec.hash, spec.hashType);
  if (expected.type === 'tree-sha256')
    throw new CairnError('E_BAD_HASH', 'fetchurl takes a sha256 or sha512 file hash');
  const options: DownloadOptions = {
    attempts: spec.attempts,
    idleTimeoutMs: spec.idleTimeoutMs,
    backoffMs: spec.backoffMs,
  };
  return stage({
    name: checkName(spec.name ?? file),
    config: { file, hash: showHash(expected) },
    outputs: [file],
    // Deterministic by contract (the hash is checked), so several
    // realizations would mean a bug: say so rather than pick one.
    matcher: only(),
    // The URLs live in this closure, outside the identity; the version pins
    // the identity against edits of Cairn's own source.
    version: 'cairn-fetchurl-1',
    build: async ({ config, out, tmp, log }) => {
      const part = path.join(tmp, 'download');
      const got = await download(urls, part, { ...options, log });
      await checkHash(part, expected, `${config.file} from ${redactUrl(got.url)}`);
      fs.renameSync(part, path.join(out, config.file));
    },
  });
}

/**
 * Copies a file or a tree, names as bytes (fs.cpSync decodes them, so a name
 * that is not UTF-8, which `cairn hash` counts, could not be copied at all).
 * Symlinks are copied as links, never followed; file modes are kept.
 */
function copyTree(src: Buffer, dst: Buffer): void {
  const st = fs.lstatSync(src);
  if (st.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(src, { encoding: 'buffer' }), dst);
  else if (st.isFile()) fs.copyFileSync(src, dst, fs.constants.COPYFILE_EXCL);
  else if (st.isDirectory()) {
    fs.mkdirSync(dst, { mode: 0o755 });
    for (const n of fs.readdirSync(src, { encoding: 'buffer' })) copyTree(joinPath(src, n), joinPath(dst, n));
  } else throw new Error(`${displayPath(src)} is not a file, directory or symlink`);
}

export interface FetchLocalSpec {
  /** A file or directory on this machine. */
  path: string;
  /** Name inside the output (default: the basename of `path`). */
  file?: string;
  name?: string;
  /** sha256/sha512 of a file, or `tree-sha256:<hex>` of a directory (see `cairn hash`). */
  hash: string;
  hashType?: HashType;
}

/**
 * A local file or directory copied into the store as `out/<file>`, checked
 * against its declared hash. Fixed-output like fetchurl: the DRef depends on
 * the name and hash, not on where the source lives.
 */
export function fetchlocal(spec: FetchLocalSpec): Stage<FixedOutput> {
  const source = path.resolve(spec.path);
  const file = checkFileName(spec.file ?? path.basename(source));
  const expected = parseHash(spec.hash, spec.hashType);
  return stage({
    name: checkName(spec.name ?? file),
    config: { file, hash: showHash(expected) },
    outputs: [file],
    matcher: only(),
    version: 'cairn-fetchlocal-1',
    build: async ({ config, out, log }) => {
      const target = path.join(out, config.file);
      const st = fs.statSync(source);
      if (st.isDirectory() !== (expected.type === 'tree-sha256')) {
        throw new CairnError(
          'E_BAD_HASH',
          `${source} is a ` +
            (st.isDirectory()
              ? 'directory; declare a tree-sha256 hash (cairn hash DIR)'
              : 'file; declare a sha256 or sha512 hash'),
        );
      }
      copyTree(Buffer.from(source), Buffer.from(target));
      // What is checked is the copy, i.e. exactly what enters the store.
      await checkHash(target, expected, source);
      log(`copied ${source}`);
    },
  });
}
