/**
 * The memory plan of a FLUX generation, computed before anything is uploaded: the bytes of each
 * component's weights as they will sit on the GPU, the transformer's activation buffers at the
 * requested resolution and batch, and the largest single buffer (which must fit the adapter's
 * binding and buffer limits). {@linkcode checkFluxPlan} refuses a plan that cannot fit, saying what
 * would.
 *
 * WebGPU does not report a device's total memory, so the total is checked against a budget the
 * user states (`--vram`), when given; the per-buffer limits are always checked.
 *
 * @module
 */
import type { ActDtype } from "../../kernels/_wgsl.ts";
import { FLUX_POLICY, fluxTensorList } from "../../quant/flux_policy.ts";
import type { LayerPolicyEntry } from "../../formats/format.ts";
import { policyFor } from "../../quant/policy.ts";
import { type FluxConfig, headDim, mlpWidth } from "./config.ts";

/** Bytes by component and the largest single buffer. */
export interface FluxMemoryPlan {
  /** Transformer weights on the GPU (the host keeps the small embedders). */
  transformerWeights: number;
  /** Transformer activation buffers (streams, joint qkv, MLP, W4A4 scratch). */
  activations: number;
  /** Other components (text encoders, autoencoder), as given. */
  others: Record<string, number>;
  /** Largest single buffer and what it is. */
  largest: { name: string; bytes: number };
  /** Sum of everything resident at once. */
  total: number;
  /**
   * What must fit at once: `total`, or with `sequential` loading (text encoders, then the
   * transformer, then the decoder, each freed before the next) the largest of the three.
   */
  peak: number;
  /** Printable lines. */
  lines: string[];
}

/** Bytes of one linear layer's weights on the GPU under a policy entry. */
export function linearBytes(
  n: number,
  k: number,
  bias: boolean,
  p: LayerPolicyEntry,
  dtype: ActDtype,
): number {
  const b = bias ? n * 4 : 0;
  if (p.method === "float") return n * k * (dtype === "f16" ? 2 : 4) + b;
  if (p.method === "w4a16") return n * k / 2 + (n * k / 64) * 2 + b;
  const scales = p.format === "nvfp4" ? n * k / 16 + 4 : (n * k / 64) * 2;
  return n * k / 2 + scales + k * 4 + (p.r * k + n * p.r) * 2 + b;
}

/** Options of {@linkcode fluxMemoryPlan}. */
export interface FluxPlanOptions {
  /** Text tokens per image. */
  txtTokens: number;
  /** Image width in pixels. */
  width: number;
  /** Image height in pixels. */
  height: number;
  /** Images per forward. */
  batch: number;
  /** Activation dtype. */
  dtype: ActDtype;
  /** The transformer's layer policy (default: every layer float, as a float file). */
  policyOf?: (base: string) => LayerPolicyEntry;
  /** Other components' weight bytes (e.g. `{ "T5-XXL (f16)": 9.5e9 }`). */
  others?: Record<string, number>;
  /**
   * Components are loaded one after another and freed (the CLI): `others` maps each group that
   * is resident together to its bytes, and the peak is the largest group or the transformer.
   */
  sequential?: boolean;
}

/**
 * The memory plan of the FLUX transformer `cfg` at the given resolution and batch.
 *
 * @example
 * ```ts
 * import { FLUX1_CONFIG } from "./config.ts";
 * import { fluxMemoryPlan } from "./memory.ts";
 * const plan = fluxMemoryPlan(FLUX1_CONFIG, {
 *   txtTokens: 512, width: 1024, height: 1024, batch: 1, dtype: "f16",
 * });
 * console.log((plan.transformerWeights / 2 ** 30).toFixed(1)); // ≈ 22.1 (GiB, f16)
 * ```
 */
