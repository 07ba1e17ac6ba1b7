/** Where the command is: the first word that is neither an option nor the value of `--store`; -1 if none. */
export function commandIndex(words: readonly string[]): number {
  return words.findIndex((w, i) => !w.startsWith('-') && words[i - 1] !== '--store');
}

/** The first word that is neither an option nor the value of `--store`: the command. */
export function commandWord(words: readonly string[]): string | undefined {
  const i = commandIndex(words);
  return i < 0 ? undefined : words[i];
}
