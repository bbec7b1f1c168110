/**
 * The bundled model files: the float checkpoint and its INT4 SVDQuant file are committed under
 * models/; other precisions are built on first use (calibration on the float model, then the
 * quantizer) and cached under models/.cache/.
 *
 * @module
 */
import { getGpu } from "../gpu/device.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { CalibRecorder, readCalibStats, writeCalibStats } from "../quant/calib.ts";
import type { CalibStats } from "../quant/calib.ts";
import { quantizeCheckpoint } from "../convert/model.ts";
import type { WeightFormat } from "../formats/packing.ts";
import type { ModelMethod } from "../convert/model.ts";
import { AttentionRecorder, calibrateParo, describeParo } from "../quant/paro.ts";
import { paroTensors } from "../quant/paro_store.ts";
import { SPARSE_ATTENTION_TILES } from "../kernels/sparse_attention/sparse_attention.ts";

/** Precisions `deno task gen` offers. */
export const PRECISIONS = ["float", "int4", "nvfp4", "w4a16"] as const;
/** One of {@linkcode PRECISIONS}. */
export type Precision = (typeof PRECISIONS)[number];

const MODELS = new URL("../models/", import.meta.url);
/** The bundled float checkpoint. */
export const FLOAT_MODEL: string = new URL("dit_emoji.safetensors", MODELS).pathname;
/** Where built models and calibration statistics are cached. */
export const CACHE: string = new URL(".cache/", MODELS).pathname;

const tags = new Map<string, Promise<string>>();

/**
 * A short content tag of the float checkpoint `float` (first 12 hex digits of its SHA-256), part
 * of every cached file's name derived from it, so a new checkpoint (e.g. after `git pull`) never
 * reuses statistics or quantized files built from an old one.
 */
export function sourceTag(float: string): Promise<string> {
  let tag = tags.get(float);
  if (!tag) {
    tag = Deno.readFile(float)
      .then((bytes) => crypto.subtle.digest("SHA-256", bytes))
      .then((d) =>
        [...new Uint8Array(d, 0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("")
      );
    tags.set(float, tag);
  }
  return tag;
}

/** A model file's name without its folder and `.safetensors`. */
export function modelBaseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1).replace(/\.safetensors$/, "");
}

/**
 * Path in {@linkcode CACHE} of a file derived from the float checkpoint `float`:
 * `<CACHE><dir><base>.<sourceTag>.<suffix>` (`base` = the checkpoint's name without `.safetensors`).
 */
export async function cachedPath(float: string, suffix: string, dir = ""): Promise<string> {
  return `${CACHE}${dir}${modelBaseName(float)}.${await sourceTag(float)}.${suffix}`;
}

/**
 * Low-rank rank of the bundled model's quantized files: 16, since its hidden size is 256 (the
 * published R = 32 serves hidden sizes of 1152–3072), and it keeps the committed float + INT4
 * files within 15 MB together.
 */
export const BUNDLED_RANK = 16;

/**
 * The sparse-attention plan stored in the bundled INT4 file: half of the 8×8-token tiles of each
 * head kept, one mask set per timestep bucket (`deno task gen --attention sparse`).
 */
export const BUNDLED_PARO = { density: 0.5, perTimestep: true };

/** Timestep buckets and images used to calibrate the bundled model. */
export const CALIB = { buckets: 4, steps: 8, seed: 1234, samplesPerLayer: 256, batch: 8 };

