/**
 * The FLUX family of the pipeline: text conditioning → flow-matching Euler with FLUX's time shift
 * through the shared sampler loop (runtime/family.ts: Philox noise per image, progress with x̂₀
 * previews, abort) → latents → the autoencoder's decoder.
 *
 * The text encoders and the decoder are interfaces here ({@linkcode FluxTextConditioner},
 * {@linkcode LatentDecoder}), so the transformer, the schedule and the loop do not depend on how
 * they are implemented; a request may also bring its conditioning directly (tests, calibration,
 * cached prompts).
 *
 * @module
 */
import type { ActDtype } from "../../kernels/_wgsl.ts";
import type { CalibRecorder } from "../../quant/calib.ts";
import { bucketOfStep } from "../../quant/paro.ts";
import type { Gpu } from "../../gpu/device.ts";
import { type DenoiseJob, runDenoise } from "../family.ts";
import { flowEuler, fluxShift } from "../schedulers.ts";
import { packLatents, unpackLatents } from "./embed.ts";
import { FluxTransformer } from "./transformer.ts";
import type { FluxSource } from "./weights.ts";

/** The text side of FLUX: T5 tokens and the CLIP pooled vector per prompt. */
export interface FluxTextConditioner {
  /** T5 sequence length it produces (512 for dev, 256 for schnell). */
  readonly txtTokens: number;
  /** `txt` [P, txtTokens, context_in_dim] and `y` [P, vec_in_dim] for P prompts. */
  encode(prompts: readonly string[]): Promise<FluxConditioning>;
}

/** Encoded prompts. */
export interface FluxConditioning {
  /** T5 output [P, Lt, context_in_dim]. */
  txt: Float32Array;
  /** CLIP pooled output [P, vec_in_dim]. */
  y: Float32Array;
}

/**
 * Latents → images: FLUX's autoencoder decoder (with its scale and shift). runtime/autoencoder.ts
 * `Autoencoder` is one.
 */
export interface LatentDecoder {
  /** Image pixels per latent pixel along each side (8 for FLUX.1's autoencoder). */
  readonly factor: number;
  /** Latents f32 [B, C, h, w] (the transformer's space) → images f32 [B, 3, h·f, w·f]. */
  decode(
    latent: Float32Array,
    shape: readonly [number, number, number, number],
  ): Promise<Float32Array>;
}

/** Pixels per latent pixel of FLUX.1's autoencoder. */
export const FLUX_VAE_FACTOR = 8;

/** Options of {@linkcode FluxPipeline.load}. */
export interface FluxPipelineOptions {
  /** Image width in pixels (a multiple of 2·the decoder's factor: 16 for FLUX.1). */
  width: number;
  /** Image height in pixels (a multiple of 2·the decoder's factor). */
  height: number;
  /** Pixels per latent pixel (default the decoder's, else {@linkcode FLUX_VAE_FACTOR}). */
  latentFactor?: number;
  /** Images per generation call (default 1). */
  images?: number;
  /** Text tokens per prompt (default: the conditioner's, else 512). */
  txtTokens?: number;
  /** Activation dtype (default f16 when available). */
  dtype?: ActDtype;
  /** Loading progress. */
  onProgress?: (done: number, total: number, name: string) => void;
}

/** One FLUX request. */
export interface FluxRequest {
  /** One prompt per image (needs a text conditioner), or … */
  prompts?: string[];
  /** … the conditioning itself, for `images` images. */
  conditioning?: FluxConditioning;
  /** Seed: image b uses Philox stream b. */
  seed: number;
  /** Denoising steps (schnell: 4; dev: 28–50). */
  steps: number;
  /** Guidance value for the guidance embedding (dev; default 3.5; ignored by schnell). */
  guidance?: number;
  /** Time shift: default FLUX's resolution-dependent one for dev, none (1) for schnell. */
  shift?: number;
  /** After each step: steps done, total, and a function giving the x̂₀ preview latents. */
  onStep?: (done: number, total: number, preview: () => Float32Array) => void;
  /** Stops the loop before the next model call. */
  signal?: AbortSignal;
  /**
   * Calibration mode: record each linear layer's input in `recorder` (quantizer statistics), by
   * timestep bucket: step i of n is bucket ⌊i·buckets/n⌋.
   */
  calibration?: { recorder: CalibRecorder; buckets: number };
}

/** What {@linkcode FluxPipeline.generate} returns. */
export interface FluxResult {
  /** Final latents f32 [B, 16, H/8, W/8]. */
  latents: Float32Array;
  /** Decoded images f32 [B, 3, H, W] in about [-1, 1] (when the pipeline has a decoder). */
  images?: Float32Array;
  /** Milliseconds per step. */
  stepMs: number[];
  /** Milliseconds of the loop. */
  totalMs: number;
}

/** A FLUX model ready to generate at one resolution. */
export class FluxPipeline {
  /** The transformer on the GPU. */
  readonly model: FluxTransformer;
  /** Image width in pixels. */
  readonly width: number;
  /** Image height in pixels. */
  readonly height: number;
  /** Pixels per latent pixel. */
  readonly latentFactor: number;
  /** Images per call. */
  readonly images: number;
  #text?: FluxTextConditioner;
  #decoder?: LatentDecoder;

