/**
 * The FLUX layer policy and the canonical list of a FLUX transformer's tensors.
 *
 * Policy (the one Nunchaku's published SVDQuant FLUX checkpoints apply, so their imported files
 * and ours run through the same graph): every attention and MLP linear of the double blocks
 * (image and text streams) and of the single blocks W4A4 + low-rank, the MLPs' second linears with
 * post-GELU (unsigned INT4) activations; the modulation linears weight-only INT4 (W4A16); the
 * embedders, the final layer and the norms 16-bit.
 *
 * The single block's fused `linear1` / `linear2` are quantized as the four layers the graph runs
 * (runtime/flux/weights.ts `singleBlockLayers`): `linear1_qkv`, `linear1_mlp`, `linear2_attn`,
 * `linear2_mlp` (the last one post-GELU, with linear2's bias).
 *
 * @module
 */
import type { FluxConfig } from "../runtime/flux/config.ts";
import type { LayerPolicyRule } from "./policy.ts";

/** FLUX defaults (see the module doc). */
export const FLUX_POLICY: LayerPolicyRule[] = [
  ...["img", "txt"].flatMap((s): LayerPolicyRule[] => [
    { pattern: `double_blocks.*.${s}_attn.qkv`, method: "svdquant" },
    { pattern: `double_blocks.*.${s}_attn.proj`, method: "svdquant" },
    { pattern: `double_blocks.*.${s}_mlp.0`, method: "svdquant" },
    { pattern: `double_blocks.*.${s}_mlp.2`, method: "svdquant", postGelu: true },
    { pattern: `double_blocks.*.${s}_mod.lin`, method: "w4a16" },
  ]),
  { pattern: "single_blocks.*.linear1_qkv", method: "svdquant" },
  { pattern: "single_blocks.*.linear1_mlp", method: "svdquant" },
  { pattern: "single_blocks.*.linear2_attn", method: "svdquant" },
  { pattern: "single_blocks.*.linear2_mlp", method: "svdquant", postGelu: true },
  { pattern: "single_blocks.*.modulation.lin", method: "w4a16" },
  { pattern: "*", method: "float" },
];

/** The hyper-parameters the tensor list depends on (a subset of {@linkcode FluxConfig}). */
export type FluxShapeConfig = Pick<
  FluxConfig,
  | "in_channels"
  | "out_channels"
  | "vec_in_dim"
  | "context_in_dim"
  | "hidden_size"
  | "mlp_ratio"
  | "num_heads"
  | "depth"
  | "depth_single_blocks"
  | "guidance_embed"
>;

/** A linear layer of the canonical list: base name, [N, K], bias or not. */
export interface FluxLinearName {
  /** Canonical base name (tensors are `<base>.weight`, `<base>.bias`). */
  base: string;
  /** Out-features N. */
  n: number;
  /** In-features K. */
  k: number;
  /** Whether the layer has a bias. */
  bias: boolean;
}

/**
 * Every tensor of a FLUX transformer under canonical names, in graph order: the linear layers
 * (the single blocks' split as the graph runs them) and the other tensors (QK-norm scales).
 */
export function fluxTensorList(c: FluxShapeConfig): {
  linears: FluxLinearName[];
  others: { name: string; shape: number[] }[];
} {
  const D = c.hidden_size, mlp = Math.round(D * c.mlp_ratio), hd = D / c.num_heads;
  const linears: FluxLinearName[] = [];
  const others: { name: string; shape: number[] }[] = [];
  const lin = (base: string, n: number, k: number, bias = true) =>
    linears.push({ base, n, k, bias });
  const norms = (p: string) => {
    others.push({ name: `${p}.query_norm.scale`, shape: [hd] });
    others.push({ name: `${p}.key_norm.scale`, shape: [hd] });
  };
  lin("img_in", D, c.in_channels);
  lin("txt_in", D, c.context_in_dim);
  lin("time_in.in_layer", D, 256);
  lin("time_in.out_layer", D, D);
  lin("vector_in.in_layer", D, c.vec_in_dim);
  lin("vector_in.out_layer", D, D);
  if (c.guidance_embed) {
    lin("guidance_in.in_layer", D, 256);
    lin("guidance_in.out_layer", D, D);
  }
  for (let i = 0; i < c.depth; i++) {
    const p = `double_blocks.${i}`;
    for (const s of ["img", "txt"]) {
      lin(`${p}.${s}_mod.lin`, 6 * D, D);
      lin(`${p}.${s}_attn.qkv`, 3 * D, D);
      norms(`${p}.${s}_attn.norm`);
      lin(`${p}.${s}_attn.proj`, D, D);
      lin(`${p}.${s}_mlp.0`, mlp, D);
      lin(`${p}.${s}_mlp.2`, D, mlp);
    }
  }
  for (let i = 0; i < c.depth_single_blocks; i++) {
    const p = `single_blocks.${i}`;
    lin(`${p}.modulation.lin`, 3 * D, D);
    lin(`${p}.linear1_qkv`, 3 * D, D);
    lin(`${p}.linear1_mlp`, mlp, D);
    norms(`${p}.norm`);
    lin(`${p}.linear2_attn`, D, D, false);
    lin(`${p}.linear2_mlp`, D, mlp);
  }
  lin("final_layer.adaLN_modulation.1", 2 * D, D);
  lin("final_layer.linear", c.out_channels, D);
  return { linears, others };
}
