/**
 * Calibration statistics for the quantizer: per layer, per timestep bucket, the running
 * per-input-channel activation amax, plus a reservoir sample of real input rows (tokens) that the
 * smoothing search and the error report score against.
 *
 * - {@linkcode CalibRecorder} is the API the runtime calls while it runs the float model on
 *   calibration inputs.
 * - {@linkcode writeCalibStats} / {@linkcode readCalibStats} store the statistics as a safetensors
 *   file: `<layer>.amax` F32 [T, K] and `<layer>.samples` F32 [S, K], metadata
 *   `calib_format = "1"` and `buckets = "T"`.
 * - {@linkcode syntheticStats} is the documented fallback when no calibration file is given:
 *   heavy-tailed synthetic activations with planted outlier channels. It lets the quantizer run
 *   (and its search behave sensibly) without data, but real statistics are always better.
 *
 * @module
 */
import { geluTanh } from "../gpu/activations.ts";
import { FormatError } from "../gpu/errors.ts";
import { SafetensorsReader, SafetensorsWriter } from "../formats/safetensors.ts";

/** Statistics of one linear layer's input. */
export interface LayerStats {
  /** In-features K. */
  k: number;
  /** Per timestep bucket, the per-channel max |x| seen ([K] each; zeros where nothing was seen). */
  amax: Float32Array[];
  /** [S, K] rows of real inputs (a uniform sample of all rows recorded, across buckets). */
  samples: Float32Array;
  /** Number of sample rows S. */
  s: number;
}

/** Statistics of a whole model. */
export interface CalibStats {
  /** Number of timestep buckets T. */
  buckets: number;
  /** Layer base name (e.g. `blocks.3.attn.qkv`) → its statistics. */
  layers: Map<string, LayerStats>;
}

/** GELU, tanh form (one definition: gpu/activations.ts). */
export { geluTanh };

/** Default number of reservoir rows kept per layer. */
export const DEFAULT_MAX_SAMPLES = 256;

/** Metadata key and value marking a calibration statistics file. */
const FORMAT_KEY = "calib_format", FORMAT_VALUE = "1";

/** mulberry32: a small seedable PRNG (uniform in [0, 1)) with Gaussian draws. */
class SeededRandom {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
}

/** FNV-1a of a string mixed with a seed: a per-layer seed independent of recording order. */
export function layerSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

interface LayerState {
  k: number;
  amax: Float32Array[];
  rows: Float32Array; // [maxSamples, K]
  kept: number;
  seen: number;
  rng: SeededRandom;
}

/**
 * Records calibration statistics while the float model runs. For each call, the per-channel amax
 * of the bucket is updated (non-finite values are ignored) and every row enters a per-layer
 * reservoir (algorithm R, seeded per layer from `seed` and the layer name, so the sample does not
 * depend on the order in which layers are recorded).
 *
 * @example
 * ```ts
 * import { CalibRecorder } from "./calib.ts";
 * const rec = new CalibRecorder({ buckets: 4, maxSamples: 128, seed: 1 });
 * const x = new Float32Array(16 * 64).map(() => Math.random() - 0.5); // [M=16, K=64]
 * rec.record("blocks.0.attn.qkv", 0, x, 16, 64);
 * const stats = rec.stats(); // stats.layers.get("blocks.0.attn.qkv")!.s === 16
 * ```
 */
export class CalibRecorder {
  /** Number of timestep buckets; each keeps its own per-channel amax. */
  readonly buckets: number;
  /** Reservoir size: most input rows kept per layer (all buckets together). */
  readonly maxSamples: number;
  /** Base seed of the per-layer reservoirs (as an unsigned 32-bit integer). */
  readonly seed: number;
  #layers = new Map<string, LayerState>();

