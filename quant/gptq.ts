/**
 * Activation-aware 4-bit weight rounding (GPTQ's error feedback), for W4A16 and for the W4A4
 * residual: the columns of W are
 * quantized in order, and each column's rounding error is spread over the columns not yet
 * quantized through the inverse Hessian of the layer's output error on calibration inputs,
 * `H = XᵀX/S + δ·I` — so later columns compensate what earlier ones lost, along the directions
 * the activations actually use. Group scales (INT4 g64, f16) are chosen when a group starts,
 * from the then-updated weights, by the clip ratio with the least weight error.
 *
 * The result is an ordinary INT4 g64 weight (formats/packing.ts layout): the runtime's W4A16 GEMM
 * runs it unchanged. Cost: `N·K²/2` multiply-adds (in blocks of 64 columns, the cross-block part
 * through the SIMD GEMM) plus K×K Cholesky factorisations (float64, `O(K³)`).
 *
 * @module
 */
import { DEFAULT_CLIP_RATIOS } from "./clip.ts";
import { cpuMatMul } from "./linalg.ts";
import {
  E2M1_VALUES,
  encodeE4M3,
  GROUP_SIZE_INT4,
  groupFactor,
  groupSize,
  type Int4Weight,
  nvfp4TensorScale,
  type PackedWeight,
  packNibblesInto,
  quantizeGroupNvfp4Code,
  roundF16,
  roundHalfEven,
  type WeightFormat,
} from "../formats/packing.ts";

/** Relative damping δ of the Hessian's diagonal (GPTQ's default: 1% of its mean). */
export const GPTQ_DAMP = 0.01;

/**
 * Upper Cholesky factor U of the inverse of SPD `h` [K, K] (`h⁻¹ = Uᵀ·U`), with one Cholesky
 * and one triangular inverse: for the index reversal P, `P·h·P = L·Lᵀ` gives
 * `h⁻¹ = (P·L⁻ᵀ·P)(P·L⁻¹·P)`, so `U = P·L⁻¹·P` (upper, positive diagonal).
 */
export function inverseCholeskyUpper(h: Float64Array, k: number): Float64Array {
  const l = new Float64Array(k * k); // Cholesky of P·h·P (lower)
  for (let i = 0; i < k; i++) {
    const hi = (k - 1 - i) * k + k - 1;
    for (let j = 0; j <= i; j++) {
      let s = h[hi - j];
      for (let p = 0; p < j; p++) s -= l[i * k + p] * l[j * k + p];
      l[i * k + j] = i === j ? Math.sqrt(Math.max(s, 1e-300)) : s / l[j * k + j];
    }
  }
  const m = new Float64Array(k * k); // L⁻¹ (lower), row by row: m[i, j] for j ≤ i
  for (let i = 0; i < k; i++) {
    const inv = 1 / l[i * k + i];
    m[i * k + i] = inv;
    for (let j = 0; j < i; j++) {
      let s = 0;
      for (let p = j; p < i; p++) s += l[i * k + p] * m[p * k + j];
      m[i * k + j] = -s * inv;
    }
  }
  const u = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = i; j < k; j++) u[i * k + j] = m[(k - 1 - i) * k + (k - 1 - j)];
  }
  return u;
}

/** f16 INT4 scale of one group with the clip ratio of least weight error (0 for a zero group). */
function groupScale(wk: Float64Array, o: number, G: number): number {
  let amax = 0;
  for (let t = 0; t < G; t++) amax = Math.max(amax, Math.abs(wk[o + t]));
  let best = Infinity, bestS = 0;
  for (const ratio of DEFAULT_CLIP_RATIOS) {
    const sc = roundF16(amax * ratio / 7);
    if (!(sc > 0) || sc === Infinity) continue;
    let e = 0;
    for (let t = 0; t < G; t++) {
      const q = Math.max(-8, Math.min(7, roundHalfEven(wk[o + t] / sc)));
      e += (wk[o + t] - q * sc) ** 2;
    }
    if (e < best) [best, bestS] = [e, sc];
  }
  return bestS;
}

