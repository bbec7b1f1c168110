/**
 * Time per denoising step of a whole DiT (default the DiT-XL/2 shape: 28 blocks, hidden 1152,
 * 16 heads, 256 tokens) with random weights, in float vs INT4 vs NVFP4 side by side in one run:
 * load time, resident weight bytes, ms per step (one `DiT.forward` of a CFG batch of 2, readback
 * included), and the ratios the project's goal is stated in (issue 4: INT4 step ≥ 1.8× faster
 * than f16, weights ≤ 0.3× the bytes), then the time of the image decoder the model needs
 * (the SD-VAE decoding its latent, random weights; bench/ae_bench.ts).
 *
 * Weights are generated per layer when the loader asks for them (a cheap xorshift over big typed
 * arrays), so host memory stays at about one layer's tensors (largest: adaLN of XL, 6·1152·1152
 * f32 + its f16 copy ≈ 48 MB) beyond the runtime itself.
 *
 * ```sh
 * deno task bench:dit [--small] [--precisions float,int4,nvfp4] [--steps 5] [--warmup 2] [--f32]
 *                     [--no-decoder]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { DiT } from "../runtime/dit.ts";
import { FormatError } from "../gpu/errors.ts";
import type { StoredTensor } from "../runtime/linear.ts";
import type { ModelSource } from "../runtime/model_file.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import type { LayerPolicyEntry } from "../formats/format.ts";
import { DEFAULT_DIT_POLICY, type LayerPolicyRule, policyFor } from "../quant/policy.ts";
import { GROUP_SIZE_INT4, GROUP_SIZE_NVFP4 } from "../formats/packing.ts";
import { fail, runCli } from "../cli/_cli.ts";
import { benchAutoencoder, SD_VAE, SMALL_AE } from "./ae_bench.ts";

/** How the benchmark's linear layers are stored. */
export type Precision = "float" | "int4" | "nvfp4";

/** All precisions, in the order they are reported. */
export const PRECISIONS: readonly Precision[] = ["float", "int4", "nvfp4"];

/** Low-rank rank R of the W4A4 layers. */
export const RANK = 32;

/** DiT hyper-parameters of the benchmark model (`model_config` names). */
export interface BenchDiTConfig {
  hidden_size: number;
  depth: number;
  num_heads: number;
  patch_size: number;
  in_channels: number;
  input_size: number;
  num_classes: number;
  mlp_ratio: number;
  learn_sigma: boolean;
  frequency_embedding_size: number;
}

/** DiT-XL/2 at 256×256 (32×32 latents → 256 tokens). */
export const DIT_XL2: BenchDiTConfig = {
  hidden_size: 1152,
  depth: 28,
  num_heads: 16,
  patch_size: 2,
  in_channels: 4,
  input_size: 32,
  num_classes: 1000,
  mlp_ratio: 4,
  learn_sigma: true,
  frequency_embedding_size: 256,
};

/** A tiny DiT (64 tokens, head dim 64) that runs in seconds on a software adapter. */
export const DIT_SMALL: BenchDiTConfig = {
  ...DIT_XL2,
  hidden_size: 128,
  depth: 2,
  num_heads: 2,
  input_size: 16,
};

/** xorshift32 stream seeded from a string (same name, same bytes). */
export function stream(name: string, seed: number): () => number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  let s = h || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** `count` random u32 words. */
export function randomWords(next: () => number, count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = next();
  return out;
}

/** `count` values uniform in [lo, hi). */
export function uniform(next: () => number, count: number, lo: number, hi: number): Float32Array {
  const out = new Float32Array(count), span = (hi - lo) / 2 ** 32;
  for (let i = 0; i < count; i++) out[i] = lo + next() * span;
  return out;
}

/**
 * `count` f16 bit patterns with magnitude in [2^-10, 2^-6) (≈ 0.001–0.0156), random mantissa,
 * and a random sign when `signed`: finite normal numbers, built without a float conversion.
 */
