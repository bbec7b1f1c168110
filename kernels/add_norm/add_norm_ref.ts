/**
 * CPU reference of `add_norm` (the specification), float64.
 *
 * @module
 */

/** Inputs of {@linkcode addNormRef}: row-major [rows, D] arrays. */
export interface AddNormRefInputs {
  rows: number;
  d: number;
  x: ArrayLike<number>;
  /** Added to x first (omit for a plain norm). */
  y?: ArrayLike<number>;
  weight: ArrayLike<number>;
  /** LayerNorm's bias; its presence selects LayerNorm (else RMSNorm). */
  bias?: ArrayLike<number>;
  layerNorm: boolean;
  eps: number;
}

/**
 * `v = x + y`; RMSNorm: `h = v / sqrt(mean(v²) + eps) · w`; LayerNorm:
 * `h = (v − mean) / sqrt(var + eps) · w + b` (biased variance), per row.
 *
 * @example
 * ```ts
 * import { addNormRef } from "./add_norm_ref.ts";
 * const { h } = addNormRef({ rows: 1, d: 2, x: [3, 4], weight: [1, 1], layerNorm: false, eps: 0 });
 * console.log(h); // [3, 4] / sqrt(12.5)
 * ```
 */
export function addNormRef(p: AddNormRefInputs): { xOut: Float64Array; h: Float64Array } {
  const { rows, d } = p;
  const xOut = new Float64Array(rows * d);
  const h = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let e = 0; e < d; e++) {
      const i = r * d + e;
      xOut[i] = p.x[i] + (p.y ? p.y[i] : 0);
      mean += xOut[i];
    }
    mean = p.layerNorm ? mean / d : 0;
    let q = 0;
    for (let e = 0; e < d; e++) q += (xOut[r * d + e] - mean) ** 2;
    const rstd = 1 / Math.sqrt(q / d + p.eps);
    for (let e = 0; e < d; e++) {
      const i = r * d + e;
      h[i] = (xOut[i] - mean) * rstd * p.weight[e] + (p.layerNorm && p.bias ? p.bias[e] : 0);
    }
  }
  return { xOut, h };
}
