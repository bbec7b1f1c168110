/**
 * CPU reference of `gemm_w8a16` (the specification), float64.
 *
 * @module
 */

/**
 * `Y[m, n] = s[n] · Σ_k X[m, k]·Q[n, k] + bias[n]` with Q int8 [N, K] and s f32 [N].
 *
 * @example
 * ```ts
 * import { gemmW8A16Ref } from "./gemm_w8a16_ref.ts";
 * const y = gemmW8A16Ref({ m: 1, k: 2, n: 1, x: [1, 2], q: [3, -1], scales: [0.5] });
 * console.log(y[0]); // 0.5 · (3 − 2) = 0.5
 * ```
 */
export function gemmW8A16Ref(p: {
  m: number;
  k: number;
  n: number;
  x: ArrayLike<number>;
  q: ArrayLike<number>;
  scales: ArrayLike<number>;
  bias?: ArrayLike<number>;
}): Float64Array {
  const { m, k, n } = p;
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let c = 0; c < k; c++) s += p.x[i * k + c] * p.q[j * k + c];
      y[i * n + j] = s * p.scales[j] + (p.bias ? p.bias[j] : 0);
    }
  }
  return y;
}
