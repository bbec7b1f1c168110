/**
 * The T5 v1.1 encoder (`T5EncoderModel`: FLUX.1's `text_encoder_2`, SD3's T5-XXL) on the GPU:
 *
 *     x = shared[ids]                                  (CPU gather, f32)
 *     per block: h = RMSNorm(x)·ln0;  x += o(attention(q h, k h, v h; bias, no 1/√d))
 *                h = RMSNorm(x)·ln1;  x += wo(gelu_tanh(wi_0 h) · wi_1 h)
 *     out = RMSNorm(x)·final_layer_norm
 *
 * with the relative position bias (bidirectional buckets, from block 0's table, shared by every
 * block) and an optional key padding mask (FLUX passes none). Kernels per block: `add_norm`
 * (residual add fused with the next RMSNorm), the fused q|k|v linear, `flash_attention` with the
 * bias table, the o linear, the fused wi_0|wi_1 linear, `ffn_act` and the wo linear.
 *
 * Numerics (ARCHITECTURE.md, "Text encoders"): the residual stream is f32 whatever the activation
 * dtype, and `wo` runs with f32 activations (its weights f32 in the float format, as upstream's
 * `_keep_in_fp32_modules = ["wo"]`): T5-XXL's FFN output exceeds the f16 range.
 *
 * @module
 */
import { AddNorm } from "../../kernels/add_norm/add_norm.ts";
import { FfnAct } from "../../kernels/ffn_act/ffn_act.ts";
import {
  FLASH_ATTENTION_HEAD_DIMS,
  FlashAttention,
} from "../../kernels/flash_attention/flash_attention.ts";
import { actBytes, type ActDtype } from "../../kernels/_wgsl.ts";
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { FormatError } from "../../gpu/errors.ts";
import type { StoredTensor } from "../linear.ts";
import type { LinearOp } from "../linears.ts";
import { Checkpoint } from "./checkpoint.ts";
import { Serial } from "./_serial.ts";
import {
  compactTable,
  concatRows,
  EncoderResources,
  padHeadCols,
  padHeadRows,
  roundUp,
  type TextLinearSource,
  type TextWeightFormat,
  W4A16_GROUP,
} from "./_linears.ts";

/** T5 encoder hyper-parameters (from `config.json`, transformers' names in comments). */
export interface T5Config {
  /** `vocab_size`. */
  vocabSize: number;
  /** `d_model`. */
  dModel: number;
  /** `d_kv`: head dim. */
  dKv: number;
  /** `num_heads`. */
  numHeads: number;
  /** `d_ff`. */
  dFf: number;
  /** `num_layers`. */
  numLayers: number;
  /** `relative_attention_num_buckets` (32). */
  numBuckets: number;
  /** `relative_attention_max_distance` (128). */
  maxDistance: number;
  /** `layer_norm_epsilon` (1e-6). */
  eps: number;
}

/** Read a T5 config (`config.json` form); FormatError for anything but a gated-GELU T5. */
export function t5ConfigFrom(json: Record<string, unknown>, where = "config"): T5Config {
  const num = (key: string, dflt?: number): number => {
    const v = json[key] ?? dflt;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new FormatError(where, `the T5 config has no numeric "${key}"`);
    }
    return v;
  };
  const ff = String(json.feed_forward_proj ?? "relu");
  if (ff !== "gated-gelu") {
    throw new FormatError(
      where,
      `feed_forward_proj is "${ff}"; only T5 v1.1's "gated-gelu" (FLUX, SD3, PixArt) is supported`,
    );
  }
  return {
    vocabSize: num("vocab_size"),
    dModel: num("d_model"),
    dKv: num("d_kv"),
    numHeads: num("num_heads"),
    dFf: num("d_ff"),
    numLayers: num("num_layers"),
    numBuckets: num("relative_attention_num_buckets", 32),
    maxDistance: num("relative_attention_max_distance", 128),
    eps: num("layer_norm_epsilon", 1e-6),
  };
}

/**
 * Upstream's bidirectional relative position bucket of `rel` = key − query, computed in float32
 * as transformers does (`log(n / max_exact) / log(max_distance / max_exact) · (nb − max_exact)`,
 * truncated): half the buckets for keys after the query, exact buckets below `max_exact`,
 * logarithmic ones up to `maxDistance`, the last bucket beyond.
 */
