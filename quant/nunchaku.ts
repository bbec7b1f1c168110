/**
 * Reads Nunchaku SVDQuant layers (the `svdq-{int4|fp4}_r32-*.safetensors` checkpoints, v0 tensor
 * names) into exact natural-order values, and converts them into our canonical tensors
 * (formats/packing.ts layouts, the suffixes of quant/layer.ts). The index transforms are in
 * quant/nunchaku_layout.ts; the checkpoint-level mapping (FLUX names, adaLN, split layers) is in
 * quant/nunchaku_flux.ts.
 *
 * What a Nunchaku W4A4 layer computes (nunchaku's `SVDQW4A4Linear`, kernels `gemm_w4a4`):
 * `Y = α·wc[n]·Σ_g s_a·s_w·Σ_{k∈g} q_x·q_w + (X·L_downᵀ)·L_upᵀ + b`, with `q_x` the per-token,
 * per-group 4-bit codes of `X/λ` (post-GELU INT4 layers: of `(X + 0.171875)/λ`, unsigned). Our
 * kernels compute the same sum; the conversions here are exact except bf16 → f16 for the group
 * scales and low-rank factors, which is exact for every value of magnitude 2⁻¹⁷ … 65504 (counted
 * in `inexact` otherwise). ARCHITECTURE.md "Nunchaku checkpoints" lists the conventions.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import type { TensorEntry } from "./baselines.ts";
import {
  adanormNaturalRow,
  awqToWords,
  codesToWords,
  NUNCHAKU_LOWRANK_TILE,
  NUNCHAKU_TILE_K,
  NUNCHAKU_TILE_N,
  unpackChannelValues,
  unpackLoraDown,
  unpackLoraUp,
  unpackMicroScales,
} from "./nunchaku_layout.ts";
import { packNibbles, unpackNibbles, type WeightFormat } from "../formats/packing.ts";
import { type Dtype, numel, type SafetensorsReader, toFloat32 } from "../formats/safetensors.ts";

/** The quantization a Nunchaku checkpoint declares (metadata `quantization_config`). */
export interface NunchakuQuantConfig {
  /** `"int4"` (INT4 g64, bf16 scales) or `"nvfp4"` (E2M1 g16, E4M3 scales). */
  precision: WeightFormat;
  /** Weight group size (64 or 16). */
  groupSize: number;
  /** Low-rank rank from the config (each layer's own rank is read from its tensors). */
  rank: number;
  /** The JSON object as stored. */
  raw: Record<string, unknown>;
}

/**
 * Parse metadata `quantization_config` (nunchaku's `{"method": "svdquant", "weight": {"dtype":
 * "int4" | "fp4_e2m1_all", "group_size": 64 | 16, ...}, "activation": {...}, "rank": 32}`).
 * Anything else is a {@link FormatError} saying what was expected.
 */
export function parseNunchakuQuantConfig(
  file: string,
  text: string | undefined,
): NunchakuQuantConfig {
  if (text === undefined) {
    throw new FormatError(
      file,
      'it is not a Nunchaku checkpoint: metadata "quantization_config" is missing (expected ' +
        "the svdq-{int4|fp4}_r32-*.safetensors files nunchaku publishes)",
    );
  }
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new FormatError(file, "metadata quantization_config is not JSON");
  }
  const w = (raw?.weight ?? {}) as Record<string, unknown>;
  const a = (raw?.activation ?? {}) as Record<string, unknown>;
  const method = raw?.method ?? "svdquant";
  const rank = raw?.rank ?? 32;
  let precision: WeightFormat | undefined;
  if (w.dtype === "int4" && w.group_size === 64) precision = "int4";
  if (w.dtype === "fp4_e2m1_all" && w.group_size === 16) precision = "nvfp4";
  const actOk = a.dtype === undefined || a.dtype === w.dtype;
  if (method !== "svdquant" || !precision || !actOk || typeof rank !== "number") {
    throw new FormatError(
      file,
      `unknown quantization_config ${text}: expected method "svdquant" with weight dtype "int4" ` +
        '(group_size 64) or "fp4_e2m1_all" (group_size 16), activations of the same dtype, and ' +
        "a numeric rank",
    );
  }
  return { precision, groupSize: precision === "int4" ? 64 : 16, rank, raw };
}

