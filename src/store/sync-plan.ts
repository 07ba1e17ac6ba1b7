/**
 * The pure half of sync, export and import: which realizations and
 * derivations make up a closure, which of them the other side lacks, in
 * what order they may enter a store, and how a remote is named. Nothing
 * here touches a store, a process or the network, so it is tested directly.
 */
import { CairnError } from '../errors.js';
import { canonicalJson } from './canonical.js';
import { shortHash } from './hash.js';
import { isCodeName } from './code-object.js';
import { parseRef, parseRRef, type DRef, type RRef } from './refs.js';

/** One realization of a closure and the realizations in its context. */
export interface ClosureNode {
  rref: RRef;
  deps: RRef[];
}

/**
 * What a sender sends and a receiver takes in: written to `manifest.json` in
 * an exported tar, and given on stdin to `cairn store receive`. The receiver
 * trusts none of it: every realization is re-hashed against its name.
 */
export interface ClosureManifest {
  format: 'cairn-closure-1';
  /** The realizations asked for (informational). */
  roots: RRef[];
  /** Realizations included, dependencies before dependants. */
  rrefs: RRef[];
  /** Derivations whose drv.json is included. */
  drvs: DRef[];
  /**
   * Every derivation of the whole closure, including those the receiver
   * already has: the receiver declares them as temporary gc roots, so the
   * realizations it was told it has cannot be collected while it receives.
   */
  drefs: DRef[];
  /**
   * The code object of each derivation of `drvs` that has one (see
   * code-files.ts), sent as `code/<hash>`: derivations travel with the code
   * that builds them. Optional, so manifests of older senders still parse.
   */
  code?: Record<DRef, string>;
}

/**
 * The closure of `roots` over `depsOf`: each node once, each edge once,
 * so O(nodes + edges) lookups.
 */
export function closureOf(roots: Iterable<RRef>, depsOf: (r: RRef) => RRef[]): ClosureNode[] {
  const seen = new Set<RRef>();
  const out: ClosureNode[] = [];
  const stack = [...roots];
  while (stack.length > 0) {
    const r = stack.pop()!;
    if (seen.has(r)) continue;
    seen.add(r);
    const deps = depsOf(r);
    out.push({ rref: r, deps });
    for (const d of deps) if (!seen.has(d)) stack.push(d);
  }
  return out;
}

/**
 * Orders nodes so each comes after the nodes (of this set) it depends on;
 * dependencies outside the set are ignored. Iterative, so a 10,000-long
 * chain cannot overflow the stack. A cycle (impossible for honest hashes)
 * is E_BAD_CLOSURE.
 */
export function dependencyOrder(nodes: readonly ClosureNode[]): RRef[] {
  const byRef = new Map(nodes.map((n) => [n.rref, n] as const));
  const state = new Map<RRef, 1 | 2>(); // 1: on the stack, 2: emitted
  const order: RRef[] = [];
  for (const start of nodes) {
    if (state.has(start.rref)) continue;
    const stack: { node: ClosureNode; next: number }[] = [{ node: start, next: 0 }];
    state.set(start.rref, 1);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (top.next < top.node.deps.length) {
        const dep = byRef.get(top.node.deps[top.next++]!);
        if (!dep) continue;
        const s = state.get(dep.rref);
        if (s === 2) continue;
        if (s === 1)
          throw new CairnError('E_BAD_CLOSURE', `the closure has a cycle through ${dep.rref}`, { ref: dep.rref });
        state.set(dep.rref, 1);
        stack.push({ node: dep, next: 0 });
      } else {
        state.set(top.node.rref, 2);
        order.push(top.node.rref);
        stack.pop();
      }
    }
  }
  return order;
}

const drefOf = (rref: RRef): DRef => parseRRef(rref).dref;

/**
 * What to send: the realizations and derivations of the closure that the
 * receiver does not have, realizations in dependency order.
 */
export function planTransfer(
  roots: readonly RRef[],
  nodes: readonly ClosureNode[],
  has: (ref: RRef | DRef) => boolean,
  codeOf: (dref: DRef) => string | undefined = () => undefined,
): ClosureManifest {
  const drefs = [...new Set(nodes.map((n) => drefOf(n.rref)))].sort();
  const missing = nodes.filter((n) => !has(n.rref));
  const drvs = drefs.filter((d) => !has(d));
  const code: Record<DRef, string> = {};
  for (const d of drvs) {
    const c = codeOf(d);
    if (c !== undefined) code[d] = c;
  }
  return {
    format: 'cairn-closure-1',
    roots: [...roots],
    rrefs: dependencyOrder(missing),
    drvs,
    drefs,
    ...(Object.keys(code).length > 0 ? { code } : {}),
  };
}

/** Relative paths (from a store root) of everything a manifest includes. */
export function manifestPaths(m: ClosureManifest): string[] {
  return [
    ...m.drvs.map((d) => `d/${d}/drv.json`),
    ...[...new Set(Object.values(m.code ?? {}))].sort().map((c) => `code/${c}`),
    ...m.rrefs.map((r) => {
      const p = parseRRef(r);
      return `d/${p.dref}/r/${p.rhash}`;
    }),
  ];
}

