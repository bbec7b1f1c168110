/**
 * CPU reference of `gemm_w4a16` (the specification): the packed INT4 weight is dequantised with
 * formats/packing.ts (`q · s`, exact), then the float64 GEMM of gemm_f16_ref.ts runs on X as given
 * (already rounded to its storage dtype).
 *
 * @module
 */
import { dequantizeWeight, type Int4Weight, unpackNibbles } from "../../formats/packing.ts";
import { gemmF16Ref } from "../gemm_f16/gemm_f16_ref.ts";

/** Inputs of {@linkcode gemmW4A16Ref}: X [M,K] row-major, the packed weight, optional bias. */
export interface GemmW4A16RefInputs {
  m: number;
  x: ArrayLike<number>;
  weight: Int4Weight;
  bias?: ArrayLike<number>;
  gelu?: boolean;
  /**
   * [N, K/64] zero points: the codes are then unsigned (0..15) and `W = q·s + z` (the kernel's
   * `zeroPoint`).
   */
  zeros?: ArrayLike<number>;
  /** [K] per-input-channel divisors: the product runs on `X / smooth` (the kernel's `smooth`). */
  smooth?: ArrayLike<number>;
}

/**
 * `Y = (X / smooth) · dequant(W)ᵀ + bias` (X as given without `smooth`), then GELU (tanh form) if
 * asked; float64 [M, N] (the division in float64 too).
 *
 * @example
 * ```ts
 * import { quantizeWeight, type Int4Weight } from "../../formats/packing.ts";
 * import { gemmW4A16Ref } from "./gemm_w4a16_ref.ts";
 * const weight = quantizeWeight(new Float32Array(64).fill(0.7), 1, 64, "int4") as Int4Weight;
 * const y = gemmW4A16Ref({ m: 1, x: new Float32Array(64).fill(1), weight });
 * console.log(y[0]); // 64 · 0.7 (to f16 scale rounding)
 * ```
 */
export function gemmW4A16Ref(p: GemmW4A16RefInputs): Float64Array {
  const { m, weight, bias, gelu, zeros, smooth } = p;
  const k = weight.k;
  let x: ArrayLike<number> = p.x;
  if (smooth) {
    if (smooth.length !== k) {
      throw new TypeError(
        `Cannot compute gemm_w4a16: smooth has ${smooth.length}, expected [K=${k}]`,
      );
    }
    x = Float64Array.from({ length: m * k }, (_, i) => p.x[i] / smooth[i % k]);
  }
  let w: Float32Array | Float64Array;
  if (zeros) {
    const { n, k } = weight, g = k / 64;
    const q = unpackNibbles(weight.qweight, n, k, false);
    w = new Float64Array(n * k);
    for (let i = 0; i < n * k; i++) {
      const gi = Math.floor(i / k) * g + Math.floor((i % k) / 64);
      w[i] = q[i] * weight.wscales[gi] + zeros[gi];
    }
  } else {
    w = dequantizeWeight(weight);
  }
  return gemmF16Ref({ m, k: weight.k, n: weight.n, x, w, bias, gelu });
}
