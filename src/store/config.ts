/**
 * The store's configuration, `ROOT/config.json`, written by the user:
 *
 *   { "trusted-public-keys": ["team-1:BASE64..."], "substituters": ["s3://bucket/cache?region=eu-west-1"],
 *     "builders": ["ssh://build-1?maxJobs=4", "local"],
 *     "builders-ssh": "ssh -F /etc/cairn/ssh_config", "remote-cairn": "/opt/cairn/bin/cairn" }
 *
 * Every field is optional; a missing file is an empty configuration. It
 * lives in the store (not in the home directory) because trust is a
 * property of what may enter that store: every user of one store shares
 * it, as every user of a Nix store shares nix.conf. The file is read
 * without following a link, and the store's safety check (owner, modes)
 * covers its directory.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { withRegularFile } from './fsutil.js';

export interface StoreConfig {
  /** Public keys (`NAME:BASE64`) whose signatures make a cache entry usable. */
  trustedPublicKeys: string[];
  /** Cache URLs realize asks before building, in order. */
  substituters: string[];
  /** Builder specs realize uses when --builders is not given (see stages/builders/spec.ts). */
  builders: string[];
  /** The ssh command for ssh builders when --builders-ssh is not given. */
  buildersSsh?: string;
  /** The cairn command on builders when --remote-cairn is not given. */
  remoteCairn?: string;
}

export const CONFIG_FILE = 'config.json';

const LISTS: Record<string, 'trustedPublicKeys' | 'substituters' | 'builders'> = {
  'trusted-public-keys': 'trustedPublicKeys',
  substituters: 'substituters',
  builders: 'builders',
};
const STRINGS: Record<string, 'buildersSsh' | 'remoteCairn'> = {
  'builders-ssh': 'buildersSsh',
  'remote-cairn': 'remoteCairn',
};

/** Parses the text of a config.json (pure; `where` names it in messages). */
export function parseStoreConfig(text: string, where: string): StoreConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CairnError('E_STORE_CONFIG', `${where} is not JSON: ${(e as Error).message}`, { file: where });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new CairnError('E_STORE_CONFIG', `${where} must hold a JSON object`, { file: where });
  }
  const config: StoreConfig = { trustedPublicKeys: [], substituters: [], builders: [] };
  for (const [key, value] of Object.entries(json)) {
    const field = Object.hasOwn(LISTS, key) ? LISTS[key] : undefined;
    const str = Object.hasOwn(STRINGS, key) ? STRINGS[key] : undefined;
    if (str !== undefined) {
      if (typeof value !== 'string' || value.trim() === '') {
        throw new CairnError('E_STORE_CONFIG', `${where}: "${key}" must be a non-empty string`, { file: where, key });
      }
      config[str] = value;
      continue;
    }
    // Unknown keys are refused: a typo ("trusted-keys") must not silently trust nothing.
    if (field === undefined) {
      throw new CairnError('E_STORE_CONFIG', `${where} has an unknown key ${JSON.stringify(key)}`, {
        file: where,
        key,
      });
    }
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
      throw new CairnError('E_STORE_CONFIG', `${where}: "${key}" must be a list of strings`, { file: where, key });
    }
    config[field] = [...value];
  }
  return config;
}

/** Reads ROOT/config.json; a store without one has the empty configuration. */
export function readStoreConfig(root: string): StoreConfig {
  const file = path.join(root, CONFIG_FILE);
  let text: string | null;
  try {
    text = withRegularFile(file, (fd) => fs.readFileSync(fd, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      return { trustedPublicKeys: [], substituters: [], builders: [] };
    throw new CairnError('E_STORE_CONFIG', `cannot read ${file}: ${(e as Error).message}`, { file }, { cause: e });
  }
  if (text === null) throw new CairnError('E_STORE_CONFIG', `${file} is not a regular file`, { file });
  return parseStoreConfig(text, file);
}
