import { closestWord } from '../../did-you-mean.js';

/** ` (did you mean "outs"?)` for the closest option within a few edits, else ''. */
export function didYouMean(word: string, options: Iterable<string>): string {
  const option = closestWord(word, options);
  return option !== undefined ? ` (did you mean ${JSON.stringify(option)}?)` : '';
}
