/**
 * Import a Nunchaku FLUX checkpoint (`svdq-{int4|fp4}_r32-flux.1-*.safetensors`) into our
 * self-describing pre-quantized file (formats/format.ts, family `flux`, BFL tensor names), in one
 * streaming pass: the output's tensor list follows from the source's header, so it is announced
 * up front and each layer is converted as it is written (memory: one layer at a time). The output
 * appears atomically (temp file + rename) or not at all.
 *
 * Name mapping (Nunchaku v0 → ours; `N` a block index):
 *
 * | Nunchaku                                        | ours                                    | kind  |
 * | ----------------------------------------------- | --------------------------------------- | ----- |
 * | `transformer_blocks.N.norm1[_context].linear`    | `double_blocks.N.{img,txt}_mod.lin`     | W4A16 |
 * | `transformer_blocks.N.qkv_proj[_context]`        | `double_blocks.N.{img,txt}_attn.qkv`    | W4A4  |
 * | `transformer_blocks.N.out_proj[_context]`        | `double_blocks.N.{img,txt}_attn.proj`   | W4A4  |
 * | `transformer_blocks.N.mlp[_context]_fc1` / `fc2` | `double_blocks.N.{img,txt}_mlp.0` / `.2` | W4A4 |
 * | `transformer_blocks.N.norm_[added_]q/k.weight`   | `…{img,txt}_attn.norm.{query,key}_norm.scale` | |
 * | `single_transformer_blocks.N.norm.linear`        | `single_blocks.N.modulation.lin`        | W4A16 |
 * | `single_transformer_blocks.N.qkv_proj` / `mlp_fc1` | `single_blocks.N.linear1_qkv` / `linear1_mlp` | W4A4 |
 * | `single_transformer_blocks.N.out_proj` / `mlp_fc2` | `single_blocks.N.linear2_attn` / `linear2_mlp` | W4A4 |
 * | `single_transformer_blocks.N.norm_q/k.weight`    | `single_blocks.N.norm.{query,key}_norm.scale` |  |
 * | `x_embedder`, `context_embedder`, `time_text_embed.*`, `proj_out` | `img_in`, `txt_in`, `time_in.*`, `vector_in.*`, `guidance_in.*`, `final_layer.linear` | 16-bit |
 * | `norm_out.linear` (scale, shift)                 | `final_layer.adaLN_modulation.1` (shift, scale) | 16-bit |
 *
 * The single block's `linear1` / `linear2` stay split as Nunchaku stores them (the graph sums
 * `linear2_attn(attn) + linear2_mlp(gelu(mlp))`; only `linear2_mlp` has a bias). Post-GELU layers
 * (`mlp_fc2`, INT4) run with unsigned activations. 16-bit tensors are copied as stored (bf16).
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import {
  type LayerPolicyEntry,
  type QuantConfig,
  type QuantTensor,
  writeQuantFile,
} from "../formats/format.ts";
import {
  canonicalW4A16,
  canonicalW4A4,
  type NunchakuQuantConfig,
  parseNunchakuQuantConfig,
  readNunchakuW4A16,
  readNunchakuW4A4,
} from "./nunchaku.ts";
import type { WeightFormat } from "../formats/packing.ts";
import { type Dtype, SafetensorsReader, type TensorSpec } from "../formats/safetensors.ts";

/** One conversion step of the import plan. */
export type PlanItem =
  | { kind: "w4a4"; src: string; dst: string; postGelu: boolean }
  | { kind: "w4a16"; src: string; dst: string; splits: number }
  | { kind: "copy"; src: string; dst: string }
  | { kind: "swap"; src: string; dst: string };

