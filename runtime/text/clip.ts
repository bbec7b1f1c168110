/**
 * The CLIP text model (`CLIPTextModel`: FLUX.1's `text_encoder`, openai/clip-vit-large-patch14's
 * text tower) on the GPU:
 *
 *     x = token_embedding[ids] + position_embedding[t]       (CPU gather, f32)
 *     per layer: x += out_proj(causal attention(LN1(x)));  x += fc2(quick_gelu(fc1(LN2(x))))
 *     last_hidden_state = final_layer_norm(x);  pooled = last_hidden_state[b, eos(b)]
 *
 * where eos(b) is the first position of the largest id (transformers' `argmax(input_ids)`, the
 * rule for configs with `eos_token_id == 2`, FLUX's) or, for other configs, the first position
 * holding `eos_token_id`. `hidden_states[-2]` (the penultimate layer's output, no final norm:
 * what SDXL/SD3 take) is returned too. Kernels per layer: `add_norm` (f32 residual + LayerNorm),
 * the fused q|k|v linear (with bias), `flash_attention` (causal, 1/√head_dim), out_proj, fc1,
 * `ffn_act` (quick-GELU), fc2.
 *
 * @module
 */
import { AddNorm } from "../../kernels/add_norm/add_norm.ts";
import { FfnAct } from "../../kernels/ffn_act/ffn_act.ts";
import { FlashAttention } from "../../kernels/flash_attention/flash_attention.ts";
import { actBytes, type ActDtype } from "../../kernels/_wgsl.ts";
import type { Dispatch, Gpu } from "../../gpu/device.ts";
import { FormatError } from "../../gpu/errors.ts";
import type { LinearOp } from "../linears.ts";
import { Checkpoint } from "./checkpoint.ts";
import { Serial } from "./_serial.ts";
import { paddedHeadDim } from "./t5.ts";
import {
  compactTable,
  concatRows,
  EncoderResources,
  padHeadCols,
  padHeadRows,
  padHeadVec,
  type TextWeightFormat,
} from "./_linears.ts";

/** CLIP text model hyper-parameters (from `config.json`; transformers' names in comments). */
export interface ClipTextConfig {
  /** `vocab_size`. */
  vocabSize: number;
  /** `hidden_size`. */
  hidden: number;
  /** `num_attention_heads`. */
  heads: number;
  /** `num_hidden_layers`. */
  layers: number;
  /** `intermediate_size`. */
  intermediate: number;
  /** `max_position_embeddings` (77). */
  maxPositions: number;
  /** `layer_norm_eps`. */
  eps: number;
  /** `eos_token_id` (2 in FLUX's config: then the pooled position is argmax(ids)). */
  eosTokenId: number;
}

/** Read a CLIP text config (`CLIPTextConfig`, or a `CLIPConfig` with `text_config`). */
export function clipConfigFrom(json: Record<string, unknown>, where = "config"): ClipTextConfig {
  const j = (json.text_config ?? json) as Record<string, unknown>;
  const num = (key: string, dflt?: number): number => {
    const v = j[key] ?? dflt;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new FormatError(where, `the CLIP text config has no numeric "${key}"`);
    }
    return v;
  };
  const act = String(j.hidden_act ?? "quick_gelu");
  if (act !== "quick_gelu") {
    throw new FormatError(
      where,
      `hidden_act is "${act}"; only "quick_gelu" (OpenAI CLIP, FLUX's CLIP-L) is supported`,
    );
  }
  return {
    vocabSize: num("vocab_size"),
    hidden: num("hidden_size"),
    heads: num("num_attention_heads"),
    layers: num("num_hidden_layers"),
    intermediate: num("intermediate_size"),
    maxPositions: num("max_position_embeddings", 77),
    eps: num("layer_norm_eps", 1e-5),
    eosTokenId: num("eos_token_id", 2),
  };
}

/** The pooled position of each row of `ids` [B, L] (see the module doc). */
export function clipEosIndex(ids: ArrayLike<number>, b: number, l: number, eos: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < b; r++) {
    let at = 0;
    if (eos === 2) {
      for (let t = 1; t < l; t++) if (ids[r * l + t] > ids[r * l + at]) at = t;
    } else {
      at = -1;
      for (let t = 0; t < l && at < 0; t++) if (ids[r * l + t] === eos) at = t;
      if (at < 0) at = l - 1;
    }
    out.push(at);
  }
  return out;
}

