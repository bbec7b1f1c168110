/**
 * Calibration of the FLUX quantizer through the float pipeline: denoise each calibration
 * conditioning with the float transformer (the shared sampler loop, Philox noise of seed + i)
 * and record every linear layer's input (quant/calib.ts `CalibRecorder`, one timestep bucket per
 * step).
 *
 * @module
 */
import { CalibRecorder, type CalibStats } from "../../quant/calib.ts";
import type { Gpu } from "../../gpu/device.ts";
import { FluxPipeline } from "./pipeline.ts";
import { type FluxSource, FluxWeights } from "./weights.ts";
import { AeCheckpoint } from "../autoencoder_keys.ts";
import { FLUX_T5_LENGTH, TextEncoders } from "../text/encoders.ts";
import { fluxDefaultSize, resolveFluxModel } from "./model_folder.ts";

/** One calibration conditioning: the text encoders' outputs for one prompt. */
export interface FluxCalibSample {
  /** T5 tokens [Lt, context_in_dim]. */
  txt: Float32Array;
  /** CLIP pooled vector [vec_in_dim]. */
  y: Float32Array;
}

/** Options of {@linkcode calibrateFlux}. */
export interface FluxCalibOptions {
  /** Text tokens per sample. */
  txtTokens: number;
  /** Image token grid. */
  grid: { h: number; w: number };
  /** Denoising steps per sample (= timestep buckets; default 4). */
  steps?: number;
  /** Guidance value (dev models; default 3.5). */
  guidance?: number;
  /** Time shift (default FLUX's for the grid; 1 for schnell). */
  shift?: number;
  /** Seed of the starting noise (sample i uses seed + i, Philox stream 0). */
  seed?: number;
  /** Rows kept per layer (default 256). */
  maxSamples?: number;
  /** Called after each denoising step. */
  onStep?: (sample: number, step: number) => void;
}

/**
 * Record calibration statistics of every linear layer of `weights` (a float FLUX transformer) by
 * denoising each sample from Philox noise with the float model, in f32.
 */
export async function calibrateFlux(
  gpu: Gpu,
  weights: FluxSource,
  samples: readonly FluxCalibSample[],
  opts: FluxCalibOptions,
): Promise<CalibStats> {
  const steps = opts.steps ?? 4;
  const rec = new CalibRecorder({ buckets: steps, maxSamples: opts.maxSamples, seed: 1 });
  // the float pipeline at the calibration grid (16 pixels per token), one image at a time
  const pipe = await FluxPipeline.load(gpu, { transformer: weights }, {
    width: opts.grid.w * 16,
    height: opts.grid.h * 16,
    latentFactor: 8, // only the token grid matters here: no decoder runs
    txtTokens: opts.txtTokens,
    dtype: "f32",
  });
  try {
    for (const [i, s] of samples.entries()) {
      await pipe.generate({
        conditioning: s,
        seed: (opts.seed ?? 0) + i,
        steps,
        guidance: opts.guidance,
        shift: opts.shift,
        calibration: { recorder: rec, buckets: steps },
        onStep: (done) => opts.onStep?.(i, done - 1),
      });
    }
    return rec.stats();
  } finally {
    pipe.destroy();
  }
}

/** Options of {@linkcode calibrateFluxPrompts}. */
export interface FluxPromptCalibOptions {
  /** Square calibration image side in pixels (default the folder's default size). */
  size?: number;
  /** Denoising steps per prompt (default 4). */
  steps?: number;
  /** Rows kept per layer (default 256). */
  maxSamples?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

/**
 * Calibrate with real prompts: encode `prompts` with the model folder's text encoders (then free
 * them), and denoise each with the float transformer at `opts.size`, recording every linear
 * layer's input (see {@linkcode calibrateFlux}).
 */
export async function calibrateFluxPrompts(
  gpu: Gpu,
  modelPath: string,
  prompts: readonly string[],
  opts: FluxPromptCalibOptions = {},
): Promise<CalibStats> {
  if (prompts.length === 0) throw new RangeError("Cannot calibrate FLUX: no prompts given");
  const parts = await resolveFluxModel(modelPath);
  const w = await FluxWeights.open(parts.transformer);
  try {
    if (w.precision !== "float") {
      throw new RangeError(
        `Cannot calibrate with ${parts.transformer}: it is already quantized (${w.precision})`,
      );
    }
    const variant = w.config.guidance_embed ? "dev" : "schnell";
    const ck = await AeCheckpoint.open(parts.vae);
    const factor = 2 ** (ck.config.chMult.length - 1);
    ck.close();
    const size = opts.size ?? (await fluxDefaultSize(parts.root, factor))[1];
    if (size % (2 * factor) !== 0) {
      throw new RangeError(`Cannot calibrate at ${size} px: use a multiple of ${2 * factor}`);
    }
    const t5Length = FLUX_T5_LENGTH[variant];
    const text = await TextEncoders.create(gpu, {
      clip: parts.clip,
      clipTokenizer: parts.clipTokenizer,
      t5: parts.t5,
      t5Tokenizer: parts.t5Tokenizer,
      t5Length,
    });
    const samples: FluxCalibSample[] = [];
    try {
      for (const p of prompts) {
        const e = await text.encode(p);
        samples.push({ txt: e.t5, y: e.pooled });
      }
    } finally {
      text.destroy();
    }
    const steps = opts.steps ?? 4, grid = size / (2 * factor);
    return await calibrateFlux(gpu, w, samples, {
      txtTokens: t5Length,
      grid: { h: grid, w: grid },
      steps,
      maxSamples: opts.maxSamples,
      onStep: (i, s) =>
        opts.log?.(`calibration: prompt ${i + 1}/${prompts.length}, step ${s + 1}/${steps}`),
    });
  } finally {
    w.close();
  }
}
