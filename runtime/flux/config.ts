/**
 * FLUX.1 transformer hyper-parameters, read from the places users' files keep them: our metadata
 * `model_config` (BFL's `FluxParams` field names), a diffusers `config.json`
 * (`FluxTransformer2DModel`), or, for a bare BFL checkpoint, the tensor shapes.
 *
 * @module
 */
import { FormatError } from "../../gpu/errors.ts";

/** FLUX transformer hyper-parameters, in BFL's `FluxParams` names. */
export interface FluxConfig {
  /** Channels of a packed latent token (16 latent channels × 2×2 = 64 in FLUX.1). */
  in_channels: number;
  /** Channels of an output token (= in_channels in FLUX.1). */
  out_channels: number;
  /** Width of the pooled text vector (CLIP-L: 768). */
  vec_in_dim: number;
  /** Width of the text tokens (T5-XXL: 4096). */
  context_in_dim: number;
  /** Hidden width D (3072). */
  hidden_size: number;
  /** MLP width as a multiple of D (4). */
  mlp_ratio: number;
  /** Attention heads H (24); head dim D/H = Σ axes_dim. */
  num_heads: number;
  /** Double-stream blocks (19). */
  depth: number;
  /** Single-stream blocks (38). */
  depth_single_blocks: number;
  /** RoPE widths per position axis (16, 56, 56); they sum to the head dim. */
  axes_dim: number[];
  /** RoPE base θ (10000). */
  theta: number;
  /** Whether the qkv projections have a bias (true). */
  qkv_bias: boolean;
  /** Whether a guidance embedding exists (FLUX.1-dev: true; schnell: false). */
  guidance_embed: boolean;
}

/** FLUX.1-dev / -schnell sizes (schnell has `guidance_embed: false`). */
export const FLUX1_CONFIG: Readonly<FluxConfig> = {
  in_channels: 64,
  out_channels: 64,
  vec_in_dim: 768,
  context_in_dim: 4096,
  hidden_size: 3072,
  mlp_ratio: 4,
  num_heads: 24,
  depth: 19,
  depth_single_blocks: 38,
  axes_dim: [16, 56, 56],
  theta: 10000,
  qkv_bias: true,
  guidance_embed: true,
};

/** Head dim D/H. */
export function headDim(c: FluxConfig): number {
  return c.hidden_size / c.num_heads;
}

/** MLP width. */
export function mlpWidth(c: FluxConfig): number {
  return Math.round(c.hidden_size * c.mlp_ratio);
}

/** Check a config's consistency; `where` names the source in the FormatError. */
export function checkFluxConfig(c: FluxConfig, where: string): FluxConfig {
  const ints = [
    "in_channels",
    "out_channels",
    "vec_in_dim",
    "context_in_dim",
    "hidden_size",
    "num_heads",
    "depth",
    "depth_single_blocks",
  ] as const;
  for (const k of ints) {
    if (!Number.isInteger(c[k]) || c[k] < (k.startsWith("depth") ? 0 : 1)) {
      throw new FormatError(where, `FLUX config ${k}=${c[k]} is not a valid integer`);
    }
  }
  if (c.hidden_size % c.num_heads !== 0) {
    throw new FormatError(
      where,
      `FLUX config hidden_size=${c.hidden_size} is not a multiple of num_heads=${c.num_heads}`,
    );
  }
  const sum = c.axes_dim.reduce((a, b) => a + b, 0);
  if (sum !== headDim(c) || c.axes_dim.some((d) => d % 2 !== 0)) {
    throw new FormatError(
      where,
      `FLUX config axes_dim [${c.axes_dim}] must be even widths summing to the head dim ` +
        `${headDim(c)}`,
    );
  }
  return c;
}

