/**
 * Text-encoder time for FLUX.1's shapes, float (f16 weights; T5's `wo` f32) vs W4A16 vs W8A16 in
 * one run: T5-XXL (d_model 4096, 64 heads × 64, d_ff 10240, 512 tokens) and CLIP-L (hidden 768,
 * 12 heads, d_ff 3072, 77 tokens), random weights written to a temporary file (F16), quantized at
 * load. Prints per encoder and format: load time, resident weight bytes, ms per `encode` (median
 * of `--reps` after a warm-up, CPU embedding gather, upload and readback included), and the ratio
 * to float.
 *
 * T5-XXL's 24 layers would need an 18 GB random file; `--t5-layers` (default 2) are built and the
 * time is also given scaled to 24 layers (× 24 / layers: the per-call overhead is scaled too, so
 * the figure errs high). CLIP-L runs all 12 layers. `--small` runs shrunken shapes (T5: d 256,
 * 4 × 64 heads, d_ff 512, 64 tokens; CLIP: hidden 256, 4 heads, d_ff 512) to prove the script
 * on a software adapter.
 *
 * ```sh
 * deno run -A bench/text_encoder_bench.ts [--small] [--t5-layers 2] [--reps 5] [--formats float,w4a16,w8a16]
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { T5Encoder } from "../runtime/text/t5.ts";
import { ClipTextEncoder } from "../runtime/text/clip.ts";
import { writeRandomClip, writeRandomT5 } from "../runtime/text/_random.ts";
import { TEXT_WEIGHT_FORMATS, type TextWeightFormat } from "../runtime/text/_linears.ts";
import type { ActDtype } from "../kernels/_wgsl.ts";
import { fail, formatBytes, runCli } from "../cli/_cli.ts";

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[s.length >> 1];
}

async function timeEncode(reps: number, fn: () => Promise<unknown>): Promise<number> {
  await fn(); // warm-up: pipelines, bind groups
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  return median(t);
}

async function benchT5(
  gpu: Gpu,
  path: string,
  length: number,
  format: TextWeightFormat,
  reps: number,
  dtype: ActDtype,
): Promise<TextBenchRow> {
  const t0 = performance.now();
  const t5 = await T5Encoder.create(gpu, path, { length, weights: format, dtype });
  const loadS = (performance.now() - t0) / 1000;
  try {
    const ids = Int32Array.from({ length }, (_, i) => (i * 37 + 11) % t5.config.vocabSize);
    const ms = await timeEncode(reps, () => t5.encode(ids));
    return { model: "T5", format, loadS, bytes: t5.weightBytes, ms, fullMs: ms };
  } finally {
    t5.destroy();
  }
}

async function benchClip(
  gpu: Gpu,
  path: string,
  format: TextWeightFormat,
  reps: number,
  dtype: ActDtype,
): Promise<TextBenchRow> {
  const t0 = performance.now();
  const clip = await ClipTextEncoder.create(gpu, path, { weights: format, dtype });
  const loadS = (performance.now() - t0) / 1000;
  try {
    const ids = Int32Array.from({ length: 77 }, (_, i) => (i * 37 + 11) % clip.config.vocabSize);
    const ms = await timeEncode(reps, () => clip.encode(ids));
    return { model: "CLIP", format, loadS, bytes: clip.weightBytes, ms, fullMs: ms };
  } finally {
    clip.destroy();
  }
}

/** What {@linkcode benchTextEncoders} measures. */
export interface TextBenchOptions {
  /** Shrunken shapes (T5 d 256, 64 tokens; CLIP hidden 256) for a software adapter. */
  small: boolean;
  /** T5 layers built (the time is also given scaled to T5-XXL's 24). */
  t5Layers: number;
  /** Timed `encode` calls per encoder and format (median; after one warm-up). */
  reps: number;
  /** Weight formats, the first is the ratios' base. */
  formats: TextWeightFormat[];
  /** Activation dtype (default: f16 where the adapter has it). */
  dtype?: ActDtype;
}

/** One measured encoder and format. */
export interface TextBenchRow {
  /** "T5" or "CLIP". */
  model: string;
  /** Weight format. */
  format: TextWeightFormat;
  /** Seconds to load (and quantize) the weights. */
  loadS: number;
  /** Resident weight bytes (of the layers built). */
  bytes: number;
  /** Median ms per `encode` (of the layers built). */
  ms: number;
  /** T5: ms per `encode` scaled to 24 layers (× 24 / layers); CLIP: `ms`. */
  fullMs: number;
}

