/**
 * One realize's use of its substituters. Nothing here runs until a stage's
 * local candidates fail its matcher: a fully cached realize makes no call.
 * The first miss asks every substituter for the candidates of the whole
 * graph in one batch (`candidatesOfAll`), all substituters in parallel;
 * every later stage is answered from those batches.
 *
 * Cache trouble never fails a build. The first error from a substituter (a
 * query, a file read by a matcher, a fetch the receive path refuses) prints
 * one warning line and takes that substituter out of this realize, so a
 * dead endpoint is not asked again stage after stage and a cache that served
 * one tampered entry is not trusted for the next; the stage is then chosen
 * again without it, and built when nothing else satisfies its matcher.
 */
import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CairnError, isCairnError } from '../errors.js';
import { candidateKey, type Candidate } from '../store/interface.js';
import { parseRRef, type DRef, type RRef } from '../store/refs.js';
import type { LocalStore } from '../store/store.js';
import { runMatcher, type Matcher } from './matchers.js';
import type { Substituter } from './substitute.js';

/** How long the one batch query of a substituter may take before it counts as unreachable. */
export const DEFAULT_QUERY_TIMEOUT_MS = 60_000;

export interface SubstitutionOptions {
  /** Called once per substituter that fails, with one line saying what went wrong. */
  warn: (line: string) => void;
  queryTimeoutMs?: number;
}

/** A matcher's choice over local and remote candidates, and which substituter holds each remote one. */
export interface Choice {
  sel: RRef[];
  remote: Map<Substituter, RRef[]>;
}

type Batch = Map<string, Candidate[]> | null;

export class Substitution {
  private batches: Promise<Batch[]> | undefined;
  private readonly down = new Set<Substituter>();
  private readonly timeoutMs: number;

  constructor(
    private readonly subs: readonly Substituter[],
    /** The derivations the batch asks about: the graph's, in order. */
    private readonly drefs: readonly DRef[],
    private readonly opts: SubstitutionOptions,
  ) {
    this.timeoutMs = opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
  }

  /**
   * Chooses realizations for (dref, ctx) from `local` and every working
   * substituter's candidates, fetches the remote ones it chose, and returns
   * the choice; null when nothing satisfies the matcher (build it).
   */
  async substitute(
    into: LocalStore,
    m: Matcher,
    dref: DRef,
    ctx: string,
    local: readonly Candidate[],
  ): Promise<Choice | null> {
    let have = local;
    for (;;) {
      const choice = await this.choose(m, dref, ctx, have);
      if (!choice || choice.remote.size === 0) return choice;
      if (await this.fetchAll(into, choice.remote, dref, ctx)) return choice;
      // A substituter failed (and is out now); one that succeeded left its part in the store.
      have = await into.candidates(dref, ctx);
    }
  }

  /** The matcher's choice over local and remote candidates, fetching nothing (also what a dry run shows). */
  async choose(m: Matcher, dref: DRef, ctx: string, local: readonly Candidate[]): Promise<Choice | null> {
    for (;;) {
      const remote = await this.remoteCandidates(dref, ctx);
      if (remote.length === 0) return null;
      // A candidate listed under (dref, ctx) must claim to be of them; the fetched metadata is checked again.
      const stray = remote.find(({ c }) => c.dref !== dref || c.ctx !== ctx || parseRRef(c.rref).dref !== dref);
      if (stray) {
        const lie = new CairnError(
          'E_SUBSTITUTE',
          `it lists ${stray.c.rref} as a realization of ${dref} from context ${ctx}`,
        );
        this.fail(stray.sub, 'listing candidates', lie);
        continue;
      }
      const owner = new Map<RRef, Substituter>();
      const known = new Set(local.map((c) => c.rref));
      const all: Candidate[] = [...local];
      for (const { sub, c } of remote) {
        if (known.has(c.rref)) continue;
        known.add(c.rref);
        owner.set(c.rref, sub);
        all.push(this.guarded(sub, c));
      }
      // Oldest first across stores, as a store lists its own: latest() and best()'s ties depend on it.
      all.sort((a, b) => a.created - b.created || (a.rref < b.rref ? -1 : a.rref > b.rref ? 1 : 0));
      const before = this.down.size;
      let sel: RRef[] | null;
      try {
        sel = await runMatcher(m, all);
      } catch (e) {
        // A remote read failed under the matcher: its substituter is out; choose again without it.
        if (this.down.size > before) continue;
        // The matcher refused the remote candidates themselves: build, and let the
        // build path's matcher (over local ones only) say whether it is the matcher's fault.
        for (const sub of new Set(owner.values())) this.fail(sub, `matcher ${m.name} failed on its candidates`, e);
        return null;
      }
      if (this.down.size > before) continue;
      if (!sel) return null;
      const fromRemote = new Map<Substituter, RRef[]>();
      for (const r of sel) {
        const sub = owner.get(r);
        if (sub) fromRemote.set(sub, [...(fromRemote.get(sub) ?? []), r]);
      }
      return { sel, remote: fromRemote };
    }
  }

