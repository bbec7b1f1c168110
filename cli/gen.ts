/**
 * `deno task gen [prompt or class] [options]`: generate an image with the bundled model (or any
 * DiT model file) and write a PNG. A progress bar on a terminal, plain lines otherwise; timings
 * printed at the end; errors are one line.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { Pipeline, type SamplerName, SAMPLERS } from "../runtime/pipeline.ts";
import { encodePng, toRgbGrid } from "../runtime/png.ts";
import { checkOutputFile, fail, intOption, runCli, writeFileReplacing } from "./_cli.ts";
import { plural } from "./plural.ts";
import { matchClass } from "./_classes.ts";
import { modelFor, type Precision, PRECISIONS } from "./_models.ts";
import { type LatentDecoder, loadDecoder } from "./_decoder.ts";
import { resolveModel } from "./_resolve.ts";

const USAGE = `Usage: deno task gen [prompt or class] [options]

  prompt or class        a class name, a few words of one, or a class number (default: a random class)
  --seed N               noise seed, 0..4294967295 (default: random)
  --steps N              denoising steps, 1..1000 (default 20)
  --cfg X                classifier-free guidance scale, 1..50 (default 4)
  --precision P          float | int4 | nvfp4 | w4a16 (default int4)
  --sampler S            dpm | ddim | ddpm (default dpm); ddpm = ancestral sampling with the
                         model's learned variance, wants --steps 100 or more
  --model FILE|ID        a model file (float or pre-quantized; a Nunchaku svdq-* checkpoint is
                         imported once into models/.cache/nunchaku/), or a hub id
                         <owner>/<name>/<file> (downloaded first, see deno task pull);
                         overrides --precision; a FLUX.1 folder switches to text-to-image
                         (--model FOLDER --help)
  --attention A          dense | sparse (default dense); sparse = PAROAttention: the file's
                         calibrated token orders and block masks, INT8 Q·Kᵀ (needs a file
                         quantized with --paro, like the bundled int4 model)
  --vae PATH             latent models (e.g. DiT-XL-2-256x256.safetensors): the autoencoder that
                         turns latents into pixels, a .safetensors file or a diffusers folder
                         (e.g. sd-vae-ft-ema/); with --decoder tiny, a TAESD decoder file
  --decoder D            full | tiny (default full); tiny = a TAESD-family preview decoder
  --n N                  images side by side in one PNG (default 1)
  --scale N              pixel scale of the PNG (default 4, latent models 1)
  --out FILE             output PNG (default out.png)
  --list                 list the model's classes and exit
  -h, --help             this text`;

async function main(args: string[]): Promise<void> {
  // FLUX.1 folders and transformer files have their own options (cli/_flux_gen.ts)
  const flux = await import("./_flux_gen.ts");
  if (await flux.isFluxModelArg(args)) return await flux.genFlux(args);
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      seed: { type: "string" },
      steps: { type: "string", default: "20" },
      cfg: { type: "string", default: "4" },
      precision: { type: "string", default: "int4" },
      sampler: { type: "string", default: "dpm" },
      model: { type: "string" },
      attention: { type: "string", default: "dense" },
      vae: { type: "string" },
      decoder: { type: "string", default: "full" },
      n: { type: "string", default: "1" },
      scale: { type: "string" },
      out: { type: "string", default: "out.png" },
      list: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const steps = intOption("steps", values.steps, 1, 1000);
  const n = intOption("n", values.n, 1, 16);
  const cfg = Number(values.cfg);
  if (!(cfg >= 1 && cfg <= 50)) fail(`--cfg must be a number in 1..50, got "${values.cfg}"`);
  const seed = values.seed === undefined
    ? (Math.random() * 2 ** 32) >>> 0
    : intOption("seed", values.seed, 0, 0xffffffff);
  const precision = values.precision as Precision;
  if (!PRECISIONS.includes(precision)) {
    fail(`--precision must be one of ${PRECISIONS.join(", ")}, got "${precision}"`);
  }
  const attention = values.attention;
  if (attention !== "dense" && attention !== "sparse") {
    fail(`--attention must be dense or sparse, got "${attention}"`);
  }
  const sampler = values.sampler as SamplerName;
  if (!(SAMPLERS as readonly string[]).includes(sampler)) {
    fail(`--sampler must be one of ${SAMPLERS.join(", ")}, got "${sampler}"`);
  }
  if (positionals.length > 1) {
    fail(
      `give one prompt (quote it), got ${positionals.length} words unquoted? Try: deno task gen "${
        positionals.join(" ")
      }"`,
    );
  }

  if (!values.list) await checkOutputFile(values.out);

  const tty = Deno.stdout.isTerminal();
  const t0 = performance.now();
  const path = values.model
    ? await resolveModel(values.model, (line) => console.log(line))
    : await modelFor(precision, (line) => console.log(line));
  const gpu = await getGpu();
  const pipe = await Pipeline.load(gpu, path, {
    images: n,
    attention,
    onProgress: tty ? (d, t) => bar("loading", d, t) : undefined,
  });
  try {
    if (tty) clearLine();
    const names = pipe.classNames;
    if (values.list) {
      names.forEach((name, i) => console.log(`${String(i).padStart(3)}  ${name}`));
      return;
    }
    // Latent models (model_config.latent, e.g. public DiT checkpoints) need an autoencoder to
    // make pixels; --vae also decodes the output of any other model whose channels it takes.
    const C = pipe.model.config.in_channels;
    let decoder: LatentDecoder | undefined;
    if (pipe.file.config.latent === true || values.vae !== undefined) {
      if (!values.vae) {
        fail(
          `${path} makes ${C}-channel latents, not pixels: give the autoencoder with --vae ` +
            "(e.g. --vae sd-vae-ft-ema/ for DiT-XL/2; see README)",
        );
      }
      decoder = await loadDecoder(gpu, values.vae, values.decoder);
      if (decoder.zChannels !== C) {
        decoder.destroy();
        fail(
          `--vae ${values.vae} takes ${decoder.zChannels}-channel latents, the model makes ${C}`,
        );
      }
    }
    const scale = intOption("scale", values.scale ?? (decoder ? "1" : "4"), 1, 16);
    const cls = positionals.length
      ? matchClass(positionals[0], names)
      : Math.floor(Math.random() * names.length);
    const loadMs = performance.now() - t0;
    console.log(
      `model ${path} (${pipe.file.precision}, ${pipe.model.attention} attention, ${gpu.caps.adapter}); class ${cls} "${
        names[cls]
      }", ` +
        `seed ${seed}, ${plural(steps, "step")} ${sampler}, cfg ${cfg}`,
    );
    const { images, stepMs, totalMs } = await pipe.generate({
      classes: Array(n).fill(cls),
      seed,
      steps,
      cfg,
      sampler,
      onStep: (i, total) => tty ? bar("denoising", i, total) : console.log(`step ${i}/${total}`),
    });
    if (tty) clearLine();
    const td = performance.now();
    let S = pipe.model.config.input_size, pixels = images;
    if (decoder) {
      console.log(`decoding with the ${decoder.label}`);
      pixels = await decoder.decode(images, [n, C, S, S]);
      S *= decoder.factor;
      decoder.destroy();
    }
    const { rgb, width, height } = toRgbGrid(pixels, n, S, n, scale);
    const png = await encodePng(rgb, width, height);
    await writeFileReplacing(values.out, png);
    const mean = stepMs.reduce((a, b) => a + b, 0) / stepMs.length;
    console.log(
      `wrote ${values.out} (${width}×${height}); load ${(loadMs / 1000).toFixed(2)} s, ` +
        `${mean.toFixed(1)} ms/step (${(totalMs / 1000).toFixed(2)} s), ` +
        `decode+write ${(performance.now() - td).toFixed(0)} ms`,
    );
  } finally {
    pipe.destroy();
  }
}

function bar(label: string, done: number, total: number): void {
  const w = 30, f = Math.round((done / total) * w);
  const text = `\r${label.padEnd(10)} [${"#".repeat(f)}${".".repeat(w - f)}] ${done}/${total}`;
  Deno.stdout.writeSync(new TextEncoder().encode(text));
}

function clearLine(): void {
  Deno.stdout.writeSync(new TextEncoder().encode("\r\x1b[2K"));
}

if (import.meta.main) await runCli(() => main(Deno.args));
