import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CairnError } from '../../errors.js';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/**
 * The usual AWS places, in the usual order: AWS_ACCESS_KEY_ID /
 * AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, then the profile AWS_PROFILE
 * (or `default`) of AWS_SHARED_CREDENTIALS_FILE (or ~/.aws/credentials).
 * Deliberately not the SDK's whole default chain: that one ends by asking
 * the EC2/ECS metadata endpoints, which off AWS means seconds of waiting
 * on a link-local address before a build can fall back to building.
 */
export function resolveS3Credentials(url: string, env: NodeJS.ProcessEnv = process.env): S3Credentials {
  const id = env.AWS_ACCESS_KEY_ID;
  const secret = env.AWS_SECRET_ACCESS_KEY;
  if (id && secret) return { accessKeyId: id, secretAccessKey: secret, ...sessionToken(env.AWS_SESSION_TOKEN) };
  const profile = env.AWS_PROFILE || 'default';
  const file = env.AWS_SHARED_CREDENTIALS_FILE || path.join(env.HOME || os.homedir(), '.aws', 'credentials');
  let text: string | undefined;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    text = undefined;
  }
  const section = text === undefined ? undefined : parseIni(text)[profile];
  if (section?.aws_access_key_id && section.aws_secret_access_key) {
    return {
      accessKeyId: section.aws_access_key_id,
      secretAccessKey: section.aws_secret_access_key,
      ...sessionToken(section.aws_session_token),
    };
  }
  throw new CairnError(
    'E_CACHE_UNAVAILABLE',
    `cache ${url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile ` +
      `[${profile}] in ${file}`,
    { url, profile, file },
  );
}

function sessionToken(t: string | undefined): { sessionToken?: string } {
  return t ? { sessionToken: t } : {};
}

/** The sections of an AWS shared-credentials file: `[name]` then `key = value` lines; `#`/`;` comments. */
export function parseIni(text: string): Record<string, Record<string, string>> {
  const out = Object.create(null) as Record<string, Record<string, string>>;
  let cur: Record<string, string> | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[\s*([^\]]+?)\s*\]$/.exec(line);
    if (sec) {
      cur = out[sec[1]!] ??= Object.create(null) as Record<string, string>;
      continue;
    }
    const kv = /^([^=]+?)\s*=\s*(.*)$/.exec(line);
    if (kv && cur) cur[kv[1]!.toLowerCase()] = kv[2]!;
  }
  return out;
}