/** Checks the shape of a manifest from the other side; refs that could not name a store path are refused. */
export function parseManifest(json: unknown): ClosureManifest {
  const bad = (why: string): CairnError => new CairnError('E_BAD_CLOSURE', `the closure manifest is not valid: ${why}`);
  if (typeof json !== 'object' || json === null) throw bad('not an object');
  const m = json as Record<string, unknown>;
  if (m.format !== 'cairn-closure-1') throw bad(`unknown format ${JSON.stringify(m.format)}`);
  const list = <T extends string>(key: string, kind: 'rz' | 'drv'): T[] => {
    const v = m[key];
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw bad(`${key} is not a list of strings`);
    for (const x of v) {
      let ok = false;
      try {
        ok = parseRef(x).kind === kind;
      } catch {
        /* below */
      }
      if (!ok) throw bad(`${key} holds ${JSON.stringify(x)}, which is not ${kind === 'rz' ? 'an RRef' : 'a DRef'}`);
    }
    return v as T[];
  };
  const drvs = list<DRef>('drvs', 'drv');
  const code = m.code;
  if (code !== undefined) {
    if (typeof code !== 'object' || code === null || Array.isArray(code)) throw bad('code is not an object');
    const sent = new Set<string>(drvs);
    for (const [d, c] of Object.entries(code)) {
      if (!sent.has(d)) throw bad(`code names ${JSON.stringify(d)}, which is not a derivation sent`);
      if (typeof c !== 'string' || !isCodeName(c)) throw bad(`code of ${d} is not a code object name`);
    }
  }
  return {
    format: 'cairn-closure-1',
    roots: list<RRef>('roots', 'rz'),
    rrefs: list<RRef>('rrefs', 'rz'),
    drvs,
    drefs: list<DRef>('drefs', 'drv'),
    ...(code !== undefined ? { code: code as Record<DRef, string> } : {}),
  };
}

/**
 * A stable name for the staging directory of one sync: the same source,
 * target and roots give the same name, so a re-run after an interruption
 * lands in the directory the first run left and rsync reuses its bytes.
 */
export function syncKey(parts: Record<string, unknown>): string {
  return shortHash(canonicalJson(parts));
}

/** `[user@]host:STORE`, as ssh and rsync are to be given it. */
export interface RemoteSpec {
  /** `user@host` or `host`, for ssh. */
  sshTarget: string;
  /** The same for rsync's `HOST:PATH` (IPv6 addresses in brackets). */
  rsyncTarget: string;
  store: string;
}

const USER = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const HOSTNAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6 = /^\[([0-9A-Fa-f:.]+)\]$/;

/**
 * Parses `[user@]host:STORE`. Refused with E_BAD_REMOTE: no colon, an
 * empty host or store, or a host or user that ssh could take for an option
 * (a leading `-`) or that holds characters no host name has.
 */
export function parseRemote(spec: string): RemoteSpec {
  const bad = (why: string): CairnError =>
    new CairnError('E_BAD_REMOTE', `${JSON.stringify(spec)} is not a remote of the form [user@]host:STORE: ${why}`, {
      spec,
    });
  const ipv6 = /^(?:([^@]*)@)?(\[[^\]]*\]):(.*)$/s.exec(spec);
  const m = ipv6 ?? /^(?:([^@:]*)@)?([^@:]*):(.*)$/s.exec(spec);
  if (!m) throw bad('expected host:STORE');
  const [, user, host, store] = m as unknown as [string, string | undefined, string, string];
  if (user !== undefined && !USER.test(user)) throw bad(`bad user name ${JSON.stringify(user)}`);
  const v6 = IPV6.exec(host);
  if (!v6 && !HOSTNAME.test(host))
    throw bad(host === '' ? 'the host is empty' : `bad host name ${JSON.stringify(host)}`);
  if (store === '') throw bad('the store path is empty');
  if (/[\n\0]/.test(store)) throw bad('the store path holds a newline or NUL');
  const bare = v6 ? v6[1]! : host;
  const prefix = user === undefined ? '' : `${user}@`;
  return { sshTarget: prefix + bare, rsyncTarget: prefix + host, store };
}

/** Quotes a word for a POSIX shell (the remote side of ssh runs one). */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Splits a command line such as `ssh -i KEY -o 'A=b c'` into words, the way
 * a shell (and rsync's -e) does for quotes and backslashes; no expansions.
 */
export function splitCommand(cmd: string): string[] {
  const words: string[] = [];
  let cur: string | null = null;
  for (let i = 0; i < cmd.length; i++) {
    const c = cmd[i]!;
    if (c === "'") {
      const end = cmd.indexOf("'", i + 1);
      if (end < 0) throw new CairnError('E_BAD_COMMAND', `unbalanced ' in ${JSON.stringify(cmd)}`, { command: cmd });
      cur = (cur ?? '') + cmd.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      cur ??= '';
      for (i++; i < cmd.length && cmd[i] !== '"'; i++) {
        if (cmd[i] === '\\' && i + 1 < cmd.length && '"\\$`'.includes(cmd[i + 1]!)) i++;
        cur += cmd[i];
      }
      if (i >= cmd.length)
        throw new CairnError('E_BAD_COMMAND', `unbalanced " in ${JSON.stringify(cmd)}`, { command: cmd });
    } else if (c === '\\' && i + 1 < cmd.length) {
      cur = (cur ?? '') + cmd[++i];
    } else if (/\s/.test(c)) {
      if (cur !== null) words.push(cur);
      cur = null;
    } else {
      cur = (cur ?? '') + c;
    }
  }
  if (cur !== null) words.push(cur);
  if (words.length === 0) throw new CairnError('E_BAD_COMMAND', 'the command is empty', { command: cmd });
  return words;
}
