/**
 * CPU reference of `gate_residual` (the specification): float64 loops over the inputs exactly as
 * stored (f16-rounded values for the f16 dtype; with an f32 `residualDtype`, x is f32 values while
 * y and mod are f16-rounded, and the result is not rounded to f16: it may exceed ±65504).
 *
 * @module
 */

/** Inputs of {@linkcode gateResidualRef}: x, y [B·T, D] and mod [B, modWidth·D], row-major. */
export interface GateResidualRefInputs {
  b: number;
  t: number;
  d: number;
  modWidth: number;
  gateChunk: number;
  x: ArrayLike<number>;
  y: ArrayLike<number>;
  mod: ArrayLike<number>;
}

/**
 * The updated residual stream `x[r, i] + mod[b, gateChunk·D + i] · y[r, i]` with `b = ⌊r / T⌋`;
 * float64, a new array (the inputs are not modified).
 *
 * @example
 * ```ts
 * import { gateResidualRef } from "./gate_residual_ref.ts";
 * const x = gateResidualRef({
 *   b: 1, t: 1, d: 2, modWidth: 2, gateChunk: 1, x: [1, 1], y: [2, 4], mod: [9, 9, 0.5, -1],
 * });
 * console.log(x); // Float64Array [2, -3]
 * ```
 */
export function gateResidualRef(p: GateResidualRefInputs): Float64Array {
  const { b, t, d, x, y, mod } = p;
  const out = new Float64Array(b * t * d);
  for (let r = 0; r < b * t; r++) {
    const gate = Math.floor(r / t) * p.modWidth * d + p.gateChunk * d;
    for (let i = 0; i < d; i++) {
      out[r * d + i] = x[r * d + i] + mod[gate + i] * y[r * d + i];
    }
  }
  return out;
}
