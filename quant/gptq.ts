/**
 * Activation-aware INT4 weight rounding for W4A16 (GPTQ's error feedback): the columns of W are
 * quantized in order, and each column's rounding error is spread over the columns not yet
 * quantized through the inverse Hessian of the layer's output error on calibration inputs,
 * `H = XᵀX/S + δ·I` — so later columns compensate what earlier ones lost, along the directions
 * the activations actually use. Group scales (INT4 g64, f16) are chosen when a group starts,
 * from the then-updated weights, by the clip ratio with the least weight error.
 *
 * The result is an ordinary INT4 g64 weight (quant/packing.ts layout): the runtime's W4A16 GEMM
 * runs it unchanged. Cost: `N·K²/2` multiply-adds (in blocks of 64 columns, the cross-block part
 * through the SIMD GEMM) plus K×K Cholesky factorisations (float64, `O(K³)`).
 *
 * @module
 */
import { DEFAULT_CLIP_RATIOS } from "./clip.ts";
import { cpuMatMul } from "./linalg.ts";
import {
  GROUP_SIZE_INT4,
  type Int4Weight,
  packNibblesInto,
  roundF16,
  roundHalfEven,
} from "./packing.ts";

/** Relative damping δ of the Hessian's diagonal (GPTQ's default: 1% of its mean). */
export const GPTQ_DAMP = 0.01;

/** Upper Cholesky factor U of the inverse of SPD `h` [K, K] (`h⁻¹ = Uᵀ·U`). */
function inverseCholeskyUpper(h: Float64Array, k: number): Float64Array {
  // L·Lᵀ = H (lower), then H⁻¹ = L⁻ᵀ·L⁻¹, then its upper Cholesky factor.
  const l = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j <= i; j++) {
      let s = h[i * k + j];
      for (let p = 0; p < j; p++) s -= l[i * k + p] * l[j * k + p];
      l[i * k + j] = i === j ? Math.sqrt(Math.max(s, 1e-300)) : s / l[j * k + j];
    }
  }
  const li = new Float64Array(k * k); // L⁻¹, lower
  for (let j = 0; j < k; j++) {
    li[j * k + j] = 1 / l[j * k + j];
    for (let i = j + 1; i < k; i++) {
      let s = 0;
      for (let p = j; p < i; p++) s += l[i * k + p] * li[p * k + j];
      li[i * k + j] = -s / l[i * k + i];
    }
  }
  const inv = new Float64Array(k * k); // L⁻ᵀ·L⁻¹
  for (let i = 0; i < k; i++) {
    for (let j = i; j < k; j++) {
      let s = 0;
      for (let p = j; p < k; p++) s += li[p * k + i] * li[p * k + j];
      inv[i * k + j] = s;
      inv[j * k + i] = s;
    }
  }
  // GPTQ's factor: U upper with Uᵀ·U = inv, i.e. U = Cᵀ for the lower Cholesky C of inv.
  const c = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j <= i; j++) {
      let s = inv[i * k + j];
      for (let p = 0; p < j; p++) s -= c[i * k + p] * c[j * k + p];
      c[i * k + j] = i === j ? Math.sqrt(Math.max(s, 1e-300)) : s / c[j * k + j];
    }
  }
  const u = new Float64Array(k * k);
  for (let i = 0; i < k; i++) for (let j = i; j < k; j++) u[i * k + j] = c[j * k + i];
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

/**
 * INT4 g64 weight of W [N, K] by GPTQ on sample inputs `x` [S, K] (see the module docs).
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
  const G = GROUP_SIZE_INT4;
  if (k % G !== 0 || w.length !== n * k || x.length !== s * k || s < 1) {
    throw new RangeError(
      `Cannot run GPTQ: W [${n}, ${k}] (${w.length} values) with samples [${s}, ${k}] ` +
        `(${x.length}); K must be a multiple of ${G} and S ≥ 1`,
    );
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
  const u = inverseCholeskyUpper(h, k);
  // Blocked (GPTQ's lazy batch): inside a block of G columns the error feedback is applied
  // column by column; the block's errors reach the later columns in one product.
  const wk = Float64Array.from(w);
  const codes = new Int8Array(n * k), scales = new Float32Array(n * (k / G));
  const errs = new Float32Array(n * G);
  for (let b0 = 0; b0 < k; b0 += G) {
    const g = b0 / G;
    for (let row = 0; row < n; row++) scales[row * (k / G) + g] = groupScale(wk, row * k + b0, G);
    for (let i = b0; i < b0 + G; i++) {
      const uii = u[i * k + i];
      for (let row = 0; row < n; row++) {
        const sc = scales[row * (k / G) + g], o = row * k;
        const v = wk[o + i];
        const q = sc > 0 ? Math.max(-8, Math.min(7, roundHalfEven(v / sc))) : 0;
        codes[o + i] = q;
        const e = (v - Math.fround(q * sc)) / uii;
        errs[row * G + (i - b0)] = e;
        if (e === 0) continue;
        for (let j = i + 1; j < b0 + G; j++) wk[o + j] -= e * u[i * k + j];
      }
    }
    const rest = k - b0 - G;
    if (rest > 0) {
      const ub = new Float32Array(G * rest);
      for (let t = 0; t < G; t++) {
        for (let j = 0; j < rest; j++) ub[t * rest + j] = u[(b0 + t) * k + b0 + G + j];
      }
      const upd = await cpuMatMul(errs, ub, n, G, rest, false);
      for (let row = 0; row < n; row++) {
        const o = row * k + b0 + G;
        for (let j = 0; j < rest; j++) wk[o + j] -= upd[row * rest + j];
      }
    }
  }
  const qweight = new Uint32Array((n * k) >> 3);
  for (let gi = 0; gi < n * (k / G); gi++) packNibblesInto(codes, gi * G, G, qweight, gi * G >> 3);
  return { format: "int4", n, k, qweight, wscales: scales };
}
