/**
 * Metrics of a realization: numbers read from its output files. What is
 * read (docs/guide.md, "Looking at results"):
 *
 * - the file a `best({ file, key })` matcher scores by: a plain number
 *   (metric: the file name without `.txt`), or, with `key`, a JSON object
 *   whose numbers all become metrics;
 * - `metrics.json`: every number in it, by dotted key (`test.acc`);
 * - `score.txt`: one number, the metric `score`;
 * - `NAME.metrics.json` at the top of the output: its numbers as `NAME.key`;
 * - the `metrics` files a cairn.yaml stage declares (JSON, YAML or a plain
 *   number), named like the score file.
 *
 * Outputs come from builds, so nothing here trusts them: a file larger
 * than MAX_FILE_BYTES is not read past that size and is skipped, links are
 * resolved only inside the output (Store.openFile), and at most MAX_KEYS
 * numbers per file are kept. A file that is missing, unreadable or not a
 * number is simply not a metric; it never fails the table.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import type { Store } from '../../store/interface.js';
import type { RRef } from '../../store/refs.js';
import { localOutputDir } from '../../store/realization-files.js';
import { LocalStore } from '../../store/store.js';
import type { ScoreSource } from '../matchers.js';
import { numberLeaves } from './flatten.js';

export const MAX_FILE_BYTES = 256 * 1024;
const MAX_KEYS = 100;
const MAX_METRIC_FILES = 16;
let yamlLib: typeof import('yaml') | undefined;
// Loaded on first use: most outputs have no YAML metrics.
const yaml = (): typeof import('yaml') => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof import('yaml'));
const LIMITS = { maxKeys: MAX_KEYS, maxDepth: 8, maxKeyLength: 120 };

/** Where one metric file's numbers go: a whole-file number's name, or the prefix of a JSON file's keys. */
interface MetricFile {
  rel: string;
  /** JSON (or, for .yaml/.yml, YAML) whose numbers all become metrics; else a plain number. */
  json: boolean;
  /** For a plain number: its metric name; for JSON: the prefix of its keys ('' for none). */
  name: string;
}

export interface Metrics {
  values: Record<string, number>;
  /** Files that were there but could not be used, with why: too large, not a number, not JSON. */
  skipped: string[];
}

/** How a file's metrics are named: a plain number after the file, a JSON or YAML file's keys under its name. */
function fileOf(rel: string, json: boolean): MetricFile {
  if (!json) return { rel, json, name: rel.replace(/\.txt$/i, '') };
  return { rel, json, name: rel === 'metrics.json' ? '' : rel.replace(/\.(json|ya?ml)$/i, '') };
}

/** The metric files the conventions name, the score file first. */
export function metricFiles(
  score: ScoreSource | undefined,
  topNames: readonly string[],
  declared: readonly string[] = [],
): MetricFile[] {
  const files: MetricFile[] = [];
  const add = (f: MetricFile): void => {
    if (files.length < MAX_METRIC_FILES && !files.some((x) => x.rel === f.rel)) files.push(f);
  };
  if (score) add(fileOf(score.file, score.key !== undefined));
  for (const rel of declared) add(fileOf(rel, /\.(json|ya?ml)$/i.test(rel)));
  add({ rel: 'metrics.json', json: true, name: '' });
  add({ rel: 'score.txt', json: false, name: 'score' });
  for (const n of [...topNames].sort()) {
    if (n.endsWith('.metrics.json') && n !== '.metrics.json') add({ rel: n, json: true, name: n.slice(0, -13) });
  }
  return files;
}

/** The metric name of a score source: the key a table marks as what the matcher maximises. */
export function scoreMetric(score: ScoreSource): string {
  const f = metricFiles(score, [])[0]!;
  if (!f.json) return f.name;
  return f.name === '' ? score.key! : `${f.name}.${score.key!}`;
}

/** Parses one metric file's text into metrics (pure). */
export function parseMetricFile(f: MetricFile, text: string): Record<string, number> | string {
  if (!f.json) {
    const t = text.trim();
    const v = t === '' ? NaN : Number(t);
    return Number.isFinite(v) ? { [f.name]: v } : 'not a number';
  }
  const isYaml = /\.ya?ml$/i.test(f.rel);
  let doc: unknown;
  try {
    // The yaml package caps alias expansion (maxAliasCount), so a billion-laughs file fails instead of growing.
    doc = isYaml ? yaml().parse(text) : JSON.parse(text);
  } catch {
    return isYaml ? 'not YAML' : 'not JSON';
  }
  return numberLeaves(doc, f.name, LIMITS);
}

/** Up to `max` bytes of a file of the output; `undefined` if it is missing, `null` if larger. */
async function readBounded(store: Store, rref: RRef, rel: string, max: number): Promise<Buffer | undefined | null> {
  let stream;
  try {
    stream = await store.openFile(rref, rel);
  } catch {
    return undefined;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) return null;
      chunks.push(chunk);
    }
  } catch {
    return undefined;
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks);
}

/**
 * The names at the top of a local realization's output (for `*.metrics.json`);
 * none for other stores, which have no listing.
 */
function topNames(store: Store, rref: RRef): string[] {
  if (!(store instanceof LocalStore)) return [];
  try {
    const names: string[] = [];
    const dir = fs.opendirSync(localOutputDir(store, rref), { encoding: 'buffer' } as unknown as fs.OpenDirOptions);
    try {
      // A bounded scan: an output with a million files costs at most this many entries.
      for (let i = 0; i < 10_000; i++) {
        const e = dir.readSync();
        if (e === null) break;
        const raw = e.name as unknown as Buffer;
        const name = raw.toString('utf8');
        if (Buffer.from(name, 'utf8').equals(raw) && name.endsWith('.metrics.json') && e.isFile()) names.push(name);
      }
    } finally {
      dir.closeSync();
    }
    return names;
  } catch {
    return [];
  }
}

/** Reads a realization's metrics (see the module comment). Never throws for what the output holds. */
export async function readMetrics(
  store: Store,
  rref: RRef,
  score?: ScoreSource,
  declared: readonly string[] = [],
): Promise<Metrics> {
  const values: Record<string, number> = {};
  const skipped: string[] = [];
  for (const f of metricFiles(score, topNames(store, rref), declared)) {
    const data = await readBounded(store, rref, f.rel, MAX_FILE_BYTES);
    if (data === undefined) continue;
    if (data === null) {
      skipped.push(`${f.rel}: larger than ${MAX_FILE_BYTES} bytes`);
      continue;
    }
    const parsed = parseMetricFile(f, data.toString('utf8'));
    if (typeof parsed === 'string') {
      skipped.push(`${f.rel}: ${parsed}`);
      continue;
    }
    let n = Object.keys(values).length;
    for (const [k, v] of Object.entries(parsed)) {
      if (k in values || n >= MAX_KEYS) continue;
      values[k] = v;
      n++;
    }
  }
  return { values, skipped };
}
