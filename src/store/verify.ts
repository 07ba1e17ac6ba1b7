import * as fs from 'node:fs';
import * as path from 'node:path';
import { CairnError } from '../errors.js';
import { displayPath } from './fsutil.js';
import { CODE_DIR, CODE_POINTER, codePath, readCodePointer, readCodeText } from './code-files.js';
import { isCodeName } from './code-object.js';
import { shortHash } from './hash.js';
import { tightenMode, whyUnsafe } from './permissions.js';
import { makeRRef, parseRef, type DRef, type RRef } from './refs.js';
import type { LocalStore } from './store.js';
import { storeIndex } from './internals.js';

export type ProblemKind =
  /** Content, metadata or name no longer match their hashes. */
  | 'modified'
  /** The index lists it, the files do not have it. */
  | 'missing'
  /** The files have it, the index does not list it (e.g. after rsync). */
  | 'extra'
  /** Content matches, but write bits are set. */
  | 'writable'
  /** An entry under d/ that the store did not make: a junk name, a file where a directory belongs, a symlink. */
  | 'unknown'
  /** A store directory or file another user can change (group or other write bit, or another owner). */
  | 'permissive';

/** `ref` is the RRef or DRef, or for 'unknown' and 'permissive' the path relative to the store root. */
export interface Problem {
  ref: RRef | DRef | string;
  kind: ProblemKind;
  detail: string;
}

export interface VerifyReport {
  checked: number;
  problems: Problem[];
  /** Corrupt realizations taken out of the index (and, with repair, moved to ROOT/quarantine/). */
  quarantined: RRef[];
  repaired: boolean;
}

/** A path problem, with the path as bytes for --repair (names under d/ need not be UTF-8). */
interface PathProblem {
  problem: Problem;
  abs: Buffer;
  fixable: boolean;
}

interface Scan {
  realizations: RRef[];
  drefs: DRef[];
  /** Names of the code objects under code/, and the derivations with a code pointer. */
  code: string[];
  pointers: DRef[];
  unknown: PathProblem[];
  permissive: PathProblem[];
}

const join = (dir: Buffer, name: Buffer): Buffer => Buffer.concat([dir, Buffer.from('/'), name]);
const readdirB = (dir: Buffer): Buffer[] => fs.readdirSync(dir, { encoding: 'buffer' });

/** The name as a string if it is plain ASCII that round-trips (every valid ref is), else null. */
function asciiName(name: Buffer): string | null {
  const s = name.toString('latin1');
  return /^[\x21-\x7e]+$/.test(s) ? s : null;
}

function kindOf(st: fs.Stats): string {
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isDirectory()) return 'a directory';
  if (st.isFile()) return 'a regular file';
  return 'a special file';
}

/**
 * Walks d/ without following a symlink: every derivation directory and
 * realization directory, and every entry that does not belong (reported,
 * never descended into). Also the modes of the store's own directories.
 */
