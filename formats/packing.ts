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
/**
 * Rounding convention of the activation quantizer: `"w4"` (ours, the default) or `"nunchaku"`
 * (what Nunchaku's kernels do, for imported checkpoints): see {@linkcode quantizeAct}.
 */
export type ActConvention = "w4" | "nunchaku";

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
  /** Format tag. */
  format: "int4";
  /** Output features N (rows of the [N, K] weight). */
  n: number;
  /** Input features K (a multiple of 64). */
  k: number;
  /** u32 [N, K/8]: nibble j of word w = element 8w+j, two's complement. */
  qweight: Uint32Array;
  /** [N, K/64] scale values, already rounded to f16. */
  wscales: Float32Array;
}

/** An NVFP4 weight: E2M1 codes, group 16, E4M3 group scales, one f32 per-tensor scale. */
export interface Nvfp4Weight {
  /** Format tag. */
  format: "nvfp4";
  /** Output features N (rows of the [N, K] weight). */
  n: number;
  /** Input features K (a multiple of 16). */
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
  /** Activation quantization mode (sets the group size G: 64 for INT4, 16 for NVFP4). */
  mode: ActMode;
  /** Rows M (tokens) of the [M, K] activation. */
  m: number;
  /** Channels K (a multiple of G). */
  k: number;
  /** u32 [M, K/8], same nibble order as the weights. */
  qact: Uint32Array;
  /** f32 [M, K/G] per-token, per-group scales (NVFP4: values on the E4M3 grid). */
  ascales: Float32Array;
}

// ---------------------------------------------------------------------------------------------
// Rounding and f16

/** 1.5·2^52: `(v + ROUND_MAGIC) - ROUND_MAGIC` rounds |v| < 2^51 to an integer, ties to even. */
const ROUND_MAGIC = 6755399441055744;

/** Round to the nearest integer, ties to even (`2.5 → 2`, `3.5 → 4`, `-2.5 → -2`). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties go up (toward +∞)
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** f32 reciprocals Nunchaku's activation quantizer multiplies by. */
const INV6 = Math.fround(1 / 6), INV7 = Math.fround(1 / 7), INV15 = Math.fround(1 / 15);

const BF16_F32 = new Float32Array(1);
const BF16_U32 = new Uint32Array(BF16_F32.buffer);

/** Round to the nearest bf16 value (via f32; ties to even), as a number. Finite inputs only. */
export function roundBf16(x: number): number {
  BF16_F32[0] = x;
  const b = BF16_U32[0];
  BF16_U32[0] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16;
  return BF16_F32[0];
}

/** Round to the nearest f16 value (ties to even; overflow gives ±Infinity), as a number. */
export function roundF16(x: number): number {
  return Math.f16round(x);
}

/**
 * f16 bits of `values`, two per u32: element `i` in half `i & 1` of word `i >> 1`, low half
 * first; an odd count leaves the last high half zero.
 *
 * @example
 * ```ts
 * import { packF16, unpackF16 } from "./packing.ts";
 * const words = packF16([1, -2, 0.5]); // Uint32Array [0xC0003C00, 0x00003800]
 * unpackF16(words, 3); // Float32Array [1, -2, 0.5]
 * ```
 */
export function packF16(values: ArrayLike<number>): Uint32Array {
  const bits = new Uint16Array(Float16Array.from(values).buffer);
  const words = new Uint32Array((bits.length + 1) >> 1);
  for (let i = 0; i < bits.length; i++) words[i >> 1] |= bits[i] << ((i & 1) << 4);
  return words;
}

/** The first `count` f16 values of words written by {@linkcode packF16}, as f32. */
export function unpackF16(words: Uint32Array, count: number): Float32Array {
  checkCount("unpack f16 values", "words", words.length, Math.ceil(count / 2), `${count} f16`);
  const bits = new Uint16Array(count);
  for (let i = 0; i < count; i++) bits[i] = words[i >> 1] >>> ((i & 1) << 4);
  return Float32Array.from(new Float16Array(bits.buffer));
}

// ---------------------------------------------------------------------------------------------
// FP8 E4M3 and FP4 E2M1

/** E4M3 value of each byte code (0x7F and 0xFF are NaN). */
const E4M3_TABLE: Float64Array = (() => {
  const t = new Float64Array(256);
  for (let c = 0; c < 256; c++) {
    const e = (c >> 3) & 15, m = c & 7;
    const v = (c & 0x7f) === 0x7f ? NaN : e === 0 ? m * 2 ** -9 : (8 + m) * 2 ** (e - 10);
    t[c] = c & 0x80 ? -v : v;
  }
  return t;
})();

/** `2^(3-e)` for binade e = -6..8 (index e + 6): E4M3 mantissa steps per unit. */
const E4M3_STEP_INV: Float64Array = Float64Array.from({ length: 15 }, (_, i) => 2 ** (9 - i));

