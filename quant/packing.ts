/**
 * THE one definition of the 4-bit formats: nibble order, code tables, scale encodings and the
 * round-to-nearest quantizers for weights (offline) and activations (the CPU mirror of the
 * `quantize_act_lowrank` kernel). The quantizer, CPU references, launchers and tests import this
 * module; nothing else defines a layout. See ARCHITECTURE.md "Packed layouts".
 *
 * @module
 */

/** INT4 group size along K (one f16 scale per 64 weights). */
export const GROUP_SIZE_INT4 = 64;
/** NVFP4 group size along K (one E4M3 scale per 16 values). */
export const GROUP_SIZE_NVFP4 = 16;
/** Shift added to post-GELU activations before unsigned INT4 quantization (GELU-tanh min ≈ -0.17). */
export const GELU_SHIFT = 0.171875;
/** Largest finite E4M3 value. */
export const E4M3_MAX = 448;
/** Largest E2M1 magnitude. */
export const E2M1_MAX = 6;

/** 4-bit weight formats. */
export type WeightFormat = "int4" | "nvfp4";
/** Activation quantization modes of `quantize_act_lowrank`. */
export type ActMode = "int4" | "int4_unsigned" | "nvfp4";

/** E2M1 value of each 4-bit code (bit 3 sign, bits 2..1 exponent, bit 0 mantissa). */
export const E2M1_VALUES: readonly number[] = [
  0,
  0.5,
  1,
  1.5,
  2,
  3,
  4,
  6,
  -0,
  -0.5,
  -1,
  -1.5,
  -2,
  -3,
  -4,
  -6,
];

/** Group size of a weight format or activation mode. */
export function groupSize(format: WeightFormat | ActMode): number {
  return format === "nvfp4" ? GROUP_SIZE_NVFP4 : GROUP_SIZE_INT4;
}

/** An INT4 weight: symmetric, group 64 along K, f16 scales. */
export interface Int4Weight {
  format: "int4";
  n: number;
  k: number;
  /** u32 [N, K/8]: nibble j of word w = element 8w+j, two's complement. */
  qweight: Uint32Array;
  /** [N, K/64] scale values, already rounded to f16. */
  wscales: Float32Array;
}

/** An NVFP4 weight: E2M1 codes, group 16, E4M3 group scales, one f32 per-tensor scale. */
export interface Nvfp4Weight {
  format: "nvfp4";
  n: number;
  k: number;
  /** u32 [N, K/8] E2M1 codes, same nibble order as INT4. */
  qweight: Uint32Array;
  /** [N, K/16] E4M3 codes. */
  wscales: Uint8Array;
  /** Per-tensor f32 scale: value = e2m1(code) · e4m3(scale) · tensorScale. */
  tensorScale: number;
}

/** A packed 4-bit weight of either format. */
export type PackedWeight = Int4Weight | Nvfp4Weight;

/** Quantized activations as `quantize_act_lowrank` writes them. */
export interface QuantAct {
  mode: ActMode;
  m: number;
  k: number;
  /** u32 [M, K/8], same nibble order as the weights. */
  qact: Uint32Array;
  /** f32 [M, K/G] per-token, per-group scales (NVFP4: values on the E4M3 grid). */
  ascales: Float32Array;
}
