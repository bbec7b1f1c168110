/**
 * The SVDQuant low-rank branch: split a (smoothed) weight Ŵ into a 16-bit rank-R part
 * L = L1·L2 and a 4-bit residual Q(Ŵ − L), with the alternating refinement of the reference
 * ("SVD of Ŵ − deq(residual)", "re-quantise Ŵ − L"), keeping the best candidate.
 *
 * @module
 */
import { quantizeWeightClipped } from "./clip.ts";
import { gptqQuantize } from "./gptq.ts";
import { cpuMatMul, frobeniusNorm, type MatMul } from "./linalg.ts";
import { dequantizeWeight, type PackedWeight, type WeightFormat } from "../formats/packing.ts";
import { type LowRank, topRSvd } from "./svd.ts";
import type { RowSplit } from "./split.ts";

/** Result of {@link lowRankQuantize}. */
export interface LowRankResult {
  /** The rank-R branch (empty factors for R = 0). */
  lowRank: LowRank;
  /** The 4-bit residual, canonical packed layout. */
  residual: PackedWeight;
  /**
   * Relative error of the kept candidate: `‖X·(Ŵ − L − deq(residual))ᵀ‖_F / ‖X·Ŵᵀ‖_F` on the
   * samples `x`, or `‖Ŵ − L − deq(residual)‖_F / ‖Ŵ‖_F` without them (0 when the denominator is 0).
   */
  error: number;
  /** The error of every candidate in order: the initial split, then one per refinement round. */
  history: number[];
  /** Right basis of the last SVD computed (`[l, K]`), to warm-start a nearby search. */
  basis?: Float32Array;
}

/** Options of {@link lowRankQuantize}. */
export interface LowRankOptions {
  /** Rank R of the branch; 0 gives plain (clipped) quantization. */
  r: number;
  /** Residual format. */
  format: WeightFormat;
  /** Refinement rounds after the initial split. Default 2. */
  rounds?: number;
  /** Sample activations `[m, K]` (already divided by the smoothing factor, like Ŵ is multiplied). */
  x?: Float32Array;
  /** Rows of `x`. */
  m?: number;
  /** Product used for every N×K-sized product (SVD sketches, L1·L2, X·Dᵀ). Default CPU. */
  matmul?: MatMul;
  /**
   * Options passed on to {@link topRSvd} for the first SVD (`start` warm-starts it); the
   * refinement rounds warm-start from the previous round's basis with one power iteration.
   */
  svd?: { iters?: number; oversample?: number; seed?: number; start?: Float32Array };
  /**
   * Scores a candidate instead of the weight-output error (e.g. the simulated layer output
   * error with quantized activations, quant/baselines.ts); lower is better.
   */
  score?: (lowRank: LowRank, residual: PackedWeight) => Promise<number> | number;
  /** NVFP4: search the residual's scales (quantizeWeightClipped `scaleSearch`). */
  scaleSearch?: boolean;
  /** Clip ratios (quantizeWeightClipped `ratios`). */
  clipRatios?: readonly number[];
  /**
   * GPTQ factor of the (smoothed) samples (quant/gptq.ts `gptqFactor`): with `score`, each
   * candidate's residual is also quantized by GPTQ, and the lower-scoring of the two is kept.
   */
  gptq?: Float64Array;
  /**
   * Run the clipping and the N×K scratch by blocks of rows on several cores (quant/split.ts;
   * bit-identical); the products go through `matmul` (pass `split.matmul` there too).
   */
  split?: RowSplit;
  /** Tensor name for error messages. */
  name?: string;
}

/**
 * SVDQuant's decomposition of a smoothed weight `Ŵ [N, K]`: `L = topRSvd(Ŵ, R)`, residual =
 * `quantizeWeightClipped(Ŵ − L)`; then `rounds` times `L = topRSvd(Ŵ − deq(residual))`,
 * residual = `quantizeWeightClipped(Ŵ − L)`. Every candidate is scored (output error on `x` when
 * given, else weight error; the clipping search uses the same samples) and the best one is kept,
 * so more rounds never give a larger error.
 *
 * @example
 * ```ts
 * import { lowRankQuantize } from "./lowrank.ts";
 * const w = Float32Array.from({ length: 64 * 128 }, (_, i) => Math.sin(i * 0.37) * (i % 128 === 5 ? 40 : 1));
 * const { lowRank, residual, error } = await lowRankQuantize(w, 64, 128, { r: 8, format: "int4" });
 * // runtime weight: lowRank.up · lowRank.down + dequantizeWeight(residual)
 * ```
 */
