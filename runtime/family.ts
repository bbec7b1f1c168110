/**
 * The model-family seam of the pipeline. A family (DiT class-conditional, FLUX text-conditioned,
 * …) supplies, per request, its sampler and its model call — conditioning, graph, guidance — and
 * a preview; {@linkcode runDenoise} is the one sampler loop every family shares: Philox noise per
 * image (stream b of the seed for image b, so an image never depends on its batch), the steps,
 * timings, progress with a lazy preview, and cancellation.
 *
 * @module
 */
import { NumericError } from "../gpu/errors.ts";
import { GaussianNoise } from "./random.ts";
import type { Sampler } from "./schedulers.ts";

/** What a family supplies for one request. */
export interface DenoiseJob {
  /** Images in the request. */
  readonly images: number;
  /** Values per image of the latent the sampler walks. */
  readonly latentSize: number;
  /**
   * The sampler, given the noise source (for ancestral samplers that draw fresh noise per step
   * from the same per-image streams as the initial noise).
   */
  sampler(drawNoise: () => Float32Array): Sampler;
  /** The (guided) model output for latents `x` at step `i` of `total`. */
  predict(x: Float32Array, i: number, total: number): Promise<Float32Array>;
  /** A denoised preview (x̂₀) from the latents at step `i` and the prediction there. */
  preview(x: Float32Array, prediction: Float32Array, i: number): Float32Array;
}

/** Shared options of a generation loop. */
export interface DenoiseOptions {
  /** Seed: image b uses Philox stream b of it. */
  seed: number;
  /** After each step: steps done, total, and a function giving the current preview. */
  onStep?: (done: number, total: number, preview: () => Float32Array) => void;
  /** Stops the loop before the next model call (and discards a call in flight). */
  signal?: AbortSignal;
}

/** What {@linkcode runDenoise} returns. */
export interface DenoiseResult {
  /** The final latents, [images, latentSize]. */
  latents: Float32Array;
  /** Milliseconds per step (model call + sampler). */
  stepMs: number[];
  /** Milliseconds of the whole loop. */
  totalMs: number;
}

/** Check a seed: an integer in 0..2³²−1. */
export function checkSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`Cannot generate with seed ${seed}: use an integer in 0..4294967295`);
  }
}

/**
 * Run a family's job from seeded noise to the final latents.
 *
 * @example
 * ```ts
 * import { runDenoise } from "./family.ts";
 * import { flowEuler } from "./schedulers.ts";
 * const { latents } = await runDenoise({
 *   images: 1,
 *   latentSize: 4,
 *   sampler: () => flowEuler({ steps: 2 }),
 *   predict: (x) => Promise.resolve(x), // v = x: pure noise shrinks to 0
 *   preview: (x) => x,
 * }, { seed: 1 });
 * console.log(Array.from(latents)); // [0, 0, 0, 0]
 * ```
 */
export async function runDenoise(job: DenoiseJob, opts: DenoiseOptions): Promise<DenoiseResult> {
  checkSeed(opts.seed);
  const n = job.images, per = job.latentSize;
  const streams = Array.from({ length: n }, (_, b) => new GaussianNoise(opts.seed, b));
  const drawNoise = () => {
    const z = new Float32Array(n * per);
    streams.forEach((g, b) => g.fill(z.subarray(b * per, (b + 1) * per)));
    return z;
  };
  const sampler = job.sampler(drawNoise);
  let x: Float32Array = drawNoise();
  const stepMs: number[] = [];
  const t0 = performance.now();
  const total = sampler.timesteps.length;
  for (let i = 0; i < total; i++) {
    opts.signal?.throwIfAborted();
    const ts = performance.now();
    const out = await job.predict(x, i, total);
    opts.signal?.throwIfAborted();
    const xt = x;
    x = sampler.step(i, x, out);
    assertFiniteLatent(x, i, total);
    stepMs.push(performance.now() - ts);
    if (opts.onStep) {
      let cached: Float32Array | undefined;
      opts.onStep(i + 1, total, () => cached ??= job.preview(xt, out, i));
    }
  }
  return { latents: x, stepMs, totalMs: performance.now() - t0 };
}

/**
 * Stops the loop with a {@linkcode NumericError} naming the step when the latent holds NaN or
 * ±Inf, so a broken model or driver never ends in a silently black image.
 */
function assertFiniteLatent(x: Float32Array, i: number, total: number): void {
  for (let j = 0; j < x.length; j++) {
    if (!Number.isFinite(x[j])) {
      throw new NumericError(
        `denoising step ${i + 1}/${total}`,
        `the latent has a non-finite value (element ${j}); the weights or the GPU driver ` +
          "produce NaN/Inf: try --precision float or another adapter, and report it",
      );
    }
  }
}
