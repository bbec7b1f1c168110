/**
 * One-step error of quantized model files along the float model's own sampling trajectory: the
 * float pipeline generates as `deno task eval` does (same classes, seed, steps, cfg), and at every
 * step each quantized model is run on the float model's exact input (x_t, t, labels); the relative
 * L2 error of its output (ε and variance channels, conditional and unconditional halves) against
 * the float output is averaged over the steps. Unlike the final-image PSNR, no error is carried
 * from one step to the next, so a small change to a few layers gives a small change here (the
 * final images of a 20-step sampler can move by a dB or more from such a change).
 *
 * deno run -A bench/step_error.ts FILE... [--model float.safetensors] [--seeds 4] [--steps 20]
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { FLOAT_MODEL } from "../cli/_models.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    model: { type: "string" },
    seeds: { type: "string", default: "4" },
    steps: { type: "string", default: "20" },
    cfg: { type: "string", default: "4" },
  },
});
if (!positionals.length) throw new TypeError("Cannot measure: give one or more quantized files");
const seeds = Number(values.seeds), steps = Number(values.steps), cfg = Number(values.cfg);
const gpu = await getGpu();
const float = await Pipeline.load(gpu, values.model ?? FLOAT_MODEL, { images: seeds });
const quant: Pipeline[] = [];
for (const path of positionals) quant.push(await Pipeline.load(gpu, path, { images: seeds }));
const errs: number[][] = quant.map(() => []);
const forward = float.model.forward.bind(float.model);
float.model.forward = async (x, t, y, bucket) => {
  const ref = await forward(x, t, y, bucket);
  for (let q = 0; q < quant.length; q++) {
    const out = await quant[q].model.forward(x, t, y, bucket);
    let num = 0, den = 0;
    for (let i = 0; i < ref.length; i++) {
      num += (out[i] - ref[i]) ** 2;
      den += ref[i] ** 2;
    }
    errs[q].push(Math.sqrt(num / den));
  }
  return ref;
};
const classes = float.model.config.num_classes;
await float.generate({
  classes: Array.from({ length: seeds }, (_, i) => (i * 5) % classes),
  seed: 1000,
  steps,
  cfg,
});
console.log(
  `${seeds} seeds, ${steps} DPM-Solver++ steps, cfg ${cfg}, ${gpu.caps.adapter}: relative L2 ` +
    "error of the model output on the float trajectory's inputs\n",
);
console.log("| file | mean over steps | first step | last step |\n| --- | ---: | ---: | ---: |");
positionals.forEach((p, q) => {
  const e = errs[q], mean = e.reduce((a, b) => a + b, 0) / e.length;
  console.log(`| ${p} | ${mean.toFixed(5)} | ${e[0].toFixed(5)} | ${e.at(-1)!.toFixed(5)} |`);
});
for (const p of [float, ...quant]) p.destroy();