const DOUBLE_W4A4: [string, string, boolean][] = [
  ["qkv_proj", "img_attn.qkv", false],
  ["qkv_proj_context", "txt_attn.qkv", false],
  ["out_proj", "img_attn.proj", false],
  ["out_proj_context", "txt_attn.proj", false],
  ["mlp_fc1", "img_mlp.0", false],
  ["mlp_fc2", "img_mlp.2", true],
  ["mlp_context_fc1", "txt_mlp.0", false],
  ["mlp_context_fc2", "txt_mlp.2", true],
];
const DOUBLE_COPY: [string, string][] = [
  ["norm_q.weight", "img_attn.norm.query_norm.scale"],
  ["norm_k.weight", "img_attn.norm.key_norm.scale"],
  ["norm_added_q.weight", "txt_attn.norm.query_norm.scale"],
  ["norm_added_k.weight", "txt_attn.norm.key_norm.scale"],
];
const SINGLE_W4A4: [string, string, boolean][] = [
  ["qkv_proj", "linear1_qkv", false],
  ["mlp_fc1", "linear1_mlp", false],
  ["out_proj", "linear2_attn", false],
  ["mlp_fc2", "linear2_mlp", true],
];
const SINGLE_COPY: [string, string][] = [
  ["norm_q.weight", "norm.query_norm.scale"],
  ["norm_k.weight", "norm.key_norm.scale"],
];
/** Non-block tensors: diffusers prefix → BFL prefix (`.weight` / `.bias` follow). */
const OTHER: [string, string][] = [
  ["x_embedder", "img_in"],
  ["context_embedder", "txt_in"],
  ["time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"],
  ["time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"],
  ["time_text_embed.text_embedder.linear_1", "vector_in.in_layer"],
  ["time_text_embed.text_embedder.linear_2", "vector_in.out_layer"],
  ["time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"],
  ["time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"],
  ["proj_out", "final_layer.linear"],
];
/** Suffixes of the quantized layers' tensors in a Nunchaku file. */
const LAYER_SUFFIXES = new Set([
  "qweight",
  "wscales",
  "wtscale",
  "wcscales",
  "wzeros",
  "bias",
  "smooth",
  "smooth_orig",
  "lora_down",
  "lora_up",
]);

/**
 * The conversion plan of a Nunchaku FLUX file: every tensor of the source is used by exactly one
 * item (`smooth_orig` is dropped: the kernels use `smooth`); an unknown tensor or a block without
 * its layers is a {@link FormatError} naming it.
 */
