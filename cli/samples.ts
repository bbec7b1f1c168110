/**
 * `deno task samples [--out docs/samples.png]`: a grid of the bundled model's samples, one row
 * per precision (float, SVDQuant INT4, SVDQuant NVFP4), one column per class, same seeds — the
 * picture in the README. Also `--build-int4` rebuilds the committed INT4 file from the float
 * checkpoint (calibration + quantizer), which is how models/dit_emoji.int4.safetensors is made.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../runtime/device.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { encodePng, toRgbGrid } from "../runtime/png.ts";
import { runCli } from "./_cli.ts";
import { buildQuantized, FLOAT_MODEL, modelFor } from "./_models.ts";

async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string", default: "docs/samples.png" },
      steps: { type: "string", default: "25" },
      cfg: { type: "string", default: "4" },
      seed: { type: "string", default: "11" },
      "build-int4": { type: "boolean", default: false },
    },
  });
  const log = (s: string) => console.log(s);
  if (values["build-int4"]) {
    const out = FLOAT_MODEL.replace(/\.safetensors$/, ".int4.safetensors");
    await buildQuantized(FLOAT_MODEL, "int4", out, log);
    const [f, q] = [await Deno.stat(FLOAT_MODEL), await Deno.stat(out)];
    log(`float ${f.size} bytes, int4 ${q.size} bytes (${(q.size / f.size).toFixed(3)}×)`);
    return;
  }
  const gpu = await getGpu();
  const rows: Float32Array[] = [];
  let size = 0, n = 0, names: string[] = [];
  for (const precision of ["float", "int4", "nvfp4"] as const) {
    const pipe = await Pipeline.load(gpu, await modelFor(precision, log));
    try {
      names = pipe.classNames;
      n = names.length;
      size = pipe.model.config.input_size;
      for (let c = 0; c < n; c++) {
        const { images } = await pipe.generate({
          classes: [c],
          seed: Number(values.seed) + c,
          steps: Number(values.steps),
          cfg: Number(values.cfg),
        });
        rows.push(images);
      }
      log(`${precision}: ${n} samples`);
    } finally {
      pipe.destroy();
    }
  }
  const all = new Float32Array(rows.length * rows[0].length);
  rows.forEach((r, i) => all.set(r, i * r.length));
  const { rgb, width, height } = toRgbGrid(all, rows.length, size, n, 3);
  await Deno.mkdir(values.out.slice(0, values.out.lastIndexOf("/")) || ".", { recursive: true });
  await Deno.writeFile(values.out, await encodePng(rgb, width, height));
  log(
    `wrote ${values.out}: rows float / SVDQuant INT4 / SVDQuant NVFP4; columns ${names.join(", ")}`,
  );
}

if (import.meta.main) await runCli(() => main(Deno.args));
