/**
 * SVDQuant smoothing: a per-in-channel factor λ [K] with `X̂ = X/λ`, `Ŵ = W·diag(λ)` (the layer
 * output is unchanged in exact arithmetic) that moves activation outliers into the weight, where
 * the low-rank branch absorbs them.
 *
 * `λ_k = amax_x[k]^α / amax_w[k]^β`, grid-searched over α ∈ {0, 0.05, …, 1} and β ∈ {0, 1−α};
 * each candidate is scored by the layer's relative output error on the calibration samples with
 * the low-rank branch in place, simulating the runtime's arithmetic (activation quantization,
 * 4-bit residual GEMM, f16 low-rank factors). amax_x is the max over timestep buckets (the
 * runtime uses one λ for all timesteps).
 *
 * Sanitising (per channel): a zero or non-finite span (amax_x or amax_w) gives λ = 1, and so
 * does a NaN/±Inf λ; λ is then clamped to [{@linkcode LAMBDA_MIN}, {@linkcode LAMBDA_MAX}] =
 * [2⁻¹⁴, 2¹⁴] — wide enough for any real outlier, narrow enough that X/λ and `lora_down = L2/λ`
 * keep f16/E4M3 range; for post-GELU inputs λ ≥ 1, so `X/λ ≥ −0.1700 > −GELU_SHIFT` stays
 * representable by the unsigned activation codes.
 *
 * @module
 */
import { amaxOverBuckets, type LayerStats } from "./calib.ts";
import { cpuMatMul, type MatMul } from "./linalg.ts";
import type { WeightFormat } from "./packing.ts";
import {
  actModeFor,
  buildW4A4,
  floatOutput,
  relativeError,
  simulateW4A4,
  smoothActivations,
  smoothWeight,
} from "./baselines.ts";

export { smoothActivations, smoothWeight };

/** Smallest λ kept (2⁻¹⁴). */
export const LAMBDA_MIN = 2 ** -14;
/** Largest λ kept (2¹⁴). */
export const LAMBDA_MAX = 2 ** 14;
/** The α grid of the reference: {0, 0.05, …, 1}. */
export const DEFAULT_ALPHAS: readonly number[] = Array.from({ length: 21 }, (_, i) => i / 20);
/** α, β used when there are no samples to score candidates with. */
export const FALLBACK_ALPHA = 0.5;

/** Per-column max |W[:, k]| ([K]). */
export function weightColumnAmax(w: Float32Array, n: number, k: number): Float32Array {
  const out = new Float32Array(k);
  for (let row = 0; row < n; row++) {
    for (let c = 0; c < k; c++) {
      const a = Math.abs(w[row * k + c]);
      if (a > out[c]) out[c] = a;
    }
  }
  return out;
}

/**
 * λ_k = amaxX[k]^α / amaxW[k]^β, sanitised (zero span or non-finite → 1, clamped to
 * [LAMBDA_MIN, LAMBDA_MAX], and to ≥ 1 when `postGelu`), as f32.
 */
export function smoothingFactors(
  amaxX: Float32Array,
  amaxW: Float32Array,
  alpha: number,
  beta: number,
  opts: { postGelu?: boolean } = {},
): Float32Array {
  const k = amaxX.length;
  if (amaxW.length !== k) {
    throw new TypeError(
      `Cannot compute smoothing factors: amaxW has ${amaxW.length} elements, expected [K=${k}]`,
    );
  }
  const lo = opts.postGelu ? 1 : LAMBDA_MIN;
  const out = new Float32Array(k);
  for (let c = 0; c < k; c++) {
    const ax = amaxX[c], aw = amaxW[c];
    // Zero or non-finite spans, and a non-finite result, leave the channel unscaled.
    let l = ax > 0 && aw > 0 && ax < Infinity && aw < Infinity ? ax ** alpha / aw ** beta : 1;
    if (!Number.isFinite(l)) l = 1;
    out[c] = Math.min(LAMBDA_MAX, Math.max(lo, l));
  }
  return out;
}

/** Options of {@linkcode searchSmoothing}. */
export interface SmoothingSearchOptions {
  /** Rank of the low-rank branch in place while scoring (0: smoothing only). */
  r: number;
  format: WeightFormat;
  /** α grid (default {@linkcode DEFAULT_ALPHAS}); β ∈ {0, 1−α} for each. */
  alphas?: readonly number[];
  /** lowRankQuantize refinement rounds per candidate (default 0: one SVD, then quantize). */
  rounds?: number;
  /** The input follows a GELU (unsigned INT4 activations, λ ≥ 1). */
  postGelu?: boolean;
  matmul?: MatMul;
  /** Layer name for messages. */
  name?: string;
}