export function relativePositionBucket(rel: number, numBuckets = 32, maxDistance = 128): number {
  const half = numBuckets >> 1;
  let bucket = rel > 0 ? half : 0;
  const n = Math.abs(rel);
  const maxExact = half >> 1;
  if (n < maxExact) return bucket + n;
  const f = Math.fround;
  const ratio = f(f(Math.log(f(n / maxExact))) / f(Math.log(maxDistance / maxExact)));
  const large = maxExact + Math.trunc(f(ratio * (half - maxExact)));
  bucket += Math.min(large, half - 1);
  return bucket;
}

/** Bucket of every offset k − q for T tokens, at index k − q + T − 1 ([2T − 1], u32). */
export function bucketTable(t: number, numBuckets: number, maxDistance: number): Uint32Array {
  return Uint32Array.from(
    { length: 2 * t - 1 },
    (_, i) => relativePositionBucket(i - (t - 1), numBuckets, maxDistance),
  );
}

/**
 * The position bias [H, T, T] (`compute_bias` of block 0 without its batch axis) from the stored
 * table `relative_attention_bias.weight` [buckets, H]: bias[h, q, k] = table[bucket(k − q), h].
 */
export function t5PositionBias(
  table: Float32Array,
  cfg: Pick<T5Config, "numHeads" | "numBuckets" | "maxDistance">,
  t: number,
): Float32Array {
  const h = cfg.numHeads;
  const buckets = bucketTable(t, cfg.numBuckets, cfg.maxDistance);
  const out = new Float32Array(h * t * t);
  for (let i = 0; i < h; i++) {
    for (let q = 0; q < t; q++) {
      for (let k = 0; k < t; k++) out[(i * t + q) * t + k] = table[buckets[k - q + t - 1] * h + i];
    }
  }
  return out;
}

/** Options of {@linkcode T5Encoder.create}. */
export interface T5EncoderOptions {
  /** Tokens per prompt L (256 for FLUX.1-schnell, 512 for dev). */
  length: number;
  /** Prompts per call B. Default 1. */
  batch?: number;
  /** Activation dtype: "f16" (needs `shader-f16`) or "f32". Default f16 where available. */
  dtype?: ActDtype;
  /**
   * Linear weights: "float" (f16 weights; f32 where activations are f32), "w4a16" (INT4 group
   * 64) or "w8a16" (INT8 per channel), quantized at load from a float checkpoint. A
   * pre-quantized file's format wins. Default "float".
   */
  weights?: TextWeightFormat;
  /** Keep every block's output for {@linkcode T5Output.blockOutputs} (tests). Default false. */
  keepBlockOutputs?: boolean;
}

/** Result of one {@linkcode T5Encoder.encode}. */
export interface T5Output {
  /** `last_hidden_state`, f32 [B, L, d_model]. */
  lastHiddenState: Float32Array;
  /** Residual after each block (before the final norm), f32 [B, L, d_model] each, if kept. */
  blockOutputs?: Float32Array[];
}

interface Block {
  qkv: LinearOp;
  o: LinearOp;
  wi: LinearOp;
  wo: LinearOp;
  ln0: GPUBuffer;
  ln1: GPUBuffer;
}

/**
 * A T5 encoder resident on the GPU for one (B, L).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { T5Encoder } from "./t5.ts";
 * const gpu = await getGpu();
 * const t5 = await T5Encoder.create(gpu, "FLUX.1-schnell/text_encoder_2", { length: 256 });
 * const ids = new Int32Array(256); // from TextTokenizer.encodeBatch
 * const { lastHiddenState } = await t5.encode(ids); // [1, 256, 4096]
 * t5.destroy();
 * ```
 */
export class T5Encoder {
  /** The model's hyper-parameters. */
  readonly config: T5Config;
  /** Prompts per call B. */
  readonly batch: number;
  /** Tokens per prompt L. */
  readonly length: number;
  /** Activation dtype. */
  readonly dtype: ActDtype;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /** How the linears run (e.g. "f16", "w4a16"). */
  readonly weightKind: string;
  #gpu: Gpu;
  #embed: Float32Array | Float16Array;
  #ops: { destroy(): void }[];
  #bufs: GPUBuffer[];
  #x: GPUBuffer;
  #mask: GPUBuffer;
  #out: GPUBuffer;
  #blockOuts: GPUBuffer[];
  #plain: Dispatch[];
  #masked: Dispatch[];
  #keep: boolean;
  #serial = new Serial();

