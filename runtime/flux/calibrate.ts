/**
 * Calibration of the FLUX quantizer through the float graph: run the float transformer's
 * denoising loop on calibration conditionings and record every linear layer's input
 * (quant/calib.ts `CalibRecorder`, one timestep bucket per step).
 *
 * @module
 */
import { CalibRecorder, type CalibStats } from "../../quant/calib.ts";
import type { Gpu } from "../device.ts";
import { gaussianNoise } from "../random.ts";
import { flowEuler, fluxShift } from "../schedulers.ts";
import { FluxTransformer } from "./transformer.ts";
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
  /** Seed of the starting noise (sample i uses seed + i). */
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
  const steps = opts.steps ?? 4, cfg = weights.config;
  const li = opts.grid.h * opts.grid.w;
  const sampler = flowEuler({ steps, shift: opts.shift ?? fluxShift(li) });
  const rec = new CalibRecorder({ buckets: steps, maxSamples: opts.maxSamples, seed: 1 });
  const model = await FluxTransformer.load(gpu, weights, {
    batch: 1,
    txtTokens: opts.txtTokens,
    grid: opts.grid,
    dtype: "f32",
  });
  try {
    for (const [i, s] of samples.entries()) {
      let img = gaussianNoise((opts.seed ?? 0) + i, li * cfg.in_channels);
      for (let step = 0; step < steps; step++) {
        const t = sampler.sigmas[step];
        const probe = {
          record: (name: string, x: Float32Array, m: number, k: number) =>
            rec.record(name, step, x, m, k),
        };
        const v = await model.forwardRecording({
          img,
          txt: s.txt,
          y: s.y,
          timesteps: [t],
          guidance: cfg.guidance_embed ? [opts.guidance ?? 3.5] : undefined,
        }, probe);
        img = sampler.step(step, img, v);
        opts.onStep?.(i, step);
      }
    }
    return rec.stats();
  } finally {
    model.destroy();
  }
}
