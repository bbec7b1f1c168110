/**
 * `deno task eval [--seeds N] [--steps N] [--model float.safetensors] [--only w4a16,rtn,…]`: image
 * quality of every precision and method (or of those `--only` names, by method or precision)
 * against the float model on the same seeds — PSNR and SSIM of the final images, weight bytes on
 * the GPU, and time per step — printed as a Markdown table.
 *
 * Quantized files are built on first use (calibration on the float model, then the quantizer)
 * and cached under models/.cache/.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { psnr, ssim } from "../runtime/metrics.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import type { ModelMethod } from "../convert/model.ts";
import { fail, formatBytes, runCli } from "./_cli.ts";
import { buildQuantized, cachedPath, FLOAT_MODEL } from "./_models.ts";

/** The rows of the table: label, how the file is built (null = the float model itself). */
const VARIANTS: {
  label: string;
  precision?: "int4" | "nvfp4" | "w4a16";
  method?: ModelMethod;
  /** W4A16 with the activation-aware scaling search (quantize --awq). */
  awq?: boolean;
}[] = [
  { label: "float (f16 activations)" },
  { label: "SVDQuant INT4 (W4A4 + LR)", precision: "int4", method: "svdquant" },
  { label: "SVDQuant NVFP4 (W4A4 + LR)", precision: "nvfp4", method: "svdquant" },
  { label: "dilation INT4 (W4A4 + LR)", precision: "int4", method: "dilate" },
  { label: "RTN INT4 (W4A4)", precision: "int4", method: "rtn" },
  { label: "W4A16 INT4", precision: "w4a16", method: "w4a16" },
  { label: "W4A16 INT4 + AWQ scaling", precision: "w4a16", method: "w4a16", awq: true },
];

const VARIANT_KEYS = [
  ...new Set(VARIANTS.flatMap((v) => (v.precision ? [v.method!, v.precision] : []))),
].join(", ");

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      seeds: { type: "string", default: "8" },
      steps: { type: "string", default: "20" },
      cfg: { type: "string", default: "4" },
      model: { type: "string" },
      only: { type: "string" },
    },
  });
  const seeds = Number(values.seeds), steps = Number(values.steps), cfg = Number(values.cfg);
  if (!Number.isInteger(seeds) || seeds < 1 || seeds > 64) fail("--seeds must be in 1..64");
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000) fail("--steps must be in 1..1000");
  // --only: a comma-separated list of methods or precisions (e.g. "w4a16", "svdquant,rtn");
  // the float reference always runs
  const only = values.only?.split(",").map((s) => s.trim()).filter(Boolean);
  const variants = VARIANTS.filter((v) =>
    !v.precision || !only || only.includes(v.method!) || only.includes(v.precision)
  );
  if (only && variants.length === 1) {
    fail(`--only ${values.only} matches no precision or method (${VARIANT_KEYS})`);
  }
  const float = values.model ?? FLOAT_MODEL;
  const gpu = await getGpu();
  const log = (s: string) => console.error(s);

  let reference: Float32Array[] = [];
  const rows: string[] = [];
  for (const v of variants) {
    let path = float;
    if (v.precision) {
      const name = `${v.method}${v.awq ? "-awq" : ""}.${v.precision}.safetensors`;
      path = await cachedPath(float, name, "eval/");
      try {
        await Deno.stat(path);
      } catch {
        log(`building ${v.label} → ${path}`);
        await buildQuantized(float, v.precision, path, log, { method: v.method, awq: v.awq });
      }
    }
    const pipe = await Pipeline.load(gpu, path, { images: seeds });
    try {
      const classes = pipe.model.config.num_classes;
      // one call: image i has class i mod classes and noise stream i of the seed, the same for
      // every variant
      const r = await pipe.generate({
        classes: Array.from({ length: seeds }, (_, i) => (i * 5) % classes),
        seed: 1000,
        steps,
        cfg,
      });
      const C = pipe.model.config.in_channels, S = pipe.model.config.input_size;
      const per = C * S * S;
      const images = Array.from(
        { length: seeds },
        (_, i) => r.images.slice(i * per, (i + 1) * per),
      );
      const stepMs = r.stepMs.slice(1); // the first step includes pipeline warm-up
      if (!v.precision) reference = images;
      const p = images.map((im, i) => psnr(im, reference[i]));
      const q = images.map((im, i) => ssim(im, reference[i], C));
      const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
      const bytes = pipe.model.layers.reduce((s, l) => s + l.weightBytes, 0);
      const ms = stepMs.length ? mean(stepMs) : NaN;
      rows.push(
        `| ${v.label} | ${v.precision ? mean(p).toFixed(2) : "–"} | ` +
          `${v.precision ? mean(q).toFixed(4) : "1"} | ${formatBytes(bytes)} | ${ms.toFixed(1)} |`,
      );
      log(rows[rows.length - 1]);
    } finally {
      pipe.destroy();
    }
  }
  console.log(
    `\n${seeds} seeds, ${steps} DPM-Solver++ steps, cfg ${cfg}, ${gpu.caps.adapter}; ` +
      "PSNR/SSIM of the final images vs the float model's images of the same seed; weight bytes " +
      "are the linear layers resident on the GPU\n",
  );
  console.log("| precision / method | PSNR (dB) | SSIM | weights | ms / step |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const r of rows) console.log(r);
}

if (import.meta.main) await runCli(() => main(Deno.args));
