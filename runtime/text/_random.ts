/**
 * Random T5 v1.1 encoder and CLIP text model checkpoints in the transformers layout, for tests
 * and benchmarks of shapes the fixtures do not have (T5-XXL, CLIP-L). Initialisation as upstream's `_init_weights` (Mesh-TF scales:
 * q ~ N(0, (d_model·d_kv)^-½), k/v ~ N(0, d_model^-½), o ~ N(0, (H·d_kv)^-½), wi ~ N(0,
 * d_model^-½), wo ~ N(0, d_ff^-½), embeddings ~ N(0, 1)), then RMSNorm weights 1 + 0.25·N(0, 1)
 * and the relative-bias table N(0, 1), as the fixture generator does.
 *
 * @module
 */
import { Rng } from "../../gpu/_testing.ts";
import { SafetensorsWriter } from "../../formats/safetensors.ts";
import type { T5Config } from "./t5.ts";

/** The config.json form of `cfg` (what `t5ConfigFrom` reads). */
export function t5ConfigJson(cfg: T5Config): Record<string, unknown> {
  return {
    model_type: "t5",
    vocab_size: cfg.vocabSize,
    d_model: cfg.dModel,
    d_kv: cfg.dKv,
    num_heads: cfg.numHeads,
    d_ff: cfg.dFf,
    num_layers: cfg.numLayers,
    relative_attention_num_buckets: cfg.numBuckets,
    relative_attention_max_distance: cfg.maxDistance,
    layer_norm_epsilon: cfg.eps,
    feed_forward_proj: "gated-gelu",
  };
}

/** The tensors of a random T5 encoder: name → [shape, init]. */
export function t5Tensors(
  cfg: T5Config,
): [string, number[], (rng: Rng, n: number) => Float32Array][] {
  const { dModel: d, dKv, numHeads: h, dFf: f } = cfg;
  const inner = h * dKv;
  const normal = (s: number) => (rng: Rng, n: number) => rng.normals(n, s);
  const norm = (rng: Rng, n: number) => rng.normals(n, 0.25).map((v) => 1 + v);
  const out: TensorList = [
    ["shared.weight", [cfg.vocabSize, d], normal(1)],
  ];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `encoder.block.${i}.layer`;
    out.push(
      [`${p}.0.SelfAttention.q.weight`, [inner, d], normal((d * dKv) ** -0.5)],
      [`${p}.0.SelfAttention.k.weight`, [inner, d], normal(d ** -0.5)],
      [`${p}.0.SelfAttention.v.weight`, [inner, d], normal(d ** -0.5)],
      [`${p}.0.SelfAttention.o.weight`, [d, inner], normal(inner ** -0.5)],
    );
    if (i === 0) {
      out.push([
        `${p}.0.SelfAttention.relative_attention_bias.weight`,
        [cfg.numBuckets, h],
        normal(1),
      ]);
    }
    out.push(
      [`${p}.0.layer_norm.weight`, [d], norm],
      [`${p}.1.DenseReluDense.wi_0.weight`, [f, d], normal(d ** -0.5)],
      [`${p}.1.DenseReluDense.wi_1.weight`, [f, d], normal(d ** -0.5)],
      [`${p}.1.DenseReluDense.wo.weight`, [d, f], normal(f ** -0.5)],
      [`${p}.1.layer_norm.weight`, [d], norm],
    );
  }
  out.push(["encoder.final_layer_norm.weight", [d], norm]);
  return out;
}

type TensorList = [string, number[], (rng: Rng, n: number) => Float32Array][];

async function writeRandom(
  path: string,
  list: TensorList,
  config: Record<string, unknown>,
  seed: number,
  dtype: "F32" | "F16",
): Promise<void> {
  const rng = new Rng(seed);
  const e = dtype === "F32" ? 4 : 2;
  const w = await SafetensorsWriter.create(path, {
    tensors: list.map(([name, shape]) => ({
      name,
      dtype,
      shape,
      byteLength: e * shape.reduce((a, b) => a * b, 1),
    })),
    metadata: { format: "pt", config: JSON.stringify(config) },
  });
  for (const [name, shape, init] of list) {
    const v32 = init(rng, shape.reduce((a, b) => a * b, 1));
    const v = dtype === "F32" ? v32 : Float16Array.from(v32);
    await w.write(name, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  await w.commit();
}

/** Write a random T5 encoder (config in the metadata) to `path`; F32 unless `dtype` says F16. */
export async function writeRandomT5(
  path: string,
  cfg: T5Config,
  seed: number,
  dtype: "F32" | "F16" = "F32",
): Promise<void> {
  await writeRandom(path, t5Tensors(cfg), t5ConfigJson(cfg), seed, dtype);
}

/** CLIP text model shape for {@linkcode writeRandomClip}. */
export interface RandomClipShape {
  vocab: number;
  hidden: number;
  heads: number;
  layers: number;
  intermediate: number;
}

/**
 * Write a random CLIP text model (`text_model.*` keys, quick-GELU, 77 positions) to `path`:
 * embeddings 0.5·N / 0.3·N, LayerNorm weights 1 + 0.2·N and biases 0.1·N, linear weights
 * N(0, 1/fan_in), linear biases 0.1·N (the fixture generator's scales).
 */
export async function writeRandomClip(
  path: string,
  s: RandomClipShape,
  seed: number,
  dtype: "F32" | "F16" = "F32",
): Promise<void> {
  const d = s.hidden, f = s.intermediate;
  const normal = (sd: number) => (rng: Rng, n: number) => rng.normals(n, sd);
  const ln = (rng: Rng, n: number) => rng.normals(n, 0.2).map((v) => 1 + v);
  const list: TensorList = [
    ["text_model.embeddings.token_embedding.weight", [s.vocab, d], normal(0.5)],
    ["text_model.embeddings.position_embedding.weight", [77, d], normal(0.3)],
  ];
  for (let i = 0; i < s.layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const proj of ["q", "k", "v", "out"]) {
      list.push([`${p}.self_attn.${proj}_proj.weight`, [d, d], normal(d ** -0.5)]);
      list.push([`${p}.self_attn.${proj}_proj.bias`, [d], normal(0.1)]);
    }
    list.push(
      [`${p}.layer_norm1.weight`, [d], ln],
      [`${p}.layer_norm1.bias`, [d], normal(0.1)],
      [`${p}.layer_norm2.weight`, [d], ln],
      [`${p}.layer_norm2.bias`, [d], normal(0.1)],
      [`${p}.mlp.fc1.weight`, [f, d], normal(d ** -0.5)],
      [`${p}.mlp.fc1.bias`, [f], normal(0.1)],
      [`${p}.mlp.fc2.weight`, [d, f], normal(f ** -0.5)],
      [`${p}.mlp.fc2.bias`, [d], normal(0.1)],
    );
  }
  list.push(
    ["text_model.final_layer_norm.weight", [d], ln],
    ["text_model.final_layer_norm.bias", [d], normal(0.1)],
  );
  const config = {
    model_type: "clip_text_model",
    vocab_size: s.vocab,
    hidden_size: d,
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    intermediate_size: f,
    max_position_embeddings: 77,
    hidden_act: "quick_gelu",
    layer_norm_eps: 1e-5,
    eos_token_id: 2,
  };
  await writeRandom(path, list, config, seed, dtype);
}
