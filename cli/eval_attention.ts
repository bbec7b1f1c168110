/**
 * `deno task eval:attention [--seeds N] [--steps N] [--densities 0.2,0.3,0.5] [--budget B]
 * [--tile N] [--model FILE]`:
 * what sparse + quantized attention (PAROAttention) costs in image quality. The float model with
 * dense attention makes the reference images; then, for each density, with and without token
 * reordering (calibrated orders vs row-major only) and with INT8 or 16-bit Q·Kᵀ (and once INT8
 * P·V), the same seeds are generated again; PSNR and SSIM against the reference, the attention
 * mass inside the kept tiles, and time per step are printed as a Markdown table.
 *
 * The plans are calibrated here, in memory, from the float model's attention maps (the same
 * procedure `deno task quantize --paro` stores in a file).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { psnr, ssim } from "../runtime/metrics.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import type { SparseAttentionChoice } from "../runtime/attention.ts";
import { calibrateParo, PARO_BUDGETS, type ParoBudget } from "../quant/paro.ts";
import { fail, runCli } from "./_cli.ts";
import { attentionMaps, defaultTile, FLOAT_MODEL } from "./_models.ts";

interface Row {
  density: number;
  reorder: boolean;
  qk: "int8" | "f16";
  pv: "int8" | "f16";
}

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      seeds: { type: "string", default: "4" },
      steps: { type: "string", default: "20" },
      cfg: { type: "string", default: "4" },
      densities: { type: "string", default: "0.2,0.3,0.5" },
      tile: { type: "string" },
      budget: { type: "string", default: "head" },
      model: { type: "string" },
    },
  });
  const seeds = Number(values.seeds), steps = Number(values.steps), cfg = Number(values.cfg);
  if (!Number.isInteger(seeds) || seeds < 1 || seeds > 64) fail("--seeds must be in 1..64");
  if (!Number.isInteger(steps) || steps < 1 || steps > 1000) fail("--steps must be in 1..1000");
  if (!(cfg >= 1 && cfg <= 50)) fail("--cfg must be in 1..50");
  const densities = values.densities.split(",").map(Number);
  if (densities.some((d) => !(d > 0 && d <= 1))) {
    fail(`--densities must be numbers in (0, 1], got "${values.densities}"`);
  }
  const budget = values.budget as ParoBudget;
  if (!PARO_BUDGETS.includes(budget)) {
    fail(`--budget must be one of ${PARO_BUDGETS.join(", ")}, got "${values.budget}"`);
  }
  const float = values.model ?? FLOAT_MODEL;
  const gpu = await getGpu();
  const log = (s: string) => console.error(s);

  const run = async (attention?: Partial<SparseAttentionChoice>) => {
    const pipe = await Pipeline.load(gpu, float, { images: seeds, attention });
    try {
      const c = pipe.model.config, per = c.in_channels * c.input_size * c.input_size;
      const r = await pipe.generate({
        classes: Array.from({ length: seeds }, (_, i) => (i * 5) % c.num_classes),
        seed: 1000,
        steps,
        cfg,
      });
      const ms = r.stepMs.slice(1);
      return {
        images: Array.from({ length: seeds }, (_, i) => r.images.slice(i * per, (i + 1) * per)),
        stepMs: ms.reduce((a, b) => a + b, 0) / Math.max(1, ms.length),
        config: c,
      };
    } finally {
      pipe.destroy();
    }
  };

  log("dense reference images");
  const ref = await run();
  const G = ref.config.input_size / ref.config.patch_size;
  const tile = values.tile === undefined ? defaultTile(G * G) : Number(values.tile);
  const maps = await attentionMaps(float, log);
  const rows: Row[] = [{ density: 1, reorder: false, qk: "int8", pv: "f16" }];
  for (const density of densities) {
    for (const reorder of [true, false]) {
      for (const qk of ["int8", "f16"] as const) rows.push({ density, reorder, qk, pv: "f16" });
    }
    rows.push({ density, reorder: true, qk: "int8", pv: "int8" });
  }
  const lines = [
    `Dense attention (float model, ${ref.config.input_size}×${ref.config.input_size}, ${G * G} ` +
    `tokens, tile ${tile}, budget ${budget}): ${
      ref.stepMs.toFixed(1)
    } ms/step. ${seeds} seeds, ${steps} steps, cfg ${cfg}.`,
    "",
    "| density | reordering | Q·Kᵀ | P·V | mass kept | PSNR (dB) | SSIM | ms/step |",
    "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
  ];
  for (const row of rows) {
    log(`density ${row.density} reorder ${row.reorder} qk ${row.qk} pv ${row.pv}`);
    const plan = calibrateParo(maps, {
      gridH: G,
      gridW: G,
      tile,
      density: row.density,
      perTimestep: true,
      orders: row.reorder ? undefined : ["row"],
      budget,
    });
    const got = await run({ plan, qk: row.qk, pv: row.pv });
    const p = got.images.map((im, i) => psnr(im, ref.images[i]));
    const s = got.images.map((im, i) => ssim(im, ref.images[i], ref.config.in_channels));
    const mean = (v: ArrayLike<number>) => Array.from(v).reduce((a, b) => a + b, 0) / v.length;
    lines.push(
      `| ${row.density.toFixed(2)} | ${row.reorder ? "calibrated" : "row-major"} | ${row.qk} | ` +
        `${row.pv} | ${mean(plan.keptMass).toFixed(3)} | ${mean(p).toFixed(2)} | ` +
        `${mean(s).toFixed(3)} | ${got.stepMs.toFixed(1)} |`,
    );
  }
  console.log(lines.join("\n"));
}

if (import.meta.main) await runCli(() => main(Deno.args));
