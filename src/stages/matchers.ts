import { CairnError } from '../errors.js';
import type { Candidate } from '../store/interface.js';
import type { RRef } from '../store/refs.js';
import { parseScore } from './score.js';

/**
 * A realization a matcher may choose, oldest first in the list it is given.
 * It reads its own files (`read`, `open`) from whichever store holds it.
 */
export type { Candidate } from '../store/interface.js';

/**
 * `null`, `undefined` or an empty list mean "none": realize then builds and
 * asks again, and "still none after building" is E_MATCH_UNSATISFIED.
 * Anything else must be a list of candidate RRefs, best first.
 */
export type MatchResult = readonly RRef[] | null | undefined;

export interface Matcher {
  /** Shown in plans and errors. */
  readonly name: string;
  /**
   * How many realizations must exist before this matcher can be satisfied.
   * Realize uses it to decide how many builds to run at once when the
   * matcher says "none" (builds of a stage with `n` outputs each), so a
   * `some(4)` over a one-output stage builds four times, not forever.
   */
  readonly min: number;
  select(candidates: readonly Candidate[]): MatchResult | Promise<MatchResult>;
  /**
   * Where a scoring matcher reads its score (set by `best({ file })`), so
   * inspection (`cairn exp show`) can show it as a metric. Never used to choose.
   */
  readonly score?: ScoreSource;
}

/** An output file a score is read from: the whole file as a number, or the numeric field `key` of its JSON. */
export interface ScoreSource {
  readonly file: string;
  readonly key?: string;
  readonly lowest?: boolean;
}

export type MatcherFn = (candidates: readonly Candidate[]) => MatchResult | Promise<MatchResult>;

export function isMatcher(x: unknown): x is Matcher {
  return typeof x === 'object' && x !== null && typeof (x as Matcher).select === 'function';
}

/** A matcher from a plain function. `min` defaults to 1. */
export function custom(fn: MatcherFn, opts: { name?: string; min?: number } = {}): Matcher {
  return { name: opts.name ?? (fn.name || 'custom'), min: opts.min ?? 1, select: fn };
}

const count = (n: number, what: string): number => {
  if (!Number.isInteger(n) || n < 1)
    throw new CairnError('E_BAD_ARGUMENT', `${what}(n) needs a whole number n >= 1, not ${n}`);
  return n;
};

/** Newest first. Candidates arrive oldest first, ordered by time and insertion. */
const newestFirst = (c: readonly Candidate[]): Candidate[] => [...c].reverse();

/** The n most recent realizations; none while fewer than n exist. */
export function latest(n = 1): Matcher {
  count(n, 'latest');
  return {
    name: n === 1 ? 'latest' : `latest(${n})`,
    min: n,
    select: (c) =>
      c.length < n
        ? null
        : newestFirst(c)
            .slice(0, n)
            .map((x) => x.rref),
  };
}

/** Every realization; none if there are none. */
export function all(): Matcher {
  return { name: 'all', min: 1, select: (c) => c.map((x) => x.rref) };
}

/** Any n realizations: the n oldest, so the choice stays stable as more appear. */
export function some(n = 1): Matcher {
  count(n, 'some');
  return {
    name: `some(${n})`,
    min: n,
    select: (c) => (c.length < n ? null : c.slice(0, n).map((x) => x.rref)),
  };
}

/** Exactly one realization; more than one is an error rather than a guess. */
export function only(): Matcher {
  return {
    name: 'only',
    min: 1,
    select: (c) => {
      if (c.length > 1) {
        throw new CairnError(
          'E_MATCH_AMBIGUOUS',
          `matcher only() found ${c.length} realizations of ${c[0]!.dref}: ${c.map((x) => x.rref).join(', ')}`,
          { dref: c[0]!.dref, candidates: c.map((x) => x.rref) },
        );
      }
      return c.map((x) => x.rref);
    },
  };
}

/** Exactly these realizations (e.g. pinned from an earlier run). */
export function exact(refs: readonly RRef[]): Matcher {
  const want = [...refs];
  return {
    name: `exact(${want.length})`,
    min: 1,
    select: (c) => {
      const have = new Set(c.map((x) => x.rref));
      return want.every((r) => have.has(r)) ? want : null;
    },
  };
}

export type Score = number | Promise<number>;
export type ScoreBy =
  { file: string; key?: string; lowest?: boolean } | { fn: (c: Candidate) => Score; lowest?: boolean };

/**
 * Reads a score from an output file: the whole file as a number, or, with
 * `key`, a numeric field of the JSON object the file holds.
 */
export async function readScore(c: Candidate, file: string, key?: string): Promise<number> {
  let text: string;
  try {
    text = (await c.read(file)).toString('utf8');
  } catch {
    throw new CairnError(
      'E_MATCH_INVALID',
      `best(): ${c.rref} has no score file ${file}; promise it in the stage's outputs`,
      { rref: c.rref, file },
    );
  }
  return parseScore(text, c.rref, file, key);
}

/** `score.txt`, `metrics.json:acc` or `fn`: where best() gets its scores. */
const scoreSource = (by: ScoreBy): string =>
  'file' in by ? (by.key === undefined ? by.file : `${by.file}:${by.key}`) : 'fn';

/**
 * The n realizations with the highest score (or lowest, with `lowest`),
 * best first; none while fewer than n exist. Ties go to the older one, so
 * the choice does not flap as equal-scoring realizations are added.
 */
export function best(n: number, by: ScoreBy): Matcher;
export function best(by: ScoreBy): Matcher;
export function best(a: number | ScoreBy, b?: ScoreBy): Matcher {
  const n = typeof a === 'number' ? count(a, 'best') : 1;
  const by = (typeof a === 'number' ? b : a)!;
  const score = 'file' in by ? (c: Candidate) => readScore(c, by.file, by.key) : by.fn;
  const sign = by.lowest ? -1 : 1;
  return {
    // What exp show, graph and the UI print as "chosen by": the key and the direction are part of the choice.
    name: `best(${n}, ${scoreSource(by)}${by.lowest ? ', lowest' : ''})`,
    min: n,
    ...('file' in by ? { score: { file: by.file, key: by.key, lowest: by.lowest === true } } : {}),
    select: async (c) => {
      if (c.length < n) return null;
      const scored = await Promise.all(c.map(async (x, i) => ({ x, i, s: sign * (await score(x)) })));
      scored.sort((p, q) => q.s - p.s || p.i - q.i);
      return scored.slice(0, n).map((e) => e.x.rref);
    },
  };
}

// Array.isArray narrows a readonly array to any[]; this keeps RRef.
const isList = (x: MatchResult): x is readonly RRef[] => Array.isArray(x);

/** Runs a matcher and checks that it chose only candidates, each once. */
export async function runMatcher(m: Matcher, candidates: readonly Candidate[]): Promise<RRef[] | null> {
  const result = await m.select(candidates);
  if (result === null || result === undefined) return null;
  if (!isList(result)) {
    throw new CairnError(
      'E_MATCH_INVALID',
      `matcher ${m.name} returned ${typeof result}; it must return a list of RRefs or null`,
    );
  }
  if (result.length === 0) return null;
  const known = new Set(candidates.map((c) => c.rref));
  const seen = new Set<RRef>();
  for (const r of result) {
    if (!known.has(r) || seen.has(r)) {
      throw new CairnError(
        'E_MATCH_INVALID',
        `matcher ${m.name} chose ${String(r)}, which is ${seen.has(r) ? 'chosen twice' : 'not one of its candidates'}`,
        { rref: r },
      );
    }
    seen.add(r);
  }
  return [...result];
}