function scanStore(store: LocalStore): Scan {
  const scan: Scan = { realizations: [], drefs: [], code: [], pointers: [], unknown: [], permissive: [] };
  const root = Buffer.from(store.root);
  // displayPath: a name that is not UTF-8 is shown as its bytes (\xff), not as U+FFFD.
  const rel = (abs: Buffer): string => displayPath(abs.subarray(root.length + 1));
  const unknown = (abs: Buffer, detail: string): void => {
    scan.unknown.push({ problem: { ref: rel(abs), kind: 'unknown', detail }, abs, fixable: true });
  };
  const checkMode = (abs: Buffer, st: fs.Stats, ownerOnly = false): void => {
    const why = whyUnsafe(st);
    if (!why) return;
    const ownedElsewhere = why.startsWith('owned');
    if (ownerOnly && !ownedElsewhere) return;
    const problem: Problem = { ref: rel(abs) || '.', kind: 'permissive', detail: why };
    scan.permissive.push({ problem, abs, fixable: !ownedElsewhere });
  };
  const lstat = (abs: Buffer): fs.Stats | null => {
    try {
      return fs.lstatSync(abs);
    } catch {
      return null;
    }
  };

  checkMode(root, fs.statSync(root));
  for (const name of STORE_ENTRIES) {
    const abs = join(root, Buffer.from(name));
    const st = lstat(abs);
    if (st && !st.isSymbolicLink()) checkMode(abs, st);
  }
  const named = join(root, Buffer.from('roots/named'));
  if (lstat(named)?.isDirectory()) {
    for (const n of readdirB(named)) {
      const st = lstat(join(named, n));
      if (st?.isFile()) checkMode(join(named, n), st);
    }
  }

  const d = join(root, Buffer.from('d'));
  for (const dname of readdirB(d)) {
    const dabs = join(d, dname);
    const dst = lstat(dabs);
    const name = asciiName(dname);
    let dref: DRef | null = null;
    try {
      if (name !== null) {
        const p = parseRef(name);
        if (p.kind === 'drv') dref = p.dref;
      }
    } catch {
      /* junk */
    }
    const isDrv = dref !== null;
    if (!dst) continue;
    if (!isDrv) {
      unknown(dabs, `${kindOf(dst)} whose name is not a DRef`);
      continue;
    }
    if (!dst.isDirectory()) {
      unknown(dabs, `${kindOf(dst)} where a derivation directory belongs`);
      continue;
    }
    checkMode(dabs, dst);
    scan.drefs.push(dref!);
    let hasR = false;
    for (const ename of readdirB(dabs)) {
      const eabs = join(dabs, ename);
      const est = lstat(eabs);
      if (!est) continue;
      const e = ename.toString('latin1');
      if ((e === 'drv.json' || e === CODE_POINTER) && est.isFile()) {
        checkMode(eabs, est);
        if (e === CODE_POINTER) scan.pointers.push(dref!);
      } else if (e === 'r' && est.isDirectory()) {
        checkMode(eabs, est);
        hasR = true;
      } else if (e === 'r') unknown(eabs, `${kindOf(est)} where a directory belongs`);
      else if (e === 'drv.json' || e === CODE_POINTER) unknown(eabs, `${kindOf(est)} where a regular file belongs`);
      else unknown(eabs, `${kindOf(est)} that does not belong in a derivation directory`);
    }
    if (!hasR) continue;
    const r = join(dabs, Buffer.from('r'));
    for (const hname of readdirB(r)) {
      const habs = join(r, hname);
      const hst = lstat(habs);
      if (!hst) continue;
      const h = asciiName(hname);
      let ok = false;
      if (h !== null) {
        try {
          const p = parseRef(makeRRef(h, dref!));
          ok = p.kind === 'rz' && p.rhash === h && p.dref === dref;
        } catch {
          /* junk */
        }
      }
      if (!ok) {
        unknown(habs, `${kindOf(hst)} whose name is not a realization hash`);
        continue;
      }
      if (!hst.isDirectory()) {
        unknown(habs, `${kindOf(hst)} where a realization directory belongs`);
        continue;
      }
      // Its write bits are 'writable' (inspect); only its owner is checked here.
      checkMode(habs, hst, true);
      scan.realizations.push(makeRRef(h!, dref!));
    }
  }
  const code = join(root, Buffer.from(CODE_DIR));
  if (lstat(code)?.isDirectory()) {
    for (const cname of readdirB(code)) {
      const cabs = join(code, cname);
      const cst = lstat(cabs);
      if (!cst) continue;
      const c = asciiName(cname);
      if (c === null || !isCodeName(c)) unknown(cabs, `${kindOf(cst)} whose name is not a code object's`);
      else if (!cst.isFile()) unknown(cabs, `${kindOf(cst)} where a code object belongs`);
      else {
        checkMode(cabs, cst);
        scan.code.push(c);
      }
    }
  }
  return scan;
}