  private constructor(init: T5Parts) {
    this.#gpu = init.gpu;
    this.config = init.config;
    this.batch = init.batch;
    this.length = init.length;
    this.dtype = init.dtype;
    this.#embed = init.embed;
    this.#ops = init.ops;
    this.#bufs = init.bufs;
    this.#x = init.x;
    this.#mask = init.mask;
    this.#out = init.out;
    this.#blockOuts = init.blockOuts;
    this.#plain = init.plain;
    this.#masked = init.masked;
    this.#keep = init.keep;
    this.weightBytes = init.weightBytes;
    this.weightKind = init.weightKind;
  }

  /** Load `source` (a checkpoint path or an open {@linkcode Checkpoint}) onto the GPU. */
  static async create(
    gpu: Gpu,
    source: string | Checkpoint,
    opts: T5EncoderOptions,
  ): Promise<T5Encoder> {
    const ck = typeof source === "string" ? await Checkpoint.open(source) : source;
    try {
      return new T5Encoder(await build(gpu, ck, opts));
    } finally {
      if (typeof source === "string") ck.close();
    }
  }

  /**
   * Encode `ids` (int [B, L]); with `mask` ([B, L], 0 = padding) padded keys are skipped as in
   * transformers' masked call (FLUX passes no mask: padding tokens are attended to).
   */
  encode(ids: ArrayLike<number>, opts: { mask?: ArrayLike<number> } = {}): Promise<T5Output> {
    return this.#serial.run(() => this.#encode(ids, opts));
  }