export function fluxMemoryPlan(cfg: FluxConfig, o: FluxPlanOptions): FluxMemoryPlan {
  const policyOf = o.policyOf ?? (() => ({ method: "float", format: "f16", r: 0 }));
  const eb = o.dtype === "f16" ? 2 : 4;
  const D = cfg.hidden_size, mlp = mlpWidth(cfg), B = o.batch;
  const Li = (o.width / 16) * (o.height / 16), Lt = o.txtTokens, L = Li + Lt;
  const host = /^(time_in|vector_in|guidance_in)\./;
  let weights = 0, rMax = 0, w4a4 = false;
  for (const l of fluxTensorList(cfg).linears) {
    if (host.test(l.base)) continue;
    const p = policyOf(l.base);
    weights += linearBytes(l.n, l.k, l.bias, p, o.dtype);
    if (!["float", "w4a16"].includes(p.method)) {
      w4a4 = true;
      rMax = Math.max(rMax, p.r);
    }
  }
  weights += (2 * cfg.depth + cfg.depth_single_blocks) * 2 * headDim(cfg) * 4; // QK-norm scales
  const bufs: [string, number][] = [
    ["img tokens", B * Li * cfg.in_channels * eb],
    ["txt tokens", B * Lt * cfg.context_in_dim * eb],
    // the residual streams are f32 whatever the activation dtype (ARCHITECTURE.md, "FLUX.1")
    ["residual streams (img + txt, joint; f32)", 2 * B * L * D * 4],
    ["streams (norm, branch, attention out)", 3 * B * L * D * eb],
    ["qkv (GEMM out + joint)", 2 * B * L * 3 * D * eb],
    ["MLP hidden", B * L * mlp * eb],
    ["modulation", 12 * B * D * eb],
    ["RoPE table", L * headDim(cfg) * 4],
    ["output", B * Li * cfg.out_channels * eb],
  ];
  if (w4a4) {
    bufs.push(["W4A4 scratch", B * L * mlp / 2 + B * L * mlp / 4 + B * L * rMax * 4]);
  }
  const activations = bufs.reduce((a, [, b]) => a + b, 0);
  const single: [string, number][] = [
    ["MLP hidden", B * L * mlp * eb],
    ["joint qkv", B * L * 3 * D * eb],
    ["largest weight", Math.max(3 * D * D, mlp * D, 6 * D * D) * eb],
  ];
  const largest = single.reduce((a, b) => (b[1] > a[1] ? b : a));
  const others = o.others ?? {};
  const total = weights + activations + Object.values(others).reduce((a, b) => a + b, 0);
  const peak = o.sequential ? Math.max(weights + activations, ...Object.values(others)) : total;
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  const lines = [
    `memory plan (${o.width}×${o.height}, ${B} image${B > 1 ? "s" : ""} per forward, ${Lt} text ` +
    `tokens, ${o.dtype} activations):`,
    `  transformer weights  ${gib(weights)}`,
    `  transformer activations ${gib(activations)} (largest buffer: ${largest[0]}, ${
      gib(largest[1])
    })`,
    ...Object.entries(others).map(([k, v]) => `  ${k.padEnd(20)} ${gib(v)}`),
    `  total if all resident ${gib(total)}`,
  ];
  if (o.sequential) lines.push(`  peak (loaded one after another, freed between) ${gib(peak)}`);
  return {
    transformerWeights: weights,
    activations,
    others,
    largest: { name: largest[0], bytes: largest[1] },
    total,
    peak,
    lines,
  };
}

/** The FLUX policy entry for `base` at a W4A4 format (a plan for a file not yet quantized). */
export function fluxPolicyAt(
  format: "int4" | "nvfp4",
  r = 32,
): (base: string) => LayerPolicyEntry {
  return (base: string): LayerPolicyEntry => {
    const rule = policyFor(base, FLUX_POLICY);
    if (rule.method === "float") return { method: "float", format: "f16", r: 0 };
    if (rule.method === "w4a16") return { method: "w4a16", format: "int4", r: 0 };
    const actMode = format === "nvfp4" ? "nvfp4" : rule.postGelu ? "int4_unsigned" : "int4";
    return { method: "svdquant", format, r, actMode };
  };
}

/**
 * Refuse a plan that cannot fit, before anything is allocated: a buffer over the adapter's
 * binding or buffer limit, or a total over `budget` (bytes, when known). The message says what
 * to change.
 */
export function checkFluxPlan(
  plan: FluxMemoryPlan,
  limits: { maxStorageBufferBindingSize: number; maxBufferSize: number },
  budget?: number,
): void {
  const limit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (plan.largest.bytes > limit) {
    throw new RangeError(
      `Cannot generate at this size: the ${plan.largest.name} buffer needs ` +
        `${gib(plan.largest.bytes)}, over this adapter's ${gib(limit)} per-buffer limit; ` +
        "lower --width/--height or --n",
    );
  }
  if (budget !== undefined && plan.peak > budget) {
    throw new RangeError(
      `Cannot load the model: the plan needs ${gib(plan.peak)} at once, over the ` +
        `${gib(budget)} budget (--vram); the transformer's weights alone are ` +
        `${gib(plan.transformerWeights)}. Use a quantized transformer (deno task quantize … ` +
        "--format int4), W4A16 text encoders (--t5-weights w4a16), a smaller image or --n 1",
    );
  }
}
