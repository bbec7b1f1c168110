/**
 * Random T5 v1.1 encoder checkpoints in the transformers layout, for tests and benchmarks of
 * shapes the fixtures do not have. Initialisation as upstream's `_init_weights` (Mesh-TF scales:
 * q ~ N(0, (d_model·d_kv)^-½), k/v ~ N(0, d_model^-½), o ~ N(0, (H·d_kv)^-½), wi ~ N(0,
 * d_model^-½), wo ~ N(0, d_ff^-½), embeddings ~ N(0, 1)), then RMSNorm weights 1 + 0.25·N(0, 1)
 * and the relative-bias table N(0, 1), as the fixture generator does.
 *
 * @module
 */
import { Rng } from "../../kernels/_testing.ts";
import { SafetensorsWriter } from "../../quant/safetensors.ts";
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
  const out: [string, number[], (rng: Rng, n: number) => Float32Array][] = [
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

/** Write a random T5 encoder (F32, config in the metadata) to `path`. */
export async function writeRandomT5(path: string, cfg: T5Config, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const list = t5Tensors(cfg);
  const w = await SafetensorsWriter.create(path, {
    tensors: list.map(([name, shape]) => ({
      name,
      dtype: "F32",
      shape,
      byteLength: 4 * shape.reduce((a, b) => a * b, 1),
    })),
    metadata: { format: "pt", config: JSON.stringify(t5ConfigJson(cfg)) },
  });
  for (const [name, shape, init] of list) {
    const v = init(rng, shape.reduce((a, b) => a * b, 1));
    await w.write(name, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  await w.commit();
}