/** Largest K for which the quantizer runs GPTQ on a W4A4 residual (its K×K factorisations are O(K³) in scalar code). */
export const GPTQ_MAX_K = 2048;

/**
 * Whether GPTQ may run on `s` calibration rows of K in-features: it needs a full-rank Hessian
 * (s ≥ K). With fewer rows its error feedback fits the calibration rows and not the layer: on
 * tests/quant_method_test.ts (128 rows, K = 256) it raised smoothing-only INT4's held-out error
 * from 0.099 to 0.165 and SVDQuant's from 0.034 to 0.042, while it still scored lower on the
 * calibration rows it was chosen by.
 */
export function gptqApplies(s: number, k: number): boolean {
  return s >= k;
}

/**
 * GPTQ's factor for samples `x` [S, K]: the upper U with `Uᵀ·U = H⁻¹`, `H = XᵀX/S + δ·I`
 * (δ = {@linkcode GPTQ_DAMP} × the mean of the diagonal; a dead input channel gets H_ii = 1).
 */
export function gptqFactor(x: Float32Array, s: number, k: number): Float64Array {
  if (x.length !== s * k || s < 1) {
    throw new RangeError(`Cannot run GPTQ: samples have ${x.length} values, expected [${s}, ${k}]`);
  }
  const h = new Float64Array(k * k);
  for (let r = 0; r < s; r++) {
    const o = r * k;
    for (let i = 0; i < k; i++) {
      const xi = x[o + i];
      if (xi === 0) continue;
      for (let j = i; j < k; j++) h[i * k + j] += xi * x[o + j];
    }
  }
  let mean = 0;
  for (let i = 0; i < k; i++) mean += h[i * k + i] / s;
  mean /= k;
  const damp = GPTQ_DAMP * mean || 1e-8;
  for (let i = 0; i < k; i++) {
    for (let j = i; j < k; j++) {
      h[i * k + j] /= s;
      h[j * k + i] = h[i * k + j];
    }
    h[i * k + i] += damp;
    if (h[i * k + i] <= damp) h[i * k + i] = 1; // a dead input channel: plain rounding there
  }
  return inverseCholeskyUpper(h, k);
}

/** NVFP4 E4M3 scale code of one group (current values at wk[o..o+G)) with the least weight error. */
function nvfp4GroupCode(wk: Float64Array, o: number, G: number, ts: number, scratch: Float32Array) {
  let amax = 0;
  for (let t = 0; t < G; t++) {
    scratch[t] = wk[o + t];
    amax = Math.max(amax, Math.abs(scratch[t]));
  }
  const c0 = encodeE4M3(amax / 6 / ts), res = new Float64Array(G), codes = new Uint8Array(G);
  let best = Infinity, bestCode = c0;
  for (let d = 1; d >= -6; d--) {
    const code = Math.max(0, Math.min(126, c0 + d));
    quantizeGroupNvfp4Code(scratch, 0, G, code, ts, codes, 0, res);
    let e = 0;
    for (let t = 0; t < G; t++) e += res[t] * res[t];
    if (e < best) [best, bestCode] = [e, code];
  }
  return bestCode;
}

/**
 * W [N, K] in `format` by GPTQ with the factor `u` of {@linkcode gptqFactor} (see the module
 * docs): INT4 g64 with f16 scales, or NVFP4 g16 with E4M3 scales (searched among the codes
 * around the amax-nearest one) and the amax-based per-tensor scale of W.
 *
 * @example
 * ```ts ignore
 * import { gptqFactor, gptqQuantize } from "./gptq.ts";
 * const packed = await gptqQuantize(w, n, k, "nvfp4", gptqFactor(x, s, k));
 * ```
 */
