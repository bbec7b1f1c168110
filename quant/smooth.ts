/**
 * SVDQuant smoothing: a per-in-channel factor λ [K] with `X̂ = X/λ`, `Ŵ = W·diag(λ)` (the layer
 * output is unchanged in exact arithmetic) that moves activation outliers into the weight, where
 * the low-rank branch absorbs them.
 *
 * `λ_k = amax_x[k]^α / amax_w[k]^β`, searched over α ∈ [0, 1] (coarse-to-fine by default: step
 * 0.25, then 0.05 around the best; or a given grid) and β ∈ {0, 1−α}; each candidate is scored by the layer's relative output error on the calibration samples with
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
import type { ActMode, WeightFormat } from "../formats/packing.ts";
import type { RowSplit } from "./split.ts";
import {
  actModeFor,
  buildW4A4,
  type BuiltW4A4,
  floatOutput,
  LayerScorer,
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
  /**
   * α grid searched in full (β ∈ {0, 1−α} for each). Default: coarse-to-fine, α ∈
   * {@linkcode COARSE_ALPHAS} with both β, then steps of {@linkcode FINE_STEP} from the best α
   * towards its better coarse neighbour (and one step the other way) with the best's β rule (and
   * the other rule when it scored within 2%): 13–19 candidates instead of the full 0.05 grid's 41.
   */
  alphas?: readonly number[];
  /** lowRankQuantize refinement rounds per candidate (default 0: one SVD, then quantize). */
  rounds?: number;
  /** The input follows a GELU (unsigned INT4 activations, λ ≥ 1). */
  postGelu?: boolean;
  /** Activation mode (default: {@linkcode actModeFor}(format, postGelu)). */
  actMode?: ActMode;
  /** Bias [N] of the layer (folded in the candidates, so their error is the layer's). */
  bias?: Float32Array | null;
  /** Scorer on the layer's samples (default: one over `stats.samples` with `X·Wᵀ + bias`). */
  scorer?: LayerScorer;
  matmul?: MatMul;
  /** Run the large kernels by blocks of rows on several cores (quant/split.ts; bit-identical). */
  split?: RowSplit;
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
  /** The chosen candidate's layer (absent without samples). */
  layer?: BuiltW4A4;
  /** Every candidate scored: α, β and its error, in the order tried. */
  tried: { alpha: number; beta: number; error: number }[];
}

/** Clip ratios of the search candidates' (weight-error) clipping. */
export const SEARCH_CLIP_RATIOS: readonly number[] = [1, 0.9, 0.8];
/** The coarse α grid of the default search. */
export const COARSE_ALPHAS: readonly number[] = [0, 0.25, 0.5, 0.75, 1];
/** The fine α step of the default search. */
export const FINE_STEP = 0.05;

