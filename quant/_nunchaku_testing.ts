/**
 * Test helpers: the Nunchaku fixture layers (tests/fixtures/nunchaku/) as the importer reads them,
 * with their truth tensors.
 *
 * @module
 */
import {
  fromFloat32,
  SafetensorsReader,
  SafetensorsWriter,
  toFloat32,
} from "../formats/safetensors.ts";
import { type LayerPolicyEntry, type QuantTensor, writeQuantFile } from "../formats/format.ts";
import { fluxParams, planFluxImport } from "./nunchaku_flux.ts";
import {
  canonicalW4A16,
  canonicalW4A4,
  type NunchakuW4A16,
  type NunchakuW4A4,
  parseNunchakuQuantConfig,
  readNunchakuW4A4,
} from "./nunchaku.ts";
import { type PackedTensor, packNunchakuW4A16, packNunchakuW4A4 } from "./nunchaku_pack.ts";
import { type PackedWeight, roundBf16, unpackF16, type WeightFormat } from "../formats/packing.ts";
import { Rng } from "../gpu/_testing.ts";

/** Folder of the fixture files. */
export const DIR: string = new URL("../tests/fixtures/nunchaku/", import.meta.url).pathname;
/** Rows of the fixtures' input x. */
export const M = 6;
/** Layer prefix of each fixture file. */
export const FIXTURE_PREFIX = {
  int4: "transformer_blocks.0.mlp_fc1",
  nvfp4: "transformer_blocks.0.qkv_proj",
} as const;

/** The fixture layer `p` read by the importer, and the truth file's tensors as f32 / raw. */
export async function loadFixture(p: "int4" | "nvfp4") {
  const r = await SafetensorsReader.open(`${DIR}${p}_layer.safetensors`);
  let layer: NunchakuW4A4, cfg;
  try {
    cfg = parseNunchakuQuantConfig(r.path, r.metadata.quantization_config);
    layer = await readNunchakuW4A4(r, FIXTURE_PREFIX[p], cfg.precision);
  } finally {
    r.close();
  }
  const t = await SafetensorsReader.open(`${DIR}${p}_truth.safetensors`);
  const truth = new Map<string, Float32Array>(), raw = new Map<string, Uint8Array>();
  try {
    for (const [name, info] of t.tensors) {
      raw.set(name, await t.readRaw(name));
      if (["F32", "BF16"].includes(info.dtype)) {
        truth.set(name, toFloat32(info.dtype, raw.get(name)!));
      }
    }
  } finally {
    t.close();
  }
  return { layer, cfg, truth, raw };
}

/** Our packed weight of a canonical layer, for the packing.ts helpers and references. */
export function packedOf(layer: NunchakuW4A4): PackedWeight {
  const c = canonicalW4A4(layer).tensors;
  const qweight = new Uint32Array(c.get("qweight")!.data.slice().buffer);
  const ws = c.get("wscales")!.data;
  if (layer.format === "int4") {
    const wscales = unpackF16(new Uint32Array(ws.slice().buffer), layer.n * layer.k / 64);
    return { format: "int4", n: layer.n, k: layer.k, qweight, wscales };
  }
  const ts = new Float32Array(c.get("tensor_scale")!.data.slice().buffer)[0];
  return { format: "nvfp4", n: layer.n, k: layer.k, qweight, wscales: ws, tensorScale: ts };
}

// ---------------------------------------------------------------------------------------------
// A tiny random FLUX checkpoint in Nunchaku's layout (built by our packer)

/** Diffusers config of the tiny FLUX model: D = 128 (2 heads × 64), MLP 512, 1 + 1 blocks. */
export const TINY_FLUX_CONFIG = {
  _class_name: "FluxTransformer2DModel",
  in_channels: 64,
  num_layers: 1,
  num_single_layers: 1,
  attention_head_dim: 64,
  num_attention_heads: 2,
  joint_attention_dim: 64,
  pooled_projection_dim: 32,
  guidance_embeds: false,
  axes_dims_rope: [16, 24, 24],
};

