/**
 * End to end through `deno task gen` for a latent model: a tiny random latent DiT in the public
 * DiT layout with no metadata (config inferred from shapes, ImageNet class names attached) plus
 * an autoencoder (the tiny BFL fixture: 4 latent channels, 2× per side) or a TAESD-shaped tiny
 * decoder (4× per side) → a PNG of the decoded size. Also: a latent model without --vae is a
 * one-line usage error.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../gpu/_testing.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { ditConfig } from "../runtime/dit.ts";
import { randomTaesd, writePublicLatentDit, writeTensors } from "./_latent_fixtures.ts";
import { Rng } from "../gpu/_testing.ts";
import { getGpu } from "../gpu/device.ts";
import { Pipeline } from "../runtime/pipeline.ts";
import { Autoencoder } from "../runtime/autoencoder.ts";
import { CalibRecorder } from "../quant/calib.ts";
import { quantizeCheckpoint } from "../convert/model.ts";
import { psnr } from "../runtime/metrics.ts";
import { PipelineEngine } from "../web/engine.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`latent gen tests skipped: ${NO_GPU_REASON}`);

const GEN = new URL("../cli/gen.ts", import.meta.url).pathname;
const AE = new URL("./fixtures/ae_tiny.safetensors", import.meta.url).pathname;

async function gen(args: string[]): Promise<{ code: number; out: string }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", GEN, ...args],
    stdout: "piped",
    stderr: "piped",
  });
  const r = await p.output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** Width and height from a PNG's IHDR. */
