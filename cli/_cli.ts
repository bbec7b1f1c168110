/**
 * Shared CLI plumbing: usage errors and the module's typed errors become one readable line and
 * exit code 1 (2 for usage); only an unexpected bug prints a stack trace.
 *
 * @module
 */
import {
  FormatError,
  GpuDeviceLostError,
  GpuFeatureError,
  GpuSelfTestError,
  GpuUnavailableError,
  GpuValidationError,
  NumericError,
} from "../gpu/errors.ts";

/** A command-line usage error (exit code 2). */
export class UsageError extends Error {
  override name = "UsageError";
  readonly usage?: string;
  constructor(message: string, usage?: string) {
    super(message);
    this.usage = usage;
  }
}

/** Throw a {@linkcode UsageError}. */
export function fail(message: string, usage?: string): never {
  throw new UsageError(message, usage);
}

/**
 * Option `--<name>`'s value `v` as an integer in `lo..hi` (decimal digits only); else a
 * {@linkcode UsageError}: `--<name> must be an integer in <lo>..<hi>, got "<v>"` (followed by
 * `usage` when given).
 */
export function intOption(
  name: string,
  v: string,
  lo: number,
  hi: number,
  usage?: string,
): number {
  const x = /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(x) || x < lo || x > hi) {
    fail(`--${name} must be an integer in ${lo}..${hi}, got "${v}"`, usage);
  }
  return x;
}

/**
 * Write `data` to `path` through a temporary file beside it and a rename, so that `path` is
 * either its old content or the whole new one; the temporary file is removed on failure.
 */
export async function writeFileReplacing(path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

const KNOWN = [
  FormatError,
  GpuUnavailableError,
  GpuFeatureError,
  GpuDeviceLostError,
  GpuValidationError,
  GpuSelfTestError,
  NumericError,
  RangeError,
  TypeError,
];

/** Run a CLI entry point, turning expected errors into one line on stderr and an exit code. */
export async function runCli(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      if (e.usage) console.error(`\n${e.usage}`);
      Deno.exit(2);
    }
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      console.error(`error: ${(e as Error).message}`);
      Deno.exit(1);
    }
    if (
      e instanceof Error &&
      (KNOWN.some((k) => e instanceof k) || e.name === "TypeError" || e.name === "HubError")
    ) {
      console.error(`error: ${e.message}`);
      Deno.exit(1);
    }
    throw e;
  }
}

/**
 * Checks, before any work, that `path` can be written as a file: not an existing directory, and
 * in a folder that exists ({@linkcode UsageError} naming the folder otherwise).
 */
export async function checkOutputFile(path: string, flag = "--out"): Promise<void> {
  const st = await Deno.stat(path).catch(() => null);
  if (st?.isDirectory) {
    fail(`${flag} ${path} is a directory: give a file path, e.g. ${path.replace(/\/$/, "")}/out`);
  }
  const cut = path.lastIndexOf("/");
  const dir = cut < 0 ? "." : cut === 0 ? "/" : path.slice(0, cut);
  const ds = await Deno.stat(dir).catch(() => null);
  if (!ds) fail(`${flag} ${path}: the folder ${dir} does not exist; create it first`);
  if (!ds.isDirectory) fail(`${flag} ${path}: ${dir} is not a folder`);
}

/** Human-readable bytes (B, KB, MB, GB; powers of 1000). */
export function formatBytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} KB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(2)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}
