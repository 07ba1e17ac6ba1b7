/**
 * Shared by the cache tests: a local store filled with a small graph by
 * `Store.add` (as builds fill one), a key pair, a file:// cache.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  parseSecretKey,
  parsePublicKey,
  generateKeyPair,
  type PublicKey,
  type SecretKey,
} from '../src/store/cache/sign.js';
import type { Added, Context } from '../src/store/interface.js';
import { parseRRef, type RRef } from '../src/store/refs.js';
import { LocalStore } from '../src/store/store.js';
import { derivation, writeOutput, type TreeSpec } from './store-conformance.js';

export function keyPair(name = 'team-1'): { secret: SecretKey; public: PublicKey } {
  const p = generateKeyPair(name);
  return { secret: parseSecretKey(p.secret), public: parsePublicKey(p.public) };
}

/** Adds one realization of a derivation `name` (salted) with `tree`, built from `deps`. */
export async function addOne(
  store: LocalStore,
  name: string,
  tree: TreeSpec,
  deps: RRef[] = [],
  opts: { salt?: string; log?: string } = {},
): Promise<Added['meta']> {
  const d = derivation(name, opts.salt ?? 'cache-test');
  const context: Context = {};
  for (const r of deps) (context[parseRRef(r).dref] ??= []).push(r);
  const dir = store.makeTempDir('cache-test-stage');
  writeOutput(dir, { tree, log: opts.log, created: Date.now() });
  const [added] = await store.add({ ...d, context, buildMs: 1, outputs: [{ dir, created: Date.now() }] });
  return added!.meta;
}

/** A diamond: base <- left, base <- right, (left, right) <- top. */
export async function diamond(
  store: LocalStore,
  salt = 'cache-test',
): Promise<Record<'base' | 'left' | 'right' | 'top', RRef>> {
  const base = await addOne(
    store,
    'base',
    { 'lib/a.txt': 'base\n', 'bin/tool': { text: '#!/bin/sh\n', mode: 0o755 } },
    [],
    { salt, log: 'built base\n' },
  );
  const left = await addOne(store, 'left', { 'l.txt': 'left\n', 'to-l': { symlink: 'l.txt' } }, [base.rref], { salt });
  const right = await addOne(store, 'right', { 'r.txt': 'right\n' }, [base.rref], { salt, log: 'right log\n' });
  const top = await addOne(store, 'top', { 'top.txt': 'top\n' }, [left.rref, right.rref], { salt });
  return { base: base.rref, left: left.rref, right: right.rref, top: top.rref };
}

/** Every file under `dir` (relative path -> bytes, links as `-> target`), for comparing two trees byte for byte. */
export function snapshot(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (rel: string): void => {
    const abs = path.join(dir, rel);
    const st = fs.lstatSync(abs);
    if (st.isSymbolicLink()) m.set(rel, `-> ${fs.readlinkSync(abs)}`);
    else if (st.isDirectory()) for (const n of fs.readdirSync(abs).sort()) walk(rel === '' ? n : `${rel}/${n}`);
    else m.set(rel, `${st.mode & 0o111 ? 'x' : '-'} ${fs.readFileSync(abs).toString('base64')}`);
  };
  walk('');
  return m;
}
