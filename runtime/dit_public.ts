/**
 * Public DiT checkpoints (facebookresearch/DiT: `DiT-XL-2-256x256`, `DiT-XL-2-512x512`, and the
 * smaller DiT-B/L/S, converted to safetensors) carry no metadata of ours: their config is read
 * from the tensor shapes here, and a 1000-class model gets the ImageNet class names shipped in
 * `data/imagenet_classes.json` (from the Apache-2.0 npm package `@tensorflow-models/mobilenet`
 * 2.1.1, `IMAGENET_CLASSES`; the standard ILSVRC-2012 order, so class 207 is "golden retriever").
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import type { TensorInfo } from "../formats/safetensors.ts";
import imagenet from "./data/imagenet_classes.json" with { type: "json" };

/** The 1000 ImageNet-1k class names, by class id. */
export const IMAGENET_CLASSES: readonly string[] = imagenet;

// Heads of the published sizes, by hidden width (DiT-S/B/L/XL); others use head dim 64.
const HEADS: Record<number, number> = { 384: 6, 768: 12, 1024: 16, 1152: 16 };

/** Whether the tensors look like a public DiT state dict. */
export function isPublicDit(tensors: ReadonlyMap<string, TensorInfo>): boolean {
  return tensors.has("x_embedder.proj.weight") && tensors.has("blocks.0.attn.qkv.weight") &&
    tensors.has("final_layer.linear.weight");
}

/**
 * The DiT config of a public checkpoint from its shapes: hidden width and patch from
 * `x_embedder.proj.weight` [D, C, p, p], input size from `pos_embed` [1, (S/p)², D], depth from
 * the `blocks.N` count, classes from the class table (one extra row: the null class), learned
 * sigma from the final layer's p²·2C outputs, MLP ratio, timestep-embedding width, and heads by
 * the published sizes (384 → 6, 768 → 12, 1024 and 1152 → 16; else D/64). The config says
 * `latent: true`: its output is a latent for an autoencoder, not pixels.
 */
export function inferDitConfig(
  path: string,
  tensors: ReadonlyMap<string, TensorInfo>,
): Record<string, unknown> {
  const shape = (name: string, rank: number) => {
    const t = tensors.get(name);
    if (!t || t.shape.length !== rank) {
      throw new FormatError(
        path,
        `cannot infer the DiT config: expected a rank-${rank} tensor (public DiT layout)`,
        name,
      );
    }
    return t.shape;
  };
  const [D, C, p, p2] = shape("x_embedder.proj.weight", 4);
  if (p !== p2) {
    throw new FormatError(path, `non-square patch ${p}×${p2}`, "x_embedder.proj.weight");
  }
  const tokens = shape("pos_embed", 3)[1];
  const grid = Math.round(Math.sqrt(tokens));
  if (grid * grid !== tokens) {
    throw new FormatError(path, `${tokens} positions are not a square grid`, "pos_embed");
  }
  let depth = 0;
  while (tensors.has(`blocks.${depth}.attn.qkv.weight`)) depth++;
  const table = tensors.has("y_embedder.embedding_table.weight")
    ? "y_embedder.embedding_table.weight"
    : "y_embedder.embedding_table";
  const rows = shape(table, 2)[0];
  const outDim = shape("final_layer.linear.weight", 2)[0];
  if (outDim !== p * p * C && outDim !== p * p * 2 * C) {
    throw new FormatError(
      path,
      `${outDim} outputs, expected p²·C or p²·2C`,
      "final_layer.linear.weight",
    );
  }
  const heads = HEADS[D] ?? D / 64;
  if (!Number.isInteger(heads)) {
    throw new FormatError(
      path,
      `cannot infer the head count of hidden width ${D} (not a published DiT size, not a multiple ` +
        "of 64); add metadata model_config with num_heads",
    );
  }
  const numClasses = rows - 1;
  return {
    hidden_size: D,
    depth,
    num_heads: heads,
    patch_size: p,
    in_channels: C,
    input_size: grid * p,
    num_classes: numClasses,
    mlp_ratio: shape("blocks.0.mlp.fc1.weight", 2)[0] / D,
    learn_sigma: outDim === p * p * 2 * C,
    frequency_embedding_size: shape("t_embedder.mlp.0.weight", 2)[1],
    latent: true, // public DiTs denoise SD-VAE latents: an image needs the autoencoder
    ...(numClasses === IMAGENET_CLASSES.length ? { class_names: [...IMAGENET_CLASSES] } : {}),
  };
}