export async function lowRankQuantize(
  wHat: Float32Array,
  n: number,
  k: number,
  opts: LowRankOptions,
): Promise<LowRankResult> {
  const name = opts.name ?? "weight";
  const op = `Cannot split ${name} into low-rank + 4-bit`;
  if (!Number.isInteger(n) || !Number.isInteger(k) || n < 1 || k < 1) {
    throw new RangeError(`${op}: N and K must be positive integers, got N=${n}, K=${k}`);
  }
  if (wHat.length !== n * k) {
    throw new TypeError(
      `${op}: ${name} has ${wHat.length} elements, expected [N=${n}, K=${k}] = ${n * k}`,
    );
  }
  const { r, format, x, m } = opts;
  const rounds = opts.rounds ?? 2;
  if (!Number.isInteger(r) || r < 0 || r > Math.min(n, k)) {
    throw new RangeError(
      `${op}: rank R=${r} must be an integer in [0, min(N, K) = ${Math.min(n, k)}]`,
    );
  }
  if (!Number.isInteger(rounds) || rounds < 0) {
    throw new RangeError(`${op}: rounds must be a non-negative integer, got ${rounds}`);
  }
  if (x !== undefined && (m === undefined || !Number.isInteger(m) || m < 1 || x.length !== m * k)) {
    throw new TypeError(
      `${op}: sample activations x have ${x.length} elements, expected [m=${m}, K=${k}] with m >= 1`,
    );
  }
  const mm = opts.matmul ?? cpuMatMul;
  const clip = { x, m, name, scaleSearch: opts.scaleSearch, ratios: opts.clipRatios };
  const split = opts.split;
  const clipped = async (w: Float32Array) =>
    split ? await split.clip(w, n, k, format, clip) : quantizeWeightClipped(w, n, k, format, clip);
  const scratch = () => split?.alloc(n * k) ?? new Float32Array(n * k);

  // Score of a candidate from D = Ŵ − L − deq(residual).
  const reference = opts.score
    ? 0
    : x === undefined
    ? frobeniusNorm(wHat)
    : frobeniusNorm(await mm(x, wHat, m!, k, n, true));
  const score = async (diff: Float32Array) => {
    const num = x === undefined
      ? frobeniusNorm(diff)
      : frobeniusNorm(await mm(x, diff, m!, k, n, true));
    return reference > 0 ? num / reference : num;
  };

  if (r === 0) {
    let residual = await clipped(wHat);
    const lowRank = { r: 0, up: new Float32Array(0), down: new Float32Array(0) };
    let error: number;
    if (opts.score) {
      error = await opts.score(lowRank, residual);
      if (opts.gptq) {
        const g = await gptqQuantize(wHat, n, k, format, opts.gptq);
        const e = await opts.score(lowRank, g);
        if (e < error) [residual, error] = [g, e];
      }
    } else {
      const dq = dequantizeWeight(residual);
      for (let i = 0; i < dq.length; i++) dq[i] = wHat[i] - dq[i];
      error = await score(dq);
    }
    return { lowRank, residual, error, history: [error] };
  }

  let best: LowRankResult | null = null;
  const history: number[] = [];
  let target = wHat, start = opts.svd?.start;
  for (let round = 0; round <= rounds; round++) {
    const svd = round === 0 ? { ...opts.svd } : { ...opts.svd, start, iters: 1 };
    const lowRank = await topRSvd(target, n, k, r, { ...svd, matmul: mm });
    start = lowRank.basis;
    const res = await mm(lowRank.up, lowRank.down, n, r, k, false); // L, then Ŵ − L in place
    if (split) await split.subtract(wHat, res);
    else for (let i = 0; i < res.length; i++) res[i] = wHat[i] - res[i];
    let residual = await clipped(res);
    let error: number;
    if (opts.score) {
      error = await opts.score(lowRank, residual);
      if (opts.gptq) {
        const g = await gptqQuantize(res, n, k, format, opts.gptq);
        const e = await opts.score(lowRank, g);
        if (e < error) [residual, error] = [g, e];
      }
      if (round < rounds) {
        const dq = dequantizeWeight(residual);
        if (target === wHat) target = scratch();
        for (let i = 0; i < dq.length; i++) target[i] = wHat[i] - dq[i];
      }
    } else {
      const dq = dequantizeWeight(residual);
      if (round < rounds) {
        if (target === wHat) target = scratch();
        for (let i = 0; i < dq.length; i++) target[i] = wHat[i] - dq[i];
      }
      for (let i = 0; i < dq.length; i++) dq[i] = res[i] - dq[i];
      error = await score(dq);
    }
    history.push(error);
    if (best === null || error < best.error) {
      best = { lowRank, residual, error, history, basis: start };
    }
  }
  return best!;
}