async function pngSize(path: string): Promise<[number, number]> {
  const b = await Deno.readFile(path);
  assert.deepEqual([...b.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
  const v = new DataView(b.buffer, b.byteOffset);
  return [v.getUint32(16), v.getUint32(20)];
}

Deno.test("a public DiT checkpoint without metadata gets its config from the shapes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // As safetensors.torch.save_file writes it when asked for {"format": "pt"} (Hugging Face's
    // savers do): that key is not this project's quantized-file marker.
    await writePublicLatentDit(`${dir}/dit.safetensors`, { format: "pt" });
    const f = await ModelFile.open(`${dir}/dit.safetensors`);
    try {
      const c = ditConfig(f);
      assert.deepEqual(
        [c.hidden_size, c.depth, c.num_heads, c.patch_size, c.in_channels, c.input_size],
        [64, 2, 1, 2, 4, 16],
      );
      assert.deepEqual([c.num_classes, c.learn_sigma, c.mlp_ratio], [1000, true, 4]);
      assert.equal(c.class_names?.[207], "golden retriever");
      assert.equal(f.config.latent, true);
    } finally {
      f.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: 'deno task gen "golden retriever" --model <latent DiT> --vae <AE> writes the decoded PNG',
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const model = `${dir}/DiT-tiny.safetensors`;
      await writePublicLatentDit(model);
      const base = ["golden retriever", "--model", model, "--steps", "2", "--seed", "3"];
      const miss = await gen([...base, "--out", `${dir}/a.png`]);
      assert.equal(miss.code, 2, miss.out);
      assert.match(
        miss.out,
        /makes 4-channel latents, not pixels: give the autoencoder with --vae/,
      );

      const full = await gen([...base, "--vae", AE, "--n", "2", "--out", `${dir}/full.png`]);
      assert.equal(full.code, 0, full.out);
      assert.match(full.out, /class 207 "golden retriever"/);
      assert.match(full.out, /decoding with the autoencoder .*ldm layout/);
      assert.deepEqual(await pngSize(`${dir}/full.png`), [2 * 32 + 2, 32]); // 16 latent × 2, two images

      await writeTensors(`${dir}/taesd_decoder.safetensors`, randomTaesd(4, new Rng(4)));
      const tiny = await gen([
        ...base,
        "--vae",
        `${dir}/taesd_decoder.safetensors`,
        "--decoder",
        "tiny",
        "--out",
        `${dir}/tiny.png`,
      ]);
      assert.equal(tiny.code, 0, tiny.out);
      assert.match(tiny.out, /decoding with the tiny decoder/);
      assert.deepEqual(await pngSize(`${dir}/tiny.png`), [64, 64]); // 16 latent × 4
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a public latent DiT calibrates through the pipeline, quantizes (INT4, NVFP4) and decodes",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    const gpu = await getGpu();
    try {
      const model = `${dir}/dit.safetensors`;
      await writePublicLatentDit(model);
      // Calibration: the float latent model over a few classes, recording every linear's inputs.
      const recorder = new CalibRecorder({ buckets: 2, maxSamples: 64, seed: 1 });
      const pipe = await Pipeline.load(gpu, model, { images: 2, dtype: "f32" });
      const req = { classes: [207, 1], seed: 5, steps: 3, cfg: 4 };
      let floatLatent: Float32Array;
      try {
        await pipe.generate({ ...req, calibration: { recorder, buckets: 2 } });
        floatLatent = (await pipe.generate(req)).images;
      } finally {
        pipe.destroy();
      }
      const ae = await Autoencoder.load(gpu, AE, { dtype: "f32", parts: ["decoder"] });
      try {
        const floatImg = await ae.decode(floatLatent, [2, 4, 16, 16]);
        for (const format of ["int4", "nvfp4"] as const) {
          const out = `${dir}/dit.${format}.safetensors`;
          await quantizeCheckpoint(model, out, {
            format,
            calib: recorder.stats(),
            alphas: [0.5],
            rounds: 1,
          });
          const q = await Pipeline.load(gpu, out, { images: 2, dtype: "f32" });
          try {
            assert.equal(q.file.precision, format);
            assert.equal(q.classNames[207], "golden retriever");
            const img = await ae.decode((await q.generate(req)).images, [2, 4, 16, 16]);
            assert.ok(img.every(Number.isFinite));
            // Random weights: the figure only says the quantized model tracks the float one.
            const p = psnr(img, floatImg);
            console.log(
              `${format}: PSNR of the decoded image vs the float model's ${p.toFixed(1)} dB`,
            );
            assert.ok(p > 10, `${format}: PSNR ${p}`);
          } finally {
            q.destroy();
          }
        }
      } finally {
        ae.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "web engine: a latent model serves decoded images and tiny-decoder previews",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await writePublicLatentDit(`${dir}/dit.safetensors`);
      await writeTensors(`${dir}/taesd.safetensors`, randomTaesd(4, new Rng(4)));
      await assert.rejects(
        () => PipelineEngine.create([{ id: "latent", path: `${dir}/dit.safetensors` }]),
        { name: "RangeError", message: /makes 4-channel latents; give its autoencoder/ },
      );
      const engine = await PipelineEngine.create([
        {
          id: "latent",
          path: `${dir}/dit.safetensors`,
          vae: AE,
          preview: `${dir}/taesd.safetensors`,
        },
      ]);
      try {
        const info = engine.models()[0];
        assert.deepEqual([info.size, info.channels, info.classes[207]], [
          32,
          3,
          "golden retriever",
        ]);
        const previews: Promise<Float32Array>[] = [];
        const r = await engine.generate({
          model: "latent",
          classId: 207,
          seed: 1,
          steps: 2,
          cfg: 4,
          sampler: "dpm",
          signal: new AbortController().signal,
          onStep: (_i, _n, preview) => previews.push(Promise.resolve(preview())),
        });
        assert.equal(r.image.length, 3 * 32 * 32);
        assert.equal(previews.length, 2);
        // The TAESD preview (4× per side, 64²) is resized to the served 32².
        for (const p of await Promise.all(previews)) {
          assert.equal(p.length, 3 * 32 * 32);
          assert.ok(p.every(Number.isFinite));
        }
      } finally {
        engine.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
