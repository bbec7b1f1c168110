/**
 * Shared timing for kernel benchmarks: time a list of dispatches over repetitions and report
 * milliseconds, TOPS and GB/s. Benchmarks print figures; they never assert on time.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../gpu/device.ts";

/** One timing: mean milliseconds per iteration, and the derived rates. */
export interface Timing {
  ms: number;
  /** Tera-operations per second (a multiply-add counts as 2 operations). */
  tops: number;
  /** Gigabytes per second of the stated `bytes` moved per iteration. */
  gbps: number;
}

/** Options for {@linkcode timeDispatches}. */
export interface TimeOptions {
  /** Operations per iteration (2·M·N·K for a GEMM). */
  ops: number;
  /** Bytes that must cross memory per iteration (inputs read once + outputs written once). */
  bytes: number;
  /** Untimed iterations first (pipeline warm-up). Default 2. */
  warmup?: number;
  /** Stop after this many ms of timed work (at least `minReps` iterations). Default 300. */
  budgetMs?: number;
  /** At least this many timed iterations. Default 3. */
  minReps?: number;
  /**
   * Encode the dispatch list this many times per submit (default 1). One submit costs ~0.3 ms in
   * Deno's WebGPU, more than a small kernel: repeat to time the kernel, not the submit. The
   * result is per repetition; `ops` and `bytes` are per repetition too.
   */
  repeat?: number;
}

/**
 * Time `dispatches` (one submit per iteration, wall clock around `onSubmittedWorkDone`). The
 * iteration count grows until the budget is spent, so slow software adapters stay quick.
 */
export async function timeDispatches(
  gpu: Gpu,
  dispatches: Dispatch[],
  opts: TimeOptions,
): Promise<Timing> {
  const repeat = opts.repeat ?? 1;
  if (repeat > 1) dispatches = Array.from({ length: repeat }, () => dispatches).flat();
  for (let i = 0; i < (opts.warmup ?? 2); i++) gpu.run(dispatches);
  await gpu.sync();
  const budget = opts.budgetMs ?? 300;
  const minReps = opts.minReps ?? 3;
  let reps = 1, total = 0, elapsed = 0;
  while (true) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) gpu.run(dispatches);
    await gpu.sync();
    elapsed += performance.now() - t0;
    total += reps;
    if (total >= minReps && elapsed >= budget) break;
    if (elapsed > budget * 20) break; // one iteration is far over budget: stop
    reps = Math.min(reps * 2, 64);
  }
  const ms = elapsed / (total * repeat);
  return { ms, tops: opts.ops / (ms * 1e9), gbps: opts.bytes / (ms * 1e6) };
}

/** Format a timing as a fixed-width line fragment. */
export function fmtTiming(t: Timing): string {
  return `${t.ms.toFixed(3).padStart(9)} ms ${t.tops.toFixed(3).padStart(8)} TOPS ` +
    `${t.gbps.toFixed(1).padStart(8)} GB/s`;
}
