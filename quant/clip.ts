/**
 * Round-to-nearest weight quantization with a per-group clipping search: every group of G
 * weights (along K) independently picks the clip ratio (a factor on its amax before the scale is
 * computed) that minimises its own reconstruction error, or its output error on sample
 * activations. The result is an ordinary {@link PackedWeight} in the canonical layout of
 * quant/packing.ts, assembled group by group from whole-matrix {@link quantizeWeight} candidates.
 *
 * @module
 */
import {
  dequantizeWeight,
  groupSize,
  type PackedWeight,
  quantizeWeight,
  type WeightFormat,
} from "./packing.ts";

/** Default clip ratios, tried in this order (ties keep the earlier one, so 1 wins ties). */
export const DEFAULT_CLIP_RATIOS: readonly number[] = [1, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7];

/** Options of {@link quantizeWeightClipped}. */
export interface ClipOptions {
  /** Candidate clip ratios (each finite and > 0). Default {@link DEFAULT_CLIP_RATIOS}. */
  ratios?: readonly number[];
  /** Sample activations `[m, K]`: when given, each group minimises its output error on them. */
  x?: Float32Array;
  /** Rows of `x`. */
  m?: number;
  /** Tensor name for error messages. */
  name?: string;
}

/**
 * Quantize a row-major `W [N, K]` to `format`, choosing per group the clip ratio from
 * `opts.ratios` with the least error. The error of group g of row n for a candidate Ŵ is
 * `Σ_k (W[n,k] − Ŵ[n,k])²` over the group, or, when sample activations `x [m, K]` are given,
 * `Σ_s (Σ_{k∈g} x[s,k]·(W[n,k] − Ŵ[n,k]))²` (the group's share of the output error, cross-group
 * terms ignored). Since each group's choice is independent, the total objective is never worse
 * than that of any single ratio in the list.
 *
 * NVFP4 keeps one per-tensor scale for all candidates (it does not depend on the clip ratio).
 * Cost: one {@link quantizeWeight} + dequantization per ratio, plus `N·K·min(m, G/2)` per ratio
 * for the output-error objective.
 *
 * @example
 * ```ts
 * import { quantizeWeightClipped } from "./clip.ts";
 * import { dequantizeWeight } from "./packing.ts";
 * const w = Float32Array.from({ length: 8 * 128 }, (_, i) => Math.sin(i) ** 3);
 * const packed = quantizeWeightClipped(w, 8, 128, "int4");
 * const approx = dequantizeWeight(packed);
 * ```
 */
export function quantizeWeightClipped(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  opts: ClipOptions = {},
): PackedWeight {
  const name = opts.name ?? "weight";
  const ratios = opts.ratios ?? DEFAULT_CLIP_RATIOS;
  if (ratios.length === 0 || ratios.some((r) => !(r > 0 && r < Infinity))) {
    throw new RangeError(
      `Cannot quantize ${name} with clipping: ratios must be a non-empty list of finite values > 0, got [${ratios}]`,
    );
  }
  const objective = groupObjective(w, n, k, format, opts.x, opts.m, name);
  let best: PackedWeight | null = null;
  let bestErr: Float64Array = new Float64Array(0);
  for (const clipRatio of ratios) {
    const cand = quantizeWeight(w, n, k, format, { clipRatio, name });
    const err = objective(dequantizeWeight(cand));
    if (best === null) {
      best = cand;
      bestErr = err;
      continue;
    }
    if (
      best.format === "nvfp4" && cand.format === "nvfp4" && cand.tensorScale !== best.tensorScale
    ) {
      throw new Error(
        `Cannot quantize ${name} with clipping: the NVFP4 tensor scale changed with the clip ratio`,
      );
    }
    const wordsPerGroup = groupSize(format) / 8;
    for (let gi = 0; gi < err.length; gi++) {
      if (!(err[gi] < bestErr[gi])) continue;
      bestErr[gi] = err[gi];
      best.wscales[gi] = cand.wscales[gi];
      const w0 = gi * wordsPerGroup;
      for (let t = 0; t < wordsPerGroup; t++) best.qweight[w0 + t] = cand.qweight[w0 + t];
    }
  }
  return best!;
}