export function planFluxImport(file: string, names: Iterable<string>): PlanItem[] {
  const all = new Set(names);
  const used = new Set<string>();
  const plan: PlanItem[] = [];
  const blocks = (prefix: string) =>
    [...new Set([...all].flatMap((n) => n.match(new RegExp(`^${prefix}\\.(\\d+)\\.`))?.[1] ?? []))]
      .map(Number).sort((a, b) => a - b);
  const layer = (item: PlanItem) => {
    const mark = [...all].filter((n) => n.startsWith(item.src + "."));
    if (!mark.some((n) => n === `${item.src}.qweight`)) {
      throw new FormatError(
        file,
        "the tensor is missing (expected a quantized layer)",
        `${item.src}.qweight`,
      );
    }
    for (const n of mark) {
      if (LAYER_SUFFIXES.has(n.slice(item.src.length + 1))) used.add(n);
    }
    plan.push(item);
  };
  const copy = (src: string, dst: string, kind: "copy" | "swap" = "copy", optional = false) => {
    if (!all.has(src)) {
      if (optional) return;
      throw new FormatError(file, "the tensor is missing", src);
    }
    used.add(src);
    plan.push({ kind, src, dst });
  };
  const dbl = blocks("transformer_blocks"), sgl = blocks("single_transformer_blocks");
  if (dbl.length === 0 && sgl.length === 0) {
    throw new FormatError(
      file,
      "it has no transformer_blocks.N / single_transformer_blocks.N tensors: not a Nunchaku FLUX " +
        "checkpoint",
    );
  }
  for (
    const [list, what] of [[dbl, "transformer_blocks"], [sgl, "single_transformer_blocks"]] as const
  ) {
    list.forEach((b, i) => {
      if (b !== i) {
        throw new FormatError(file, `${what}.${i} is missing (blocks are numbered from 0)`);
      }
    });
  }
  for (const b of dbl) {
    const s = `transformer_blocks.${b}`, d = `double_blocks.${b}`;
    layer({ kind: "w4a16", src: `${s}.norm1.linear`, dst: `${d}.img_mod.lin`, splits: 6 });
    layer({ kind: "w4a16", src: `${s}.norm1_context.linear`, dst: `${d}.txt_mod.lin`, splits: 6 });
    for (const [src, dst, postGelu] of DOUBLE_W4A4) {
      layer({ kind: "w4a4", src: `${s}.${src}`, dst: `${d}.${dst}`, postGelu });
    }
    for (const [src, dst] of DOUBLE_COPY) copy(`${s}.${src}`, `${d}.${dst}`);
  }
  for (const b of sgl) {
    const s = `single_transformer_blocks.${b}`, d = `single_blocks.${b}`;
    layer({ kind: "w4a16", src: `${s}.norm.linear`, dst: `${d}.modulation.lin`, splits: 3 });
    for (const [src, dst, postGelu] of SINGLE_W4A4) {
      layer({ kind: "w4a4", src: `${s}.${src}`, dst: `${d}.${dst}`, postGelu });
    }
    for (const [src, dst] of SINGLE_COPY) copy(`${s}.${src}`, `${d}.${dst}`);
  }
  for (const [src, dst] of OTHER) {
    const optional = src.includes("guidance");
    copy(`${src}.weight`, `${dst}.weight`, "copy", optional);
    copy(`${src}.bias`, `${dst}.bias`, "copy", optional);
  }
  copy("norm_out.linear.weight", "final_layer.adaLN_modulation.1.weight", "swap");
  copy("norm_out.linear.bias", "final_layer.adaLN_modulation.1.bias", "swap");
  const unknown = [...all].filter((n) => !used.has(n) && !n.endsWith(".smooth_orig"));
  if (unknown.length > 0) {
    throw new FormatError(
      file,
      `it is not part of the Nunchaku FLUX layout this build imports (${unknown.length} such ` +
        "tensors); is it a newer format or another model?",
      unknown[0],
    );
  }
  return plan;
}

/** FLUX hyper-parameters in BFL's `FluxParams` names from a diffusers or BFL config object. */
export function fluxParams(file: string, json: Record<string, unknown>): Record<string, unknown> {
  if ("hidden_size" in json && "depth" in json) return json; // already BFL's names
  const num = (k: string) => {
    const v = json[k];
    if (typeof v !== "number") {
      throw new FormatError(file, `config.${k} is ${JSON.stringify(v)}, expected a number`);
    }
    return v;
  };
  const inCh = num("in_channels");
  return {
    in_channels: inCh,
    out_channels: (json.out_channels as number | null) ?? inCh,
    vec_in_dim: (json.pooled_projection_dim as number) ?? 768,
    context_in_dim: (json.joint_attention_dim as number) ?? 4096,
    hidden_size: num("num_attention_heads") * num("attention_head_dim"),
    mlp_ratio: (json.mlp_ratio as number) ?? 4,
    num_heads: num("num_attention_heads"),
    depth: num("num_layers"),
    depth_single_blocks: num("num_single_layers"),
    axes_dim: (json.axes_dims_rope as number[]) ?? [16, 56, 56],
    theta: (json.theta as number) ?? 10000,
    qkv_bias: true,
    guidance_embed: Boolean(json.guidance_embeds),
  };
}

/** Options of {@linkcode importNunchakuFlux}. */
export interface ImportOptions {
  /** The model config (diffusers `config.json` or BFL params) when the file has none. */
  config?: Record<string, unknown>;
  /** Called after each layer or tensor is written. */
  onItem?: (item: PlanItem, index: number, total: number) => void;
}