/** Options of {@linkcode ClipTextEncoder.create}. */
export interface ClipTextOptions {
  /** Prompts per call B. Default 1. */
  batch?: number;
  /** Tokens per prompt L. Default the model's `max_position_embeddings` (77). */
  length?: number;
  /** Activation dtype. Default f16 where available. */
  dtype?: ActDtype;
  /** Linear weights (as for T5). Default "float". */
  weights?: TextWeightFormat;
  /** Keep every layer's output (tests). Default false. */
  keepLayerOutputs?: boolean;
}

/** Result of one {@linkcode ClipTextEncoder.encode}. */
export interface ClipTextOutput {
  /** f32 [B, L, hidden], after the final LayerNorm. */
  lastHiddenState: Float32Array;
  /** f32 [B, hidden]: `lastHiddenState` at each row's EOS position (FLUX's `pooled_projections`). */
  pooled: Float32Array;
  /** The pooled positions. */
  eosIndex: number[];
  /** f32 [B, L, hidden]: `hidden_states[-2]`, the penultimate layer's output (no final norm). */
  penultimate: Float32Array;
  /** Every layer's output, if kept. */
  layerOutputs?: Float32Array[];
}

interface ClipLayer {
  ln1w: GPUBuffer;
  ln1b: GPUBuffer;
  ln2w: GPUBuffer;
  ln2b: GPUBuffer;
  qkv: LinearOp;
  o: LinearOp;
  fc1: LinearOp;
  fc2: LinearOp;
}

interface Parts {
  gpu: Gpu;
  config: ClipTextConfig;
  batch: number;
  length: number;
  dtype: ActDtype;
  tok: Float32Array | Float16Array;
  pos: Float32Array;
  ops: { destroy(): void }[];
  bufs: GPUBuffer[];
  x: GPUBuffer;
  out: GPUBuffer;
  layerOuts: GPUBuffer[];
  graph: Dispatch[];
  keep: boolean;
  weightBytes: number;
  weightKind: string;
}

/**
 * The CLIP text model resident on the GPU for one (B, L).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { ClipTextEncoder } from "./clip.ts";
 * const gpu = await getGpu();
 * const clip = await ClipTextEncoder.create(gpu, "FLUX.1-schnell/text_encoder");
 * const ids = new Int32Array(77); // from TextTokenizer.encodeBatch(texts, 77)
 * const { pooled } = await clip.encode(ids); // [1, 768]
 * clip.destroy();
 * ```
 */
export class ClipTextEncoder {
  /** The model's hyper-parameters. */
  readonly config: ClipTextConfig;
  /** Prompts per call B. */
  readonly batch: number;
  /** Tokens per prompt L. */
  readonly length: number;
  /** Activation dtype. */
  readonly dtype: ActDtype;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /** How the linears run (e.g. "f16"). */
  readonly weightKind: string;
  #p: Parts;
  #serial = new Serial();

  private constructor(p: Parts) {
    this.#p = p;
    this.config = p.config;
    this.batch = p.batch;
    this.length = p.length;
    this.dtype = p.dtype;
    this.weightBytes = p.weightBytes;
    this.weightKind = p.weightKind;
  }

  /** Load `source` (a checkpoint path or an open {@linkcode Checkpoint}) onto the GPU. */
  static async create(
    gpu: Gpu,
    source: string | Checkpoint,
    opts: ClipTextOptions = {},
  ): Promise<ClipTextEncoder> {
    const ck = typeof source === "string" ? await Checkpoint.open(source) : source;
    try {
      return new ClipTextEncoder(await build(gpu, ck, opts));
    } finally {
      if (typeof source === "string") ck.close();
    }
  }

  /** Encode `ids` (int [B, L]). Attention is causal only, as FLUX calls it (no padding mask). */
  encode(ids: ArrayLike<number>): Promise<ClipTextOutput> {
    return this.#serial.run(() => this.#encode(ids));
  }

