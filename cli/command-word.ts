/** The first word that is neither an option nor the value of `--store`: the command. */
export function commandWord(words: readonly string[]): string | undefined {
  return words.find((w, i) => !w.startsWith('-') && words[i - 1] !== '--store');
}