  async #encode(ids: ArrayLike<number>, opts: { mask?: ArrayLike<number> }): Promise<T5Output> {
    const { dModel: d, vocabSize } = this.config;
    const rows = this.batch * this.length;
    if (ids.length !== rows) {
      throw new TypeError(
        `Cannot encode: ids has ${ids.length} values, expected [B=${this.batch}, L=${this.length}]`,
      );
    }
    const x = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      const id = ids[r];
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new RangeError(`Cannot encode: token id ${id} at ${r} is outside [0, ${vocabSize})`);
      }
      x.set(this.#embed.subarray(id * d, (id + 1) * d), r * d);
    }
    const gpu = this.#gpu;
    gpu.write(this.#x, x);
    if (opts.mask) {
      if (opts.mask.length !== rows) {
        throw new TypeError(`Cannot encode: mask has ${opts.mask.length} values, expected ${rows}`);
      }
      gpu.write(this.#mask, Uint32Array.from(opts.mask, (v) => (v ? 1 : 0)));
    }
    await gpu.runChecked("run T5 encoder", opts.mask ? this.#masked : this.#plain);
    const read = async (b: GPUBuffer) => new Float32Array(await gpu.read(b, rows * d * 4));
    const out: T5Output = { lastHiddenState: await read(this.#out) };
    if (this.#keep) out.blockOutputs = await Promise.all(this.#blockOuts.map(read));
    return out;
  }

  /** Free the GPU memory (weights, buffers); the encoder cannot be used afterwards. */
  destroy(): void {
    for (const op of this.#ops) op.destroy();
    this.#gpu.destroy(...this.#bufs);
    this.#ops = [];
    this.#bufs = [];
  }
}

/** The head dim the attention kernel runs: d_kv, or the next supported one (zero-padded). */
export function paddedHeadDim(d: number): number {
  const dp = FLASH_ATTENTION_HEAD_DIMS.find((v) => v >= d);
  if (dp === undefined) {
    throw new RangeError(
      `Cannot build attention: head dim ${d} is above the largest supported ` +
        `(${FLASH_ATTENTION_HEAD_DIMS.at(-1)})`,
    );
  }
  return dp;
}

interface T5Parts {
  gpu: Gpu;
  config: T5Config;
  batch: number;
  length: number;
  dtype: ActDtype;
  embed: Float32Array | Float16Array;
  ops: { destroy(): void }[];
  bufs: GPUBuffer[];
  x: GPUBuffer;
  mask: GPUBuffer;
  out: GPUBuffer;
  blockOuts: GPUBuffer[];
  plain: Dispatch[];
  masked: Dispatch[];
  keep: boolean;
  weightBytes: number;
  weightKind: string;
}

async function build(gpu: Gpu, ck: Checkpoint, opts: T5EncoderOptions): Promise<T5Parts> {
  const cfg = t5ConfigFrom(ck.config, ck.path);
  const b = opts.batch ?? 1, l = opts.length;
  if (!Number.isInteger(b) || b < 1 || !Number.isInteger(l) || l < 1) {
    throw new RangeError(`Cannot build the T5 encoder: batch ${b} and length ${l} must be ≥ 1`);
  }
  const dtype: ActDtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
  const format = opts.weights ?? "float";
  const m = b * l, d = cfg.dModel, h = cfg.numHeads, dkv = cfg.dKv, dp = paddedHeadDim(dkv);
  const quant = format !== "float";
  // FFN width, zero-padded to whole quantization groups (a zero wi row gives gelu(0)·0 = 0).
  const f = quant && format === "w4a16" ? roundUp(cfg.dFf, W4A16_GROUP) : cfg.dFf;
  const woDtype: ActDtype = "f32";
  const res = new EncoderResources(gpu, "T5");
  const { ops, bufs, linears, upload: up, alloc, kernel } = res;
  const lin = (src: TextLinearSource, act: ActDtype) => res.linear(src, { m, dtype: act, format });
  try {
    const embedName = ck.has("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
    const embed32 = await ck.float(embedName);
    if (embed32.length !== cfg.vocabSize * d) {
      throw new FormatError(ck.path, `expected [${cfg.vocabSize}, ${d}]`, embedName);
    }
    const embed = compactTable(embed32);
    const relName = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    const rel = await ck.float(relName);
    if (rel.length !== cfg.numBuckets * h) {
      throw new FormatError(ck.path, `expected [${cfg.numBuckets}, ${h}]`, relName);
    }
    const relT = new Float32Array(h * cfg.numBuckets); // [H, buckets] for the kernel
    for (let i = 0; i < cfg.numBuckets; i++) {
      for (let j = 0; j < h; j++) relT[j * cfg.numBuckets + i] = rel[i * h + j];
    }
    const biasTable = await up("relative bias", relT);
    const biasBucket = await up("buckets", bucketTable(l, cfg.numBuckets, cfg.maxDistance));

    const blocks: Block[] = [];
    for (let i = 0; i < cfg.numLayers; i++) {
      const p = `encoder.block.${i}.layer`;
      const qkv = await readLinear(ck, ["q", "k", "v"].map((s) => `${p}.0.SelfAttention.${s}`), {
        rows: h * dkv,
        k: d,
        rowPad: { h, d: dkv, dp },
      });
      const o = await readLinear(ck, [`${p}.0.SelfAttention.o`], {
        rows: d,
        k: h * dkv,
        colPad: { h, d: dkv, dp },
      });
      const wi = await readLinear(
        ck,
        [`${p}.1.DenseReluDense.wi_0`, `${p}.1.DenseReluDense.wi_1`],
        { rows: cfg.dFf, k: d, rowPad: { h: 1, d: cfg.dFf, dp: f } },
      );
      const wo = await readLinear(ck, [`${p}.1.DenseReluDense.wo`], {
        rows: d,
        k: cfg.dFf,
        colPad: { h: 1, d: cfg.dFf, dp: f },
      });
      blocks.push({
        qkv: await lin({ name: `${p}.0.SelfAttention.qkv`, n: 3 * h * dp, k: d, ...qkv }, dtype),
        o: await lin({ name: `${p}.0.SelfAttention.o`, n: d, k: h * dp, ...o }, dtype),
        wi: await lin({ name: `${p}.1.DenseReluDense.wi`, n: 2 * f, k: d, ...wi }, dtype),
        wo: await lin({ name: `${p}.1.DenseReluDense.wo`, n: d, k: f, ...wo }, woDtype),
        ln0: await up(`${p}.0.layer_norm`, await ck.float(`${p}.0.layer_norm.weight`)),
        ln1: await up(`${p}.1.layer_norm`, await ck.float(`${p}.1.layer_norm.weight`)),
      });
    }
    const finalLn = await up("final_layer_norm", await ck.float("encoder.final_layer_norm.weight"));

    // Kernels.
    const eps = cfg.eps;
    const attnShape = {
      b,
      t: l,
      h,
      d: dp,
      dtype,
      scale: 1,
      relativeBias: { buckets: cfg.numBuckets },
    };
    const attn = await kernel(FlashAttention.create(gpu, attnShape));
    const attnMasked = await kernel(FlashAttention.create(gpu, { ...attnShape, keyMask: true }));
    const norm0 = await kernel(AddNorm.create(gpu, { rows: m, d, dtype, norm: "rms", eps }));
    const normAttn = await kernel(
      AddNorm.create(gpu, { rows: m, d, dtype, norm: "rms", eps, addY: true, yDtype: dtype }),
    );
    const normFfn = await kernel(
      AddNorm.create(gpu, { rows: m, d, dtype, norm: "rms", eps, addY: true, yDtype: woDtype }),
    );
    const normFinal = await kernel(
      AddNorm.create(gpu, {
        rows: m,
        d,
        dtype: "f32",
        norm: "rms",
        eps,
        addY: true,
        yDtype: woDtype,
      }),
    );
    const act = await kernel(FfnAct.create(gpu, { m, f, gated: true, dtype, outDtype: woDtype }));

    // Buffers.
    const e = actBytes(dtype);
    const x = await alloc("x", m * d * 4);
    const mask = await alloc("mask", m * 4);
    const mid = await alloc("residual mid", m * d * 4);
    const hBuf = await alloc("h", m * d * e);
    const qkvBuf = await alloc("qkv", m * 3 * h * dp * e);
    const oBuf = await alloc("attention out", m * h * dp * e);
    const aBuf = await alloc("o out", m * d * e);
    const gBuf = await alloc("wi out", m * 2 * f * e);
    const uBuf = await alloc("ffn act", m * f * 4);
    const zBuf = await alloc("wo out", m * d * 4);
    const out = await alloc("last_hidden_state", m * d * 4);
    const keep = opts.keepBlockOutputs ?? false;
    const ping = [await alloc("residual a", m * d * 4), await alloc("residual b", m * d * 4)];
    const blockOuts: GPUBuffer[] = [];
    for (let i = 0; i < cfg.numLayers; i++) {
      blockOuts.push(keep ? await alloc(`block ${i} out`, m * d * 4) : ping[i % 2]);
    }

    const graph = (masked: boolean): Dispatch[] => {
      const ds: Dispatch[] = [norm0.dispatch({ x, weight: blocks[0].ln0, h: hBuf })];
      blocks.forEach((blk, i) => {
        const xin = i === 0 ? x : blockOuts[i - 1];
        ds.push(...blk.qkv.dispatch(hBuf, qkvBuf));
        ds.push(
          (masked ? attnMasked : attn).dispatch({
            qkv: qkvBuf,
            o: oBuf,
            biasTable,
            biasBucket,
            keyMask: masked ? mask : undefined,
          }),
        );
        ds.push(...blk.o.dispatch(oBuf, aBuf));
        ds.push(normAttn.dispatch({ x: xin, y: aBuf, weight: blk.ln1, xOut: mid, h: hBuf }));
        ds.push(...blk.wi.dispatch(hBuf, gBuf));
        ds.push(act.dispatch({ x: gBuf, y: uBuf }));
        ds.push(...blk.wo.dispatch(uBuf, zBuf));
        const last = i === blocks.length - 1;
        ds.push(
          (last ? normFinal : normFfn).dispatch({
            x: mid,
            y: zBuf,
            weight: last ? finalLn : blocks[i + 1].ln0,
            xOut: blockOuts[i],
            h: last ? out : hBuf,
          }),
        );
      });
      return ds;
    };
    const weightBytes = linears.reduce((s, op) => s + op.weightBytes, 0);
    return {
      gpu,
      config: cfg,
      batch: b,
      length: l,
      dtype,
      embed,
      ops,
      bufs,
      x,
      mask,
      out,
      blockOuts,
      plain: graph(false),
      masked: graph(true),
      keep,
      weightBytes,
      weightKind: linears[0]?.kind ?? format,
    };
  } catch (err) {
    res.destroy();
    throw err;
  }
}

/** Zero padding of head-major rows or columns: each of `h` heads grows from `d` to `dp`. */
interface HeadPad {
  h: number;
  d: number;
  dp: number;
}

/**
 * One fused linear's weights: the parts [rows, K] concatenated by rows, each part's head-major
 * rows padded by `rowPad`, the columns by `colPad` (zeros: results unchanged). Float parts are
 * padded as values; a pre-quantized file's parts byte-wise (rows of any format; columns only for
 * INT8, whose scale is per row; INT4's K groups would shift).
 */
async function readLinear(
  ck: Checkpoint,
  bases: string[],
  opts: { rows: number; k: number; rowPad?: HeadPad; colPad?: HeadPad },
): Promise<Pick<TextLinearSource, "values" | "stored">> {
  const { rows, k, rowPad, colPad } = opts;
  if (bases.every((base) => ck.has(`${base}.weight`))) {
    const parts: Float32Array[] = [];
    for (const base of bases) {
      const w = await ck.float(`${base}.weight`);
      if (w.length !== rows * k) {
        throw new FormatError(ck.path, `expected [${rows}, ${k}]`, `${base}.weight`);
      }
      parts.push(rowPad ? padHeadRows(w, rowPad.h, rowPad.d, rowPad.dp, k) : w);
    }
    const w = concatRows(parts);
    const n = w.length / k;
    return { values: colPad ? padHeadCols(w, n, colPad.h, colPad.d, colPad.dp) : w };
  }
  if (bases.every((base) => ck.has(`${base}.qweight`) && ck.has(`${base}.wscales`))) {
    const stored = new Map<string, StoredTensor>();
    for (const suffix of ["qweight", "wscales"]) {
      const metas = bases.map((base) => ck.meta(`${base}.${suffix}`));
      const datas: Uint8Array[] = [];
      for (const [i, base] of bases.entries()) {
        let a = await ck.raw(`${base}.${suffix}`);
        if (metas[i].shape[0] !== rows) {
          throw new FormatError(ck.path, `expected ${rows} rows`, `${base}.${suffix}`);
        }
        if (rowPad) a = padHeadRowsBytes(a, rowPad, a.length / rows);
        datas.push(a);
      }
      let data: Uint8Array = new Uint8Array(datas.reduce((s, a) => s + a.length, 0));
      let at = 0;
      for (const a of datas) {
        data.set(a, at);
        at += a.length;
      }
      const n = (rowPad ? (rows / rowPad.d) * rowPad.dp : rows) * bases.length;
      const shape = [n, ...metas[0].shape.slice(1)];
      if (colPad && colPad.dp !== colPad.d && suffix === "qweight") {
        if (metas[0].dtype !== "I8") {
          throw new FormatError(
            ck.path,
            "an INT4 layer cannot be padded along K to the kernels' shapes (head dim or FFN " +
              'width); load the float checkpoint with weights: "w4a16" instead',
            `${bases[0]}.qweight`,
          );
        }
        data = padHeadColsBytes(data, n, colPad);
        shape[1] = (shape[1] / colPad.d) * colPad.dp;
      }
      stored.set(suffix, { dtype: metas[0].dtype, shape, data });
    }
    return { stored };
  }
  throw new FormatError(
    ck.path,
    "the checkpoint has neither its float weight nor qweight + wscales; is it a T5 encoder?",
    `${bases[0]}.weight`,
  );
}

/** Rows of `rowBytes` bytes, head-major: each head's d rows then dp − d zero rows. */
function padHeadRowsBytes(a: Uint8Array, p: HeadPad, rowBytes: number): Uint8Array {
  if (p.dp === p.d) return a;
  const heads = a.length / (p.d * rowBytes);
  const out = new Uint8Array(heads * p.dp * rowBytes);
  for (let i = 0; i < heads; i++) {
    out.set(a.subarray(i * p.d * rowBytes, (i + 1) * p.d * rowBytes), i * p.dp * rowBytes);
  }
  return out;
}

/** One-byte elements [n, heads·d] → [n, heads·dp] with zero columns after each head. */
function padHeadColsBytes(a: Uint8Array, n: number, p: HeadPad): Uint8Array {
  const k = a.length / n, heads = k / p.d;
  const out = new Uint8Array(n * heads * p.dp);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < heads; i++) {
      out.set(a.subarray(r * k + i * p.d, r * k + (i + 1) * p.d), (r * heads + i) * p.dp);
    }
  }
  return out;
}