export async function gptqQuantize(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  u: Float64Array,
): Promise<PackedWeight> {
  const G = groupSize(format), B = GROUP_SIZE_INT4, groups = k / G;
  if (k % B !== 0 || w.length !== n * k || u.length !== k * k) {
    throw new RangeError(
      `Cannot run GPTQ: W [${n}, ${k}] has ${w.length} values and the factor ${u.length}; ` +
        `K must be a multiple of ${B}`,
    );
  }
  const nv = format === "nvfp4";
  const ts = nv ? nvfp4TensorScale(w) : 1;
  // Blocked (GPTQ's lazy batch): inside a block of 64 columns the error feedback is applied
  // column by column; the block's errors reach the later columns in one product.
  const wk = Float64Array.from(w);
  const codes = new Int8Array(n * k);
  const scales = new Float32Array(n * groups), e4m3 = new Uint8Array(nv ? n * groups : 0);
  const factor = new Float64Array(n * groups);
  const errs = new Float32Array(n * B), scratch = new Float32Array(G);
  for (let b0 = 0; b0 < k; b0 += B) {
    for (let i = b0; i < b0 + B; i++) {
      if (i % G === 0) {
        const g = i / G;
        for (let row = 0; row < n; row++) {
          if (nv) {
            const code = nvfp4GroupCode(wk, row * k + i, G, ts, scratch);
            e4m3[row * groups + g] = code;
            factor[row * groups + g] = groupFactor("nvfp4", code, ts);
          } else {
            const sc = groupScale(wk, row * k + i, G);
            scales[row * groups + g] = sc;
            factor[row * groups + g] = sc;
          }
        }
      }
      const uii = u[i * k + i], g = Math.floor(i / G);
      for (let row = 0; row < n; row++) {
        const o = row * k, f = factor[row * groups + g], v = wk[o + i];
        let q: number, dq: number;
        if (nv) {
          const S = 2 * f, a = Math.abs(v);
          q = S > 0
            ? +(a > 0.25 * S) + +(a >= 0.75 * S) + +(a > 1.25 * S) + +(a >= 1.75 * S) +
              +(a > 2.5 * S) + +(a >= 3.5 * S) + +(a > 5 * S) + (v < 0 ? 8 : 0)
            : 0;
          dq = Math.fround(E2M1_VALUES[q] * 2 * f);
        } else {
          q = f > 0 ? Math.max(-8, Math.min(7, roundHalfEven(v / f))) : 0;
          dq = Math.fround(q * f);
        }
        codes[o + i] = q;
        const e = (v - dq) / uii;
        errs[row * B + (i - b0)] = e;
        if (e === 0) continue;
        for (let j = i + 1; j < b0 + B; j++) wk[o + j] -= e * u[i * k + j];
      }
    }
    const rest = k - b0 - B;
    if (rest > 0) {
      const ub = new Float32Array(B * rest);
      for (let t = 0; t < B; t++) {
        for (let j = 0; j < rest; j++) ub[t * rest + j] = u[(b0 + t) * k + b0 + B + j];
      }
      const upd = await cpuMatMul(errs, ub, n, B, rest, false);
      for (let row = 0; row < n; row++) {
        const o = row * k + b0 + B;
        for (let j = 0; j < rest; j++) wk[o + j] -= upd[row * rest + j];
      }
    }
  }
  const qweight = new Uint32Array((n * k) >> 3);
  for (let gi = 0; gi < n * groups; gi++) packNibblesInto(codes, gi * G, G, qweight, gi * G >> 3);
  return nv
    ? { format: "nvfp4", n, k, qweight, wscales: e4m3, tensorScale: ts }
    : { format: "int4", n, k, qweight, wscales: scales };
}

/**
 * INT4 g64 weight of W [N, K] by GPTQ on sample inputs `x` [S, K] (the W4A16 path).
 *
 * @example
 * ```ts ignore
 * import { gptqInt4 } from "./gptq.ts";
 * const packed = await gptqInt4(w, n, k, x, s); // an Int4Weight for the W4A16 GEMM
 * ```
 */
export async function gptqInt4(
  w: Float32Array,
  n: number,
  k: number,
  x: Float32Array,
  s: number,
): Promise<Int4Weight> {
  if (k % GROUP_SIZE_INT4 !== 0 || w.length !== n * k) {
    throw new RangeError(
      `Cannot run GPTQ: W [${n}, ${k}] has ${w.length} values; K must be a multiple of 64`,
    );
  }
  return await gptqQuantize(w, n, k, "int4", gptqFactor(x, s, k)) as Int4Weight;
}