/** The tiny checkpoint's layers in natural order, by our (BFL) layer name. */
export interface TinyNunchakuFlux {
  /** W4A4 layers. */
  w4a4: Map<string, NunchakuW4A4>;
  /** AWQ adaLN layers. */
  w4a16: Map<string, NunchakuW4A16>;
  /** 16-bit tensors by Nunchaku name, bf16 values. */
  float: Map<string, Float32Array>;
  /** Their shapes. */
  floatShapes: Map<string, number[]>;
  /** The diffusers config written in the metadata. */
  config: typeof TINY_FLUX_CONFIG;
}

const QUANT_CONFIGS = {
  int4: {
    method: "svdquant",
    weight: { dtype: "int4", scale_dtype: null, group_size: 64 },
    activation: { dtype: "int4", scale_dtype: null, group_size: 64 },
    rank: 16,
  },
  nvfp4: {
    method: "svdquant",
    weight: { dtype: "fp4_e2m1_all", scale_dtype: [null, "fp8_e4m3_nan"], group_size: 16 },
    activation: { dtype: "fp4_e2m1_all", scale_dtype: "fp8_e4m3_nan", group_size: 16 },
    rank: 16,
  },
};

/**
 * Write a random tiny FLUX checkpoint in Nunchaku's layout (v0 names, metadata `config`,
 * `quantization_config`, `model_class`) to `path`; every value is representable in the stored
 * dtypes, so the import is exact. `edit` may change the tensor table before writing (tests of
 * bad files). `config` changes {@linkcode TINY_FLUX_CONFIG} (the width D = heads · head dim
 * must stay a multiple of 128; benchmarks scale it, the gen test matches a model folder's
 * encoders). Returns the natural-order values.
 */
