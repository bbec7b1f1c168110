/**
 * CPU reference (the specification) of `gemm_w4a4_lowrank`, in float64 from the integer codes
 * and group scales of `formats/packing.ts`:
 *
 * `Y[m,n] = Σ_g sx[m,g]·sw[n,g]·c[n]·Σ_{k∈g} qx[m,k]·qw[n,k] + Σ_r lora_act[m,r]·lora_up[n,r] + bias[n]`
 * (c = the optional per-channel `channelScale`, else 1),
 * then optionally GELU (tanh form).
 *
 * @module
 */
import { geluTanh } from "../../gpu/activations.ts";

export { geluTanh };
import {
  actCodes,
  actGroupScales,
  groupSize,
  type PackedWeight,
  type QuantAct,
  weightCodes,
  weightGroupScales,
} from "../../formats/packing.ts";

/** Inputs of {@linkcode gemmW4A4LowrankRef}; the low-rank tensors are plain values. */
export interface GemmW4A4LowrankRefInputs {
  act: QuantAct;
  weight: PackedWeight;
  /** Rank of the low-rank branch (0 = none). */
  r: number;
  /** [M, R] values (ignored when R = 0). */
  loraAct?: ArrayLike<number>;
  /** [N, R] values (ignored when R = 0). */
  loraUp?: ArrayLike<number>;
  /** [N] values, or none. */
  bias?: ArrayLike<number>;
  gelu?: boolean;
  /** [N] per-channel factors of the 4-bit product (the kernel's `channel_scale`), or none. */
  channelScale?: ArrayLike<number>;
}

/** Result: Y [M, N] and, per element, Σ of |each term| before GELU (for error bounds). */
export interface GemmW4A4LowrankRefResult {
  y: Float64Array;
  absSum: Float64Array;
}

/**
 * Float64 reference of the W4A4 GEMM with the low-rank epilogue.
 *
 * @example
 * ```ts
 * import { gemmW4A4LowrankRef } from "./gemm_w4a4_lowrank_ref.ts";
 * import { quantizeAct, quantizeWeight } from "../../formats/packing.ts";
 * const x = new Float32Array(2 * 64).fill(0.5);
 * const w = new Float32Array(3 * 64).fill(0.25);
 * const { y } = gemmW4A4LowrankRef({
 *   act: quantizeAct(x, 2, 64, "int4"),
 *   weight: quantizeWeight(w, 3, 64, "int4"),
 *   r: 0,
 * });
 * console.log(y[0]); // ≈ 64 · 0.5 · 0.25 = 8
 * ```
 */
export function gemmW4A4LowrankRef(inp: GemmW4A4LowrankRefInputs): GemmW4A4LowrankRefResult {
  const { act, weight, r } = inp;
  const m = act.m, k = act.k, n = weight.n;
  const g = groupSize(weight.format);
  const groups = k / g;
  const qx = actCodes(act), sx = actGroupScales(act);
  const qw = weightCodes(weight), sw = weightGroupScales(weight);
  const y = new Float64Array(m * n);
  const absSum = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0, abs = 0;
      for (let gi = 0; gi < groups; gi++) {
        let dot = 0;
        for (let kk = gi * g; kk < (gi + 1) * g; kk++) dot += qx[i * k + kk] * qw[j * k + kk];
        const cs = inp.channelScale ? inp.channelScale[j] : 1;
        const t = sx[i * groups + gi] * sw[j * groups + gi] * cs * dot;
        sum += t;
        abs += Math.abs(t);
      }
      for (let rr = 0; rr < r; rr++) {
        const t = inp.loraAct![i * r + rr] * inp.loraUp![j * r + rr];
        sum += t;
        abs += Math.abs(t);
      }
      if (inp.bias) {
        sum += inp.bias[j];
        abs += Math.abs(inp.bias[j]);
      }
      y[i * n + j] = inp.gelu ? geluTanh(sum) : sum;
      absSum[i * n + j] = abs;
    }
  }
  return { y, absSum };
}