/** The store's own entries whose modes verify checks (besides d/ and what is below it). */
const STORE_ENTRIES = [
  'd',
  CODE_DIR,
  'tmp',
  'store.json',
  'index.sqlite',
  'index.sqlite-wal',
  'index.sqlite-shm',
  'roots',
  'roots/named',
  'roots/auto',
  'quarantine',
  'failed',
  'incoming',
];

/** Re-hashes one realization against its name; returns what is wrong, or null. */
async function checkRealization(store: LocalStore, rref: RRef): Promise<Problem | null> {
  let isRealization = false;
  try {
    isRealization = parseRef(rref).kind === 'rz';
  } catch {
    /* junk in d/<dref>/r/ */
  }
  if (!isRealization) return { ref: rref, kind: 'modified', detail: 'directory name is not a realization hash' };
  const problem = await store.inspect(rref);
  return problem && { ref: rref, ...problem };
}

function isThere(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function isRealDir(p: string): boolean {
  try {
    return fs.lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Checks realizations against their hashes and the index against the files.
 * The files are the truth: corrupt realizations are always removed from the
 * index at once, so no build is ever given one. Entries under d/ that do not
 * belong are reported ('unknown') and checking goes on; so are store
 * directories others can write to ('permissive'). With `repair`, corrupt
 * realizations and unknown entries are moved to ROOT/quarantine/ (moved,
 * never followed), write bits are cleared again, and the index is rebuilt
 * from the files (which fixes missing and extra entries).
 */
export async function verifyStore(
  store: LocalStore,
  opts: { repair?: boolean; refs?: string[] } = {},
): Promise<VerifyReport> {
  const problems: Problem[] = [];
  let targets: RRef[];
  const indexed = new Set(
    storeIndex(store)
      .all()
      .map((r) => r.rref),
  );
  const whole = !opts.refs || opts.refs.length === 0;
  const scan: Scan | null = whole ? scanStore(store) : null;
  if (!whole) {
    targets = opts.refs!.flatMap((ref) => {
      const p = parseRef(ref);
      if (p.kind === 'rz') return [p.rref];
      const fromIndex = storeIndex(store)
        .realizationsOf(p.dref)
        .map((r) => r.rref);
      let fromDisk: RRef[] = [];
      try {
        fromDisk = fs.readdirSync(path.join(store.drvDir(p.dref), 'r')).map((h) => makeRRef(h, p.dref));
      } catch {
        /* none */
      }
      fromDisk = fromDisk.filter((r) => {
        try {
          return parseRef(r).kind === 'rz';
        } catch {
          return false;
        }
      });
      if (fromIndex.length === 0 && fromDisk.length === 0)
        throw new CairnError('E_NO_SUCH_REF', `${ref} is not in the store`, { ref });
      return [...new Set([...fromIndex, ...fromDisk])];
    });
  } else {
    targets = [...new Set([...scan!.realizations, ...indexed])];
  }
  if (scan) problems.push(...scan.unknown.map((u) => u.problem), ...scan.permissive.map((u) => u.problem));
  const quarantined: RRef[] = [];
  const writable: RRef[] = [];
  for (const rref of targets) {
    // lstat: a symlink in r/ is an unknown entry, never a realization to follow.
    if (!isRealDir(store.rzDir(rref))) {
      const there = isThere(store.rzDir(rref));
      if (indexed.has(rref)) problems.push({ ref: rref, kind: 'missing', detail: 'in the index, not on disk' });
      else if (!there) throw new CairnError('E_NO_SUCH_REF', `${rref} is not in the store`, { ref: rref });
      // The whole-store scan reports it with its path already.
      if (there && !scan) problems.push({ ref: rref, kind: 'unknown', detail: 'not a directory (a symlink?)' });
      continue;
    }
    if (!indexed.has(rref)) problems.push({ ref: rref, kind: 'extra', detail: 'on disk, not in the index' });
    const problem = await checkRealization(store, rref);
    if (!problem) continue;
    problems.push(problem);
    if (problem.kind === 'writable') writable.push(rref);
    else {
      storeIndex(store).removeRealization(rref);
      quarantined.push(rref);
    }
  }
  const badDrvs = scan ? checkDerivations(store, scan.drefs) : [];
  problems.push(...badDrvs);
  const badCode = scan ? checkCode(store, scan) : [];
  problems.push(...badCode);
  if (opts.repair) {
    const stamp = Date.now();
    // Made (0700) on first use: see Store.quarantineDir.
    let q: string | undefined;
    const qdir = (): string => (q ??= store.quarantineDir());
    for (const [i, u] of (scan?.unknown ?? []).entries()) {
      // rename() moves a symlink itself, never what it points to.
      fs.renameSync(u.abs, path.join(qdir(), `unknown-${stamp}-${i}`));
    }
    for (const u of scan?.permissive ?? []) {
      if (!u.fixable) continue;
      try {
        tightenMode(u.abs);
      } catch (e) {
        // The index's WAL files come and go with its connections.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    for (const rref of quarantined) store.quarantine(store.rzDir(rref), rref);
    // A damaged code object is moved aside; the derivations pointing to it are then built only where it is intact.
    for (const p of badCode) {
      if (p.kind !== 'modified') continue;
      const hash = p.ref.slice(CODE_DIR.length + 1);
      fs.renameSync(codePath(store.root, hash), path.join(qdir(), `code-${hash}-${stamp}`));
    }
    for (const rref of writable) await store.reseal(rref);
    // A derivation with a missing or corrupt drv.json: with no realizations
    // it is removed; otherwise its drv.json is moved aside and the next
    // realize of its stage writes it again.
    for (const p of badDrvs) {
      const dir = store.drvDir(p.ref as DRef);
      let realizations: string[] = [];
      try {
        realizations = fs.readdirSync(path.join(dir, 'r'));
      } catch {
        /* none */
      }
      const to = path.join(qdir(), `${p.ref}-drv-${Date.now()}`);
      if (realizations.length === 0) fs.renameSync(dir, to);
      else if (fs.existsSync(path.join(dir, 'drv.json'))) fs.renameSync(path.join(dir, 'drv.json'), `${to}.json`);
    }
    store.rebuildIndex();
  }
  return { checked: targets.length, problems, quarantined, repaired: !!opts.repair };
}

/** A derivation's drv.json must hash to its DRef. */
function checkDerivations(store: LocalStore, drefs: readonly DRef[]): Problem[] {
  const problems: Problem[] = [];
  for (const dref of drefs) {
    const file = path.join(store.drvDir(dref), 'drv.json');
    let text: string;
    try {
      // Not followed if it is a symlink (that is reported as an unknown entry).
      if (!fs.lstatSync(file).isFile()) throw new Error('not a regular file');
      text = fs.readFileSync(file, 'utf8');
    } catch {
      problems.push({ ref: dref, kind: 'modified', detail: 'drv.json is missing' });
      continue;
    }
    if (`${shortHash(text.replace(/\n$/, ''))}-${parseRef(dref).name}` !== dref) {
      problems.push({ ref: dref, kind: 'modified', detail: 'drv.json does not hash to the DRef' });
    }
  }
  return problems;
}

/**
 * Every code object must parse and hash to its name ('modified', ref
 * `code/<hash>`), and every derivation's code pointer must name one the
 * store has ('missing', ref the DRef).
 */
function checkCode(store: LocalStore, scan: Scan): Problem[] {
  const problems: Problem[] = [];
  const have = new Set(scan.code);
  for (const hash of scan.code) {
    try {
      readCodeText(store.root, hash);
    } catch (e) {
      problems.push({ ref: `${CODE_DIR}/${hash}`, kind: 'modified', detail: (e as Error).message });
    }
  }
  for (const dref of scan.pointers) {
    const hash = readCodePointer(store.drvDir(dref));
    if (hash === undefined) problems.push({ ref: dref, kind: 'modified', detail: 'its code pointer is malformed' });
    else if (!have.has(hash))
      problems.push({ ref: dref, kind: 'missing', detail: `its code object ${hash} is missing` });
  }
  return problems;
}