/** A config from BFL `FluxParams` JSON (our metadata `model_config`). */
export function fluxConfigFromBfl(json: Record<string, unknown>, where: string): FluxConfig {
  const n = (k: string, d?: number) => (json[k] ?? d) as number;
  return checkFluxConfig({
    in_channels: n("in_channels"),
    out_channels: n("out_channels", n("in_channels")),
    vec_in_dim: n("vec_in_dim"),
    context_in_dim: n("context_in_dim"),
    hidden_size: n("hidden_size"),
    mlp_ratio: n("mlp_ratio", 4),
    num_heads: n("num_heads"),
    depth: n("depth"),
    depth_single_blocks: n("depth_single_blocks"),
    axes_dim: (json.axes_dim as number[]) ?? [...FLUX1_CONFIG.axes_dim],
    theta: n("theta", 10000),
    qkv_bias: (json.qkv_bias as boolean) ?? true,
    guidance_embed: Boolean(json.guidance_embed),
  }, where);
}

/** A config from a diffusers `FluxTransformer2DModel` config.json. */
export function fluxConfigFromDiffusers(json: Record<string, unknown>, where: string): FluxConfig {
  const heads = json.num_attention_heads as number, hd = json.attention_head_dim as number;
  const inCh = json.in_channels as number;
  return checkFluxConfig({
    in_channels: inCh,
    out_channels: (json.out_channels as number | null) ?? inCh,
    vec_in_dim: (json.pooled_projection_dim as number) ?? 768,
    context_in_dim: (json.joint_attention_dim as number) ?? 4096,
    hidden_size: heads * hd,
    mlp_ratio: (json.mlp_ratio as number) ?? 4,
    num_heads: heads,
    depth: json.num_layers as number,
    depth_single_blocks: json.num_single_layers as number,
    axes_dim: (json.axes_dims_rope as number[]) ?? [...FLUX1_CONFIG.axes_dim],
    theta: (json.theta as number) ?? 10000,
    qkv_bias: true,
    guidance_embed: Boolean(json.guidance_embeds),
  }, where);
}

/** Whether a JSON config is in diffusers' names (else BFL's). */
export function isDiffusersConfig(json: Record<string, unknown>): boolean {
  return "num_layers" in json || "_class_name" in json || "joint_attention_dim" in json;
}

/**
 * A config from tensor shapes of a BFL-layout checkpoint with no config (the released
 * `flux1-dev.safetensors`): widths from the embedders, depths from the block names, heads from the
 * QK-norm scale, guidance from the presence of `guidance_in`. RoPE axes: FLUX.1's (16, 56, 56)
 * when the head dim is 128, else an error asking for a config.
 */
export function fluxConfigFromShapes(
  shapes: ReadonlyMap<string, readonly number[]>,
  where: string,
): FluxConfig {
  const shape = (name: string) => {
    const s = shapes.get(name);
    if (!s) {
      throw new FormatError(
        where,
        `no config and no tensor ${name}: not a FLUX transformer in BFL layout`,
      );
    }
    return s;
  };
  const count = (prefix: string) => {
    let n = 0;
    while (
      shapes.has(`${prefix}.${n}.norm.query_norm.scale`) ||
      shapes.has(`${prefix}.${n}.img_attn.norm.query_norm.scale`)
    ) n++;
    return n;
  };
  const [hidden, inCh] = shape("img_in.weight");
  const hd = shape("double_blocks.0.img_attn.norm.query_norm.scale")[0];
  if (hd !== 128) {
    throw new FormatError(
      where,
      `head dim ${hd} without a config: the RoPE axes are known only for FLUX.1 (128); ` +
        "put a config.json beside the file",
    );
  }
  return checkFluxConfig({
    in_channels: inCh,
    out_channels: shape("final_layer.linear.weight")[0],
    vec_in_dim: shape("vector_in.in_layer.weight")[1],
    context_in_dim: shape("txt_in.weight")[1],
    hidden_size: hidden,
    mlp_ratio: shape("double_blocks.0.img_mlp.0.weight")[0] / hidden,
    num_heads: hidden / hd,
    depth: count("double_blocks"),
    depth_single_blocks: count("single_blocks"),
    axes_dim: [...FLUX1_CONFIG.axes_dim],
    theta: 10000,
    qkv_bias: shapes.has("double_blocks.0.img_attn.qkv.bias"),
    guidance_embed: shapes.has("guidance_in.in_layer.weight"),
  }, where);
}