  private constructor(
    model: FluxTransformer,
    o: FluxPipelineOptions,
    text?: FluxTextConditioner,
    decoder?: LatentDecoder,
  ) {
    this.model = model;
    this.width = o.width;
    this.height = o.height;
    this.latentFactor = o.latentFactor ?? FLUX_VAE_FACTOR;
    this.images = o.images ?? 1;
    this.#text = text;
    this.#decoder = decoder;
  }

  /** Upload the transformer for `opts`' resolution and batch. */
  static async load(
    gpu: Gpu,
    parts: { transformer: FluxSource; text?: FluxTextConditioner; decoder?: LatentDecoder },
    opts: FluxPipelineOptions,
  ): Promise<FluxPipeline> {
    const f = opts.latentFactor ?? parts.decoder?.factor ?? FLUX_VAE_FACTOR;
    checkResolution(opts.width, opts.height, 2 * f);
    const images = opts.images ?? 1;
    if (!Number.isInteger(images) || images < 1 || images > 16) {
      throw new RangeError(`Cannot load FLUX for ${images} images per call: use 1..16`);
    }
    const model = await FluxTransformer.load(gpu, parts.transformer, {
      batch: images,
      txtTokens: opts.txtTokens ?? parts.text?.txtTokens ?? 512,
      grid: { h: opts.height / (2 * f), w: opts.width / (2 * f) },
      dtype: opts.dtype,
      onProgress: opts.onProgress,
    });
    return new FluxPipeline(
      model,
      { ...opts, images, latentFactor: f },
      parts.text,
      parts.decoder,
    );
  }

  /** Latent grid [h, w] = [H/f, W/f]. */
  get latentSize(): [number, number] {
    return [this.height / this.latentFactor, this.width / this.latentFactor];
  }

  /** Generate `images` images. */
  async generate(req: FluxRequest): Promise<FluxResult> {
    const n = this.images, cfg = this.model.config, [h, w] = this.latentSize;
    const C = cfg.in_channels / 4;
    let cond = req.conditioning;
    if (!cond) {
      if (!req.prompts || !this.#text) {
        throw new TypeError(
          "Cannot generate with FLUX: give prompts (with a text conditioner loaded) or conditioning",
        );
      }
      if (req.prompts.length !== n) {
        throw new RangeError(
          `Cannot generate: ${req.prompts.length} prompts given, the pipeline makes ${n} images per call`,
        );
      }
      cond = await this.#text.encode(req.prompts);
    }
    const guidance = req.guidance ?? 3.5;
    if (!(guidance >= 0 && guidance <= 100)) {
      throw new RangeError(`Cannot generate with guidance ${guidance}: use a number in 0..100`);
    }
    if (!Number.isInteger(req.steps) || req.steps < 1 || req.steps > 1000) {
      throw new RangeError(`Cannot sample ${req.steps} steps: use an integer in 1..1000`);
    }
    const shift = req.shift ?? (cfg.guidance_embed ? fluxShift(this.model.imgTokens) : 1);
    const sampler = flowEuler({ steps: req.steps, shift });
    const job: DenoiseJob = {
      images: n,
      latentSize: C * h * w,
      sampler: () => sampler,
      predict: async (x, i) => {
        const t = Math.fround(sampler.sigmas[i]);
        const inputs = {
          img: packLatents(x, n, C, h, w),
          txt: cond.txt,
          y: cond.y,
          timesteps: new Array(n).fill(t),
          guidance: cfg.guidance_embed ? new Array(n).fill(guidance) : undefined,
        };
        const cal = req.calibration;
        const bucket = cal ? bucketOfStep(cal.buckets, i, sampler.timesteps.length) : 0;
        const v = cal
          ? await this.model.forwardRecording(inputs, {
            record: (name, a, m, k) => cal.recorder.record(name, bucket, a, m, k),
          })
          : await this.model.forward(inputs);
        return unpackLatents(v, n, C, h, w);
      },
      // x_σ = (1 − σ)·x₀ + σ·noise and v = noise − x₀, so x̂₀ = x_σ − σ·v
      preview: (x, v, i) => x.map((xv, j) => xv - sampler.sigmas[i] * v[j]),
    };
    const r = await runDenoise(job, req);
    const images = this.#decoder ? await this.#decoder.decode(r.latents, [n, C, h, w]) : undefined;
    return { latents: r.latents, images, stepMs: r.stepMs, totalMs: r.totalMs };
  }

  /** Release the transformer. */
  destroy(): void {
    this.model.destroy();
  }
}

/** Check a resolution: multiples of `multiple` (16 for FLUX.1) up to 2048 per side. */
export function checkResolution(width: number, height: number, multiple = 16): void {
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v < multiple || v > 2048 || v % multiple !== 0) {
      throw new RangeError(
        `Cannot generate at ${name} ${v}: use a multiple of ${multiple} from ${multiple} to 2048`,
      );
    }
  }
}