  /**
   * `buckets` ≥ 1; `maxSamples` ≥ 0 rows per layer (default {@linkcode DEFAULT_MAX_SAMPLES});
   * `seed` (default 0). Throws `RangeError` on a bad count.
   */
  constructor(opts: { buckets: number; maxSamples?: number; seed?: number }) {
    const { buckets, maxSamples = DEFAULT_MAX_SAMPLES, seed = 0 } = opts;
    if (!(Number.isSafeInteger(buckets) && buckets >= 1)) {
      throw new RangeError(`Cannot create CalibRecorder: buckets is ${buckets}, expected >= 1`);
    }
    if (!(Number.isSafeInteger(maxSamples) && maxSamples >= 0)) {
      throw new RangeError(
        `Cannot create CalibRecorder: maxSamples is ${maxSamples}, expected an integer >= 0`,
      );
    }
    this.buckets = buckets;
    this.maxSamples = maxSamples;
    this.seed = seed >>> 0;
  }

  /** Record `x` [M, K], the input of `layer` during a step of timestep bucket `bucket`. */
  record(layer: string, bucket: number, x: Float32Array, m: number, k: number): void {
    const what = `Cannot record calibration input of ${layer}`;
    if (!(Number.isSafeInteger(bucket) && bucket >= 0 && bucket < this.buckets)) {
      throw new RangeError(`${what}: bucket is ${bucket}, expected 0..${this.buckets - 1}`);
    }
    if (!(Number.isSafeInteger(m) && m >= 0 && Number.isSafeInteger(k) && k >= 1)) {
      throw new RangeError(`${what}: shape [M=${m}, K=${k}] is invalid`);
    }
    if (x.length !== m * k) {
      throw new TypeError(`${what}: x has ${x.length} elements, expected [M=${m}, K=${k}]`);
    }
    let st = this.#layers.get(layer);
    if (!st) {
      st = {
        k,
        amax: Array.from({ length: this.buckets }, () => new Float32Array(k)),
        rows: new Float32Array(this.maxSamples * k),
        kept: 0,
        seen: 0,
        rng: new SeededRandom(layerSeed(this.seed, layer)),
      };
      this.#layers.set(layer, st);
    } else if (st.k !== k) {
      throw new TypeError(`${what}: K is ${k}, but earlier inputs had K=${st.k}`);
    }
    const amax = st.amax[bucket];
    for (let i = 0; i < m; i++) {
      const row = i * k;
      for (let c = 0; c < k; c++) {
        const a = Math.abs(x[row + c]);
        if (a > amax[c] && a < Infinity) amax[c] = a;
      }
      // Algorithm R: row number `seen` (0-based) replaces a random slot with prob. max/(seen+1).
      let slot = -1;
      if (st.kept < this.maxSamples) slot = st.kept++;
      else {
        const j = Math.floor(st.rng.next() * (st.seen + 1));
        if (j < this.maxSamples) slot = j;
      }
      st.seen++;
      if (slot >= 0) st.rows.set(x.subarray(row, row + k), slot * k);
    }
  }

  /** A snapshot of the statistics (copies; recording may continue). */
  stats(): CalibStats {
    const layers = new Map<string, LayerStats>();
    for (const [name, st] of this.#layers) {
      layers.set(name, {
        k: st.k,
        amax: st.amax.map((a) => a.slice()),
        samples: st.rows.slice(0, st.kept * st.k),
        s: st.kept,
      });
    }
    return { buckets: this.buckets, layers };
  }
}