  /**
   * True when every substituter delivered what it was asked for: realizations
   * of (dref, ctx), by their verified metadata in the local store.
   */
  private async fetchAll(
    into: LocalStore,
    remote: Map<Substituter, RRef[]>,
    dref: DRef,
    ctx: string,
  ): Promise<boolean> {
    const results = await Promise.all(
      [...remote].map(async ([sub, rrefs]) => {
        try {
          await pauseBeforeFetch();
          await sub.fetch(into, rrefs);
        } catch (e) {
          this.fail(sub, `fetching ${rrefs.join(' ')}`, e);
          return false;
        }
        for (const r of rrefs) {
          const info = await into.info(r);
          if (info === undefined) {
            this.fail(sub, 'fetching', new CairnError('E_SUBSTITUTE', `${r} is not in the store after the fetch`));
            return false;
          }
          // Sound content, but not of this stage's inputs: the listing lied. Kept (it is valid), never chosen.
          if (info.ctx !== ctx || info.dref !== dref) {
            const why = `${r} was offered for context ${ctx} but was built from context ${info.ctx}`;
            this.fail(sub, 'fetching', new CairnError('E_SUBSTITUTE', why));
            return false;
          }
        }
        return true;
      }),
    );
    return results.every(Boolean);
  }

  private async remoteCandidates(dref: DRef, ctx: string): Promise<{ sub: Substituter; c: Candidate }[]> {
    this.batches ??= Promise.all(this.subs.map((sub) => this.query(sub)));
    const batches = await this.batches;
    const key = candidateKey(dref, ctx);
    const out: { sub: Substituter; c: Candidate }[] = [];
    this.subs.forEach((sub, i) => {
      if (this.down.has(sub)) return;
      for (const c of batches[i]?.get(key) ?? []) out.push({ sub, c });
    });
    return out;
  }

  private async query(sub: Substituter): Promise<Batch> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new CairnError('E_SUBSTITUTE', `no answer within ${this.timeoutMs / 1000}s`)),
        this.timeoutMs,
      );
    });
    try {
      return await Promise.race([sub.store.candidatesOfAll(this.drefs), timeout]);
    } catch (e) {
      this.fail(sub, 'asking for candidates', e);
      return null;
    } finally {
      // Not unref()ed: while realize waits only for this answer, the timer must keep the process alive.
      clearTimeout(timer);
    }
  }

  /** A remote candidate whose failing reads take its substituter out (a missing file is an answer, not trouble). */
  private guarded(sub: Substituter, c: Candidate): Candidate {
    const call = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      if (this.down.has(sub)) throw new CairnError('E_SUBSTITUTE', `substituter ${sub.name} failed earlier`);
      try {
        return await fn();
      } catch (e) {
        if (!(isCairnError(e) && e.code === 'E_NO_SUCH_PATH')) this.fail(sub, what, e);
        throw e;
      }
    };
    return {
      ...c,
      read: (rel) => call(`reading ${String(rel)} of ${c.rref}`, () => c.read(rel)),
      open: (rel) => call(`opening ${String(rel)} of ${c.rref}`, () => c.open(rel)),
    };
  }

  private fail(sub: Substituter, what: string, e: unknown): void {
    if (this.down.has(sub)) return;
    this.down.add(sub);
    const err = e as { code?: unknown; message?: unknown } | null;
    const code = typeof err?.code === 'string' ? `${err.code}: ` : '';
    const message = typeof err?.message === 'string' ? err.message : String(e);
    const line = `warning: substituter ${sub.name}: ${what}: ${code}${message}; realizing without it`;
    // One line: a message from the other side may hold newlines (or escapes) of its own.
    this.opts.warn(line.replace(/[\r\n\t\x00-\x1f\x7f]+/g, ' '));
  }
}

/**
 * Fault injection for tests: with $CAIRN_TEST_PAUSE_BEFORE_FETCH=F, each
 * fetch writes F.started and waits for F.open, so a test can stop the cache
 * between realize's batch query and its fetches.
 */
async function pauseBeforeFetch(): Promise<void> {
  const file = process.env.CAIRN_TEST_PAUSE_BEFORE_FETCH;
  if (!file) return;
  fs.writeFileSync(`${file}.started`, '');
  while (!fs.existsSync(`${file}.open`)) await sleep(50);
}
