/**
 * Test helpers of the file-format tests: a temporary folder removed afterwards, and its listing
 * (to check that a failed write leaves nothing behind).
 *
 * @module
 */

/** Run `fn` in a fresh temporary folder (name starting with `prefix`), removed afterwards. */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The sorted names in `dir`. */
export async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}