/** 2·e2m1(code): the int8 the GEMM multiplies for an E2M1 code. */
const E2M1_TWICE: Int8Array = Int8Array.from(E2M1_VALUES, (v) => 2 * v);

/**
 * Encode `x` as an FP8 E4M3 byte: round to nearest, ties to even (also between subnormals and
 * at the subnormal/normal boundary), saturating to ±448 (0x7E/0xFE; ±Infinity saturates too).
 * The sign is kept: negative values that round to zero, and -0, give 0x80. NaN throws.
 */
export function encodeE4M3(x: number): number {
  if (x !== x) throw new RangeError("Cannot encode NaN as E4M3: the value must be a number");
  const sign = x < 0 || 1 / x < 0 ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= E4M3_MAX) return sign | 0x7e;
  // Exponent of the binade, -6..8 (subnormals share the step of binade -6): a·64 < 2^15 and
  // clz32 truncates, so 25 - clz32(a·64) = floor(log2(a)) for a >= 2^-6.
  const e = a >= 2 ** -6 ? 25 - Math.clz32(a * 64) : -6;
  // 8 steps per binade: the mantissa (with implicit 8) rounds to an integer, ties to even (it is
  // < 16, so adding and removing 1.5·2^52 does it); a carry to 16 moves into the next exponent
  // by itself, and subnormal codes are the integer itself.
  const mant = (a * E4M3_STEP_INV[e + 6] + ROUND_MAGIC) - ROUND_MAGIC;
  return sign | ((e + 6) * 8 + mant);
}

/** Value of an E4M3 byte code (NaN for 0x7F/0xFF); a code outside 0..255 throws. */
export function decodeE4M3(code: number): number {
  if ((code & 0xff) !== code) {
    throw new RangeError(`Cannot decode E4M3 code ${code}: codes are integers in 0..255`);
  }
  return E4M3_TABLE[code];
}

/** E2M1 magnitude code of `a >= 0` (not NaN): nearest of {0,.5,1,1.5,2,3,4,6}, ties to even. */
function e2m1Magnitude(a: number): number {
  return a <= 0.25
    ? 0
    : a < 0.75
    ? 1
    : a <= 1.25
    ? 2
    : a < 1.75
    ? 3
    : a <= 2.5
    ? 4
    : a < 3.5
    ? 5
    : a <= 5
    ? 6
    : 7;
}

/** E2M1 code of a number that is known not to be NaN. */
function e2m1Code(x: number): number {
  return x < 0 || 1 / x < 0 ? 8 | e2m1Magnitude(-x) : e2m1Magnitude(x);
}

/**
 * Encode `x` as an FP4 E2M1 code (see {@linkcode E2M1_VALUES}): round to nearest, ties to even
 * (`0.25 → 0`, `0.75 → 1`, `2.5 → 2`, `5 → 4`), saturating at ±6. The sign is kept: negative
 * values that round to zero, and -0, give code 8. NaN throws.
 */
export function encodeE2M1(x: number): number {
  if (x !== x) throw new RangeError("Cannot encode NaN as E2M1: the value must be a number");
  return e2m1Code(x);
}

/** Value of an E2M1 code 0..15 (code 8 is -0); other codes throw. */
export function decodeE2M1(code: number): number {
  if ((code & 15) !== code) {
    throw new RangeError(`Cannot decode E2M1 code ${code}: codes are integers in 0..15`);
  }
  return E2M1_VALUES[code];
}

// ---------------------------------------------------------------------------------------------
// Nibbles and bytes

/**
 * Pack 4-bit codes of a row-major [rows, cols] array (cols a multiple of 8) into u32 words:
 * element `8w+j` of the flat array goes to bits `4j..4j+3` of word `w`. Only the low 4 bits of
 * each code are kept, so int4 values in [-8, 7] land as two's complement.
 *
 * @example
 * ```ts
 * import { packNibbles, unpackNibbles } from "./packing.ts";
 * const words = packNibbles([1, 2, 3, 4, 5, 6, 7, -8], 1, 8); // Uint32Array [0x87654321]
 * unpackNibbles(words, 1, 8, true); // Int8Array [1, 2, 3, 4, 5, 6, 7, -8]
 * ```
 */
export function packNibbles(codes: ArrayLike<number>, rows: number, cols: number): Uint32Array {
  checkNibbleShape("pack nibbles", rows, cols);
  if (codes.length !== rows * cols) {
    throw new TypeError(
      `Cannot pack nibbles: codes has ${codes.length} elements, expected [${rows}, ${cols}] = ` +
        `${rows * cols}`,
    );
  }
  const words = new Uint32Array((rows * cols) >> 3);
  packNibblesInto(codes, 0, rows * cols, words, 0);
  return words;
}