export async function writeTinyNunchakuFlux(
  path: string,
  precision: WeightFormat,
  seed: number,
  edit?: (tensors: Map<string, PackedTensor>, metadata: Record<string, string>) => void,
  config: Partial<typeof TINY_FLUX_CONFIG> = {},
): Promise<TinyNunchakuFlux> {
  const cfg = { ...TINY_FLUX_CONFIG, ...config };
  const rng = new Rng(seed);
  const b16 = (a: Float32Array) => a.map(roundBf16);
  const hd = cfg.attention_head_dim, D = cfg.num_attention_heads * hd, MLP = 4 * D, R = 16;
  const out: TinyNunchakuFlux = {
    w4a4: new Map(),
    w4a16: new Map(),
    float: new Map(),
    floatShapes: new Map(),
    config: cfg,
  };
  const tensors = new Map<string, PackedTensor>();
  const put = (prefix: string, t: Map<string, PackedTensor>) => {
    for (const [s, v] of t) tensors.set(`${prefix}.${s}`, v);
  };
  const w4a4 = (src: string, dst: string, n: number, k: number, bias: boolean, wc = false) => {
    const l: NunchakuW4A4 = {
      name: src,
      format: precision,
      n,
      k,
      r: R,
      codes: Uint8Array.from({ length: n * k }, () => rng.int(0, 15)),
      wtscale: precision === "nvfp4" ? roundBf16(0.02 * (1 + rng.next())) : 1,
      smooth: b16(Float32Array.from({ length: k }, () => Math.exp(0.3 * rng.normal()))),
      loraDown: b16(rng.normals(R * k, 0.05)),
      loraUp: b16(rng.normals(n * R, 0.05)),
    };
    if (precision === "int4") {
      l.scales = b16(Float32Array.from({ length: n * k / 64 }, () => 0.004 + 0.004 * rng.next()));
    } else {
      l.scalesE4m3 = Uint8Array.from({ length: n * k / 16 }, () => rng.int(36, 52));
      if (wc) l.wcscales = b16(Float32Array.from({ length: n }, () => 0.5 + rng.next()));
    }
    if (bias) l.bias = b16(rng.normals(n, 0.1));
    out.w4a4.set(dst, l);
    put(src, packNunchakuW4A4(l));
  };
  const awq = (src: string, dst: string, n: number, k: number, splits: number) => {
    const g = k / 64;
    const scales = b16(Float32Array.from({ length: n * g }, () => 0.002 + 0.002 * rng.next()));
    const chunk = n / splits;
    const l: NunchakuW4A16 = {
      name: src,
      n,
      k,
      codes: Uint8Array.from({ length: n * k }, () => rng.int(0, 15)),
      scales,
      zeros: scales.map((s) => roundBf16(-7 * s)),
      bias: Float32Array.from({ length: n }, (_, i) => {
        const c = Math.floor(i / chunk);
        const v = 0.1 * rng.normal();
        return c === 1 || c === splits - 2 ? roundBf16(1 + v) - 1 : roundBf16(v);
      }),
    };
    out.w4a16.set(dst, l);
    put(src, packNunchakuW4A16(l, splits));
  };
  const float = (name: string, shape: number[], scale: number, offset = 0) => {
    const v = b16(rng.normals(shape.reduce((a, b) => a * b, 1), scale).map((x) => x + offset));
    out.float.set(name, v);
    out.floatShapes.set(name, shape);
    tensors.set(name, { dtype: "BF16", shape, data: fromFloat32("BF16", v) });
  };
  const tb = "transformer_blocks.0", db = "double_blocks.0";
  awq(`${tb}.norm1.linear`, `${db}.img_mod.lin`, 6 * D, D, 6);
  awq(`${tb}.norm1_context.linear`, `${db}.txt_mod.lin`, 6 * D, D, 6);
  w4a4(`${tb}.qkv_proj`, `${db}.img_attn.qkv`, 3 * D, D, true, true);
  w4a4(`${tb}.qkv_proj_context`, `${db}.txt_attn.qkv`, 3 * D, D, true);
  w4a4(`${tb}.out_proj`, `${db}.img_attn.proj`, D, D, true);
  w4a4(`${tb}.out_proj_context`, `${db}.txt_attn.proj`, D, D, true);
  w4a4(`${tb}.mlp_fc1`, `${db}.img_mlp.0`, MLP, D, true);
  w4a4(`${tb}.mlp_fc2`, `${db}.img_mlp.2`, D, MLP, true);
  w4a4(`${tb}.mlp_context_fc1`, `${db}.txt_mlp.0`, MLP, D, true);
  w4a4(`${tb}.mlp_context_fc2`, `${db}.txt_mlp.2`, D, MLP, true);
  for (const q of ["norm_q", "norm_k", "norm_added_q", "norm_added_k"]) {
    float(`${tb}.${q}.weight`, [hd], 0.1, 1);
  }
  const sb = "single_transformer_blocks.0", sd = "single_blocks.0";
  awq(`${sb}.norm.linear`, `${sd}.modulation.lin`, 3 * D, D, 3);
  w4a4(`${sb}.qkv_proj`, `${sd}.linear1_qkv`, 3 * D, D, true, true);
  w4a4(`${sb}.mlp_fc1`, `${sd}.linear1_mlp`, MLP, D, true);
  w4a4(`${sb}.out_proj`, `${sd}.linear2_attn`, D, D, false);
  w4a4(`${sb}.mlp_fc2`, `${sd}.linear2_mlp`, D, MLP, true);
  float(`${sb}.norm_q.weight`, [hd], 0.1, 1);
  float(`${sb}.norm_k.weight`, [hd], 0.1, 1);
  const lin = (name: string, n: number, k: number) => {
    float(`${name}.weight`, [n, k], 1 / Math.sqrt(k));
    float(`${name}.bias`, [n], 0.05);
  };
  lin("x_embedder", D, cfg.in_channels);
  lin("context_embedder", D, cfg.joint_attention_dim);
  lin("time_text_embed.timestep_embedder.linear_1", D, 256);
  lin("time_text_embed.timestep_embedder.linear_2", D, D);
  lin("time_text_embed.text_embedder.linear_1", D, cfg.pooled_projection_dim);
  lin("time_text_embed.text_embedder.linear_2", D, D);
  if (cfg.guidance_embeds) {
    lin("time_text_embed.guidance_embedder.linear_1", D, 256);
    lin("time_text_embed.guidance_embedder.linear_2", D, D);
  }
  lin("norm_out.linear", 2 * D, D);
  lin("proj_out", cfg.in_channels, D);
  const metadata: Record<string, string> = {
    config: JSON.stringify(cfg),
    quantization_config: JSON.stringify(QUANT_CONFIGS[precision]),
    model_class: "NunchakuFluxTransformer2dModel",
  };
  edit?.(tensors, metadata);
  const w = await SafetensorsWriter.create(path, {
    tensors: [...tensors].map(([name, t]) => ({
      name,
      dtype: t.dtype,
      shape: t.shape,
      byteLength: t.data.byteLength,
    })),
    metadata,
  });
  for (const [name, t] of tensors) await w.write(name, t.data);
  await w.commit();
  return out;
}