/**
 * Search the smoothing of W [N, K] against `stats`, scoring each (α, β) by the simulated W4A4
 * (+ low-rank) output error on `stats.samples` (the runtime's arithmetic for the format:
 * quantized activations, 4-bit residual, f16 low-rank factors). Each candidate gets a cheap
 * low-rank fit (`rounds`, default 0, and a weight-error clipping search) meant to be followed by
 * the caller's full refinement on the chosen λ; its SVD is warm-started from the previous
 * candidate's basis mapped through the change of λ (`Ŵ' = Ŵ·diag(λ'/λ)` has the row space
 * `diag(λ'/λ)·V`), with no power iteration (two when cold). Without samples it returns
 * α = β = 0.5 unscored.
 *
 * Cost per candidate: one top-R SVD (2 products with the N×K weight when warm), 3 quantizations
 * of it, and an S×K×N product (through `opts.matmul`).
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
  const grid = opts.alphas;
  if (grid !== undefined && (grid.length === 0 || grid.some((a) => !(a >= 0 && a <= 1)))) {
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
      tried: [],
    };
  }
  const bias = opts.bias ?? null;
  const scorer = opts.scorer ??
    new LayerScorer(x, s, await floatOutput(w, bias, x, { m: s, n, k }, matmul), matmul);
  const actMode = opts.actMode ?? actModeFor(opts.format, postGelu);
  const tried: SmoothingResult["tried"] = [];
  let best: (SmoothingResult & { layer: BuiltW4A4 }) | null = null;
  let warm: { lambda: Float32Array; basis: Float32Array } | null = null;
  const seen = new Set<string>();
  const tryOne = async (alpha: number, beta: number) => {
    alpha = Math.round(alpha * 1e6) / 1e6;
    beta = Math.round(beta * 1e6) / 1e6;
    const key = `${alpha}/${beta}`;
    if (seen.has(key)) return;
    seen.add(key);
    const lambda = smoothingFactors(amaxX, amaxW, alpha, beta, { postGelu });
    let start: Float32Array | undefined;
    if (warm) {
      // Row space of Ŵ·diag(λ/λ_prev) = diag(λ/λ_prev)·(previous basis).
      start = new Float32Array(warm.basis.length);
      const ratio = new Float32Array(k);
      for (let c = 0; c < k; c++) ratio[c] = lambda[c] / warm.lambda[c];
      for (let i = 0; i < start.length; i++) start[i] = warm.basis[i] * ratio[i % k];
    }
    const layer = await buildW4A4(w, n, k, {
      lambda,
      r: opts.r,
      format: opts.format,
      actMode,
      rounds: opts.rounds ?? 0,
      bias,
      // No samples for the clipping: the candidate's clipping minimises weight error (N·K·G times
      // cheaper than the output-error objective); the score is the simulated output error.
      scoreOn: scorer,
      svd: start ? { start, iters: 0 } : {},
      clipRatios: SEARCH_CLIP_RATIOS,
      matmul,
      split: opts.split,
      name,
    });
    if (layer.basis) warm = { lambda, basis: layer.basis };
    tried.push({ alpha, beta, error: layer.error });
    if (!best || layer.error < best.error) {
      best = { lambda, alpha, beta, error: layer.error, layer, tried };
    }
  };
  const betas = (alpha: number) => (alpha >= 1 ? [0] : [0, 1 - alpha]);
  if (grid !== undefined) {
    for (const alpha of grid) for (const beta of betas(alpha)) await tryOne(alpha, beta);
  } else {
    for (const alpha of COARSE_ALPHAS) for (const beta of betas(alpha)) await tryOne(alpha, beta);
    const coarse: SmoothingResult = best!;
    // β rules to refine: the best's (β = 0 or β = 1 − α), and the other one too when it scored
    // within 2% at the same α (the two are often that close, and the noise of a candidate's
    // cheap fit is of that order).
    const twin = tried.find((t) => t.alpha === coarse.alpha && t.beta !== coarse.beta);
    const rules = twin && twin.error <= 1.02 * coarse.error ? [0, 1] : [coarse.beta === 0 ? 0 : 1];
    // Fine α: every step between the best coarse α and its better coarse neighbour (where a
    // unimodal error curve has its minimum), and one step to the other side.
    const errorAt = (a: number) =>
      Math.min(...tried.filter((t) => Math.abs(t.alpha - a) < 1e-9).map((t) => t.error));
    const step = COARSE_ALPHAS[1] - COARSE_ALPHAS[0];
    const lo = coarse.alpha - step, hi = coarse.alpha + step;
    const side = lo < 0 ? 1 : hi > 1 ? -1 : errorAt(hi) < errorAt(lo) ? 1 : -1;
    const fine: number[] = [-side * FINE_STEP];
    for (let a = FINE_STEP; a < step - 1e-9; a += FINE_STEP) fine.push(side * a);
    for (const d of fine) {
      const alpha = coarse.alpha + d;
      if (alpha < 0 || alpha > 1) continue;
      for (const rule of rules) await tryOne(alpha, rule === 0 || alpha >= 1 ? 0 : 1 - alpha);
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