/**
 * The objective of {@link quantizeWeightClipped} per group: for an approximation `approx` of
 * `w` (both `[N, K]`), a `[N, K/G]` array of squared weight errors, or of squared output errors
 * on `x [m, K]` when given. Summing it gives the whole matrix's objective.
 */
export function groupErrors(
  w: Float32Array,
  approx: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  x?: Float32Array,
  m?: number,
): Float64Array {
  return groupObjective(w, n, k, format, x, m, "weight")(approx);
}

function groupObjective(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  x: Float32Array | undefined,
  m: number | undefined,
  name: string,
): (approx: Float32Array) => Float64Array {
  const op = `Cannot quantize ${name} with clipping`;
  if (!Number.isInteger(n) || !Number.isInteger(k) || n < 0 || k < 0) {
    throw new RangeError(`${op}: N and K must be non-negative integers, got N=${n}, K=${k}`);
  }
  if (w.length !== n * k) {
    throw new TypeError(
      `${op}: ${name} has ${w.length} elements, expected [N=${n}, K=${k}] = ${n * k}`,
    );
  }
  const G = groupSize(format);
  if (k % G !== 0) {
    throw new RangeError(`${op}: K=${k} is not a multiple of the ${format} group size ${G}`);
  }
  const groups = k / G;
  const d = new Float64Array(G);
  if (x === undefined) {
    return (approx) => {
      const err = new Float64Array(n * groups);
      for (let gi = 0; gi < err.length; gi++) {
        let s = 0;
        for (let t = gi * G, e = t + G; t < e; t++) s += (w[t] - approx[t]) ** 2;
        err[gi] = s;
      }
      return err;
    };
  }
  if (m === undefined || !Number.isInteger(m) || m < 1 || x.length !== m * k) {
    throw new TypeError(
      `${op}: sample activations x have ${x.length} elements, expected [m=${m}, K=${k}] with m >= 1`,
    );
  }
  if (2 * m <= G) {
    // Direct: e = Σ_s (x_s,g · d)², cost m per weight.
    return (approx) => {
      const err = new Float64Array(n * groups);
      for (let row = 0; row < n; row++) {
        for (let g = 0; g < groups; g++) {
          const base = row * k + g * G;
          for (let t = 0; t < G; t++) d[t] = w[base + t] - approx[base + t];
          let e = 0;
          for (let s = 0; s < m; s++) {
            const xo = s * k + g * G;
            let y = 0;
            for (let t = 0; t < G; t++) y += x[xo + t] * d[t];
            e += y * y;
          }
          err[row * groups + g] = e;
        }
      }
      return err;
    };
  }
  // Gram: H_g = X_gᵀX_g per group, e = dᵀ H_g d (symmetric half), cost G/2 per weight.
  const gram = new Float64Array(groups * G * G);
  for (let s = 0; s < m; s++) {
    for (let g = 0; g < groups; g++) {
      const xo = s * k + g * G, ho = g * G * G;
      for (let a = 0; a < G; a++) {
        const xa = x[xo + a];
        if (xa === 0) continue;
        for (let b = a; b < G; b++) gram[ho + a * G + b] += xa * x[xo + b];
      }
    }
  }
  return (approx) => {
    const err = new Float64Array(n * groups);
    for (let row = 0; row < n; row++) {
      for (let g = 0; g < groups; g++) {
        const base = row * k + g * G, ho = g * G * G;
        for (let t = 0; t < G; t++) d[t] = w[base + t] - approx[base + t];
        let e = 0;
        for (let a = 0; a < G; a++) {
          const da = d[a];
          if (da === 0) continue;
          let acc = 0;
          for (let b = a + 1; b < G; b++) acc += gram[ho + a * G + b] * d[b];
          e += da * (gram[ho + a * G + a] * da + 2 * acc);
        }
        err[row * groups + g] = e;
      }
    }
    return err;
  };
}