/** Path of the bundled model file for `precision`, building (and caching) it when missing. */
export async function modelFor(precision: Precision, log: (line: string) => void): Promise<string> {
  if (precision === "float") return await exists(FLOAT_MODEL, "the bundled float model");
  const committed = new URL(`dit_emoji.${precision}.safetensors`, MODELS).pathname;
  if (await fileExists(committed)) return committed;
  const cached = await cachedPath(FLOAT_MODEL, `${precision}.safetensors`);
  if (await fileExists(cached)) return cached;
  for (const line of firstBuildNotice(precision, cached)) log(line);
  const tty = Deno.stderr.isTerminal();
  await buildQuantized(FLOAT_MODEL, precision, cached, tty ? () => {} : log, {
    onProgress: tty
      ? progressBar((t) => Deno.stderr.writeSync(new TextEncoder().encode(t)))
      : undefined,
  });
  if (tty) log(`built ${cached}`);
  return cached;
}

/**
 * What the first use of a precision that is built on demand says before it starts: that it
 * builds a file once, how long that takes, where it goes, and how to build it ahead of time.
 */
export function firstBuildNotice(precision: string, cached: string): string[] {
  return [
    `first use of --precision ${precision}: building its model file from the float checkpoint ` +
    `(calibration, then the quantizer), once; about ${BUILD_ETA}; cached in ${cached}`,
    `to build it ahead of time: deno task gen --precision ${precision} --list`,
  ];
}

/** How long the first build of a precision takes (measured on the bundled model). */
export const BUILD_ETA = "3 min on a software adapter (llvmpipe), well under 1 min on a GPU";

/** A progress callback: stage name, units done, units in that stage. */
export type BuildProgress = (stage: string, done: number, total: number) => void;

/**
 * A one-line progress bar with the stage's remaining time, redrawn in place (`\r`) through
 * `write`; `now` is the clock in ms (injectable for tests).
 */
export function progressBar(
  write: (text: string) => void,
  now: () => number = () => performance.now(),
): BuildProgress {
  let stage = "", t0 = 0;
  return (name, done, total) => {
    if (name !== stage) {
      if (stage) write("\n");
      stage = name;
      t0 = now();
    }
    const w = 24, f = Math.round((done / total) * w);
    const secs = done > 0 ? ((now() - t0) / 1000) * (total - done) / done : NaN;
    const eta = done >= total
      ? "done"
      : Number.isFinite(secs)
      ? `about ${secs >= 90 ? `${Math.round(secs / 60)} min` : `${Math.ceil(secs)} s`} left`
      : "";
    write(`\r${name.padEnd(12)} [${"#".repeat(f)}${".".repeat(w - f)}] ${done}/${total} ${eta}`);
    if (done >= total) {
      write("\n");
      stage = "";
    }
  };
}

/** Quantize the float model `float` to `precision` at `out`, calibrating it first. */
export async function buildQuantized(
  float: string,
  precision: Exclude<Precision, "float">,
  out: string,
  log: (line: string) => void,
  opts: {
    method?: ModelMethod;
    rank?: number;
    paro?: ParoChoice;
    onProgress?: BuildProgress;
    /** W4A16 layers: search the activation-aware scaling (quant/awq.ts). */
    awq?: boolean;
  } = {},
): Promise<void> {
  await exists(float, "the float model");
  const calib = await calibration(float, log, opts.onProgress);
  const paro = opts.paro ? await paroPlan(float, opts.paro, log) : undefined;
  const method: ModelMethod = opts.method ?? (precision === "w4a16" ? "w4a16" : "svdquant");
  const format: WeightFormat = precision === "nvfp4" ? "nvfp4" : "int4";
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/") + 1) || ".", { recursive: true });
  const t0 = performance.now();
  let tensors = 0;
  await quantizeCheckpoint(float, out, {
    method,
    format,
    rank: opts.rank ?? BUNDLED_RANK,
    calib,
    awq: opts.awq,
    paro: paro && paroTensors(paro),
    onLayer: (r, i, n) => {
      tensors = n;
      if (i + 1 < n) opts.onProgress?.("quantizing", i + 1, n);
      if (r.method !== "copy") {
        log(`  [${i + 1}/${n}] ${r.name} ${r.method} err ${r.relError.toFixed(4)}`);
      }
    },
  });
  if (tensors) opts.onProgress?.("quantizing", tensors, tensors);
  log(`quantized in ${((performance.now() - t0) / 1000).toFixed(1)} s → ${out}`);
}