/** What {@linkcode importNunchakuFlux} did. */
export interface ImportReport {
  /** Weight format of the checkpoint (from its quantization_config). */
  precision: WeightFormat;
  /** Low-rank rank declared by the checkpoint. */
  rank: number;
  /** Layers converted: W4A4, W4A16, and 16-bit tensors copied. */
  counts: { w4a4: number; w4a16: number; copied: number };
  /**
   * Values that bf16 → f16 did not keep exactly: magnitudes below 2⁻¹⁷ (f16 subnormals, absolute
   * error ≤ 2⁻²⁵; a few low-rank entries of a real checkpoint) or above 65504 (none expected).
   */
  inexact: number;
}

const dtypeOf = (d: Dtype): Dtype => d;

/** Output tensor specs of one plan item, from the source header (no data read). */
function specsOf(r: SafetensorsReader, item: PlanItem, q: NunchakuQuantConfig): TensorSpec[] {
  const info = (n: string) => r.tensors.get(n)!;
  const spec = (suffix: string, dtype: Dtype, shape: number[]): TensorSpec => {
    const bytes = { U32: 4, F32: 4, F16: 2, F8_E4M3: 1 }[dtype as "U32"] ?? 2;
    return {
      name: `${item.dst}.${suffix}`,
      dtype,
      shape,
      byteLength: bytes * shape.reduce((a, b) => a * b, 1),
    };
  };
  if (item.kind === "copy" || item.kind === "swap") {
    const t = info(item.src);
    return [{
      name: item.dst,
      dtype: dtypeOf(t.dtype),
      shape: t.shape,
      byteLength: t.end - t.begin,
    }];
  }
  const qw = info(`${item.src}.qweight`).shape;
  if (item.kind === "w4a16") {
    const n = qw[0] * 4, k = qw[1] * 2;
    return [
      spec("qweight", "U32", [n, k / 8]),
      spec("wscales", "F16", [n, k / 64]),
      spec("wzeros", "F16", [n, k / 64]),
      spec("bias", "F32", [n]),
    ];
  }
  const n = qw[0], k = qw[1] * 2;
  const has = (s: string) => r.tensors.has(`${item.src}.${s}`);
  const out = [spec("qweight", "U32", [n, k / 8])];
  if (q.precision === "int4") out.push(spec("wscales", "F16", [n, k / 64]));
  else {
    out.push(spec("wscales", "F8_E4M3", [n, k / 16]), spec("tensor_scale", "F32", [1]));
    if (has("wcscales")) out.push(spec("channel_scale", "F32", [n]));
  }
  out.push(spec("smooth", "F32", [k]));
  if (has("lora_down")) {
    const rank = info(`${item.src}.lora_down`).shape[1];
    out.push(spec("lora_down", "F16", [rank, k]), spec("lora_up", "F16", [n, rank]));
  }
  if (has("bias")) out.push(spec("bias", "F32", [n]));
  return out;
}

/** The halves of a [2D, …] tensor swapped (diffusers' scale, shift → BFL's shift, scale). */
function swapHalves(data: Uint8Array): Uint8Array {
  const half = data.length / 2, out = new Uint8Array(data.length);
  out.set(data.subarray(half), 0);
  out.set(data.subarray(0, half), half);
  return out;
}

/**
 * Import the Nunchaku FLUX checkpoint `input` into our file `output`. Throws a
 * {@link FormatError} (naming the tensor where there is one) for a file that is not a Nunchaku
 * FLUX checkpoint, an unknown quantization config, a missing config, missing tensors, or a shape
 * that is not a multiple of Nunchaku's tiles; nothing is written then.
 *
 * @example
 * ```ts ignore
 * import { importNunchakuFlux } from "./nunchaku_flux.ts";
 * const r = await importNunchakuFlux(
 *   "svdq-int4_r32-flux.1-schnell.safetensors",
 *   "flux.1-schnell.int4.safetensors",
 * );
 * console.log(r.precision, r.counts); // "int4" { w4a4: 304, w4a16: 76, copied: … } for FLUX.1
 * ```
 */
