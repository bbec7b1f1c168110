/**
 * Test helper shared by the gemm_f16 and gemm_w4a16 tests: the per-element error bound of a
 * GEMM with f32 accumulation and ACT (f16 or f32) output, and its check.
 *
 * Bound, per element (i, j), with S = Σ_k |x_ik|·|w_jk| + |bias_j| from the same (already
 * rounded) inputs the float64 reference used:
 * - f32 accumulation of K products (FMA, any order) errs by at most γ_K·S, γ_K ≈ K·2⁻²⁴
 *   (6.9e-5 at K = 1152); GELU's slope is at most 1.13 and its f32 evaluation (exp, divide) adds
 *   a few ulps of |z| ≤ S, so ACC = 1e-4 relative to S covers the f32 result.
 * - An f16 output is then rounded to nearest: at most 2⁻¹¹ of its magnitude, or 2⁻²⁵ absolute
 *   in the subnormal range. So the f16 bound is 2⁻¹¹·|y_ref| + (1 + 2⁻¹¹)·ACC·S + 2⁻²⁵, tighter
 *   than the usual 2⁻¹⁰·|y| + K·2⁻¹¹·max|x||w| because the accumulation is f32, not f16.
 *
 * @module
 */

/** Relative (to Σ|x||w|) allowance for f32 accumulation and the epilogue. */
export const ACC = 1e-4;

/** S[i, j] = Σ_k |x[i,k]|·|w[j,k]| + |bias[j]|, in float64. */
export function absProducts(
  m: number,
  k: number,
  n: number,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias?: ArrayLike<number>,
): Float64Array {
  const s = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let t = bias ? Math.abs(bias[j]) : 0;
      for (let l = 0; l < k; l++) t += Math.abs(x[i * k + l] * w[j * k + l]);
      s[i * n + j] = t;
    }
  }
  return s;
}

/** Measured errors of one check: max |d|, max |d|/S and the largest |d|/bound (≤ 1 passes). */
export interface GemmErrors {
  maxAbs: number;
  maxRelToS: number;
  worstRatio: number;
}

/**
 * Throw unless every `got[i]` is within the bound of `ref[i]` (see the module doc); NaN (e.g. a
 * poisoned, unwritten element) always fails.
 */
export function checkGemmOutput(
  name: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  s: ArrayLike<number>,
  f16: boolean,
): GemmErrors {
  let maxAbs = 0, maxRelToS = 0, worstRatio = 0, worst = -1;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(got[i] - ref[i]);
    const bound = f16
      ? 2 ** -11 * Math.abs(ref[i]) + (1 + 2 ** -11) * ACC * s[i] + 2 ** -25
      : ACC * s[i] + 1e-30;
    const ratio = d / bound;
    if (!(ratio <= worstRatio)) {
      worstRatio = Number.isNaN(ratio) ? Infinity : ratio;
      worst = i;
    }
    if (d > maxAbs) maxAbs = d;
    if (d / Math.max(s[i], 1e-30) > maxRelToS) maxRelToS = d / Math.max(s[i], 1e-30);
  }
  if (!(worstRatio <= 1)) {
    throw new Error(
      `${name}: element ${worst} is ${got[worst]}, expected ${ref[worst]} (S = ${s[worst]}); ` +
        `error ${worstRatio.toFixed(2)}× its bound (max abs ${maxAbs.toExponential(3)}, ` +
        `max abs/S ${maxRelToS.toExponential(3)})`,
    );
  }
  console.log(
    `${name}: max abs err ${maxAbs.toExponential(3)}, max err/S ${maxRelToS.toExponential(3)}, ` +
      `worst err/bound ${worstRatio.toFixed(3)}`,
  );
  return { maxAbs, maxRelToS, worstRatio };
}

/**
 * The f16 saturation check shared by the GEMM tests: every output whose reference is beyond f16's
 * range (|ref| > 65520, where round-to-nearest would give inf) must be exactly ±65504; throws
 * unless both kinds occur. Returns the indices of the in-range outputs, for the caller's own
 * bound.
 */
export function inRangeAfterSaturation(
  name: string,
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
): number[] {
  const keep: number[] = [];
  let saturated = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Math.abs(ref[i]) > 65520) {
      const want = Math.sign(ref[i]) * 65504;
      if (got[i] !== want) {
        throw new Error(`${name}: y[${i}] is ${got[i]}, expected ${want} (reference ${ref[i]})`);
      }
      saturated++;
    } else keep.push(i);
  }
  if (saturated === 0 || keep.length === 0) {
    throw new Error(
      `${name}: ${saturated} saturated and ${keep.length} in-range outputs; want both`,
    );
  }
  return keep;
}
