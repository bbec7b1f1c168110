/**
 * CPU reference of `qk_norm_rope` (the specification): float64 loops.
 *
 * @module
 */
import type { QkNormRopeShape } from "./qk_norm_rope.ts";

/** Inputs of {@linkcode qkNormRopeRef}. */
export interface QkNormRopeRefInputs {
  /** [B·n, srcStride] source rows. */
  src: ArrayLike<number>;
  /** [D] scales. */
  qscale: ArrayLike<number>;
  kscale: ArrayLike<number>;
  /** [L, D/2, 2] (cos, sin). */
  rope: ArrayLike<number>;
}

/**
 * Write the part's rows of the joint qkv into `qkv` ([B·L, 3·H·D], modified in place; other rows
 * untouched): q and k RMS-normalised per head (eps default 1e-6), scaled, and rotated pairwise
 * (adjacent elements 2i, 2i+1) by the (cos, sin) of joint position `rowOffset + t`; v copied.
 *
 * @example
 * ```ts
 * import { qkNormRopeRef } from "./qk_norm_rope_ref.ts";
 * const qkv = new Float64Array(6);
 * qkNormRopeRef({ b: 1, n: 1, l: 1, rowOffset: 0, h: 1, d: 2, srcStride: 6, dtype: "f32" }, {
 *   src: [3, 4, 3, 4, 5, 6], qscale: [1, 1], kscale: [2, 2], rope: [0, 1],
 * }, qkv);
 * console.log(qkv); // ≈ [-1.131, 0.849, -2.263, 1.697, 5, 6]: rms-normed, rotated by 90°
 * ```
 */
export function qkNormRopeRef(
  s: QkNormRopeShape,
  inp: QkNormRopeRefInputs,
  qkv: Float64Array | Float32Array,
): void {
  const hd = s.h * s.d, pairs = s.d / 2, eps = s.eps ?? 1e-6;
  for (let b = 0; b < s.b; b++) {
    for (let t = 0; t < s.n; t++) {
      const srow = (b * s.n + t) * s.srcStride;
      const p = s.rowOffset + t;
      const drow = (b * s.l + p) * 3 * hd;
      for (let h = 0; h < s.h; h++) {
        for (let part = 0; part < 3; part++) {
          const off = part * hd + h * s.d;
          let r = 1;
          if (part < 2) {
            let ss = 0;
            for (let e = 0; e < s.d; e++) ss += inp.src[srow + off + e] ** 2;
            r = 1 / Math.sqrt(ss / s.d + eps);
          }
          const scale = part === 0 ? inp.qscale : inp.kscale;
          for (let i = 0; i < pairs; i++) {
            let x0 = inp.src[srow + off + 2 * i], x1 = inp.src[srow + off + 2 * i + 1];
            if (part < 2) {
              x0 *= r * scale[2 * i];
              x1 *= r * scale[2 * i + 1];
              const c = inp.rope[(p * pairs + i) * 2], sn = inp.rope[(p * pairs + i) * 2 + 1];
              [x0, x1] = [c * x0 - sn * x1, sn * x0 + c * x1];
            }
            qkv[drow + off + 2 * i] = x0;
            qkv[drow + off + 2 * i + 1] = x1;
          }
        }
      }
    }
  }
}