export async function importNunchakuFlux(
  input: string,
  output: string,
  opts: ImportOptions = {},
): Promise<ImportReport> {
  const r = await SafetensorsReader.open(input);
  try {
    const q = parseNunchakuQuantConfig(input, r.metadata.quantization_config);
    const cls = r.metadata.model_class;
    if (cls !== undefined && !/flux/i.test(cls)) {
      throw new FormatError(
        input,
        `model_class "${cls}" is not supported: this build imports Nunchaku FLUX checkpoints`,
      );
    }
    let cfg = opts.config;
    if (!cfg && r.metadata.config) {
      try {
        cfg = JSON.parse(r.metadata.config);
      } catch {
        throw new FormatError(input, "metadata config is not JSON; pass the model's config.json");
      }
    }
    if (!cfg) {
      throw new FormatError(
        input,
        'it has no metadata "config"; pass the model\'s config.json (deno task import … --config)',
      );
    }
    const modelConfig = fluxParams(input, cfg);
    const plan = planFluxImport(input, r.tensors.keys());
    const specs = plan.flatMap((item) => specsOf(r, item, q));
    const policy: Record<string, LayerPolicyEntry> = {};
    for (const item of plan) {
      if (item.kind === "w4a4") {
        const actMode = q.precision === "nvfp4"
          ? "nvfp4"
          : item.postGelu
          ? "int4_unsigned"
          : "int4";
        const down = r.tensors.get(`${item.src}.lora_down`);
        policy[item.dst] = {
          method: "svdquant",
          format: q.precision,
          r: down ? down.shape[1] : 0,
          actMode,
          convention: "nunchaku",
        };
      } else if (item.kind === "w4a16") {
        policy[item.dst] = { method: "w4a16", format: "uint4", r: 0 };
      }
    }
    const report: ImportReport = {
      precision: q.precision,
      rank: q.rank,
      counts: { w4a4: 0, w4a16: 0, copied: 0 },
      inexact: 0,
    };
    const tensors = async function* (): AsyncGenerator<QuantTensor> {
      for (let i = 0; i < plan.length; i++) {
        const item = plan[i];
        if (item.kind === "copy" || item.kind === "swap") {
          const info = r.tensors.get(item.src)!;
          const raw = await r.readRaw(item.src);
          yield {
            name: item.dst,
            dtype: info.dtype,
            shape: info.shape,
            data: item.kind === "swap" ? swapHalves(raw) : raw,
          };
          report.counts.copied++;
        } else {
          let c;
          try {
            c = item.kind === "w4a4"
              ? canonicalW4A4(await readNunchakuW4A4(r, item.src, q.precision))
              : canonicalW4A16(await readNunchakuW4A16(r, item.src, item.splits));
          } catch (e) {
            if (!(e instanceof RangeError)) throw e;
            throw new FormatError(input, e.message, item.src);
          }
          report.counts[item.kind]++;
          report.inexact += c.inexact;
          for (const [suffix, t] of c.tensors) {
            yield { name: `${item.dst}.${suffix}`, dtype: t.dtype, shape: t.shape, data: t.data };
          }
        }
        opts.onItem?.(item, i, plan.length);
      }
    };
    const quantConfig: QuantConfig = {
      method: "svdquant",
      weightFormat: q.precision,
      groupSize: q.groupSize,
      rank: q.rank,
      actFormat: q.precision,
      scaling: "smooth",
    };
    const source = {
      format: "nunchaku",
      file: input.slice(input.lastIndexOf("/") + 1),
      bytes: r.fileSize,
      quantization_config: q.raw,
      model_class: cls ?? null,
    };
    await writeQuantFile(
      output,
      {
        quantConfig,
        modelConfig,
        family: "flux",
        policy,
        extra: { source: JSON.stringify(source) },
      },
      tensors(),
      { specs },
    );
    return report;
  } finally {
    r.close();
  }
}
