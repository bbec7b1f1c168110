/**
 * Counted nouns in messages: `plural(1, "step")` is "1 step", `plural(4, "step")` "4 steps".
 * Imported by the server, the CLI and the page's script (it has no dependencies).
 *
 * @module
 */

/** `n` and `word`, with an "s" (or `many`) unless `n` is 1. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}
