/**
 * Which known word a mistyped one was probably meant to be, for the "did
 * you mean" hints of cairn.yaml pipelines and service ensembles. Pure.
 */

/** Edit distance (insertions, deletions, substitutions, and a swap of two neighbouring letters as one edit). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/** The option closest to `word` (case aside) within a third of its length in edits (at least one); else undefined. */
export function closestWord(word: string, options: Iterable<string>): string | undefined {
  let best: { option: string; d: number } | undefined;
  for (const option of options) {
    const d = editDistance(word.toLowerCase(), option.toLowerCase());
    if (!best || d < best.d) best = { option, d };
  }
  return best && best.d <= Math.max(1, Math.floor(word.length / 3)) ? best.option : undefined;
}