/** One Nunchaku W4A4 layer, unpacked into natural order; every value exactly as stored. */
export interface NunchakuW4A4 {
  /** Layer prefix in the checkpoint (v0 name, e.g. `transformer_blocks.0.qkv_proj`). */
  name: string;
  /** Weight (and activation) format. */
  format: WeightFormat;
  /** Out-features N. */
  n: number;
  /** In-features K. */
  k: number;
  /** Low-rank rank R (0 when the layer has no low-rank branch). */
  r: number;
  /** [N, K] stored nibbles: INT4 two's complement, or E2M1 codes (bit 3 sign). */
  codes: Uint8Array;
  /** The same codes as our packed words [N, K/8] (set by the reader; else packed from codes). */
  words?: Uint32Array;
  /** INT4: [N, K/64] bf16 scale values (as f32). */
  scales?: Float32Array;
  /** NVFP4: [N, K/16] E4M3 scale codes. */
  scalesE4m3?: Uint8Array;
  /** NVFP4 per-tensor scale α (`wtscale`; 1 when absent). */
  wtscale: number;
  /** NVFP4 per-channel scale [N] (`wcscales`; absent = ones). */
  wcscales?: Float32Array;
  /** [N] bias (absent = zero). */
  bias?: Float32Array;
  /** [K] smoothing factors λ (`smooth`, what the kernels divide by). */
  smooth: Float32Array;
  /** [R, K] L_down (nn.Linear orientation), already divided by λ. */
  loraDown: Float32Array;
  /** [N, R] L_up. */
  loraUp: Float32Array;
}

const FLOAT16: Dtype[] = ["BF16", "F16", "F32"];

/**
 * `layer` with `codes` [N, K] (0..15) derived from `words` on first access (tests and the packer
 * read them; the import itself only needs the words).
 */
function withLazyCodes<T extends { n: number; k: number; words?: Uint32Array }>(
  layer: T,
): T & { codes: Uint8Array } {
  let codes: Uint8Array | undefined;
  return Object.defineProperty(layer, "codes", {
    get: () =>
      codes ??= new Uint8Array(unpackNibbles(layer.words!, layer.n, layer.k, false).buffer),
    enumerable: false,
  }) as T & { codes: Uint8Array };
}

/** Reads tensors of one layer prefix, checking dtypes and shapes with errors naming the tensor. */
class LayerReader {
  constructor(readonly reader: SafetensorsReader, readonly prefix: string) {}

  has(suffix: string): boolean {
    return this.reader.tensors.has(`${this.prefix}.${suffix}`);
  }

  info(suffix: string, dtypes: Dtype[], shape?: number[]) {
    const name = `${this.prefix}.${suffix}`;
    const t = this.reader.tensors.get(name);
    const want = `${shape ? `[${shape.join(", ")}] ` : ""}${dtypes.join(" or ")}`;
    if (!t) {
      throw new FormatError(this.reader.path, `the tensor is missing (expected ${want})`, name);
    }
    if (!dtypes.includes(t.dtype) || (shape && t.shape.join() !== shape.join())) {
      throw new FormatError(
        this.reader.path,
        `it is [${t.shape.join(", ")}] ${t.dtype}, expected ${want}`,
        name,
      );
    }
    return t;
  }

  async raw(suffix: string, dtypes: Dtype[], shape?: number[]): Promise<Uint8Array> {
    this.info(suffix, dtypes, shape);
    return await this.reader.readRaw(`${this.prefix}.${suffix}`);
  }

  async floats(suffix: string, shape: number[]): Promise<Float32Array> {
    const t = this.info(suffix, FLOAT16, shape);
    return toFloat32(t.dtype, await this.reader.readRaw(`${this.prefix}.${suffix}`));
  }

  bad(suffix: string, msg: string): FormatError {
    return new FormatError(this.reader.path, msg, `${this.prefix}.${suffix}`);
  }
}