  async #encode(ids: ArrayLike<number>): Promise<ClipTextOutput> {
    const p = this.#p;
    const { hidden: d, vocabSize } = p.config;
    const b = p.batch, l = p.length, rows = b * l;
    if (ids.length !== rows) {
      throw new TypeError(`Cannot encode: ids has ${ids.length} values, expected [B=${b}, L=${l}]`);
    }
    const x = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      const id = ids[r], t = r % l;
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new RangeError(`Cannot encode: token id ${id} at ${r} is outside [0, ${vocabSize})`);
      }
      for (let c = 0; c < d; c++) x[r * d + c] = p.tok[id * d + c] + p.pos[t * d + c];
    }
    p.gpu.write(p.x, x);
    await p.gpu.runChecked("run CLIP text encoder", p.graph);
    const read = async (buf: GPUBuffer) => new Float32Array(await p.gpu.read(buf, rows * d * 4));
    const lastHiddenState = await read(p.out);
    const eosIndex = clipEosIndex(ids, b, l, p.config.eosTokenId);
    const pooled = new Float32Array(b * d);
    eosIndex.forEach((t, r) =>
      pooled.set(lastHiddenState.subarray((r * l + t) * d, (r * l + t + 1) * d), r * d)
    );
    const n = p.config.layers;
    const penultimate = n >= 2 ? await read(p.layerOuts[n - 2]) : x;
    const out: ClipTextOutput = { lastHiddenState, pooled, eosIndex, penultimate };
    if (p.keep) out.layerOutputs = await Promise.all(p.layerOuts.map(read));
    return out;
  }

  /** Free the GPU memory; the encoder cannot be used afterwards. */
  destroy(): void {
    for (const op of this.#p.ops) op.destroy();
    this.#p.gpu.destroy(...this.#p.bufs);
    this.#p.ops = [];
    this.#p.bufs = [];
  }
}

