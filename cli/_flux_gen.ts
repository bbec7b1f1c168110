/**
 * `deno task gen "<prompt>" --model <FLUX.1 folder>`: text-to-image with FLUX.1 (dev or
 * schnell, float or a pre-quantized INT4/NVFP4 transformer). Components are loaded one after
 * another and freed in between (text encoders → transformer → autoencoder), after a memory plan
 * is printed and checked; errors name the missing part or what to change.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "../gpu/device.ts";
import { AeCheckpoint } from "../runtime/autoencoder_keys.ts";
import { encodePng } from "../runtime/png.ts";
import { checkFluxPlan, fluxMemoryPlan } from "../runtime/flux/memory.ts";
import { fluxDefaultSize, resolveFluxModel } from "../runtime/flux/model_folder.ts";
import { FluxPipeline } from "../runtime/flux/pipeline.ts";
import { conditioningOf } from "../runtime/flux/text.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";
import {
  DEFAULT_T5_WEIGHTS,
  FLUX_T5_LENGTH,
  TextEncoders,
  truncationWarning,
} from "../runtime/text/encoders.ts";
import { TEXT_WEIGHT_FORMATS, type TextWeightFormat } from "../runtime/text/_linears.ts";
import { checkOutputFile, fail, intOption, writeFileReplacing } from "./_cli.ts";
import { resolveModel } from "./_resolve.ts";
import { loadDecoder } from "./_decoder.ts";

/** Usage of the FLUX mode of `deno task gen`. */
export const FLUX_USAGE = `Usage: deno task gen "<prompt>" --model <FLUX.1 folder> [options]

  --model PATH           a FLUX.1 model folder (diffusers: transformer/, text_encoder/,
                         text_encoder_2/, tokenizer/, tokenizer_2/, vae/; or BFL's
                         flux1-*.safetensors + ae.safetensors beside the encoder folders), or a
                         transformer file inside such a folder
  --transformer FILE     a pre-quantized transformer (deno task quantize) used instead of the
                         folder's float one; a Nunchaku svdq-*.safetensors checkpoint, or its hub
                         id <owner>/<name>/<file>, is imported once (models/.cache/nunchaku/)
  --width N, --height N  image size in pixels, multiples of 16 up to 2048 (default 1024, or the
                         folder's model_index.json "_default_size")
  --steps N              denoising steps (default 4 for schnell, 28 for dev)
  --guidance X           guidance embedding value of FLUX.1-dev (default 3.5; schnell has none)
  --seed N               noise seed, 0..4294967295 (default: random)
  --n N                  images side by side in one PNG (default 1)
  --t5-weights W         float | w4a16 | w8a16 for T5-XXL (default w8a16, the smallest whose encoder
                         output keeps cosine ≥ 0.99; a pre-quantized T5 wins)
  --vram GB              refuse before loading when the plan needs more than this
  --offload-text         free the text encoders' GPU memory right after encoding, before the
                         transformer loads. Always on for gen (one prompt per run, the parts are
                         loaded one after another, and the plan's peak counts them apart); it is
                         the option of deno task serve that matters, where without it the
                         encoders stay resident between prompts
  --f32                  f32 activations (default f16 where the adapter has shader-f16)
  --out FILE             output PNG (default out.png)
  -h, --help             this text`;

/** Bytes of the .safetensors files of a part (a file or a folder). */
async function partBytes(path: string): Promise<number> {
  const st = await Deno.stat(path);
  if (!st.isDirectory) return st.size;
  let s = 0;
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && e.name.endsWith(".safetensors")) {
      s += (await Deno.stat(`${path}/${e.name}`)).size;
    }
  }
  return s;
}