/**
 * Pack `count` (a multiple of 8) codes `codes[offset ..]` into `words[wordOffset ..]`, the
 * {@linkcode packNibbles} layout (low 4 bits of each code). Hot-loop primitive: no validation.
 */
export function packNibblesInto(
  codes: ArrayLike<number>,
  offset: number,
  count: number,
  words: Uint32Array,
  wordOffset: number,
): void {
  for (let i = offset, w = wordOffset, end = offset + count; i < end; i += 8, w++) {
    words[w] = (codes[i] & 15) | (codes[i + 1] & 15) << 4 | (codes[i + 2] & 15) << 8 |
      (codes[i + 3] & 15) << 12 | (codes[i + 4] & 15) << 16 | (codes[i + 5] & 15) << 20 |
      (codes[i + 6] & 15) << 24 | (codes[i + 7] & 15) << 28;
  }
}

/**
 * Unpack [rows, cols] 4-bit codes written by {@linkcode packNibbles}: sign-extended to [-8, 7]
 * when `signed`, raw 0..15 otherwise.
 */
export function unpackNibbles(
  words: Uint32Array,
  rows: number,
  cols: number,
  signed: boolean,
): Int8Array {
  checkNibbleShape("unpack nibbles", rows, cols);
  const count = rows * cols;
  checkCount("unpack nibbles", "words", words.length, count >> 3, `[${rows}, ${cols}] 4-bit`);
  const out = new Int8Array(count);
  for (let i = 0; i < count; i++) {
    const v = words[i >> 3], j = (i & 7) << 2;
    out[i] = signed ? (v << (28 - j)) >> 28 : (v >>> j) & 15;
  }
  return out;
}

/** Pack bytes flat, 4 per u32: byte `j` of word `w` = element `4w+j` (low 8 bits of each). */
export function packBytes(codes: ArrayLike<number>): Uint32Array {
  const words = new Uint32Array((codes.length + 3) >> 2);
  for (let i = 0; i < codes.length; i++) words[i >> 2] |= (codes[i] & 0xff) << ((i & 3) << 3);
  return words;
}

