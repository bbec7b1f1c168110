/**
 * The activation functions the models use, as float64 specifications: the one definition the
 * CPU references, the quantizer's simulation and the DiT reference share (the WGSL kernels
 * compute the same functions in f32).
 *
 * @module
 */

/** GELU, tanh form: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (DiT's MLP). */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** SiLU: `x·sigmoid(x)` (DiT's conditioning). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}