/** Run the FLUX mode with the command line `args`. */
export async function genFlux(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      model: { type: "string" },
      transformer: { type: "string" },
      width: { type: "string" },
      height: { type: "string" },
      steps: { type: "string" },
      guidance: { type: "string", default: "3.5" },
      seed: { type: "string" },
      n: { type: "string", default: "1" },
      "t5-weights": { type: "string", default: DEFAULT_T5_WEIGHTS },
      vram: { type: "string" },
      "offload-text": { type: "boolean", default: true }, // gen always offloads: see the usage
      f32: { type: "boolean", default: false },
      out: { type: "string", default: "out.png" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return console.log(FLUX_USAGE);
  if (positionals.length !== 1) {
    fail(
      positionals.length
        ? `give one prompt (quote it), got ${positionals.length} words`
        : "give a prompt",
      FLUX_USAGE,
    );
  }
  const prompt = positionals[0];
  const n = intOption("n", values.n, 1, 16);
  const guidance = Number(values.guidance);
  if (!(guidance >= 0 && guidance <= 100)) {
    fail(`--guidance must be in 0..100, got "${values.guidance}"`);
  }
  const seed = values.seed === undefined
    ? (Math.random() * 2 ** 32) >>> 0
    : intOption("seed", values.seed, 0, 0xffffffff);
  const t5Weights = values["t5-weights"] as TextWeightFormat;
  if (!TEXT_WEIGHT_FORMATS.includes(t5Weights)) {
    fail(`--t5-weights must be one of ${TEXT_WEIGHT_FORMATS.join(", ")}, got "${t5Weights}"`);
  }
  const vram = values.vram === undefined ? undefined : Number(values.vram) * 1e9;
  if (vram !== undefined && !(vram > 0)) {
    fail(`--vram must be a number of GB, got "${values.vram}"`);
  }
  await checkOutputFile(values.out);

  const t0 = performance.now();
  // --transformer may be a Nunchaku checkpoint or a hub id: imported (once) into the cache
  const transformer = values.transformer === undefined
    ? undefined
    : await resolveModel(values.transformer, (line) => console.log(line));
  const parts = await resolveFluxModel(values.model!, { transformer });
  const w = await FluxWeights.open(parts.transformer);
  try {
    const cfg = w.config, variant = cfg.guidance_embed ? "dev" : "schnell";
    const steps = intOption("steps", values.steps ?? (variant === "dev" ? "28" : "4"), 1, 1000);
    // the autoencoder's shape (factor, latent channels) from its config, before loading it
    const ck = await AeCheckpoint.open(parts.vae);
    const factor = 2 ** (ck.config.chMult.length - 1), z = ck.config.zChannels;
    ck.close();
    if (4 * z !== cfg.in_channels) {
      fail(
        `the autoencoder ${parts.vae} makes ${z}-channel latents; the transformer takes ` +
          `${cfg.in_channels / 4} (packed 2×2 into ${cfg.in_channels})`,
      );
    }
    const [dh, dw] = await fluxDefaultSize(parts.root, factor);
    const width = intOption("width", values.width ?? String(dw), 2 * factor, 2048);
    const height = intOption("height", values.height ?? String(dh), 2 * factor, 2048);
    const gpu = await getGpu();
    const dtype = gpu.caps.shaderF16 && !values.f32 ? "f16" : "f32";
    const t5Length = FLUX_T5_LENGTH[variant];
    const plan = fluxMemoryPlan(cfg, {
      txtTokens: t5Length,
      width,
      height,
      batch: n,
      dtype,
      policyOf: (b) => w.policyOf(b),
      sequential: true,
      others: {
        "text encoders (as stored)": await partBytes(parts.t5) + await partBytes(parts.clip),
        "autoencoder (as stored)": await partBytes(parts.vae),
      },
    });
    console.log(
      `FLUX.1-${variant} (${w.layout} layout, ${w.precision}) from ${parts.root}; ` +
        `${width}×${height}, ${steps} steps, ${variant === "dev" ? `guidance ${guidance}, ` : ""}` +
        `seed ${seed}, ${n} image${n > 1 ? "s" : ""}, ${gpu.caps.adapter}`,
    );
    for (const line of plan.lines) console.log(line);
    checkFluxPlan(plan, gpu.caps, vram);

    // 1. text encoders: encode, then free them (--offload-text: always, for gen)
    const text = await TextEncoders.create(gpu, {
      offload: true,
      clip: parts.clip,
      clipTokenizer: parts.clipTokenizer,
      t5: parts.t5,
      t5Tokenizer: parts.t5Tokenizer,
      t5Length,
      dtype,
      t5Weights,
    });
    let embedding;
    try {
      embedding = await text.encode(prompt);
    } finally {
      text.destroy();
    }
    const warning = truncationWarning(embedding);
    if (warning) console.warn(`warning: ${warning}`);
    const cond = conditioningOf(Array(n).fill(embedding));
    // 2. transformer: denoise, then free it
    const pipe = await FluxPipeline.load(gpu, { transformer: w }, {
      width,
      height,
      images: n,
      txtTokens: t5Length,
      dtype,
      latentFactor: factor,
    });
    const loadMs = performance.now() - t0;
    let result;
    try {
      result = await pipe.generate({
        conditioning: cond,
        seed,
        steps,
        guidance,
        onStep: (i, total) => console.log(`step ${i}/${total}`),
      });
    } finally {
      pipe.destroy();
    }
    // 3. autoencoder: decode, then free it
    const td = performance.now();
    const decoder = await loadDecoder(gpu, parts.vae, "full");
    let pixels: Float32Array;
    try {
      pixels = await decoder.decode(result.latents, [n, z, height / factor, width / factor]);
    } finally {
      decoder.destroy();
    }
    const { rgb, w: pw, h: ph } = rgbRow(pixels, n, width, height);
    const png = await encodePng(rgb, pw, ph);
    await writeFileReplacing(values.out, png);
    const mean = result.stepMs.reduce((a, b) => a + b, 0) / result.stepMs.length;
    console.log(
      `wrote ${values.out} (${pw}×${ph}); load + encode ${(loadMs / 1000).toFixed(2)} s, ` +
        `${mean.toFixed(1)} ms/step (${(result.totalMs / 1000).toFixed(2)} s), decode+write ` +
        `${(performance.now() - td).toFixed(0)} ms`,
    );
  } finally {
    w.close();
  }
}

/** Images [N, 3, H, W] in [-1, 1] → one RGB row with a 2-pixel white gutter. */
function rgbRow(images: Float32Array, n: number, width: number, height: number) {
  const gap = n > 1 ? 2 : 0, w = n * width + (n - 1) * gap, h = height;
  const rgb = new Uint8Array(w * h * 3).fill(255);
  for (let i = 0; i < n; i++) {
    const ox = i * (width + gap);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          const v = images[((i * 3 + c) * height + y) * width + x];
          rgb[(y * w + ox + x) * 3 + c] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
        }
      }
    }
  }
  return { rgb, w, h };
}

/** Whether `--model` in `args` names a FLUX model (folder or transformer file). */
export async function isFluxModelArg(args: string[]): Promise<boolean> {
  const i = args.findIndex((a) => a === "--model" || a.startsWith("--model="));
  if (i < 0) return false;
  const path = args[i].startsWith("--model=") ? args[i].slice(8) : args[i + 1];
  if (!path) return false;
  // with --transformer the folder needs no transformer of its own (its encoders suffice)
  const own = !args.some((a) => a === "--transformer" || a.startsWith("--transformer="));
  try {
    await resolveFluxModel(path, { need: own ? ["transformer"] : ["clip"] });
    return true;
  } catch {
    return false;
  }
}