/**
 * The same quantized model as {@linkcode writeTinyNunchakuFlux} wrote, in our own format written
 * directly from the natural values (canonical tensors, BFL names, the importer's policy), with no
 * Nunchaku layout in between: what the import must reproduce.
 */
export async function writeTinyOursFlux(
  path: string,
  t: TinyNunchakuFlux,
  precision: WeightFormat,
): Promise<void> {
  const names = [
    ...t.float.keys(),
    ...[...t.w4a4.values(), ...t.w4a16.values()].map((l) => `${l.name}.qweight`),
  ];
  const bySrc = new Map<string, NunchakuW4A4 | NunchakuW4A16>();
  for (const l of [...t.w4a4.values(), ...t.w4a16.values()]) bySrc.set(l.name, l);
  const tensors: QuantTensor[] = [];
  const policy: Record<string, LayerPolicyEntry> = {};
  for (const item of planFluxImport(path, names)) {
    if (item.kind === "copy" || item.kind === "swap") {
      let v = t.float.get(item.src)!;
      if (item.kind === "swap") {
        const h = v.length / 2;
        v = Float32Array.from([...v.subarray(h), ...v.subarray(0, h)]);
      }
      const shape = t.floatShapes.get(item.src)!;
      tensors.push({ name: item.dst, dtype: "BF16", shape, data: fromFloat32("BF16", v) });
      continue;
    }
    const l = bySrc.get(item.src)!;
    const c = item.kind === "w4a4"
      ? canonicalW4A4(l as NunchakuW4A4)
      : canonicalW4A16(l as NunchakuW4A16);
    for (const [suffix, e] of c.tensors) {
      tensors.push({ name: `${item.dst}.${suffix}`, dtype: e.dtype, shape: e.shape, data: e.data });
    }
    policy[item.dst] = item.kind === "w4a4"
      ? {
        method: "svdquant",
        format: precision,
        r: (l as NunchakuW4A4).r,
        actMode: precision === "nvfp4" ? "nvfp4" : item.postGelu ? "int4_unsigned" : "int4",
        convention: "nunchaku",
      }
      : { method: "w4a16", format: "uint4", r: 0 };
  }
  await writeQuantFile(path, {
    quantConfig: {
      method: "svdquant",
      weightFormat: precision,
      groupSize: precision === "int4" ? 64 : 16,
      rank: 16,
      actFormat: precision,
      scaling: "smooth",
    },
    modelConfig: fluxParams(path, t.config),
    family: "flux",
    policy,
  }, tensors);
}