/** The chosen smoothing. */
export interface SmoothingResult {
  lambda: Float32Array;
  alpha: number;
  beta: number;
  /** Relative output error of the chosen candidate on the samples (NaN without samples). */
  error: number;
}

/**
 * Grid-search the smoothing of W [N, K] against `stats`, scoring each (α, β) by the simulated
 * W4A4 (+ low-rank) output error on `stats.samples` (bias excluded). Each candidate gets a cheap
 * low-rank fit (`rounds`, default 0, and a weight-error clipping search) meant to be followed by
 * the caller's full refinement on the chosen λ. Without samples it returns α = β = 0.5 unscored.
 *
 * Cost per candidate: one top-R SVD and 7 quantizations of the N×K weight, one activation
 * quantization of the S×K samples and an S×K×N product (through `opts.matmul`); candidates =
 * 2·|alphas| − 1 (41 for the default grid).
 *
 * @example
 * ```ts ignore
 * import { searchSmoothing } from "./smooth.ts";
 * const { lambda, alpha, beta, error } = await searchSmoothing(w, n, k, stats, { r: 32, format: "int4" });
 * ```
 */
export async function searchSmoothing(
  w: Float32Array,
  n: number,
  k: number,
  stats: LayerStats,
  opts: SmoothingSearchOptions,
): Promise<SmoothingResult> {
  const name = opts.name ?? "layer";
  if (w.length !== n * k) {
    throw new TypeError(
      `Cannot search smoothing of ${name}: weight has ${w.length} elements, expected [N=${n}, K=${k}]`,
    );
  }
  if (stats.k !== k || stats.samples.length !== stats.s * k) {
    throw new TypeError(
      `Cannot search smoothing of ${name}: statistics have K=${stats.k} and ` +
        `${stats.samples.length} sample values, expected K=${k} and [S=${stats.s}, K=${k}]`,
    );
  }
  const alphas = opts.alphas ?? DEFAULT_ALPHAS;
  if (alphas.length === 0 || alphas.some((a) => !(a >= 0 && a <= 1))) {
    throw new RangeError(
      `Cannot search smoothing of ${name}: alphas must be a non-empty list in [0, 1]`,
    );
  }
  const postGelu = opts.postGelu ?? false, matmul = opts.matmul ?? cpuMatMul;
  const amaxX = amaxOverBuckets(stats), amaxW = weightColumnAmax(w, n, k);
  const { s, samples: x } = stats;
  if (s === 0) {
    const a = FALLBACK_ALPHA;
    return {
      lambda: smoothingFactors(amaxX, amaxW, a, 1 - a, { postGelu }),
      alpha: a,
      beta: 1 - a,
      error: NaN,
    };
  }
  const yRef = await floatOutput(w, null, x, { m: s, n, k }, matmul);
  const actMode = actModeFor(opts.format, postGelu);
  let best: SmoothingResult | null = null;
  for (const alpha of alphas) {
    for (const beta of (alpha === 1 ? [0] : [0, 1 - alpha])) {
      const lambda = smoothingFactors(amaxX, amaxW, alpha, beta, { postGelu });
      const layer = await buildW4A4(w, n, k, {
        lambda,
        r: opts.r,
        format: opts.format,
        actMode,
        rounds: opts.rounds ?? 0,
        bias: null,
        // No samples here: the candidate's clipping minimises weight error (N·K·G times cheaper
        // than the output-error objective); the score below is the output error on the samples.
        matmul,
        name,
      });
      const error = relativeError(await simulateW4A4(layer, x, s, matmul), yRef);
      if (!best || error < best.error) best = { lambda, alpha, beta, error };
    }
  }
  return best!;
}

/** Convenience: X̂ and Ŵ together. */
export function applySmoothing(
  x: Float32Array,
  m: number,
  w: Float32Array,
  n: number,
  k: number,
  lambda: Float32Array,
): { x: Float32Array; w: Float32Array } {
  return { x: smoothActivations(x, m, k, lambda), w: smoothWeight(w, n, k, lambda) };
}
