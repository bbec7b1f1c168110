/**
 * CPU reference of `quantize_act_lowrank` (the specification): the low-rank down-projection in
 * float64 and the 4-bit quantization of `X / smooth` by {@linkcode quantizeAct} from
 * formats/packing.ts, whose f32 arithmetic the kernel reproduces.
 *
 * @module
 */
import {
  type ActConvention,
  type ActMode,
  type QuantAct,
  quantizeAct,
} from "../../formats/packing.ts";

/** Inputs of the reference: plain values (X already rounded to its storage dtype). */
export interface QuantizeActLowrankRefInputs {
  /** [M, K] activations. */
  x: Float32Array;
  /** [K] smoothing factors λ (omitted: all ones). */
  smooth?: Float32Array;
  /** [R, K] values of `lora_down` (already f16-rounded); omitted or empty when R = 0. */
  loraDown?: ArrayLike<number>;
}

/** Outputs of the reference. */
export interface QuantizeActLowrankRefOutputs {
  /** Codes and scales, as {@linkcode quantizeAct} defines them. */
  quant: QuantAct;
  /** [M, R] `X · lora_downᵀ` in float64 (raw X, not divided by λ). */
  loraAct: Float64Array;
}

/**
 * `lora_act[m, r] = Σ_k x[m, k] · loraDown[r, k]` in float64.
 *
 * @example
 * ```ts
 * import { loraActRef } from "./quantize_act_lowrank_ref.ts";
 * loraActRef(new Float32Array([1, 2]), [3, 4, 5, 6], 1, 2, 2); // Float64Array [11, 17]
 * ```
 */
export function loraActRef(
  x: Float32Array,
  loraDown: ArrayLike<number>,
  m: number,
  k: number,
  r: number,
): Float64Array {
  const out = new Float64Array(m * r);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < r; j++) {
      let sum = 0;
      for (let c = 0; c < k; c++) sum += x[i * k + c] * loraDown[j * k + c];
      out[i * r + j] = sum;
    }
  }
  return out;
}

/**
 * The whole kernel on the CPU.
 *
 * @example
 * ```ts
 * import { quantizeActLowrankRef } from "./quantize_act_lowrank_ref.ts";
 * const x = new Float32Array(64).map((_, i) => i - 32);
 * const { quant, loraAct } = quantizeActLowrankRef(
 *   { m: 1, k: 64, r: 1, mode: "int4" },
 *   { x, loraDown: new Array(64).fill(1) },
 * );
 * // quant.ascales[0] = 32 / 7, loraAct[0] = -32
 * ```
 */
export function quantizeActLowrankRef(
  shape: { m: number; k: number; r: number; mode: ActMode; convention?: ActConvention },
  inputs: QuantizeActLowrankRefInputs,
): QuantizeActLowrankRefOutputs {
  const { m, k, r, mode } = shape;
  if (r > 0 && (inputs.loraDown?.length ?? 0) !== r * k) {
    throw new TypeError(
      `Cannot run quantize_act_lowrank_ref: loraDown has ${inputs.loraDown?.length ?? 0} ` +
        `elements, expected [R=${r}, K=${k}] = ${r * k}`,
    );
  }
  const quant = quantizeAct(inputs.x, m, k, mode, inputs.smooth, shape.convention);
  const loraAct = r > 0 ? loraActRef(inputs.x, inputs.loraDown!, m, k, r) : new Float64Array(0);
  return { quant, loraAct };
}