/** Calibration statistics of the float model `float` (recorded once, cached beside others). */
export async function calibration(
  float: string,
  log: (line: string) => void,
  onProgress?: BuildProgress,
): Promise<CalibStats> {
  const path = await cachedPath(float, "calib.safetensors");
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
    const calls = Math.ceil(classes / batch), total = calls * CALIB.steps;
    for (let c0 = 0; c0 < classes; c0 += batch) {
      const before = (c0 / batch) * CALIB.steps;
      onProgress?.("calibrating", before, total);
      await pipe.generate({
        classes: Array.from({ length: batch }, (_, i) => (c0 + i) % classes),
        seed: CALIB.seed + c0,
        steps: CALIB.steps,
        cfg: 4,
        calibration: { recorder, buckets: CALIB.buckets },
        onStep: (i) => onProgress?.("calibrating", before + i, total),
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

/** What to calibrate a sparse-attention plan for (see quant/paro.ts). */
export interface ParoChoice {
  /** Target fraction of 64×64 (or `tile`) blocks kept per layer and head. */
  density: number;
  /** Mask tile; default {@linkcode defaultTile} of the model's token count. */
  tile?: number;
  /** One mask set per timestep bucket (default) or one for all steps. */
  perTimestep?: boolean;
}

/** The default mask tile for `tokens` tokens: the largest with at least 8 tiles per side. */
export function defaultTile(tokens: number): number {
  const fit = SPARSE_ATTENTION_TILES.filter((t) => Math.ceil(tokens / t) >= 8);
  return fit.length ? Math.max(...fit) : Math.min(...SPARSE_ATTENTION_TILES);
}

/**
 * Attention maps of the float model `float` (dense attention) over calibration runs: up to
 * three batches of classes, {@linkcode CALIB}.steps steps each, by timestep bucket.
 */
export async function attentionMaps(
  float: string,
  log: (line: string) => void,
): Promise<AttentionRecorder> {
  const gpu = await getGpu();
  const pipe = await Pipeline.load(gpu, float, { images: CALIB.batch, dtype: "f32" });
  try {
    const cfg = pipe.model.config, G = cfg.input_size / cfg.patch_size;
    const classes = cfg.num_classes, calls = Math.min(3, Math.ceil(classes / CALIB.batch));
    log(`recording attention maps: ${calls}×${CALIB.batch} images, ${CALIB.steps} steps each`);
    const rec = new AttentionRecorder({
      layers: cfg.depth,
      heads: cfg.num_heads,
      tokens: G * G,
      buckets: CALIB.buckets,
    });
    for (let call = 0; call < calls; call++) {
      const c0 = call * CALIB.batch;
      await pipe.generate({
        classes: Array.from({ length: CALIB.batch }, (_, i) => (c0 + i) % classes),
        seed: CALIB.seed + c0,
        steps: CALIB.steps,
        cfg: 4,
        calibration: { attention: rec, buckets: CALIB.buckets },
      });
    }
    return rec;
  } finally {
    pipe.destroy();
  }
}

/** Calibrate a sparse-attention plan for the float model `float`. */
export async function paroPlan(
  float: string,
  choice: ParoChoice,
  log: (line: string) => void,
  maps?: AttentionRecorder,
) {
  const file = await ModelFile.open(float);
  const c = file.config as { input_size: number; patch_size: number };
  file.close();
  const G = c.input_size / c.patch_size;
  const rec = maps ?? await attentionMaps(float, log);
  const plan = calibrateParo(rec, {
    gridH: G,
    gridW: G,
    tile: choice.tile ?? defaultTile(G * G),
    density: choice.density,
    perTimestep: choice.perTimestep ?? true,
  });
  log(describeParo(plan));
  return plan;
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
