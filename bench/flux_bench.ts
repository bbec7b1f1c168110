/**
 * One FLUX.1 denoising step at the real shape (default: hidden 3072, 24 heads, 512 text + 4096
 * image tokens = a 1024×1024 image, batch 1) with random weights, in f16 vs INT4 vs NVFP4 side by
 * side in one run. To stay within memory, the model is built with one double and one single block;
 * each part of the forward (embedders, a double block, the join, a single block, the final layer)
 * is timed on its own (GPU clock when the device has `timestamp-query`), and the step is
 * projected to the full depth: embed + 19·double + join + 38·single + final. The host side of a
 * step (float64 conditioning, upload, readback) is measured with a whole forward of the small
 * model and added.
 *
 * The layer policy is FLUX's (quant/flux_policy.ts): W4A4 + rank-32 low-rank for attention and
 * MLP linears (unsigned post-GELU activations for the MLPs' second linears with INT4), W4A16 for
 * the modulation linears, 16-bit for the embedders and the final layer. Quantized tensors are
 * random bytes in the canonical layouts with finite scales.
 *
 * ```sh
 * deno task bench:flux [--small] [--precisions float,int4,nvfp4] [--f32]
 *   [--text-formats float,w4a16,w8a16] [--t5-layers 1]
 * ```
 *
 * After the step table, the FLUX autoencoder's decode of the same image (random weights;
 * `--small`: a small autoencoder at 32²) and the text encoders (once per new prompt, not per
 * step): CLIP-L at 77 tokens and T5-XXL at 512 tokens in each `--text-formats`, built with
 * `--t5-layers` layers and scaled to 24 (bench/text_encoder_bench.ts's code, as `deno task
 * bench:text` runs it; `--text-formats none` skips them).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { FormatError } from "../gpu/errors.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import { FLUX1_CONFIG, type FluxConfig, headDim } from "../runtime/flux/config.ts";
import { FluxTransformer } from "../runtime/flux/transformer.ts";
import type { FluxSource } from "../runtime/flux/weights.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import { timeKernel } from "../kernels/_gpu_time.ts";
import type { LayerPolicyEntry } from "../formats/format.ts";
import { FLUX_POLICY, fluxTensorList } from "../quant/flux_policy.ts";
import { policyFor } from "../quant/policy.ts";
import { fail, runCli } from "../cli/_cli.ts";
import {
  benchPolicyEntry,
  type Precision,
  PRECISIONS,
  randomQuantLinear,
  RANK,
  stream,
  uniform,
} from "./dit_bench.ts";

/** A FLUX transformer with random weights at one precision (FLUX's policy for int4/nvfp4). */
export class RandomFluxSource implements FluxSource {
  /** A description, for messages. */
  readonly path: string;
  /** Hyper-parameters. */
  readonly config: FluxConfig;
  /** Precision of the linear layers. */
  readonly precision: Precision;
  #linears = new Map<string, [number, number, boolean]>();
  #others = new Map<string, number[]>();

  constructor(config: FluxConfig, precision: Precision) {
    this.config = config;
    this.precision = precision;
    this.path = `<random FLUX, ${precision}>`;
    const { linears, others } = fluxTensorList(config);
    for (const l of linears) this.#linears.set(l.base, [l.n, l.k, l.bias]);
    for (const o of others) this.#others.set(o.name, o.shape);
  }