function tileCheck(l: LayerReader, suffix: string, dims: [string, number, number][]) {
  for (const [d, v, m] of dims) {
    if (!(Number.isSafeInteger(v) && v > 0 && v % m === 0)) {
      throw l.bad(suffix, `${d}=${v} is not a positive multiple of ${m} (Nunchaku's tile)`);
    }
  }
}

/**
 * Read and unpack the W4A4 layer `prefix` (tensors `qweight`, `wscales`, optional `wtscale`,
 * `wcscales`, `bias`, and `smooth`, `lora_down`, `lora_up`) of precision `format`. Throws a
 * {@link FormatError} naming the tensor for a missing tensor, a wrong dtype or shape, or an N, K
 * or rank that is not a multiple of Nunchaku's tile.
 */
export async function readNunchakuW4A4(
  reader: SafetensorsReader,
  prefix: string,
  format: WeightFormat,
): Promise<NunchakuW4A4> {
  const l = new LayerReader(reader, prefix);
  const q = l.info("qweight", ["I8", "U8"]);
  if (q.shape.length !== 2) throw l.bad("qweight", `it is [${q.shape}], expected [N, K/2]`);
  const n = q.shape[0], k = q.shape[1] * 2;
  tileCheck(l, "qweight", [["N", n, NUNCHAKU_TILE_N], ["K", k, NUNCHAKU_TILE_K]]);
  const words = codesToWords(await reader.readRaw(`${prefix}.qweight`), n, k);
  const out: NunchakuW4A4 = withLazyCodes<Omit<NunchakuW4A4, "codes">>({
    name: prefix,
    format,
    n,
    k,
    r: 0,
    words,
    wtscale: 1,
    smooth: unpackChannelValues(await l.floats("smooth", [k]), k, 1),
    loraDown: new Float32Array(0),
    loraUp: new Float32Array(0),
  });
  if (format === "int4") {
    const s = await l.floats("wscales", [k / 64, n]);
    out.scales = unpackChannelValues(s, n, k / 64);
  } else {
    const s = await l.raw("wscales", ["F8_E4M3", "U8"], [k / 16, n]);
    out.scalesE4m3 = unpackMicroScales(s, n, k);
    for (let i = 0; i < s.length; i++) {
      if ((s[i] & 0x7f) === 0x7f) throw l.bad("wscales", `scale byte ${i} is an E4M3 NaN`);
    }
    if (l.has("wtscale")) {
      const t = l.info("wtscale", FLOAT16);
      if (numel(t.shape) !== 1) throw l.bad("wtscale", `it is [${t.shape}], expected one value`);
      out.wtscale = toFloat32(t.dtype, await reader.readRaw(`${prefix}.wtscale`))[0];
    }
    if (l.has("wcscales")) {
      out.wcscales = unpackChannelValues(await l.floats("wcscales", [n]), n, 1);
    }
  }
  if (format === "int4" && (l.has("wtscale") || l.has("wcscales"))) {
    throw l.bad(
      l.has("wtscale") ? "wtscale" : "wcscales",
      "an INT4 layer has no FP4 tensor scales",
    );
  }
  if (l.has("bias")) out.bias = unpackChannelValues(await l.floats("bias", [n]), n, 1);
  if (l.has("lora_down") || l.has("lora_up")) {
    const d = l.info("lora_down", FLOAT16);
    const r = d.shape[1];
    if (d.shape.length !== 2 || d.shape[0] !== k) {
      throw l.bad("lora_down", `it is [${d.shape}], expected [K=${k}, R]`);
    }
    tileCheck(l, "lora_down", [["R", r, NUNCHAKU_LOWRANK_TILE]]);
    out.r = r;
    out.loraDown = unpackLoraDown(await l.floats("lora_down", [k, r]), r, k);
    out.loraUp = unpackLoraUp(await l.floats("lora_up", [n, r]), n, r);
  }
  const bad = [...out.smooth].findIndex((v) => !(Number.isFinite(v) && v !== 0));
  if (bad >= 0) throw l.bad("smooth", `smooth[${bad}] = ${out.smooth[bad]}, expected finite ≠ 0`);
  return out;
}

