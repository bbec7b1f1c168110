/**
 * CPU reference of `gemm_f16` (the specification): float64 loops over the inputs exactly as
 * stored (f16-rounded values for the f16 dtype), bias added, then GELU in its tanh form.
 *
 * @module
 */
import { geluTanh } from "../../gpu/activations.ts";

export { geluTanh };

/** Inputs of {@linkcode gemmF16Ref}: row-major X [M,K], W [N,K], optional bias [N]. */
export interface GemmRefInputs {
  m: number;
  k: number;
  n: number;
  x: ArrayLike<number>;
  w: ArrayLike<number>;
  bias?: ArrayLike<number>;
  gelu?: boolean;
}

/**
 * `Y[m,n] = Σ_k X[m,k]·W[n,k] + bias[n]`, then GELU if asked; float64.
 *
 * @example
 * ```ts
 * import { gemmF16Ref } from "./gemm_f16_ref.ts";
 * const y = gemmF16Ref({ m: 1, k: 2, n: 1, x: [1, 2], w: [3, 4], bias: [0.5] });
 * console.log(y[0]); // 11.5
 * ```
 */
export function gemmF16Ref(p: GemmRefInputs): Float64Array {
  const { m, k, n, x, w, bias, gelu } = p;
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let l = 0; l < k; l++) s += x[i * k + l] * w[j * k + l];
      if (bias) s += bias[j];
      y[i * n + j] = gelu ? geluTanh(s) : s;
    }
  }
  return y;
}