  /** Parameters of the linear layers. */
  get linearParams(): number {
    let s = 0;
    for (const [n, k] of this.#linears.values()) s += n * k;
    return s;
  }

  policyOf(base: string): LayerPolicyEntry {
    return benchPolicyEntry(policyFor(base, FLUX_POLICY), this.precision);
  }

  has(name: string): boolean {
    if (this.#others.has(name)) return true;
    const dot = name.lastIndexOf("."), l = this.#linears.get(name.slice(0, dot));
    const suffix = name.slice(dot + 1);
    return Boolean(l) && (suffix === "weight" || (suffix === "bias" && l![2]));
  }

  float(name: string): Promise<Float32Array> {
    const next = stream(name, 1);
    const shape = this.#others.get(name);
    if (shape) return Promise.resolve(uniform(next, shape[0], 0.8, 1.2)); // norm scales
    const dot = name.lastIndexOf("."), l = this.#linears.get(name.slice(0, dot));
    if (l && name.endsWith(".weight")) {
      const a = Math.sqrt(3 / l[1]);
      return Promise.resolve(uniform(next, l[0] * l[1], -a, a));
    }
    if (l && name.endsWith(".bias")) return Promise.resolve(uniform(next, l[0], -0.02, 0.02));
    return Promise.reject(new FormatError(this.path, "the tensor is missing", name));
  }

  async linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>> {
    const l = this.#linears.get(base);
    if (!l) throw new FormatError(this.path, "the layer is missing", base);
    const [n, k, hasBias] = l;
    const pol = this.policyOf(base);
    if (pol.method === "float") {
      const out = new Map<string, StoredTensor | Float32Array>();
      out.set("weight", await this.float(`${base}.weight`));
      if (hasBias) out.set("bias", await this.float(`${base}.bias`));
      return out;
    }
    return randomQuantLinear(stream(base, 1), n, k, hasBias, pol);
  }
}

/** Figures of one precision. */
export interface FluxBenchResult {
  precision: Precision;
  /** ms of each part on the device (embed, one double block, join, one single block, final). */
  parts: Record<string, number>;
  /** Host ms of one small-model forward minus its device parts (conditioning, upload, read). */
  hostMs: number;
  /** Projected ms of one full-depth step. */
  stepMs: number;
  /** Projected bytes of the full model's linear weights on the GPU. */
  weightBytes: number;
  /** Which clock the parts were read from. */
  clock: string;
}

/** Time one step of a FLUX model at `full`'s shape, projected from a 1+1-block model. */
export async function benchFlux(
  gpu: Gpu,
  full: FluxConfig,
  opts: {
    txtTokens: number;
    grid: { h: number; w: number };
    precision: Precision;
    dtype: ActDtype;
  },
): Promise<FluxBenchResult> {
  const small = { ...full, depth: 1, depth_single_blocks: 1 };
  const src = new RandomFluxSource(small, opts.precision);
  const model = await FluxTransformer.load(gpu, src, {
    batch: 1,
    txtTokens: opts.txtTokens,
    grid: opts.grid,
    dtype: opts.dtype,
  });
  try {
    const next = stream("inputs", 3);
    const li = opts.grid.h * opts.grid.w;
    const inp = {
      img: uniform(next, li * full.in_channels, -1.7, 1.7),
      txt: uniform(next, opts.txtTokens * full.context_in_dim, -0.5, 0.5),
      y: uniform(next, full.vec_in_dim, -1, 1),
      timesteps: [0.7],
      guidance: full.guidance_embed ? [3.5] : undefined,
    };
    await model.forward(inp); // warm up: pipelines, caches
    const t0 = performance.now();
    await model.forward(inp);
    const forwardMs = performance.now() - t0;
    const parts: Record<string, number> = {};
    let clock = "";
    for (const s of model.segments()) {
      const name = s.name.replace(/\.\d+$/, "");
      const t = await timeKernel(gpu, s.dispatches, { ops: 0, bytes: 0, repeat: 1, passes: 3 });
      parts[name] = t.ms;
      clock = t.clock;
    }
    const device = Object.values(parts).reduce((a, b) => a + b, 0);
    const stepMs = parts.embed + full.depth * parts.double + parts.join +
      full.depth_single_blocks * parts.single + parts.final + Math.max(0, forwardMs - device);
    const perBlock = (prefix: string) =>
      model.layers.filter((l) => l.name.startsWith(prefix)).reduce((a, l) => a + l.weightBytes, 0);
    const rest = model.weightBytes - perBlock("double_blocks.") - perBlock("single_blocks.");
    const weightBytes = rest + full.depth * perBlock("double_blocks.") +
      full.depth_single_blocks * perBlock("single_blocks.");
    return {
      precision: opts.precision,
      parts,
      hostMs: Math.max(0, forwardMs - device),
      stepMs,
      weightBytes,
      clock,
    };
  } finally {
    model.destroy();
  }
}

const USAGE = "usage: deno task bench:flux [--small] [--precisions float,int4,nvfp4] [--f32] " +
  "[--text-formats float,w4a16,w8a16|none] [--t5-layers 1]";

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      small: { type: "boolean", default: false },
      precisions: { type: "string", default: PRECISIONS.join(",") },
      f32: { type: "boolean", default: false },
      "text-formats": { type: "string", default: "float,w4a16,w8a16" },
      "t5-layers": { type: "string", default: "1" },
    },
  });
  const { benchTextEncoders, parseTextFormats } = await import("./text_encoder_bench.ts");
  const textFormats = values["text-formats"] === "none"
    ? []
    : parseTextFormats(values["text-formats"]);
  const t5Layers = Number(values["t5-layers"]);
  if (!(Number.isInteger(t5Layers) && t5Layers >= 1 && t5Layers <= 24)) {
    fail(`--t5-layers must be an integer in 1..24, got "${values["t5-layers"]}"`, USAGE);
  }
  const precisions = values.precisions.split(",").map((s) => s.trim()) as Precision[];
  const bad = precisions.find((p) => !PRECISIONS.includes(p));
  if (bad !== undefined || !precisions.length) {
    fail(`precision "${bad}" is unknown, expected some of ${PRECISIONS.join(",")}`, USAGE);
  }
  // --small: FLUX's structure at a size a software adapter runs in seconds (hidden 128, 2 heads
  // of 64, 32 text + 64 image tokens), projected to FLUX.1's depth
  const full: FluxConfig = values.small
    ? {
      ...FLUX1_CONFIG,
      hidden_size: 128,
      num_heads: 2,
      axes_dim: [8, 28, 28],
      context_in_dim: 64,
      vec_in_dim: 64,
    }
    : { ...FLUX1_CONFIG };
  const txtTokens = values.small ? 32 : 512,
    grid = values.small ? { h: 8, w: 8 } : { h: 64, w: 64 };
  const gpu = await getGpu();
  const dtype: ActDtype = gpu.caps.shaderF16 && !values.f32 ? "f16" : "f32";
  console.log(
    `FLUX step on ${gpu.caps.adapter}${gpu.caps.isFallback ? " (software adapter)" : ""}; ` +
      `shader-f16 ${gpu.caps.shaderF16}; ${new Date().toISOString()}`,
  );
  console.log(
    `${values.small ? "small FLUX" : "FLUX.1 shape"}: hidden ${full.hidden_size}, ` +
      `${full.num_heads} heads of ${headDim(full)}, ${txtTokens} text + ${grid.h * grid.w} image ` +
      `tokens, batch 1, activations ${dtype}, R=${RANK}; measured on 1 double + 1 single block, ` +
      `projected to ${full.depth} + ${full.depth_single_blocks}`,
  );
  const results: FluxBenchResult[] = [];
  for (const precision of precisions) {
    const r = await benchFlux(gpu, full, { txtTokens, grid, precision, dtype });
    results.push(r);
    const p = r.parts;
    console.log(
      `${precision.padEnd(6)} double ${p.double.toFixed(2)} ms | single ${p.single.toFixed(2)} ms` +
        ` | embed+join+final ${(p.embed + p.join + p.final).toFixed(2)} ms | host ` +
        `${r.hostMs.toFixed(1)} ms | step ≈ ${r.stepMs.toFixed(1)} ms | weights ≈ ` +
        `${(r.weightBytes / 2 ** 30).toFixed(2)} GiB (${r.clock} clock)`,
    );
  }
  // the decoder, once per image: FLUX.1's autoencoder at the step's resolution
  const { benchAutoencoder, FLUX_AE, SMALL_AE } = await import("./ae_bench.ts");
  await benchAutoencoder(gpu, {
    label: values.small ? "small AE" : "FLUX AE",
    config: values.small ? { ...SMALL_AE, zChannels: 16 } : FLUX_AE,
    sides: [values.small ? 16 : 128],
    dtype,
    reps: 1,
  });
  // the text encoders, once per new prompt: CLIP-L + T5-XXL (one layer built, scaled to 24)
  if (textFormats.length) {
    const rows = await benchTextEncoders(gpu, {
      small: values.small,
      t5Layers,
      reps: values.small ? 1 : 3,
      formats: textFormats,
      dtype,
    });
    const clip = rows.find((r) => r.model === "CLIP" && r.format === "float") ??
      rows.find((r) => r.model === "CLIP")!;
    const step = results[0];
    for (const t5 of rows.filter((r) => r.model === "T5")) {
      const ms = t5.fullMs + clip.ms;
      console.log(
        `text per new prompt (T5 ${t5.format} scaled to 24 layers + CLIP ` +
          `${clip.format}): ${ms.toFixed(1)} ms = ${(ms / step.stepMs).toFixed(2)} ` +
          `${step.precision} steps`,
      );
    }
  }
  const f = results.find((r) => r.precision === "float");
  for (const r of results) {
    if (f && r !== f) {
      console.log(
        `${r.precision}: ${(f.stepMs / r.stepMs).toFixed(2)}× the f16 step speed, ` +
          `${(r.weightBytes / f.weightBytes).toFixed(3)}× the weight bytes`,
      );
    }
  }
}

if (import.meta.main) await runCli(main);