/** One AWQ W4A16 (adaLN) layer in natural row order: `W[n, k] = q·s + z` per 64-group. */
export interface NunchakuW4A16 {
  /** Layer prefix (v0 name, e.g. `transformer_blocks.0.norm1.linear`). */
  name: string;
  /** Out-features N (natural order). */
  n: number;
  /** In-features K. */
  k: number;
  /** [N, K] unsigned codes 0..15. */
  codes: Uint8Array;
  /** The same codes as our packed words [N, K/8] (set by the reader; else packed from codes). */
  words?: Uint32Array;
  /** [N, K/64] scales s (bf16 values). */
  scales: Float32Array;
  /** [N, K/64] zero offsets z (bf16 values; z ≈ −7·s). */
  zeros: Float32Array;
  /** [N] bias with the folded `+1` of `1 + scale` removed (so: the model's own bias). */
  bias: Float32Array;
}

/**
 * Read the AWQ W4A16 adaLN layer `prefix` (`qweight` I32 [N/4, K/2], `wscales` / `wzeros`
 * [G, N] with G ≥ K/64 padded, `bias` [N]) whose N outputs are `splits` chunks (6: shift, scale,
 * gate of attention and MLP; 3: one set) stored interleaved by chunk with `+1` added to the bias
 * of the scale chunks (1 and splits−2). Returns natural order and the model's own bias.
 */
export async function readNunchakuW4A16(
  reader: SafetensorsReader,
  prefix: string,
  splits: number,
): Promise<NunchakuW4A16> {
  const l = new LayerReader(reader, prefix);
  const q = l.info("qweight", ["I32", "U32"]);
  if (q.shape.length !== 2) throw l.bad("qweight", `it is [${q.shape}], expected [N/4, K/2]`);
  const n = q.shape[0] * 4, k = q.shape[1] * 2;
  tileCheck(l, "qweight", [["K", k, 64], ["N", n, 4 * splits]]);
  const g = k / 64;
  const sInfo = l.info("wscales", FLOAT16);
  const gStored = sInfo.shape[0];
  if (sInfo.shape.length !== 2 || sInfo.shape[1] !== n || gStored < g) {
    throw l.bad("wscales", `it is [${sInfo.shape}], expected [G ≥ ${g}, N=${n}]`);
  }
  const stWords = awqToWords(await reader.readRaw(`${prefix}.qweight`), n, k);
  const stScales = await l.floats("wscales", [gStored, n]);
  const stZeros = await l.floats("wzeros", [gStored, n]);
  const stBias = await l.floats("bias", [n]);
  const words = new Uint32Array((n * k) >> 3), wpr = k >> 3;
  const scales = new Float32Array(n * g), zeros = new Float32Array(n * g);
  const bias = new Float32Array(n);
  const chunk = n / splits;
  for (let s = 0; s < n; s++) {
    const nat = adanormNaturalRow(s, n, splits);
    words.set(stWords.subarray(s * wpr, (s + 1) * wpr), nat * wpr);
    for (let gi = 0; gi < g; gi++) {
      scales[nat * g + gi] = stScales[gi * n + s];
      zeros[nat * g + gi] = stZeros[gi * n + s];
    }
    const c = Math.floor(nat / chunk);
    // the +1 of (1 + scale) was added in bf16; subtracting it in f32 is exact
    bias[nat] = c === 1 || c === splits - 2 ? stBias[s] - 1 : stBias[s];
  }
  return withLazyCodes<Omit<NunchakuW4A16, "codes">>({
    name: prefix,
    n,
    k,
    words,
    scales,
    zeros,
    bias,
  });
}

// ---------------------------------------------------------------------------------------------
// Canonical tensors

/** Our tensors of an imported layer, and how many values bf16 → f16 did not keep exactly. */
export interface CanonicalLayer {
  /** Tensors by suffix (quant/layer.ts names). */
  tensors: Map<string, TensorEntry>;
  /** Values whose f16 is not the bf16 value (magnitude below 2⁻¹⁷ or above 65504). */
  inexact: number;
}