async function build(gpu: Gpu, ck: Checkpoint, opts: ClipTextOptions): Promise<Parts> {
  const cfg = clipConfigFrom(ck.config, ck.path);
  const b = opts.batch ?? 1, l = opts.length ?? cfg.maxPositions;
  if (!Number.isInteger(b) || b < 1 || !Number.isInteger(l) || l < 1 || l > cfg.maxPositions) {
    throw new RangeError(
      `Cannot build the CLIP text encoder: batch ${b} must be ≥ 1 and length ${l} in ` +
        `1..${cfg.maxPositions}`,
    );
  }
  const dtype: ActDtype = opts.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
  const format = opts.weights ?? "float";
  const m = b * l, d = cfg.hidden, h = cfg.heads, dh = d / h, dp = paddedHeadDim(dh);
  if (!Number.isInteger(dh)) {
    throw new FormatError(ck.path, `hidden_size ${d} is not a multiple of ${h} heads`);
  }
  const f = cfg.intermediate;
  const res = new EncoderResources(gpu, "CLIP");
  const { ops, bufs, linears, upload: up, alloc, kernel } = res;
  const pre = ck.has("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  const get = async (name: string, len: number) => {
    const v = await ck.float(pre + name);
    if (v.length !== len) throw new FormatError(ck.path, `expected ${len} values`, pre + name);
    return v;
  };
  const lin = (name: string, n: number, k: number, values: Float32Array, bias: Float32Array) =>
    res.linear({ name, n, k, values, bias }, { m, dtype, format });
  try {
    const tok = compactTable(await get("embeddings.token_embedding.weight", cfg.vocabSize * d));
    const pos = await get("embeddings.position_embedding.weight", cfg.maxPositions * d);
    const layers: ClipLayer[] = [];
    for (let i = 0; i < cfg.layers; i++) {
      const p = `encoder.layers.${i}`;
      const part = async (s: string) =>
        padHeadRows(await get(`${p}.self_attn.${s}_proj.weight`, d * d), h, dh, dp, d);
      const partBias = async (s: string) =>
        padHeadVec(await get(`${p}.self_attn.${s}_proj.bias`, d), h, dh, dp);
      const qkvW = concatRows([await part("q"), await part("k"), await part("v")]);
      const qkvB = concatRows([await partBias("q"), await partBias("k"), await partBias("v")]);
      const oW = padHeadCols(await get(`${p}.self_attn.out_proj.weight`, d * d), d, h, dh, dp);
      layers.push({
        ln1w: await up(`${p}.layer_norm1.weight`, await get(`${p}.layer_norm1.weight`, d)),
        ln1b: await up(`${p}.layer_norm1.bias`, await get(`${p}.layer_norm1.bias`, d)),
        ln2w: await up(`${p}.layer_norm2.weight`, await get(`${p}.layer_norm2.weight`, d)),
        ln2b: await up(`${p}.layer_norm2.bias`, await get(`${p}.layer_norm2.bias`, d)),
        qkv: await lin(`${p}.self_attn.qkv`, 3 * h * dp, d, qkvW, qkvB),
        o: await lin(
          `${p}.self_attn.out_proj`,
          d,
          h * dp,
          oW,
          await get(`${p}.self_attn.out_proj.bias`, d),
        ),
        fc1: await lin(
          `${p}.mlp.fc1`,
          f,
          d,
          await get(`${p}.mlp.fc1.weight`, f * d),
          await get(`${p}.mlp.fc1.bias`, f),
        ),
        fc2: await lin(
          `${p}.mlp.fc2`,
          d,
          f,
          await get(`${p}.mlp.fc2.weight`, d * f),
          await get(`${p}.mlp.fc2.bias`, d),
        ),
      });
    }
    const finW = await up("final_layer_norm.weight", await get("final_layer_norm.weight", d));
    const finB = await up("final_layer_norm.bias", await get("final_layer_norm.bias", d));

    const eps = cfg.eps;
    const attn = await kernel(
      FlashAttention.create(gpu, {
        b,
        t: l,
        h,
        d: dp,
        dtype,
        scale: 1 / Math.sqrt(dh),
        causal: true,
      }),
    );
    const norm0 = await kernel(AddNorm.create(gpu, { rows: m, d, dtype, norm: "layer", eps }));
    const normAdd = await kernel(
      AddNorm.create(gpu, { rows: m, d, dtype, norm: "layer", eps, addY: true }),
    );
    const normFinal = await kernel(
      AddNorm.create(gpu, {
        rows: m,
        d,
        dtype: "f32",
        norm: "layer",
        eps,
        addY: true,
        yDtype: dtype,
      }),
    );
    const act = await kernel(FfnAct.create(gpu, { m, f, gated: false, dtype }));

    const e = actBytes(dtype);
    const x = await alloc("x", m * d * 4);
    const mid = await alloc("residual mid", m * d * 4);
    const hBuf = await alloc("h", m * d * e);
    const qkvBuf = await alloc("qkv", m * 3 * h * dp * e);
    const oBuf = await alloc("attention out", m * h * dp * e);
    const aBuf = await alloc("proj out", m * d * e);
    const gBuf = await alloc("fc1 out", m * f * e);
    const uBuf = await alloc("act out", m * f * e);
    const out = await alloc("last_hidden_state", m * d * 4);
    const keep = opts.keepLayerOutputs ?? false;
    const ping = [await alloc("residual a", m * d * 4), await alloc("residual b", m * d * 4)];
    const layerOuts: GPUBuffer[] = [];
    for (let i = 0; i < cfg.layers; i++) {
      layerOuts.push(keep ? await alloc(`layer ${i} out`, m * d * 4) : ping[i % 2]);
    }
    const graph: Dispatch[] = [
      norm0.dispatch({ x, weight: layers[0].ln1w, bias: layers[0].ln1b, h: hBuf }),
    ];
    layers.forEach((ly, i) => {
      const xin = i === 0 ? x : layerOuts[i - 1];
      graph.push(...ly.qkv.dispatch(hBuf, qkvBuf));
      graph.push(attn.dispatch({ qkv: qkvBuf, o: oBuf }));
      graph.push(...ly.o.dispatch(oBuf, aBuf));
      graph.push(
        normAdd.dispatch({ x: xin, y: aBuf, weight: ly.ln2w, bias: ly.ln2b, xOut: mid, h: hBuf }),
      );
      graph.push(...ly.fc1.dispatch(hBuf, gBuf));
      graph.push(act.dispatch({ x: gBuf, y: uBuf }));
      graph.push(...ly.fc2.dispatch(uBuf, aBuf));
      const last = i === layers.length - 1;
      graph.push(
        (last ? normFinal : normAdd).dispatch({
          x: mid,
          y: aBuf,
          weight: last ? finW : layers[i + 1].ln1w,
          bias: last ? finB : layers[i + 1].ln1b,
          xOut: layerOuts[i],
          h: last ? out : hBuf,
        }),
      );
    });
    return {
      gpu,
      config: cfg,
      batch: b,
      length: l,
      dtype,
      tok,
      pos,
      ops,
      bufs,
      x,
      out,
      layerOuts,
      graph,
      keep,
      weightBytes: linears.reduce((s, op) => s + op.weightBytes, 0),
      weightKind: linears[0]?.kind ?? format,
    };
  } catch (err) {
    res.destroy();
    throw err;
  }
}
