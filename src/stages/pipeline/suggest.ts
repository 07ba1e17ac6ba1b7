/** Edit distance (insertions, deletions, substitutions, adjacent swaps). */
function distance(a: string, b: string): number {
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

/** ` (did you mean "outs"?)` for the closest option within a few edits, else ''. */
export function didYouMean(word: string, options: Iterable<string>): string {
  let bestOption: string | undefined;
  let bestD = Infinity;
  for (const o of options) {
    const dist = distance(word.toLowerCase(), o.toLowerCase());
    if (dist < bestD) {
      bestD = dist;
      bestOption = o;
    }
  }
  const limit = Math.max(1, Math.floor(word.length / 3));
  return bestOption !== undefined && bestD <= limit ? ` (did you mean ${JSON.stringify(bestOption)}?)` : '';
}