/**
 * Time CLIP-L and T5-XXL (or `small` shapes) in each format with random weights; prints a header
 * and one line per encoder and format through `log`, and returns the rows (`deno task
 * bench:text`, and the text-encoder part of `deno task bench:flux`).
 */
export async function benchTextEncoders(
  gpu: Gpu,
  o: TextBenchOptions,
  log: (line: string) => void = console.log,
): Promise<TextBenchRow[]> {
  const { small, t5Layers: layers, reps, formats } = o;
  const t5cfg = small
    ? { vocabSize: 512, dModel: 256, dKv: 64, numHeads: 4, dFf: 512, numLayers: layers }
    : { vocabSize: 1024, dModel: 4096, dKv: 64, numHeads: 64, dFf: 10240, numLayers: layers };
  const t5Len = small ? 64 : 512;
  const clipShape = small
    ? { vocab: 512, hidden: 256, heads: 4, layers: 2, intermediate: 512 }
    : { vocab: 1024, hidden: 768, heads: 12, layers: 12, intermediate: 3072 };
  const dtype = o.dtype ?? (gpu.caps.shaderF16 ? "f16" : "f32");
  const dir = await Deno.makeTempDir({ prefix: "text_bench" });
  try {
    const t5Path = `${dir}/t5.safetensors`, clipPath = `${dir}/clip.safetensors`;
    await writeRandomT5(
      t5Path,
      { ...t5cfg, numBuckets: 32, maxDistance: 128, eps: 1e-6 },
      1,
      "F16",
    );
    await writeRandomClip(clipPath, clipShape, 2, "F16");
    log(
      `text encoders on ${gpu.caps.adapter} (${dtype} activations)` +
        `; T5 d=${t5cfg.dModel} d_ff=${t5cfg.dFf} ${layers} layers × ${t5Len} tokens; CLIP ` +
        `hidden=${clipShape.hidden} ${clipShape.layers} layers × 77 tokens; median of ${reps}`,
    );
    const rows: TextBenchRow[] = [];
    for (const f of formats) rows.push(await benchT5(gpu, t5Path, t5Len, f, reps, dtype));
    for (const f of formats) rows.push(await benchClip(gpu, clipPath, f, reps, dtype));
    for (const r of rows) {
      r.fullMs = r.model === "T5" ? r.ms * 24 / layers : r.ms;
      const base = rows.find((x) => x.model === r.model && x.format === formats[0])!;
      const scaled = r.model === "T5" && !small
        ? `, ≈ ${r.fullMs.toFixed(1)} ms at 24 layers, ` +
          `${formatBytes(r.bytes * 24 / layers)} weights`
        : "";
      log(
        `${r.model.padEnd(5)} ${r.format.padEnd(6)} load ${r.loadS.toFixed(1).padStart(6)} s  ` +
          `weights ${formatBytes(r.bytes).padStart(9)}  ${r.ms.toFixed(2).padStart(9)} ms/encode` +
          `  (${(base.ms / r.ms).toFixed(2)}× ${formats[0]})${scaled}`,
      );
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `--formats a,b`: the named weight formats, or a usage error. */
export function parseTextFormats(list: string): TextWeightFormat[] {
  const formats = list.split(",").map((s) => s.trim()) as TextWeightFormat[];
  for (const f of formats) {
    if (!TEXT_WEIGHT_FORMATS.includes(f)) {
      fail(`unknown text weight format "${f}": use some of ${TEXT_WEIGHT_FORMATS.join(",")}`);
    }
  }
  return formats;
}

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      small: { type: "boolean", default: false },
      "t5-layers": { type: "string", default: "2" },
      reps: { type: "string", default: "5" },
      formats: { type: "string", default: TEXT_WEIGHT_FORMATS.join(",") },
    },
  });
  const formats = parseTextFormats(values.formats);
  const layers = Number(values["t5-layers"]), reps = Number(values.reps);
  if (!(Number.isInteger(layers) && layers >= 1 && Number.isInteger(reps) && reps >= 1)) {
    fail("--t5-layers and --reps must be positive integers");
  }
  await benchTextEncoders(await getGpu(), { small: values.small, t5Layers: layers, reps, formats });
}

if (import.meta.main) await runCli(() => main(Deno.args));
