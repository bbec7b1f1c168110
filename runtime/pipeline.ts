/**
 * The generation pipeline: class → seeded noise → denoising loop (DPM-Solver++(2M), DDIM or
 * ancestral DDPM with the learned variance; classifier-free guidance) → image, with a progress
 * callback, cancellation, timings, and a calibration mode that records activation statistics for
 * the quantizer.
 *
 * @module
 */
import type { CalibRecorder } from "../quant/calib.ts";
import { type AttentionRecorder, bucketOfStep } from "../quant/paro.ts";
import { readParoFrom } from "../quant/paro_store.ts";
import type { SparseAttentionChoice } from "./attention.ts";
import type { Gpu } from "../gpu/device.ts";
import { DiT } from "./dit.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import { ModelFile } from "./model_file.ts";
import { checkSeed, type DenoiseJob, runDenoise } from "./family.ts";
import type { ByteSource } from "../gpu/source.ts";
import { ddim, ddpm, ddpmSchedule, dpmSolver2M, type Sampler } from "./schedulers.ts";

/**
 * Sampler names accepted by {@linkcode Pipeline.generate}: "dpm" (DPM-Solver++(2M)), "ddim",
 * "ddpm" (ancestral, learned variance; wants ≈ 100+ steps). "euler" is for flow-matching models
 * and is refused for DiT with a message saying so.
 */
export type SamplerName = "ddim" | "dpm" | "ddpm" | "euler";

/** The samplers a DiT (ε-prediction) model runs with, the default first. */
export const SAMPLERS = ["dpm", "ddim", "ddpm"] as const;

/** One generation request. */
export interface GenerateRequest {
  /** Class id per image (0..num_classes−1). */
  classes: number[];
  /** Seed: image i uses noise stream i of this seed, so an image does not depend on the batch. */
  seed: number;
  /** Denoising steps (1..1000). */
  steps: number;
  /** Classifier-free guidance scale (1 = none). */
  cfg: number;
  /** "dpm" (DPM-Solver++(2M), default), "ddim" or "ddpm". */
  sampler?: SamplerName;
  /** After each step: steps done, total, and a function giving the current x̂₀ preview. */
  onStep?: (done: number, total: number, preview: () => Float32Array) => void;
  /** Stops the loop before the next model call. */
  signal?: AbortSignal;
  /**
   * Calibration mode (dense attention only): record each linear layer's inputs in `recorder`
   * and/or each layer's attention maps in `attention`, by timestep bucket: step i of n is bucket
   * ⌊i·buckets/n⌋.
   */
  calibration?: { recorder?: CalibRecorder; attention?: AttentionRecorder; buckets: number };
}

/** What {@linkcode Pipeline.generate} returns. */
export interface GenerateResult {
  /** f32 [N, C, S, S] in about [-1, 1]. */
  images: Float32Array;
  /** Milliseconds per denoising step (model forward + sampler). */
  stepMs: number[];
  /** Total milliseconds of the loop. */
  totalMs: number;
}

/** Options of {@linkcode Pipeline.load}. */
export interface PipelineOptions {
  /** Images per generation call (default 1). */
  images?: number;
  /** Activation dtype (default f16 when available). */
  dtype?: ActDtype;
  /** Loading progress. */
  onProgress?: (done: number, total: number, name: string) => void;
  /**
   * Attention: "dense" (default) flash attention; "sparse" the sparse + quantized attention
   * (PAROAttention) with the plan stored in the model file (INT8 Q·Kᵀ, 16-bit P·V); or an object
   * choosing the arithmetic and optionally a plan of one's own (quant/paro.ts).
   */
  attention?: "dense" | "sparse" | Partial<SparseAttentionChoice>;
}

/**
 * A loaded model ready to generate.
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../gpu/device.ts";
 * import { Pipeline } from "./pipeline.ts";
 * const pipe = await Pipeline.load(await Gpu.create(), "models/dit_emoji.w4.safetensors");
 * const { images } = await pipe.generate({ classes: [3], seed: 1, steps: 20, cfg: 4 });
 * pipe.destroy();
 * ```
 */
export class Pipeline {
  /** The model file (config, precision, policy). */
  readonly file: ModelFile;
  /** The graph. */
  readonly model: DiT;
  /** Images per call. */
  readonly images: number;

  private constructor(file: ModelFile, model: DiT, images: number) {
    this.file = file;
    this.model = model;
    this.images = images;
  }