/** Per-channel max of a layer's amax over all buckets (what a single smoothing vector uses). */
export function amaxOverBuckets(stats: LayerStats): Float32Array {
  const out = new Float32Array(stats.k);
  for (const a of stats.amax) {
    for (let c = 0; c < stats.k; c++) if (a[c] > out[c]) out[c] = a[c];
  }
  return out;
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Write statistics to a safetensors file (atomically: a temporary file renamed at the end).
 * Tensors per layer, in name order: `<layer>.amax` F32 [T, K], `<layer>.samples` F32 [S, K].
 */
export async function writeCalibStats(path: string, s: CalibStats): Promise<void> {
  const names = [...s.layers.keys()].sort();
  const tensors: { name: string; dtype: "F32"; shape: number[]; data: Uint8Array }[] = [];
  for (const name of names) {
    const st = s.layers.get(name)!;
    if (st.amax.length !== s.buckets || st.amax.some((a) => a.length !== st.k)) {
      throw new TypeError(
        `Cannot write calibration statistics: ${name}.amax must be ${s.buckets} arrays of ` +
          `[K=${st.k}]`,
      );
    }
    if (st.samples.length !== st.s * st.k) {
      throw new TypeError(
        `Cannot write calibration statistics: ${name}.samples has ${st.samples.length} ` +
          `elements, expected [S=${st.s}, K=${st.k}]`,
      );
    }
    const amax = new Float32Array(s.buckets * st.k);
    st.amax.forEach((a, b) => amax.set(a, b * st.k));
    tensors.push({
      name: `${name}.amax`,
      dtype: "F32",
      shape: [s.buckets, st.k],
      data: bytesOf(amax),
    });
    tensors.push({
      name: `${name}.samples`,
      dtype: "F32",
      shape: [st.s, st.k],
      data: bytesOf(st.samples),
    });
  }
  const writer = await SafetensorsWriter.create(path, {
    tensors: tensors.map((t) => ({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      byteLength: t.data.byteLength,
    })),
    metadata: { [FORMAT_KEY]: FORMAT_VALUE, buckets: String(s.buckets) },
  });
  try {
    for (const t of tensors) await writer.write(t.name, t.data);
    await writer.commit();
  } catch (e) {
    await writer.abort();
    throw e;
  }
}

/**
 * Read statistics written by {@linkcode writeCalibStats}. Throws `FormatError` naming the file
 * (and tensor) when the file is not a statistics file, a layer lacks one of its two tensors, or
 * a shape is inconsistent.
 */
export async function readCalibStats(path: string): Promise<CalibStats> {
  const reader = await SafetensorsReader.open(path);
  try {
    if (reader.metadata[FORMAT_KEY] !== FORMAT_VALUE) {
      throw new FormatError(
        path,
        `metadata ${FORMAT_KEY} is ${JSON.stringify(reader.metadata[FORMAT_KEY])}, expected ` +
          `"${FORMAT_VALUE}"; pass a file written by writeCalibStats (the runtime's recorder)`,
      );
    }
    const buckets = Number(reader.metadata.buckets);
    if (!(Number.isSafeInteger(buckets) && buckets >= 1)) {
      throw new FormatError(
        path,
        `metadata buckets is "${reader.metadata.buckets}", expected >= 1`,
      );
    }
    const layers = new Map<string, LayerStats>();
    for (const [tname, info] of reader.tensors) {
      const suffix = tname.endsWith(".amax") ? ".amax" : ".samples";
      if (!tname.endsWith(suffix)) {
        throw new FormatError(
          path,
          "unexpected tensor, expected <layer>.amax or <layer>.samples",
          tname,
        );
      }
      if (suffix === ".samples") continue;
      const layer = tname.slice(0, -suffix.length), sname = `${layer}.samples`;
      const sinfo = reader.tensors.get(sname);
      if (!sinfo) throw new FormatError(path, `${tname} has no matching ${sname}`, sname);
      for (const t of [info, sinfo]) {
        if (!["F32", "F16", "BF16"].includes(t.dtype) || t.shape.length !== 2) {
          throw new FormatError(
            path,
            `expected F32 (or F16/BF16) [rows, K], found ${t.dtype} [${t.shape}]`,
            t.name,
          );
        }
      }
      const k = info.shape[1];
      if (info.shape[0] !== buckets || sinfo.shape[1] !== k || k < 1) {
        throw new FormatError(
          path,
          `shapes [${info.shape}] and [${sinfo.shape}] disagree, expected [T=${buckets}, K] and ` +
            `[S, K] with the same K >= 1`,
          tname,
        );
      }
      const amaxAll = await reader.readFloat32(tname);
      const amax = Array.from({ length: buckets }, (_, b) => amaxAll.slice(b * k, (b + 1) * k));
      const samples = await reader.readFloat32(sname);
      layers.set(layer, { k, amax, samples, s: sinfo.shape[0] });
    }
    for (const tname of reader.tensors.keys()) {
      if (tname.endsWith(".samples") && !layers.has(tname.slice(0, -".samples".length))) {
        throw new FormatError(path, `has no matching .amax tensor`, tname);
      }
    }
    return { buckets, layers };
  } finally {
    reader.close();
  }
}

/** Options of {@linkcode syntheticStats}. */
export interface SyntheticOptions {
  /** Timestep buckets T (default 1). */
  buckets?: number;
  /** Sample rows per layer (default 128). */
  samples?: number;
  /** Seed (default 0); each layer's data also depends on its name. */
  seed?: number;
  /** Student-t degrees of freedom of the row values (default 3: heavy tails, finite variance). */
  dof?: number;
  /** Fraction of channels that are outliers (default 1/64, at least 1 channel). */
  outlierFraction?: number;
  /** Outlier channels are scaled by a factor drawn uniformly from this range (default [20, 50]). */
  outlierScale?: [number, number];
  /** Layers whose input follows a GELU (their rows are passed through GELU-tanh). */
  postGelu?: Iterable<string>;
}

/**
 * Synthetic statistics: the fallback when no calibration file is given. Each layer's rows are
 * Student-t values (heavy-tailed) times per-channel scales (log-normal, σ = 0.5) with a few
 * outlier channels ×20–50 (the pattern real diffusion-transformer activations show), times a
 * per-row log-normal scale (σ = 0.25); rows of `postGelu` layers go through GELU. Row `i` counts
 * for bucket `i mod T`; a bucket with no rows gets the overall amax.
 *
 * @example
 * ```ts
 * import { syntheticStats } from "./calib.ts";
 * const stats = syntheticStats(new Map([["blocks.0.attn.qkv", 128]]), { samples: 64 });
 * stats.layers.get("blocks.0.attn.qkv")!.samples.length; // 64 * 128
 * ```
 */
export function syntheticStats(
  layers: Map<string, number>,
  opts: SyntheticOptions = {},
): CalibStats {
  const {
    buckets = 1,
    samples = 128,
    seed = 0,
    dof = 3,
    outlierFraction = 1 / 64,
    outlierScale = [20, 50],
  } = opts;
  if (
    !(Number.isSafeInteger(buckets) && buckets >= 1 && Number.isSafeInteger(samples) &&
      samples >= 0)
  ) {
    throw new RangeError(
      `Cannot make synthetic statistics: buckets ${buckets} and samples ${samples} must be ` +
        `integers, buckets >= 1`,
    );
  }
  const gelu = new Set(opts.postGelu ?? []);
  const out = new Map<string, LayerStats>();
  for (const [name, k] of layers) {
    if (!(Number.isSafeInteger(k) && k >= 1)) {
      throw new RangeError(
        `Cannot make synthetic statistics for ${name}: K is ${k}, expected >= 1`,
      );
    }
    const rng = new SeededRandom(layerSeed(seed, name));
    const scale = new Float64Array(k);
    for (let c = 0; c < k; c++) scale[c] = Math.exp(0.5 * rng.normal());
    const outliers = Math.max(1, Math.round(k * outlierFraction));
    for (let i = 0; i < outliers; i++) {
      const c = Math.floor(rng.next() * k);
      scale[c] *= outlierScale[0] + (outlierScale[1] - outlierScale[0]) * rng.next();
    }
    const x = new Float32Array(samples * k);
    for (let i = 0; i < samples; i++) {
      const rowScale = Math.exp(0.25 * rng.normal());
      for (let c = 0; c < k; c++) {
        let chi2 = 0;
        for (let d = 0; d < dof; d++) chi2 += rng.normal() ** 2;
        const t = rng.normal() / Math.sqrt(chi2 / dof || 1);
        const v = t * scale[c] * rowScale;
        x[i * k + c] = gelu.has(name) ? geluTanh(v) : v;
      }
    }
    const amax = Array.from({ length: buckets }, () => new Float32Array(k));
    const all = new Float32Array(k);
    for (let i = 0; i < samples; i++) {
      const a = amax[i % buckets];
      for (let c = 0; c < k; c++) {
        const v = Math.abs(x[i * k + c]);
        if (v > a[c]) a[c] = v;
        if (v > all[c]) all[c] = v;
      }
    }
    for (let b = samples; b < buckets; b++) amax[b].set(all);
    out.set(name, { k, amax, samples: x, s: samples });
  }
  return { buckets, layers: out };
}
