/**
 * Runs `deno task gen <args>` from the repository root, as a user would, for the end-to-end
 * generation tests (tests/flux_gen_test.ts, tests/nunchaku_gen_test.ts).
 *
 * @module
 */

/** The repository root, with a trailing slash. */
export const REPO_ROOT: string = new URL("..", import.meta.url).pathname;

/** What one `deno task gen` run returned: its exit code, stdout and stderr (decoded). */
export interface GenTaskResult {
  /** The exit code. */
  code: number;
  /** Standard output. */
  out: string;
  /** Standard error. */
  err: string;
}

/** Run `deno task gen ...args` in the repository root with `NO_COLOR=1`; never throws on failure. */
export async function runGenTask(args: string[]): Promise<GenTaskResult> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["task", "gen", ...args],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}
