/**
 * The pure half of ssh machines: what an `ssh://[user@]host[:port]` names,
 * the argv of every ssh process the backend starts, and what ssh's own
 * messages mean. Nothing here starts a process.
 */
import * as path from 'node:path';
import { CairnError } from '../../errors.js';

/** How to reach a host. Everything else (ProxyJump, ciphers, agents) comes from the user's ssh config. */
export interface SshTarget {
  host: string;
  /** null: ssh's own default (the user's config, else 22). */
  port: number | null;
  /** null: ssh's own default (the user's config, else the local user name). */
  user: string | null;
  /** An absolute path given to `ssh -i` (with IdentitiesOnly), or null for the user's keys and agent. */
  identityFile: string | null;
  /** An absolute known_hosts file used instead of the user's, or null. */
  knownHostsFile: string | null;
}

// A host name, an IPv4 address or a bracketed IPv6 address; never anything ssh would read as an option.
const HOST = /^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])$/;
const USER = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

/** Parses `ssh://[user@]host[:port]` (no path, query or password). E_UNKNOWN_BASE for anything else. */
export function parseSshUrl(url: string, opts: { identityFile?: string; knownHostsFile?: string } = {}): SshTarget {
  const bad = (why: string): never => {
    throw new CairnError('E_UNKNOWN_BASE', `${JSON.stringify(url)} is not ssh://[user@]host[:port]: ${why}`, {
      base: url,
    });
  };
  if (!url.startsWith('ssh://')) bad('it does not start with ssh://');
  const rest = url.slice('ssh://'.length).replace(/\/$/, '');
  if (rest.includes('/')) bad('a path is not allowed');
  const at = rest.lastIndexOf('@');
  const user = at >= 0 ? rest.slice(0, at) : null;
  const hostPort = at >= 0 ? rest.slice(at + 1) : rest;
  if (user !== null && !USER.test(user)) bad(`bad user name ${JSON.stringify(user)}`);
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d+))?$/.exec(hostPort);
  if (!m) bad('bad host or port');
  const host = m![1]!;
  if (!HOST.test(host)) bad(`bad host name ${JSON.stringify(host)}`);
  const port = m![2] === undefined ? null : Number(m![2]);
  if (port !== null && (port < 1 || port > 65535)) bad(`port ${port} is out of range`);
  return {
    host: host.startsWith('[') ? host.slice(1, -1) : host,
    port,
    user,
    identityFile: opts.identityFile === undefined ? null : path.resolve(opts.identityFile),
    knownHostsFile: opts.knownHostsFile === undefined ? null : path.resolve(opts.knownHostsFile),
  };
}

/** `user@host:port` for messages and `machine ls`. */
export function describeTarget(t: Pick<SshTarget, 'host' | 'port' | 'user'>): string {
  const host = t.host.includes(':') ? `[${t.host}]` : t.host;
  return `ssh://${t.user === null ? '' : `${t.user}@`}${host}${t.port === null ? '' : `:${t.port}`}`;
}

/** Seconds ssh waits for a TCP connection before E_MACHINE_UNREACHABLE. */
export const CONNECT_TIMEOUT_S = 10;

/**
 * Options every ssh process gets. BatchMode: never a password or host key
 * prompt (an unknown host is refused, not trusted on first use).
 * StrictHostKeyChecking=yes says the same explicitly, whatever the user's
 * config says, because a machine whose identity is recorded must not be
 * silently re-keyed.
 */
export function baseOptions(t: SshTarget): string[] {
  const o = [
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    `ConnectTimeout=${CONNECT_TIMEOUT_S}`,
    '-o',
    'ServerAliveInterval=15',
    '-o',
    'ServerAliveCountMax=4',
  ];
  if (t.port !== null) o.push('-p', String(t.port));
  if (t.user !== null) o.push('-l', t.user);
  if (t.identityFile !== null) o.push('-i', t.identityFile, '-o', 'IdentitiesOnly=yes');
  if (t.knownHostsFile !== null)
    o.push('-o', `UserKnownHostsFile=${t.knownHostsFile}`, '-o', 'GlobalKnownHostsFile=none');
  return o;
}

/** The argv (after `ssh`) of a command over an established master connection: `--` ends ssh's options. */
export function muxArgv(t: SshTarget, controlPath: string, extra: readonly string[], remote: string): string[] {
  return [...baseOptions(t), '-S', controlPath, '-o', 'ControlMaster=no', ...extra, '--', t.host, remote];
}

/** Single-quotes a word for the remote POSIX shell. */
export const shQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** The fingerprint line ssh -v prints for the key it verified: `Server host key: ssh-ed25519 SHA256:...`. */
export function serverHostKey(debugOutput: string): string | null {
  const m = /Server host key: (\S+) (SHA256:[A-Za-z0-9+/=]+)/.exec(debugOutput);
  return m ? `${m[1]} ${m[2]}` : null;
}

const KEY_TROUBLE = new RegExp(
  [
    'REMOTE HOST IDENTIFICATION HAS CHANGED',
    'Host key verification failed',
    'No .* host key is known',
    'host key for .* has changed',
  ].join('|'),
  'i',
);

/**
 * The stable error for an ssh process that exited 255 (ssh's own failure,
 * not the remote command's), from its stderr. Key problems are checked
 * first: a changed key also prints lines that look like other failures.
 */
export function sshFailure(target: SshTarget, stderr: string): CairnError {
  const where = describeTarget(target);
  const said = stderr
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('debug') && !/^@+$|^@\s/.test(l.trim()))
    .slice(-3)
    .join(' | ');
  const ctx = { host: target.host, port: target.port, user: target.user };
  if (KEY_TROUBLE.test(stderr))
    return new CairnError(
      'E_MACHINE_HOST_KEY',
      `${where}: the host key is unknown or not the one known_hosts trusts; nothing was run (ssh: ${said}). ` +
        'Check the key and add it to known_hosts (or use a known_hosts file of your own); ' +
        'Cairn never accepts a key silently',
      ctx,
    );
  if (/Permission denied|Too many authentication failures|no mutual signature/i.test(stderr))
    return new CairnError('E_MACHINE_AUTH', `${where}: the login was refused (ssh: ${said})`, ctx);
  return new CairnError('E_MACHINE_UNREACHABLE', `${where} cannot be reached (ssh: ${said || 'exit 255'})`, ctx);
}
