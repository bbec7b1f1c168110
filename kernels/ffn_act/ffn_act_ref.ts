/**
 * CPU reference of `ffn_act` (the specification), float64.
 *
 * @module
 */

/** GELU, tanh form (`gelu_new` / `gelu_pytorch_tanh`): 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³))). */
export function geluTanhRef(v: number): number {
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
}

/** quick-GELU (CLIP): v·sigmoid(1.702·v). */
export function quickGeluRef(v: number): number {
  return v / (1 + Math.exp(-1.702 * v));
}

/**
 * Gated: `x` [M, 2F] = [a | b], `y = gelu_tanh(a)·b` [M, F]; else `y = quick_gelu(x)` [M, F].
 *
 * @example
 * ```ts
 * import { ffnActRef } from "./ffn_act_ref.ts";
 * console.log(ffnActRef({ m: 1, f: 1, gated: true, x: [0, 5] })); // [0]: gelu(0)·5
 * ```
 */
export function ffnActRef(
  p: { m: number; f: number; gated: boolean; x: ArrayLike<number> },
): Float64Array {
  const { m, f } = p;
  const y = new Float64Array(m * f);
  for (let r = 0; r < m; r++) {
    for (let c = 0; c < f; c++) {
      y[r * f + c] = p.gated
        ? geluTanhRef(p.x[r * 2 * f + c]) * p.x[r * 2 * f + f + c]
        : quickGeluRef(p.x[r * f + c]);
    }
  }
  return y;
}