/** The first `count` bytes of words written by {@linkcode packBytes}. */
export function unpackBytes(words: Uint32Array, count: number): Uint8Array {
  checkCount("unpack bytes", "words", words.length, Math.ceil(count / 4), `${count} u8`);
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = words[i >> 2] >>> ((i & 3) << 3);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Weights

/**
 * Quantize a row-major weight W [N, K] to a packed 4-bit format, round-to-nearest per group of
 * G along K (G = 64 for int4, 16 for nvfp4); `clipRatio` (default 1) scales each group's amax
 * before its scale is computed, for a clipping search.
 *
 * - int4: `s = roundF16(amax·clip/7)`, `q = clamp(roundHalfEven(w/s), -8, 7)` (0 when s = 0).
 * - nvfp4: `tensorScale = f32(amax(|W|)/(6·448))` (1 when that is 0); per group the E4M3 code of
 *   `amax·clip/6/tensorScale`; each value's E2M1 code of `w / S`, where `S` is the f32 product
 *   `e4m3(scale)·tensorScale` the dequantizer applies (all zeros when the scale decodes to 0).
 *
 * Throws `TypeError` for a wrong length, `RangeError` for K not a multiple of G, a non-finite
 * element (naming `opts.name`, default "weight", and the first bad index) or an int4 scale past
 * the f16 range.
 *
 * @example
 * ```ts
 * import { dequantizeWeight, quantizeWeight } from "./packing.ts";
 * const w = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
 * const p = quantizeWeight(w, 4, 64, "int4", { name: "blocks.0.attn.qkv" });
 * const approx = dequantizeWeight(p); // |approx[i] - w[i]| <= p.wscales[group] / 2
 * ```
 */
export function quantizeWeight(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  opts: { clipRatio?: number; name?: string } = {},
): PackedWeight {
  const name = opts.name ?? "weight";
  if (format !== "int4" && format !== "nvfp4") {
    throw new TypeError(
      `Cannot quantize ${name}: unknown format "${format}", use "int4" or "nvfp4"`,
    );
  }
  checkMatrix(`quantize ${name}`, w.length, n, k, "N", groupSize(format), format);
  const clip = opts.clipRatio ?? 1;
  if (!(clip > 0 && clip < Infinity)) {
    throw new RangeError(
      `Cannot quantize ${name}: clipRatio is ${clip}, expected a finite value > 0`,
    );
  }
  checkFinite(`quantize ${name}`, w, k, "weights");
  const G = groupSize(format), groups = k / G;
  const tensorScale = format === "nvfp4" ? nvfp4TensorScale(w) : 1;
  const qweight = new Uint32Array((n * k) >> 3);
  const wscales = format === "int4" ? new Float32Array(n * groups) : new Uint8Array(n * groups);
  const codes = new Int8Array(G);
  for (let gi = 0; gi < n * groups; gi++) {
    const base = gi * G; // rows are whole groups, so group gi starts at gi·G in the flat array
    const s = quantizeGroupInto(w, base, G, format, clip, tensorScale, codes, 0);
    if (s === Infinity) {
      throw new RangeError(
        `Cannot quantize ${name}: group ${gi % groups} of row ${Math.floor(gi / groups)} has ` +
          `amax ${groupAmax(w, base, G)}, its int4 scale overflows f16; scale the weight down ` +
          `or use nvfp4`,
      );
    }
    wscales[gi] = s;
    packNibblesInto(codes, 0, G, qweight, base >> 3);
  }
  return format === "int4"
    ? { format, n, k, qweight, wscales: wscales as Float32Array } satisfies Int4Weight
    : { format, n, k, qweight, wscales: wscales as Uint8Array, tensorScale } satisfies Nvfp4Weight;
}

/**
 * The per-tensor scale of an NVFP4 weight: `f32(amax(|W|) / (6·448))`, or 1 when that is 0 (an
 * all-zero weight). Non-finite elements give a non-finite result (callers check them first).
 */
export function nvfp4TensorScale(w: Float32Array): number {
  let tmax = 0;
  for (let i = 0; i < w.length; i++) tmax = Math.max(tmax, Math.abs(w[i]));
  return Math.fround(tmax / (6 * E4M3_MAX)) || 1;
}

/** Largest `|values[offset + t]|` for `t < g` (0 when `g` is 0; NaN when one is NaN). */
export function groupAmax(values: ArrayLike<number>, offset: number, g: number): number {
  let amax = 0;
  for (let t = offset, end = offset + g; t < end; t++) amax = Math.max(amax, Math.abs(values[t]));
  return amax;
}

/**
 * Quantize ONE group of `g` weights, `values[offset .. offset+g)`, round-to-nearest as
 * {@linkcode quantizeWeight} does (it is built on this function, so results are identical), and
 * write its `g` codes to `outCodes[outOffset ..]`: int4 `q` in [-8, 7], nvfp4 E2M1 codes 0..15
 * (a Uint8Array receives int4 codes mod 256; only the low nibble matters). Returns the group's
 * scale as it is stored: int4 the f16-rounded scale (Infinity when it overflows f16, nothing
 * then written), nvfp4 the E4M3 code. `amax` may be passed when the caller already has
 * {@linkcode groupAmax}; `tensorScale` is ignored for int4. With `residual`, also writes
 * `residual[residualOffset + t·residualStride] = values[offset + t] − dequantized_t` (f64, the
 * dequantized values of {@linkcode dequantizeGroupInto}), for error searches. Inputs must be
 * finite and the ranges in bounds: this is the hot-loop primitive, it does not validate.
 *
 * @example
 * ```ts
 * import { quantizeGroupInto } from "./packing.ts";
 * const w = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i));
 * const codes = new Int8Array(64);
 * const scale = quantizeGroupInto(w, 0, 64, "int4", 1, 1, codes, 0); // roundF16(amax / 7)
 * ```
 */
export function quantizeGroupInto(
  values: Float32Array,
  offset: number,
  g: number,
  format: WeightFormat,
  clipRatio: number,
  tensorScale: number,
  outCodes: Int8Array | Uint8Array,
  outOffset: number,
  amax: number = groupAmax(values, offset, g),
  residual?: Float64Array,
  residualOffset = 0,
  residualStride = 1,
): number {
  // two bodies rather than one large one, so V8 can inline them into callers' loops
  const clipped = amax * clipRatio, res = residual, ro = residualOffset, rs = residualStride;
  return format === "int4"
    ? quantizeGroupInt4(values, offset, g, clipped, outCodes, outOffset, res, ro, rs)
    : quantizeGroupNvfp4(values, offset, g, clipped, tensorScale, outCodes, outOffset, res, ro, rs);
}

/** Codes 0 (a zero scale); the residual is the weights themselves (`w − 0`). */
function zeroGroup(
  values: Float32Array,
  offset: number,
  g: number,
  codes: Int8Array | Uint8Array,
  at: number,
  res: Float64Array | undefined,
  ro: number,
  rs: number,
) {
  codes.fill(0, at, at + g);
  if (res) { for (let t = 0, i = ro; t < g; t++, i += rs) res[i] = values[offset + t] - 0; }
}

function quantizeGroupInt4(
  values: Float32Array,
  offset: number,
  g: number,
  clipped: number,
  codes: Int8Array | Uint8Array,
  at: number,
  res: Float64Array | undefined,
  ro: number,
  rs: number,
): number {
  const s = roundF16(clipped / 7);
  if (s === Infinity) return s;
  if (s === 0) {
    zeroGroup(values, offset, g, codes, at, res, ro, rs);
    return s;
  }
  // clamp(roundHalfEven(w/s), -8, 7) without Math.round (slow in V8): rounding is monotone and
  // the bounds are integers, so clamping first gives the same code, and adding and removing
  // 1.5·2^52 rounds a value that small half to even (to +0, never -0)
  if (res === undefined) {
    for (let t = 0; t < g; t++) {
      let v = values[offset + t] / s;
      v = v > 7 ? 7 : v < -8 ? -8 : v;
      codes[at + t] = (v + ROUND_MAGIC) - ROUND_MAGIC;
    }
  } else {
    for (let t = 0, i = ro; t < g; t++, i += rs) {
      const w = values[offset + t];
      let v = w / s;
      v = v > 7 ? 7 : v < -8 ? -8 : v;
      const q = (v + ROUND_MAGIC) - ROUND_MAGIC;
      codes[at + t] = q;
      res[i] = w - Math.fround(q * s); // the value dequantizeGroupInto gives
    }
  }
  return s;
}

function quantizeGroupNvfp4(
  values: Float32Array,
  offset: number,
  g: number,
  clipped: number,
  tensorScale: number,
  codes: Int8Array | Uint8Array,
  at: number,
  res: Float64Array | undefined,
  ro: number,
  rs: number,
): number {
  const code = encodeE4M3(clipped / 6 / tensorScale);
  return quantizeGroupNvfp4Code(values, offset, g, code, tensorScale, codes, at, res, ro, rs);
}

/**
 * Quantize ONE NVFP4 group with a given E4M3 scale `code` (0..126) instead of the one its amax
 * rounds to, for scale searches; otherwise as {@linkcode quantizeGroupInto} (returns `code`).
 * Hot-loop primitive: no validation.
 */
export function quantizeGroupNvfp4Code(
  values: Float32Array,
  offset: number,
  g: number,
  code: number,
  tensorScale: number,
  codes: Int8Array | Uint8Array,
  at: number,
  res?: Float64Array,
  ro = 0,
  rs = 1,
): number {
  const S = Math.fround(E4M3_TABLE[code] * tensorScale);
  if (S === 0) {
    zeroGroup(values, offset, g, codes, at, res, ro, rs);
    return code;
  }
  // e2m1Code(w / S) without dividing or branching on the data: the magnitude code counts the
  // thresholds of e2m1Magnitude (ties to even) that |w / S| passes. Each threshold T has at most
  // 3 significant bits, so T·S (S an f32) is exact in f64, and since w is an f32, f64(w / S)
  // rounds onto T only when w = T·S exactly: comparing f64(w / S) with T is comparing |w| with
  // T·S. The sign is that of w (S > 0), -0 included.
  const t1 = 0.25 * S, t2 = 0.75 * S, t3 = 1.25 * S, t4 = 1.75 * S;
  const t5 = 2.5 * S, t6 = 3.5 * S, t7 = 5 * S;
  const f = groupFactor("nvfp4", code, tensorScale);
  for (let t = 0, i = ro; t < g; t++, i += rs) {
    const v = values[offset + t], a = Math.abs(v);
    let c = +(a > t1) + +(a >= t2) + +(a > t3) + +(a >= t4) + +(a > t5) + +(a >= t6) +
      +(a > t7) + (+(v < 0) << 3);
    if (v === 0 && 1 / v < 0) c = 8;
    codes[at + t] = c;
    if (res !== undefined) res[i] = v - Math.fround(E2M1_TWICE[c] * f); // dequantizeGroupInto's
  }
  return code;
}

/**
 * The f32 factor of one group, as {@linkcode weightGroupScales} gives it: int4 the scale
 * itself; nvfp4 `f32(e4m3(code) · tensorScale) / 2` (the GEMM code is `2·e2m1`).
 */
export function groupFactor(format: WeightFormat, scale: number, tensorScale: number): number {
  return format === "int4" ? scale : Math.fround(Math.fround(E4M3_TABLE[scale] * tensorScale) / 2);
}

/**
 * Dequantize ONE group written by {@linkcode quantizeGroupInto}: `out[outOffset + t]` =
 * `weightCode · groupFactor` rounded to f32, exactly the values {@linkcode dequantizeWeight}
 * gives for that group. Hot-loop primitive: no validation.
 */
export function dequantizeGroupInto(
  codes: Int8Array | Uint8Array,
  codeOffset: number,
  g: number,
  format: WeightFormat,
  scale: number,
  tensorScale: number,
  out: Float32Array | Float64Array,
  outOffset: number,
): void {
  const f = groupFactor(format, scale, tensorScale);
  if (format === "int4") {
    for (let t = 0; t < g; t++) {
      out[outOffset + t] = Math.fround(((codes[codeOffset + t] << 28) >> 28) * f);
    }
  } else {
    for (let t = 0; t < g; t++) {
      out[outOffset + t] = Math.fround(E2M1_TWICE[codes[codeOffset + t] & 15] * f);
    }
  }
}

/**
 * Integer codes [N, K] as the GEMM multiplies them: int4 `q` in [-8, 7]; nvfp4 `2·e2m1` in
 * {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12}. `code · weightGroupScales` reproduces
 * {@linkcode dequantizeWeight}.
 */
export function weightCodes(p: PackedWeight): Int8Array {
  checkPacked(p);
  if (p.format === "int4") return unpackNibbles(p.qweight, p.n, p.k, true);
  const codes = unpackNibbles(p.qweight, p.n, p.k, false);
  for (let i = 0; i < codes.length; i++) codes[i] = E2M1_TWICE[codes[i]];
  return codes;
}

/**
 * Per-group f32 factor [N, K/G] with `W ≈ weightCode · factor`: int4 the f16 scale; nvfp4
 * `f32(e4m3(scale) · tensorScale) / 2`.
 */
export function weightGroupScales(p: PackedWeight): Float32Array {
  checkPacked(p);
  if (p.format === "int4") return Float32Array.from(p.wscales);
  const out = new Float32Array(p.wscales.length);
  for (let i = 0; i < out.length; i++) out[i] = groupFactor("nvfp4", p.wscales[i], p.tensorScale);
  return out;
}

/**
 * Dequantized weight [N, K] (f32): `weightCode · weightGroupScale` per element, into `out` when
 * given (N·K values, e.g. a product's operand buffer; quant/linalg_wasm.ts `simdResidualProduct`).
 */
export function dequantizeWeight(p: PackedWeight, out?: Float32Array): Float32Array {
  // Fused: no [N, K] code array. G is a multiple of 8, so the 8 codes of a u32 share one scale;
  // each value is `weightCodes(p)[i] · weightGroupScales(p)[g]` exactly as the two-pass form.
  const scales = weightGroupScales(p), G = groupSize(p.format), count = p.n * p.k;
  if (out === undefined) out = new Float32Array(count);
  else if (out.length !== count) {
    throw new TypeError(
      `Cannot dequantize a weight: the output has ${out.length} elements, expected [N=${p.n}, K=${p.k}]`,
    );
  }
  const q = p.qweight, wordsPerGroup = G >> 3;
  if (p.format === "int4") {
    for (let w = 0, i = 0; i < count; w++) {
      const v = q[w], s = scales[(w / wordsPerGroup) | 0];
      for (let j = 28; j >= 0; j -= 4, i++) out[i] = ((v << j) >> 28) * s;
    }
  } else {
    for (let w = 0, i = 0; i < count; w++) {
      const v = q[w], s = scales[(w / wordsPerGroup) | 0];
      for (let j = 0; j < 32; j += 4, i++) out[i] = E2M1_TWICE[(v >>> j) & 15] * s;
    }
  }
  return out;
}

/** Scales in their GPU form: f16 bits 2 per u32 (int4) or E4M3 bytes 4 per u32 (nvfp4). */
export function weightScaleWords(p: PackedWeight): Uint32Array {
  checkPacked(p);
  return p.format === "int4" ? packF16(p.wscales) : packBytes(p.wscales);
}

// ---------------------------------------------------------------------------------------------
// Activations

/**
 * The CPU mirror of `quantize_act_lowrank` (f32 arithmetic, `Math.fround` at each step): per
 * token and group of G, `xs = x / smooth[k]` (+ {@linkcode GELU_SHIFT} for `int4_unsigned`), then
 *
 * - int4: `s = amax|xs| / 7`, `q = clamp(roundHalfEven(xs / s), -8, 7)`;
 * - int4_unsigned: `s = max(xs, 0) / 15`, `q = clamp(roundHalfEven(xs / s), 0, 15)`;
 * - nvfp4: `s = e4m3(amax|xs| / 6)` (saturates at 448, so |xs| past 2688 clips), code =
 *   `encodeE2M1(xs / s)`;
 *
 * with all codes 0 where `s` is 0. `smooth` omitted means all ones. Non-finite inputs (or an
 * `x / smooth` that overflows f32) throw a `RangeError` naming the first bad index.
 *
 * Convention `"nunchaku"` (imported Nunchaku checkpoints) follows its kernels instead: `xs =
 * bf16(x / smooth)` (int4_unsigned: `bf16(bf16(x + shift) / smooth)`, the shift BEFORE the
 * smoothing); `s = f32(amax · f32(1/7))` (`1/15` unsigned; nvfp4 `min(f32(amax · f32(1/6)),
 * 448)`); codes from `f32(xs · f32(1/s))` (int4 round half to even and clamp, nvfp4 E2M1 round to
 * nearest even); the stored scale is `bf16(s)` (nvfp4 `e4m3(s)`): codes from the unrounded scale,
 * dequantized with the rounded one.
 *
 * @example
 * ```ts
 * import { dequantizeAct, quantizeAct } from "./packing.ts";
 * const x = Float32Array.from({ length: 2 * 64 }, (_, i) => Math.cos(i));
 * const q = quantizeAct(x, 2, 64, "int4");
 * const approx = dequantizeAct(q); // |approx[i] - x[i]| <= q.ascales[group] / 2
 * ```
 */
export function quantizeAct(
  x: Float32Array,
  m: number,
  k: number,
  mode: ActMode,
  smooth?: Float32Array,
  convention: ActConvention = "w4",
): QuantAct {
  if (mode !== "int4" && mode !== "int4_unsigned" && mode !== "nvfp4") {
    throw new TypeError(
      `Cannot quantize activation: unknown mode "${mode}", use "int4", "int4_unsigned" or "nvfp4"`,
    );
  }
  const G = groupSize(mode), groups = k / G;
  checkMatrix("quantize activation", x.length, m, k, "M", G, mode);
  if (smooth) {
    if (smooth.length !== k) {
      throw new TypeError(
        `Cannot quantize activation: smooth has ${smooth.length} elements, expected [K=${k}]`,
      );
    }
    for (let i = 0; i < k; i++) {
      if (!(Number.isFinite(smooth[i]) && smooth[i] !== 0)) {
        throw new RangeError(
          `Cannot quantize activation: smooth[${i}] is ${smooth[i]}; smoothing factors must be ` +
            `finite and non-zero`,
        );
      }
    }
  }
  checkFinite("quantize activation", x, k, "activations");
  if (convention !== "w4" && convention !== "nunchaku") {
    throw new TypeError(
      `Cannot quantize activation: unknown convention "${convention}", use "w4" or "nunchaku"`,
    );
  }
  const unsigned = mode === "int4_unsigned", nvfp4 = mode === "nvfp4";
  const nunchaku = convention === "nunchaku";
  const qmin = unsigned ? 0 : -8, qmax = unsigned ? 15 : 7;
  const qact = new Uint32Array((m * k) >> 3);
  const ascales = new Float32Array(m * groups);
  const xs = new Float32Array(G);
  for (let gi = 0; gi < m * groups; gi++) {
    const base = gi * G, col0 = (gi % groups) * G;
    let amax = 0;
    for (let t = 0; t < G; t++) {
      let v: number;
      if (nunchaku) {
        v = unsigned ? roundBf16(x[base + t] + GELU_SHIFT) : x[base + t];
        v = roundBf16(smooth ? Math.fround(v / smooth[col0 + t]) : v);
      } else {
        v = smooth ? Math.fround(x[base + t] / smooth[col0 + t]) : x[base + t];
        if (unsigned) v = Math.fround(v + GELU_SHIFT);
      }
      if (!Number.isFinite(v)) {
        throw new RangeError(
          `Cannot quantize activation: element ${base + t} (row ${Math.floor(gi / groups)}, ` +
            `column ${col0 + t}) divided by smooth[${col0 + t}] overflows f32; check the ` +
            `smoothing factors`,
        );
      }
      xs[t] = v;
      amax = Math.max(amax, unsigned ? v : Math.abs(v));
    }
    let s: number, inv = 0;
    if (nunchaku) {
      s = Math.fround(amax * (nvfp4 ? INV6 : unsigned ? INV15 : INV7));
      if (nvfp4) s = Math.min(s, E4M3_MAX);
      inv = Math.fround(1 / s);
      ascales[gi] = nvfp4 ? E4M3_TABLE[encodeE4M3(s)] : roundBf16(s);
    } else {
      s = nvfp4
        ? E4M3_TABLE[encodeE4M3(Math.fround(amax / 6))]
        : Math.fround(amax / (unsigned ? 15 : 7));
      ascales[gi] = s;
    }
    if (s === 0) continue;
    for (let t = 0; t < G; t += 8) {
      let word = 0;
      for (let j = 0; j < 8; j++) {
        const r = nunchaku ? Math.fround(xs[t + j] * inv) : Math.fround(xs[t + j] / s);
        const c = nvfp4 ? e2m1Code(r) : Math.min(qmax, Math.max(qmin, roundHalfEven(r)));
        word |= (c & 15) << (j << 2);
      }
      qact[(base + t) >> 3] = word;
    }
  }
  return { mode, m, k, qact, ascales };
}

/**
 * Integer codes [M, K] as the GEMM multiplies them: int4 `q` in [-8, 7]; int4_unsigned `q` in
 * [0, 15]; nvfp4 `2·e2m1`.
 */
export function actCodes(q: QuantAct): Int8Array {
  checkAct(q);
  if (q.mode === "int4") return unpackNibbles(q.qact, q.m, q.k, true);
  const codes = unpackNibbles(q.qact, q.m, q.k, false);
  if (q.mode === "nvfp4") {
    for (let i = 0; i < codes.length; i++) {
      codes[i] = E2M1_TWICE[codes[i]];
    }
  }
  return codes;
}

/** Per-token, per-group factor [M, K/G] with `xs ≈ actCode · factor` (nvfp4: `s / 2`). */
export function actGroupScales(q: QuantAct): Float32Array {
  checkAct(q);
  const out = Float32Array.from(q.ascales);
  if (q.mode === "nvfp4") { for (let i = 0; i < out.length; i++) out[i] /= 2; }
  return out;
}

/**
 * Dequantized activations [M, K] (f32), approximating `x / smooth`: `code · factor`, minus
 * {@linkcode GELU_SHIFT} for `int4_unsigned`.
 */
export function dequantizeAct(q: QuantAct): Float32Array {
  const codes = actCodes(q), scales = actGroupScales(q), G = groupSize(q.mode);
  const shift = q.mode === "int4_unsigned" ? GELU_SHIFT : 0;
  const out = new Float32Array(codes.length);
  for (let i = 0; i < out.length; i++) out[i] = codes[i] * scales[(i / G) | 0] - shift;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validation

function isCount(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}

function checkCount(action: string, tensor: string, have: number, need: number, what: string) {
  if (!isCount(need)) throw new RangeError(`Cannot ${action}: count must be an integer >= 0`);
  if (have < need) {
    throw new TypeError(
      `Cannot ${action}: ${tensor} has ${have} u32 words, expected ${need} or more (${what})`,
    );
  }
}

function checkNibbleShape(action: string, rows: number, cols: number) {
  if (!isCount(rows) || !isCount(cols) || cols % 8 !== 0) {
    throw new RangeError(
      `Cannot ${action}: shape [${rows}, ${cols}] is invalid, expected integer rows >= 0 and ` +
        `cols a multiple of 8`,
    );
  }
}

/** A [rows, K] matrix of `length` elements with K a positive multiple of the group size. */
function checkMatrix(
  action: string,
  length: number,
  rows: number,
  k: number,
  rowName: string,
  G: number,
  format: string,
) {
  if (!isCount(rows) || !(isCount(k) && k > 0 && k % G === 0)) {
    throw new RangeError(
      `Cannot ${action}: shape [${rowName}=${rows}, K=${k}] is invalid, expected integer ` +
        `${rowName} >= 0 and K a positive multiple of the ${format} group size ${G}`,
    );
  }
  if (length !== rows * k) {
    throw new TypeError(
      `Cannot ${action}: it has ${length} elements, expected [${rowName}=${rows}, K=${k}] = ` +
        `${rows * k}`,
    );
  }
}

function checkFinite(action: string, a: Float32Array, k: number, what: string) {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) {
      throw new RangeError(
        `Cannot ${action}: element ${i} (row ${Math.floor(i / k)}, column ${i % k}) is ${a[i]}; ` +
          `${what} must be finite`,
      );
    }
  }
}

/** A packed 4-bit matrix's shape and array lengths ([rows, K] codes, [rows, K/G] scales). */
function checkCodes(
  what: string,
  rows: number,
  k: number,
  rowName: string,
  mode: WeightFormat | ActMode,
  arrays: [codes: string, words: number, scales: string, count: number],
) {
  const G = groupSize(mode);
  checkMatrix(`read ${what}`, rows * k, rows, k, rowName, G, mode);
  const [codes, words, scales, count] = arrays;
  if (words < (rows * k) >> 3 || count < rows * (k / G)) {
    throw new TypeError(
      `Cannot read ${what}: ${codes} has ${words} words and ${scales} ${count} elements, ` +
        `expected [${rowName}=${rows}, K/8=${k / 8}] and [${rowName}=${rows}, K/${G}=${k / G}]`,
    );
  }
}

function checkPacked(p: PackedWeight) {
  checkCodes("packed weight", p.n, p.k, "N", p.format, [
    "qweight",
    p.qweight.length,
    "wscales",
    p.wscales.length,
  ]);
}

function checkAct(q: QuantAct) {
  checkCodes("quantized activation", q.m, q.k, "M", q.mode, [
    "qact",
    q.qact.length,
    "ascales",
    q.ascales.length,
  ]);
}
