/**
 * CPU reference of `layernorm_modulate` (the specification): float64 loops over the inputs
 * exactly as stored (f16-rounded values for the f16 dtype).
 *
 * @module
 */

/** Inputs of {@linkcode layernormModulateRef}: x [B·T, D] and mod [B, modWidth·D], row-major. */
export interface LayernormModulateRefInputs {
  b: number;
  t: number;
  d: number;
  modWidth: number;
  shiftChunk: number;
  scaleChunk: number;
  /** Default 1e-6 (DiT's). */
  eps?: number;
  /**
   * Clamp h to ±65504, f16's largest finite value: the kernel's f16 output under an f32 residual
   * (`residualDtype: "f32"`), which saturates instead of overflowing. Default false.
   */
  saturate?: boolean;
  x: ArrayLike<number>;
  mod: ArrayLike<number>;
}

/** f16's largest finite value. */
const F16_MAX = 65504;

/**
 * `h[r, i] = (x[r, i] − μ_r) / √(σ²_r + eps) · (1 + scale[b, i]) + shift[b, i]`, with
 * `μ_r`, `σ²_r` the mean and (biased) variance of row r, `b = ⌊r / T⌋`,
 * `scale[b, i] = mod[b, scaleChunk·D + i]`, `shift[b, i] = mod[b, shiftChunk·D + i]`; float64.
 * Also returns the normalized values `n[r, i] = (x[r, i] − μ_r) / √(σ²_r + eps)`. With
 * `saturate`, h is clamped to ±65504.
 *
 * @example
 * ```ts
 * import { layernormModulateRef } from "./layernorm_modulate_ref.ts";
 * const { h } = layernormModulateRef({
 *   b: 1, t: 1, d: 2, modWidth: 2, shiftChunk: 0, scaleChunk: 1, eps: 0,
 *   x: [1, 3], mod: [0.5, 0.5, 1, 1], // shift = 0.5, scale = 1
 * });
 * console.log(h); // Float64Array [-1.5, 2.5]: ±1 · 2 + 0.5
 * ```
 */
export function layernormModulateRef(
  p: LayernormModulateRefInputs,
): { h: Float64Array; n: Float64Array } {
  const { b, t, d, x, mod } = p;
  const eps = p.eps ?? 1e-6;
  const h = new Float64Array(b * t * d);
  const n = new Float64Array(b * t * d);
  for (let r = 0; r < b * t; r++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x[r * d + i];
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) variance += (x[r * d + i] - mean) ** 2;
    variance /= d;
    const rstd = 1 / Math.sqrt(variance + eps);
    const img = Math.floor(r / t) * p.modWidth * d;
    for (let i = 0; i < d; i++) {
      const v = (x[r * d + i] - mean) * rstd;
      n[r * d + i] = v;
      const out = v * (1 + mod[img + p.scaleChunk * d + i]) + mod[img + p.shiftChunk * d + i];
      h[r * d + i] = p.saturate ? Math.max(-F16_MAX, Math.min(F16_MAX, out)) : out;
    }
  }
  return { h, n };
}
