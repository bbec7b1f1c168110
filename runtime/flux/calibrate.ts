/**
 * Calibration of the FLUX quantizer through the float pipeline: denoise each calibration
 * conditioning with the float transformer (the shared sampler loop, Philox noise of seed + i)
 * and record every linear layer's input (quant/calib.ts `CalibRecorder`, one timestep bucket per
 * step).
 *
 * @module
 */
import { CalibRecorder, type CalibStats } from "../../quant/calib.ts";
import type { Gpu } from "../device.ts";
import { FluxPipeline } from "./pipeline.ts";
import type { FluxSource } from "./weights.ts";

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