export function smallF16(next: () => number, count: number, signed: boolean): Uint16Array {
  const out = new Uint16Array(count);
  for (let i = 0; i < count; i++) {
    const r = next();
    const exp = 5 + (r & 3); // biased exponents 5..8: 2^-10 .. 2^-7 · (1 + m/1024)
    const sign = signed ? (r >>> 31) << 15 : 0;
    out[i] = sign | (exp << 10) | ((r >>> 2) & 0x3ff);
  }
  return out;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const tensor = (dtype: string, shape: number[], data: ArrayBufferView): StoredTensor => ({
  dtype,
  shape,
  data: bytesOf(data),
});

/**
 * The policy entry of a benchmark model at `precision` for a layer whose rule is `rule`: float
 * when the precision or the rule is float, INT4 W4A16 where the rule says W4A16, else the rule's
 * W4A4 method at `precision` with rank {@linkcode RANK} (unsigned INT4 activations after GELU).
 */
export function benchPolicyEntry(rule: LayerPolicyRule, precision: Precision): LayerPolicyEntry {
  if (precision === "float" || rule.method === "float") {
    return { method: "float", format: "f16", r: 0 };
  }
  if (rule.method === "w4a16") return { method: "w4a16", format: "int4", r: 0 };
  const actMode = precision === "nvfp4" ? "nvfp4" : rule.postGelu ? "int4_unsigned" : "int4";
  return { method: rule.method, format: precision, r: RANK, actMode };
}

/**
 * Random stored tensors of a quantized [n, k] linear layer under `pol` (not float), drawn from
 * `next` in a fixed order: qweight, bias (when `hasBias`), wscales (+ tensor_scale for NVFP4),
 * and for W4A4 smooth, lora_down and lora_up (rank {@linkcode RANK}).
 */
export function randomQuantLinear(
  next: () => number,
  n: number,
  k: number,
  hasBias: boolean,
  pol: LayerPolicyEntry,
): Map<string, StoredTensor | Float32Array> {
  const out = new Map<string, StoredTensor | Float32Array>();
  out.set("qweight", tensor("U32", [n, k / 8], randomWords(next, (n * k) / 8)));
  if (hasBias) out.set("bias", tensor("F32", [n], uniform(next, n, -0.02, 0.02)));
  if (pol.format === "nvfp4") {
    const g = GROUP_SIZE_NVFP4, codes = new Uint8Array((n * k) / g);
    for (let i = 0; i < codes.length; i++) codes[i] = 0x20 | (next() & 0x1f); // 0.125…1.875
    out.set("wscales", tensor("F8_E4M3", [n, k / g], codes));
    out.set("tensor_scale", tensor("F32", [1], new Float32Array([0.003])));
  } else {
    const g = GROUP_SIZE_INT4;
    out.set("wscales", tensor("F16", [n, k / g], smallF16(next, (n * k) / g, false)));
  }
  if (pol.method === "w4a16") return out;
  out.set("smooth", tensor("F32", [k], uniform(next, k, 0.75, 1.25)));
  out.set("lora_down", tensor("F16", [RANK, k], smallF16(next, RANK * k, true)));
  out.set("lora_up", tensor("F16", [n, RANK], smallF16(next, n * RANK, true)));
  return out;
}

const W4A4_SUFFIXES = ["qweight", "wscales", "smooth", "lora_down", "lora_up", "bias"];

/**
 * A DiT with random weights in the public checkpoint layout, at one precision: "float" (every
 * linear 16-bit), "int4" / "nvfp4" (the default DiT policy: attention and MLP linears SVDQuant
 * W4A4 + rank-32 low-rank, `mlp.fc2` with unsigned post-GELU activations for INT4, adaLN of the
 * blocks W4A16, the final layer 16-bit). Quantized tensors are random bytes in the canonical
 * layouts (ARCHITECTURE.md) with finite scales; every tensor is generated when it is read.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../gpu/device.ts";
 * import { DiT } from "../runtime/dit.ts";
 * import { DIT_XL2, RandomDiTSource } from "./dit_bench.ts";
 * const gpu = await getGpu();
 * const dit = await DiT.load(gpu, new RandomDiTSource(DIT_XL2, "int4"), { batch: 2 });
 * console.log(dit.layers.reduce((s, l) => s + l.weightBytes, 0), "weight bytes");
 * dit.destroy();
 * ```
 */
export class RandomDiTSource implements ModelSource {
  /** A description of the source, for error messages. */
  readonly path: string;
  /** Always "dit". */
  readonly family = "dit";
  /** The model's hyper-parameters. */
  readonly config: Record<string, unknown>;
  /** The precision of the linear layers. */
  readonly precision: Precision;
  #cfg: BenchDiTConfig;
  #seed: number;
  /** Float tensors read on the CPU: name → shape. */
  #cpu = new Map<string, number[]>();
  /** Linear layers: base name → [N, K]. */
  #linears = new Map<string, [number, number]>();

  constructor(cfg: BenchDiTConfig, precision: Precision, seed = 1) {
    if (!PRECISIONS.includes(precision)) {
      throw new TypeError(
        `Cannot build the benchmark DiT: precision "${precision}", expected ${
          PRECISIONS.join(", ")
        }`,
      );
    }
    this.#cfg = cfg;
    this.precision = precision;
    this.#seed = seed;
    this.config = { ...cfg };
    this.path = `<random DiT, ${precision}>`;
    const D = cfg.hidden_size, p = cfg.patch_size, C = cfg.in_channels;
    const T = (cfg.input_size / p) ** 2, F = cfg.frequency_embedding_size;
    const mlp = Math.round(D * cfg.mlp_ratio);
    const cpu: [string, number[]][] = [
      ["t_embedder.mlp.0.weight", [D, F]],
      ["t_embedder.mlp.0.bias", [D]],
      ["t_embedder.mlp.2.weight", [D, D]],
      ["t_embedder.mlp.2.bias", [D]],
      ["y_embedder.embedding_table.weight", [cfg.num_classes + 1, D]],
      ["x_embedder.proj.weight", [D, C, p, p]],
      ["x_embedder.proj.bias", [D]],
      ["pos_embed", [1, T, D]],
    ];
    for (const [name, shape] of cpu) this.#cpu.set(name, shape);
    for (let i = 0; i < cfg.depth; i++) {
      const b = `blocks.${i}`;
      this.#linears.set(`${b}.adaLN_modulation.1`, [6 * D, D]);
      this.#linears.set(`${b}.attn.qkv`, [3 * D, D]);
      this.#linears.set(`${b}.attn.proj`, [D, D]);
      this.#linears.set(`${b}.mlp.fc1`, [mlp, D]);
      this.#linears.set(`${b}.mlp.fc2`, [D, mlp]);
    }
    this.#linears.set("final_layer.adaLN_modulation.1", [2 * D, D]);
    this.#linears.set("final_layer.linear", [p * p * (cfg.learn_sigma ? 2 * C : C), D]);
  }

  /** Parameters of the linear layers (weights only). */
  get linearParams(): number {
    let s = 0;
    for (const [n, k] of this.#linears.values()) s += n * k;
    return s;
  }

  /** The default DiT policy at this precision (everything float for "float"). */
  policyOf(base: string): LayerPolicyEntry {
    return benchPolicyEntry(policyFor(base, DEFAULT_DIT_POLICY), this.precision);
  }

  /** Whether tensor `name` exists at this precision. */
  has(name: string): boolean {
    if (this.#cpu.has(name)) return true;
    const dot = name.lastIndexOf(".");
    const base = name.slice(0, dot), suffix = name.slice(dot + 1);
    if (!this.#linears.has(base)) return false;
    const { method, format } = this.policyOf(base);
    if (method === "float") return suffix === "weight" || suffix === "bias";
    if (method === "w4a16") return ["qweight", "wscales", "bias"].includes(suffix);
    return W4A4_SUFFIXES.includes(suffix) || (format === "nvfp4" && suffix === "tensor_scale");
  }

  /** A float tensor's random values (uniform, variance 1/fan-in for weights). */
  float(name: string): Promise<Float32Array> {
    const next = stream(name, this.#seed);
    const shape = this.#cpu.get(name);
    if (shape) {
      const count = shape.reduce((a, b) => a * b, 1);
      const fanIn = shape.length > 1 ? count / shape[0] : 1;
      const a = name.endsWith(".weight") || name === "pos_embed" ? Math.sqrt(3 / fanIn) : 0.02;
      return Promise.resolve(uniform(next, count, -a, a));
    }
    const dot = name.lastIndexOf(".");
    const nk = this.#linears.get(name.slice(0, dot));
    const suffix = name.slice(dot + 1);
    if (nk && this.policyOf(name.slice(0, dot)).method === "float") {
      const [n, k] = nk;
      if (suffix === "weight") {
        const a = Math.sqrt(3 / k);
        return Promise.resolve(uniform(next, n * k, -a, a));
      }
      if (suffix === "bias") return Promise.resolve(uniform(next, n, -0.02, 0.02));
    }
    return Promise.reject(new FormatError(this.path, "the tensor is missing", name));
  }

  /** Layer `base`'s tensors, as `createLinear` takes them. */
  async linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>> {
    const nk = this.#linears.get(base);
    if (!nk) throw new FormatError(this.path, "the layer is missing", base);
    const [n, k] = nk;
    const pol = this.policyOf(base);
    if (pol.method === "float") {
      const out = new Map<string, StoredTensor | Float32Array>();
      out.set("weight", await this.float(`${base}.weight`));
      out.set("bias", await this.float(`${base}.bias`));
      return out;
    }
    return randomQuantLinear(stream(base, this.#seed), n, k, true, pol);
  }
}

/** Figures of one precision. */
export interface DiTBenchResult {
  precision: Precision;
  /** Seconds to generate, upload and compile everything (`DiT.load`). */
  loadS: number;
  /** Bytes of linear-layer weights resident on the GPU (sum of `DiT.layers`). */
  weightBytes: number;
  /** Mean, min and max ms per step over the timed forwards. */
  ms: number;
  minMs: number;
  maxMs: number;
  /** Non-finite values in the last output (random weights may overflow f16; speed unaffected). */
  nonFinite: number;
}

/** Options of {@linkcode benchDiT}. */
export interface DiTBenchOptions {
  config?: BenchDiTConfig;
  precisions?: readonly Precision[];
  /** Timed forwards (default 5). */
  steps?: number;
  /** Untimed forwards first (default 2). */
  warmup?: number;
  /** Images per forward (default 2: conditional + unconditional). */
  batch?: number;
  /** Activation dtype (default f16 when the device has shader-f16). */
  dtype?: ActDtype;
  /** Called with each precision's figures as they come. */
  onResult?: (r: DiTBenchResult) => void;
}

/** Load, warm up and time a random-weight DiT at each precision, one at a time. */
export async function benchDiT(gpu: Gpu, opts: DiTBenchOptions = {}): Promise<DiTBenchResult[]> {
  const cfg = opts.config ?? DIT_XL2, B = opts.batch ?? 2;
  const steps = opts.steps ?? 5, warmup = opts.warmup ?? 2;
  if (!Number.isInteger(steps) || steps < 1) {
    throw new RangeError(`Cannot run the DiT benchmark: steps=${steps} must be 1 or more`);
  }
  const next = stream("latents", 7);
  const x = uniform(next, B * cfg.in_channels * cfg.input_size ** 2, -1.7, 1.7);
  const y = Array.from({ length: B }, (_, i) => (i % 2 ? cfg.num_classes : 207 % cfg.num_classes));
  const results: DiTBenchResult[] = [];
  for (const precision of opts.precisions ?? PRECISIONS) {
    const t0 = performance.now();
    const dit = await DiT.load(gpu, new RandomDiTSource(cfg, precision), {
      batch: B,
      dtype: opts.dtype,
    });
    try {
      await gpu.sync();
      const loadS = (performance.now() - t0) / 1000;
      const weightBytes = dit.layers.reduce((s, l) => s + l.weightBytes, 0);
      let out: Float32Array<ArrayBufferLike> = new Float32Array();
      for (let i = 0; i < warmup; i++) out = await dit.forward(x, 500, y);
      const times: number[] = [];
      for (let i = 0; i < steps; i++) {
        const t = performance.now();
        out = await dit.forward(x, 999 - (i * 997) % 1000, y);
        times.push(performance.now() - t);
      }
      let nonFinite = 0;
      for (const v of out) if (!Number.isFinite(v)) nonFinite++;
      const r: DiTBenchResult = {
        precision,
        loadS,
        weightBytes,
        ms: times.reduce((a, b) => a + b, 0) / steps,
        minMs: Math.min(...times),
        maxMs: Math.max(...times),
        nonFinite,
      };
      results.push(r);
      opts.onResult?.(r);
    } finally {
      dit.destroy();
    }
  }
  return results;
}

const USAGE = "usage: deno task bench:dit [--small] [--precisions float,int4,nvfp4] " +
  "[--steps N] [--warmup N] [--f32] [--depth N] [--no-decoder]";

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      small: { type: "boolean", default: false },
      precisions: { type: "string", default: PRECISIONS.join(",") },
      steps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      depth: { type: "string" },
      f32: { type: "boolean", default: false },
      "no-decoder": { type: "boolean", default: false },
    },
  });
  const precisions = values.precisions.split(",").map((s) => s.trim()) as Precision[];
  const bad = precisions.find((p) => !PRECISIONS.includes(p));
  if (bad !== undefined || !precisions.length) {
    fail(`precision "${bad}" is unknown, expected some of ${PRECISIONS.join(",")}`, USAGE);
  }
  const int = (key: string, v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) fail(`--${key} ${v} must be a whole number`, USAGE);
    return n;
  };
  const cfg = { ...(values.small ? DIT_SMALL : DIT_XL2) };
  if (values.depth !== undefined) cfg.depth = Math.max(1, int("depth", values.depth));
  const gpu = await getGpu();
  const dtype: ActDtype = gpu.caps.shaderF16 && !values.f32 ? "f16" : "f32";
  const tokens = (cfg.input_size / cfg.patch_size) ** 2;
  console.log(
    `DiT step on ${gpu.caps.adapter}${gpu.caps.isFallback ? " (software adapter)" : ""}; ` +
      `shader-f16 ${gpu.caps.shaderF16}; ${new Date().toISOString()}`,
  );
  console.log(
    `${values.small ? "small DiT" : "DiT-XL/2 shape"}: hidden ${cfg.hidden_size}, depth ` +
      `${cfg.depth}, ${cfg.num_heads} heads, ${tokens} tokens, batch 2 (CFG), activations ` +
      `${dtype}, R=${RANK}, random weights (${
        (new RandomDiTSource(cfg, "float").linearParams / 1e6).toFixed(1)
      }M linear params)`,
  );
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const results = await benchDiT(gpu, {
    config: cfg,
    precisions,
    steps: int("steps", values.steps),
    warmup: int("warmup", values.warmup),
    dtype,
    onResult: (r) =>
      console.log(
        `${r.precision.padEnd(6)} load ${r.loadS.toFixed(2)} s | weights ${
          mb(r.weightBytes).padStart(10)
        } | ${r.ms.toFixed(2)} ms/step (min ${r.minMs.toFixed(2)}, max ${r.maxMs.toFixed(2)})` +
          (r.nonFinite ? ` | ${r.nonFinite} non-finite outputs (random weights)` : ""),
      ),
  });
  if (!values["no-decoder"]) {
    // The image decoder DiT-XL/2 needs after its last step (random SD-VAE weights).
    await benchAutoencoder(gpu, {
      label: values.small ? "small AE" : "SD-VAE",
      config: values.small ? SMALL_AE : SD_VAE,
      sides: [cfg.input_size],
      dtype,
      reps: 3,
    });
  }
  const float = results.find((r) => r.precision === "float");
  if (!float) return;
  console.log("\nvs float:   step speed-up | weight bytes");
  for (const r of results) {
    if (r === float) continue;
    console.log(
      `  ${r.precision.padEnd(6)}   ${(float.ms / r.ms).toFixed(2)}×`.padEnd(26) +
        `| ${(r.weightBytes / float.weightBytes).toFixed(3)}×`,
    );
  }
  if (!values.small) console.log("(goal, issue 4: int4 speed-up ≥ 1.8×, weight bytes ≤ 0.3×)");
}

if (import.meta.main) await runCli(main);