  /**
   * Open `path` (float or pre-quantized; a local file or a {@linkcode ByteSource}, e.g. a Blob
   * in a browser) and upload it.
   */
  static async load(
    gpu: Gpu,
    path: string | ByteSource,
    opts: PipelineOptions = {},
  ): Promise<Pipeline> {
    const images = opts.images ?? 1;
    if (!Number.isInteger(images) || images < 1 || images > 64) {
      throw new RangeError(`Cannot load for ${images} images per call: use 1..64`);
    }
    const file = await ModelFile.open(path);
    try {
      const a = opts.attention ?? "dense";
      const sparse = a === "dense" ? undefined : a === "sparse" ? {} : a;
      const model = await DiT.load(gpu, file, {
        batch: 2 * images, // conditional + unconditional halves for guidance
        dtype: opts.dtype,
        onProgress: opts.onProgress,
        sparse: sparse && { ...sparse, plan: sparse.plan ?? await filePlan(file) },
      });
      return new Pipeline(file, model, images);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Class names (index = class id). */
  get classNames(): string[] {
    const c = this.model.config;
    return c.class_names ?? Array.from({ length: c.num_classes }, (_, i) => `class ${i}`);
  }

  /** Generate `req.classes.length` images (must equal the images per call). */
  async generate(req: GenerateRequest): Promise<GenerateResult> {
    const cfg = this.model.config, n = this.images, C = cfg.in_channels, S = cfg.input_size;
    if (req.classes.length !== n) {
      throw new RangeError(
        `Cannot generate: ${req.classes.length} classes given, the pipeline makes ${n} images per call`,
      );
    }
    for (const c of req.classes) {
      if (!Number.isInteger(c) || c < 0 || c >= cfg.num_classes) {
        throw new RangeError(
          `Cannot generate class ${c}: the model has classes 0..${cfg.num_classes - 1}`,
        );
      }
    }
    checkSeed(req.seed);
    if (!(req.cfg >= 1 && req.cfg <= 50)) {
      throw new RangeError(`Cannot generate with guidance ${req.cfg}: use a number in 1..50`);
    }
    const per = C * S * S;
    const labels = [...req.classes, ...req.classes.map(() => cfg.num_classes)];
    const outC = cfg.learn_sigma ? 2 * C : C;
    const alphasCumprod = ddpmSchedule().alphasCumprod;
    let sampler: Sampler;
    // The DiT family through the shared loop (runtime/family.ts): image b's randomness is stream
    // b of the seed (initial noise, then the noise of each ddpm step).
    const job: DenoiseJob = {
      images: n,
      latentSize: per,
      sampler: (drawNoise) =>
        sampler = makeSampler(req.sampler ?? "dpm", req.steps, cfg.learn_sigma, drawNoise),
      predict: async (x, i, total) => {
        const t = sampler.timesteps[i], withV = sampler.usesVariance === true;
        const both = new Float32Array(2 * n * per);
        both.set(x);
        both.set(x, n * per);
        const cal = req.calibration;
        const out = cal
          ? await this.model.forwardRecording(
            both,
            t,
            labels,
            { linears: cal.recorder, attention: cal.attention },
            bucketOfStep(cal.buckets, i, total),
          )
          : await this.model.forward(
            both,
            t,
            labels,
            bucketOfStep(this.model.attentionBuckets, i, total),
          );
        // Guidance on ε; the learned variance (ddpm) is the conditional branch's, as in DiT.
        const guided = new Float32Array((withV ? 2 : 1) * n * per);
        for (let b = 0; b < n; b++) {
          for (let j = 0; j < per; j++) {
            const c = out[b * outC * S * S + j], u = out[(n + b) * outC * S * S + j];
            guided[b * per + j] = u + req.cfg * (c - u);
            if (withV) guided[(n + b) * per + j] = out[b * outC * S * S + per + j];
          }
        }
        return guided;
      },
      preview: (xt, guided, i) => {
        // x̂₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ: a denoised preview at this step
        const a = alphasCumprod[sampler.timesteps[i]];
        const x0 = new Float32Array(xt.length);
        for (let j = 0; j < xt.length; j++) {
          x0[j] = (xt[j] - Math.sqrt(1 - a) * guided[j]) / Math.sqrt(a);
        }
        return x0;
      },
    };
    const r = await runDenoise(job, req);
    return { images: r.latents, stepMs: r.stepMs, totalMs: r.totalMs };
  }

  /** Release the GPU weights and close the file. */
  destroy(): void {
    this.model.destroy();
    this.file.close();
  }
}

/** The sparse-attention plan stored in `file`, or a RangeError saying how to get one. */
async function filePlan(file: ModelFile) {
  const plan = await readParoFrom(file);
  if (!plan) {
    throw new RangeError(
      `Cannot use sparse attention with ${file.path}: the file has no sparse-attention plan; ` +
        "quantize the model with --paro DENSITY (deno task quantize) or use dense attention",
    );
  }
  return plan;
}

function makeSampler(
  name: SamplerName,
  steps: number,
  learnSigma: boolean,
  noise: () => Float32Array,
): Sampler {
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000) {
    throw new RangeError(`Cannot sample ${steps} steps: use an integer in 1..1000`);
  }
  if (name === "ddim") return ddim({ steps });
  if (name === "dpm") return dpmSolver2M({ steps });
  if (name === "ddpm") {
    return ddpm({ steps, noise, variance: learnSigma ? "learned" : "posterior" });
  }
  if (name === "euler") {
    throw new RangeError(
      "Cannot use the euler sampler with this model: it is for flow-matching (velocity) models; " +
        `DiT predicts noise (ε): use ${SAMPLERS.join(", ")}`,
    );
  }
  throw new RangeError(`Cannot use sampler "${name}": use ${SAMPLERS.join(", ")}`);
}
