/**
 * The text encoders inside the FLUX pipeline, on the tiny FLUX folder
 * (tests/fixtures/flux_tiny_model):
 * - `--offload-text` for a served model ({@linkcode ResidentFlux} with `offloadText`): the
 *   encoders hold no GPU memory after a generation, a repeated prompt is served from the prompt
 *   cache without loading them again, a new prompt loads them once more; without the option they
 *   stay resident and load once.
 * - `deno task gen` with a prompt longer than CLIP's 77 tokens warns on stderr and still writes
 *   the image.
 * - `deno task bench:flux --small` times the text encoders (CLIP, T5 per format) after the step.
 * - The final images' PSNR with T5 quantized (W8A16, W4A16 group 64) against the 16-bit T5
 *   (fixed seed, 4 steps). The tiny model's weights are random, so the figures say how much the
 *   quantized T5 moves this pipeline's image, not how FLUX.1 with T5-XXL behaves. Bound: W8A16
 *   ≥ 50 dB (measured 65.4 dB on llvmpipe, f16 activations); W4A16 is printed (measured
 *   38.8 dB) and must stay below W8A16, not bounded further.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";
import { Autoencoder } from "../runtime/autoencoder.ts";
import { resolveFluxModel } from "../runtime/flux/model_folder.ts";
import { FluxPipeline } from "../runtime/flux/pipeline.ts";
import { ResidentFlux } from "../runtime/flux/resident.ts";
import { conditioningOf } from "../runtime/flux/text.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";
import { psnr } from "../runtime/metrics.ts";
import { clearPromptCache, FLUX_T5_LENGTH, TextEncoders } from "../runtime/text/encoders.ts";
import type { TextWeightFormat } from "../runtime/text/_linears.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`FLUX text tests skipped: ${NO_GPU_REASON}`);

const ROOT = new URL("..", import.meta.url).pathname;
const FOLDER = `${ROOT}tests/fixtures/flux_tiny_model`;
/** A prompt longer than CLIP's 77 tokens with the tiny tokenizers (134 tokens), under 200 chars. */
const LONG = ("a red apple on a wooden table beside a window, soft morning light, ".repeat(3))
  .slice(0, 200);

Deno.test({
  name: "ResidentFlux --offload-text: encoders freed after encoding, cached prompts load nothing",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    for (const offloadText of [true, false]) {
      clearPromptCache();
      const flux = await ResidentFlux.load(gpu, FOLDER, 64, { offloadText });
      try {
        const req = { seed: 1, steps: 1 };
        const a = await flux.generate({ ...req, prompts: ["a red apple"] });
        assert.equal(flux.text.loads, 1);
        assert.equal(flux.text.resident, !offloadText, `offloadText ${offloadText}`);
        const b = await flux.generate({ ...req, prompts: ["a red apple"] });
        assert.equal(flux.text.loads, 1, "a repeated prompt comes from the cache");
        assert.equal(flux.text.resident, !offloadText);
        assert.deepEqual(b.images, a.images);
        await flux.generate({ ...req, prompts: ["a green pear"] });
        assert.equal(flux.text.loads, offloadText ? 2 : 1);
        assert.equal(flux.text.resident, !offloadText);
        assert.deepEqual(a.truncated, []);
        const long = await flux.generate({ ...req, prompts: [LONG] });
        assert.deepEqual(long.truncated, ["clip"]);
        assert.match(long.warnings[0], /^prompt truncated: CLIP kept 77 of 134 tokens$/);
      } finally {
        flux.destroy();
      }
      assert.equal(flux.text.resident, false);
    }
  },
});

Deno.test({
  name: "deno task gen warns on stderr when the prompt is longer than CLIP's 77 tokens",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "flux_text_" });
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "task",
          "gen",
          LONG,
          "--model",
          "tests/fixtures/flux_tiny_model",
          "--steps",
          "1",
          "--seed",
          "2",
          "--offload-text",
          "--out",
          `${dir}/x.png`,
        ],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const dec = new TextDecoder(), out = dec.decode(r.stdout), err = dec.decode(r.stderr);
      assert.equal(r.code, 0, out + err);
      assert.match(err, /warning: prompt truncated: CLIP kept 77 of 134 tokens/);
      assert.doesNotMatch(err, /T5 kept/); // 512 T5 tokens hold it
      assert.match(out, /wrote .*x\.png \(64×64\)/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "FLUX images with T5 W8A16 / W4A16 vs the 16-bit T5: PSNR (tiny random model)",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const parts = await resolveFluxModel(FOLDER);
    const w = await FluxWeights.open(parts.transformer);
    const ae = await Autoencoder.load(gpu, parts.vae, { parts: ["decoder"] });
    let pipe: FluxPipeline | undefined;
    try {
      pipe = await FluxPipeline.load(gpu, { transformer: w, decoder: ae }, {
        width: 64,
        height: 64,
        txtTokens: FLUX_T5_LENGTH.dev,
      });
      const prompt = "a red apple on a wooden table";
      const images = new Map<TextWeightFormat, Float32Array>();
      for (const t5Weights of ["float", "w8a16", "w4a16"] as const) {
        const text = await TextEncoders.create(gpu, {
          clip: parts.clip,
          clipTokenizer: parts.clipTokenizer,
          t5: parts.t5,
          t5Tokenizer: parts.t5Tokenizer,
          t5Length: FLUX_T5_LENGTH.dev,
          t5Weights,
        });
        let e;
        try {
          e = await text.encode(prompt);
        } finally {
          text.destroy();
        }
        const r = await pipe.generate({ conditioning: conditioningOf([e]), seed: 7, steps: 4 });
        images.set(t5Weights, r.images!);
      }
      const ref = images.get("float")!;
      const p8 = psnr(images.get("w8a16")!, ref), p4 = psnr(images.get("w4a16")!, ref);
      console.log(
        `final image PSNR vs 16-bit T5 (tiny random FLUX folder, seed 7, 4 steps, 64×64): ` +
          `W8A16 ${p8.toFixed(1)} dB, W4A16 ${p4.toFixed(1)} dB`,
      );
      assert.ok(p8 >= 50, `W8A16 image PSNR ${p8.toFixed(1)} dB < 50 dB`);
      assert.ok(Number.isFinite(p4) && p4 > 0, `W4A16 image PSNR ${p4} dB`);
      assert.ok(p8 > p4, "W8A16 should change the image less than W4A16");
    } finally {
      pipe?.destroy();
      ae.destroy();
      w.close();
    }
  },
});

Deno.test({
  name: "deno task bench:flux --small includes the text encoders (CLIP + T5, per format)",
  ignore,
  async fn() {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["task", "bench:flux", "--small", "--precisions", "int4", "--text-formats", "w8a16"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const dec = new TextDecoder(), out = dec.decode(r.stdout), err = dec.decode(r.stderr);
    assert.equal(r.code, 0, out + err);
    assert.match(out, /^int4 +double [\d.]+ ms/m);
    assert.match(out, /text encoders on .*T5 d=256 d_ff=512 1 layers × 64 tokens; CLIP/);
    assert.match(out, /^T5 +w8a16 +load +[\d.]+ s +weights .* [\d.]+ ms\/encode/m);
    assert.match(out, /^CLIP +w8a16 +load +[\d.]+ s +weights .* [\d.]+ ms\/encode/m);
    assert.match(
      out,
      /^text per new prompt \(T5 w8a16 scaled to 24 layers \+ CLIP w8a16\): [\d.]+ ms = [\d.]+ int4 steps$/m,
    );
  },
});
