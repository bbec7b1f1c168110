/**
 * `deno task samples [--out docs/samples.png] [--classes a,b,...] [--sampler dpm|ddim|ddpm]
 * [--steps N] [--cfg X] [--seed N]`: a grid of the bundled model's samples, one row per precision
 * (float, SVDQuant INT4, SVDQuant NVFP4), one column per class, same seed — the picture in the
 * README. Also `--build-int4` rebuilds the committed INT4 file from the float
 * checkpoint (calibration + quantizer + the sparse-attention plan {@linkcode BUNDLED_PARO}), which
 * is how models/dit_emoji.int4.safetensors is made.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { Pipeline, type SamplerName, SAMPLERS } from "../runtime/pipeline.ts";
import { encodePng, toRgbGrid } from "../runtime/png.ts";
import { runCli, UsageError } from "./_cli.ts";
import { buildQuantized, BUNDLED_PARO, FLOAT_MODEL, modelFor } from "./_models.ts";

/** The README grid's columns: the classes the model draws best, then some it does not. */
const DEFAULT_CLASSES = ["smiley", "heart", "clock", "flag", "sign", "person", "fruit", "vehicle"];

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string", default: "docs/samples.png" },
      steps: { type: "string", default: "20" },
      cfg: { type: "string", default: "4" },
      seed: { type: "string", default: "11" },
      sampler: { type: "string", default: "dpm" },
      classes: { type: "string", default: DEFAULT_CLASSES.join(",") },
      "build-int4": { type: "boolean", default: false },
    },
  });
  const log = (s: string) => console.log(s);
  if (values["build-int4"]) {
    const out = FLOAT_MODEL.replace(/\.safetensors$/, ".int4.safetensors");
    await buildQuantized(FLOAT_MODEL, "int4", out, log, { paro: BUNDLED_PARO });
    const [f, q] = [await Deno.stat(FLOAT_MODEL), await Deno.stat(out)];
    log(`float ${f.size} bytes, int4 ${q.size} bytes (${(q.size / f.size).toFixed(3)}×)`);
    return;
  }
  const sampler = values.sampler as SamplerName;
  if (!(SAMPLERS as readonly string[]).includes(sampler)) {
    throw new UsageError(`--sampler must be one of ${SAMPLERS.join(", ")}, got "${sampler}"`);
  }
  const wanted = values.classes.split(",").map((w) => w.trim()).filter((w) => w);
  const gpu = await getGpu();
  const rows: Float32Array[] = [];
  let size = 0, n = 0, names: string[] = [];
  for (const precision of ["float", "int4", "nvfp4"] as const) {
    const path = await modelFor(precision, log);
    const file = await ModelFile.open(path);
    const all = (file.config.class_names as string[] | undefined) ?? [];
    file.close();
    const missing = wanted.filter((w) => !all.includes(w));
    if (missing.length || !wanted.length) {
      throw new UsageError(
        `--classes: ${missing.length ? `no class ${missing.join(", ")} in ${path}` : "empty"}; ` +
          `the classes are ${all.join(", ")}`,
      );
    }
    const classes = wanted.map((w) => all.indexOf(w));
    names = classes.map((c) => all[c] ?? `class ${c}`);
    n = classes.length;
    const pipe = await Pipeline.load(gpu, path, { images: n });
    try {
      size = pipe.model.config.input_size;
      const { images } = await pipe.generate({
        classes,
        seed: Number(values.seed),
        steps: Number(values.steps),
        cfg: Number(values.cfg),
        sampler,
      });
      rows.push(images);
      log(`${precision}: ${n} samples`);
    } finally {
      pipe.destroy();
    }
  }
  const grid = new Float32Array(rows.length * rows[0].length);
  rows.forEach((r, i) => grid.set(r, i * r.length));
  const { rgb, width, height } = toRgbGrid(grid, rows.length * n, size, n, 3);
  await Deno.mkdir(values.out.slice(0, values.out.lastIndexOf("/")) || ".", { recursive: true });
  await Deno.writeFile(values.out, await encodePng(rgb, width, height));
  log(
    `wrote ${values.out}: rows float / SVDQuant INT4 / SVDQuant NVFP4; columns ${names.join(", ")}`,
  );
}

if (import.meta.main) await runCli(() => main(Deno.args));
