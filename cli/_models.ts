/**
 * The bundled model files: the float checkpoint and its INT4 SVDQuant file are committed under
 * models/; other precisions are built on first use (calibration on the float model, then the
 * quantizer) and cached under models/.cache/.
 *
 * @module
 */
import { getGpu } from "../runtime/device.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { CalibRecorder, readCalibStats, writeCalibStats } from "../quant/calib.ts";
import type { CalibStats } from "../quant/calib.ts";
import { quantizeCheckpoint } from "../quant/model.ts";
import type { WeightFormat } from "../quant/packing.ts";
import type { ModelMethod } from "../quant/model.ts";

/** Precisions `deno task gen` offers. */
export const PRECISIONS = ["float", "int4", "nvfp4", "w4a16"] as const;
/** One of {@linkcode PRECISIONS}. */
export type Precision = (typeof PRECISIONS)[number];

const MODELS = new URL("../models/", import.meta.url);
/** The bundled float checkpoint. */
export const FLOAT_MODEL: string = new URL("dit_emoji.safetensors", MODELS).pathname;
/** Where built models and calibration statistics are cached. */
export const CACHE: string = new URL(".cache/", MODELS).pathname;

/**
 * Low-rank rank of the bundled model's quantized files: 16, since its hidden size is 256 (the
 * published R = 32 serves hidden sizes of 1152–3072), and it keeps the committed float + INT4
 * files within 15 MB together.
 */
export const BUNDLED_RANK = 16;

/** Timestep buckets and images used to calibrate the bundled model. */
export const CALIB = { buckets: 4, steps: 8, seed: 1234, samplesPerLayer: 256, batch: 8 };

/** Path of the bundled model file for `precision`, building (and caching) it when missing. */
export async function modelFor(precision: Precision, log: (line: string) => void): Promise<string> {
  if (precision === "float") return await exists(FLOAT_MODEL, "the bundled float model");
  const committed = new URL(`dit_emoji.${precision}.safetensors`, MODELS).pathname;
  if (await fileExists(committed)) return committed;
  const cached = `${CACHE}dit_emoji.${precision}.safetensors`;
  if (await fileExists(cached)) return cached;
  log(`building the ${precision} model from the float checkpoint (once; cached in ${cached})`);
  await buildQuantized(FLOAT_MODEL, precision, cached, log);
  return cached;
}

/** Quantize the float model `float` to `precision` at `out`, calibrating it first. */
export async function buildQuantized(
  float: string,
  precision: Exclude<Precision, "float">,
  out: string,
  log: (line: string) => void,
  opts: { method?: ModelMethod; rank?: number } = {},
): Promise<void> {
  await exists(float, "the float model");
  const calib = await calibration(float, log);
  const method: ModelMethod = opts.method ?? (precision === "w4a16" ? "w4a16" : "svdquant");
  const format: WeightFormat = precision === "nvfp4" ? "nvfp4" : "int4";
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/") + 1) || ".", { recursive: true });
  const t0 = performance.now();
  await quantizeCheckpoint(float, out, {
    method,
    format,
    rank: opts.rank ?? BUNDLED_RANK,
    calib,
    onLayer: (r, i, n) => {
      if (r.method !== "copy") {
        log(`  [${i + 1}/${n}] ${r.name} ${r.method} err ${r.relError.toFixed(4)}`);
      }
    },
  });
  log(`quantized in ${((performance.now() - t0) / 1000).toFixed(1)} s → ${out}`);
}

/** Calibration statistics of the float model `float` (recorded once, cached beside others). */
export async function calibration(float: string, log: (line: string) => void): Promise<CalibStats> {
  const base = float.slice(float.lastIndexOf("/") + 1).replace(/\.safetensors$/, "");
  const path = `${CACHE}${base}.calib.safetensors`;
  if (await fileExists(path)) return await readCalibStats(path);
  log(
    `calibrating: running the float model over every class (${CALIB.steps} steps each, recording every linear layer's inputs)`,
  );
  const gpu = await getGpu();
  const file = await ModelFile.open(float);
  const classes = Number(file.config.num_classes);
  file.close();
  const batch = Math.min(CALIB.batch, classes);
  const pipe = await Pipeline.load(gpu, float, { images: batch, dtype: "f32" });
  try {
    const recorder = new CalibRecorder({
      buckets: CALIB.buckets,
      maxSamples: CALIB.samplesPerLayer,
      seed: CALIB.seed,
    });
    for (let c0 = 0; c0 < classes; c0 += batch) {
      await pipe.generate({
        classes: Array.from({ length: batch }, (_, i) => (c0 + i) % classes),
        seed: CALIB.seed + c0,
        steps: CALIB.steps,
        cfg: 4,
        calibration: { recorder, buckets: CALIB.buckets },
      });
    }
    const stats = recorder.stats();
    await Deno.mkdir(CACHE, { recursive: true });
    await writeCalibStats(path, stats);
    return stats;
  } finally {
    pipe.destroy();
  }
}

async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function exists(path: string, what: string): Promise<string> {
  if (!(await fileExists(path))) {
    throw new RangeError(
      `Cannot find ${what} at ${path}: check out the repository with its models/ folder`,
    );
  }
  return path;
}
