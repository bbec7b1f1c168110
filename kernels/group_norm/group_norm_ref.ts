/**
 * CPU reference of `group_norm` (the specification): float64, two passes (mean, then the mean
 * of squared deviations: PyTorch's biased variance) per (image, group) over NHWC `[B, HW, C]`.
 *
 * @module
 */

/** Inputs of {@linkcode groupNormRef}. */
export interface GroupNormRefInputs {
  b: number;
  hw: number;
  c: number;
  /** Default 32. */
  groups?: number;
  /** Default 1e-6. */
  eps?: number;
  silu?: boolean;
  /** [B, HW, C]. */
  x: ArrayLike<number>;
  /** [C]. */
  gamma: ArrayLike<number>;
  /** [C]. */
  beta: ArrayLike<number>;
}

/**
 * `y = act((x − mean_g)/√(var_g + eps)·gamma + beta)`, float64.
 *
 * @example
 * ```ts
 * import { groupNormRef } from "./group_norm_ref.ts";
 * const y = groupNormRef({ b: 1, hw: 2, c: 1, groups: 1, eps: 0, x: [1, 3], gamma: [1], beta: [0] });
 * console.log([...y]); // [-1, 1]
 * ```
 */
export function groupNormRef(p: GroupNormRefInputs): Float64Array {
  const { b, hw, c, x } = p;
  const g = p.groups ?? 32;
  const eps = p.eps ?? 1e-6;
  const cpg = c / g;
  const y = new Float64Array(b * hw * c);
  for (let n = 0; n < b; n++) {
    for (let gi = 0; gi < g; gi++) {
      let sum = 0;
      for (let i = 0; i < hw; i++) {
        for (let j = 0; j < cpg; j++) sum += x[(n * hw + i) * c + gi * cpg + j];
      }
      const mean = sum / (hw * cpg);
      let sq = 0;
      for (let i = 0; i < hw; i++) {
        for (let j = 0; j < cpg; j++) sq += (x[(n * hw + i) * c + gi * cpg + j] - mean) ** 2;
      }
      const rstd = 1 / Math.sqrt(sq / (hw * cpg) + eps);
      for (let i = 0; i < hw; i++) {
        for (let j = 0; j < cpg; j++) {
          const ch = gi * cpg + j;
          const at = (n * hw + i) * c + ch;
          const v = (x[at] - mean) * rstd * p.gamma[ch] + p.beta[ch];
          y[at] = p.silu ? v / (1 + Math.exp(-v)) : v;
        }
      }
    }
  }
  return y;
}