function f16Entry(
  name: string,
  values: Float32Array,
  shape: number[],
  count: { inexact: number },
): TensorEntry {
  const h = Float16Array.from(values);
  for (let i = 0; i < h.length; i++) {
    if (h[i] === values[i]) continue;
    if (!Number.isFinite(h[i])) {
      throw new RangeError(
        `Cannot convert ${name}: element ${i} (${values[i]}) is outside the f16 range of our ` +
          "format (±65504)",
      );
    }
    count.inexact++;
  }
  return { dtype: "F16", shape, data: new Uint8Array(h.buffer) };
}

function f32Entry(values: Float32Array, shape: number[]): TensorEntry {
  return { dtype: "F32", shape, data: new Uint8Array(values.slice().buffer) };
}

/**
 * Our canonical tensors of a Nunchaku W4A4 layer: `qweight` U32 [N, K/8] (same codes, our nibble
 * order), `wscales` F16 [N, K/64] (INT4) or F8_E4M3 [N, K/16] + `tensor_scale` F32 [1] = α (NVFP4),
 * `channel_scale` F32 [N] (NVFP4 `wcscales`, when stored), `smooth` F32 [K], `lora_down` F16
 * [R, K] and `lora_up` F16 [N, R] (when R > 0), `bias` F32 [N] (when stored).
 */
export function canonicalW4A4(layer: NunchakuW4A4): CanonicalLayer {
  const { n, k, r } = layer;
  const count = { inexact: 0 };
  const t = new Map<string, TensorEntry>();
  const q = layer.words ?? packNibbles(layer.codes, n, k);
  t.set("qweight", { dtype: "U32", shape: [n, k / 8], data: new Uint8Array(q.slice().buffer) });
  if (layer.format === "int4") {
    t.set("wscales", f16Entry(`${layer.name}.wscales`, layer.scales!, [n, k / 64], count));
  } else {
    t.set("wscales", { dtype: "F8_E4M3", shape: [n, k / 16], data: layer.scalesE4m3!.slice() });
    t.set("tensor_scale", f32Entry(Float32Array.of(layer.wtscale), [1]));
    if (layer.wcscales) t.set("channel_scale", f32Entry(layer.wcscales, [n]));
  }
  // written even when all ones (a smooth-fused out_proj): the file's tensor list then follows from
  // the source's, so the importer can announce it before converting
  t.set("smooth", f32Entry(layer.smooth, [k]));
  if (r > 0) {
    t.set("lora_down", f16Entry(`${layer.name}.lora_down`, layer.loraDown, [r, k], count));
    t.set("lora_up", f16Entry(`${layer.name}.lora_up`, layer.loraUp, [n, r], count));
  }
  if (layer.bias) t.set("bias", f32Entry(layer.bias, [n]));
  return { tensors: t, inexact: count.inexact };
}

/**
 * Our canonical tensors of an AWQ W4A16 layer (format `"uint4"`): `qweight` U32 [N, K/8]
 * (unsigned codes 0..15, our nibble order), `wscales` F16 [N, K/64], `wzeros` F16 [N, K/64]
 * (`W = q·s + z`), `bias` F32 [N].
 */
export function canonicalW4A16(layer: NunchakuW4A16): CanonicalLayer {
  const { n, k } = layer;
  const count = { inexact: 0 };
  const t = new Map<string, TensorEntry>();
  const q = layer.words ?? packNibbles(layer.codes, n, k);
  t.set("qweight", { dtype: "U32", shape: [n, k / 8], data: new Uint8Array(q.slice().buffer) });
  t.set("wscales", f16Entry(`${layer.name}.wscales`, layer.scales, [n, k / 64], count));
  t.set("wzeros", f16Entry(`${layer.name}.wzeros`, layer.zeros, [n, k / 64], count));
  t.set("bias", f32Entry(layer.bias, [n]));
  return { tensors: t, inexact: count.inexact };
}
