/**
 * The FLUX family through the shared sampler loop (runtime/family.ts): the pipeline's latents
 * equal a hand-written loop over the transformer with the same Philox noise; an image does not
 * depend on the batch it is made in; previews and abort work; bad requests are refused.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { packLatents, unpackLatents } from "../runtime/flux/embed.ts";
import { FluxPipeline } from "../runtime/flux/pipeline.ts";
import { FluxTransformer } from "../runtime/flux/transformer.ts";
import { FluxWeights } from "../runtime/flux/weights.ts";
import { GaussianNoise } from "../runtime/random.ts";
import { flowEuler, fluxShift } from "../runtime/schedulers.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`FLUX pipeline tests skipped: ${NO_GPU_REASON}`);

const DIR = new URL("./fixtures/flux/", import.meta.url).pathname;

async function conditioning() {
  const r = await SafetensorsReader.open(`${DIR}flux_tiny_golden.safetensors`);
  const txt = await r.readFloat32("in.txt"), y = await r.readFloat32("in.y");
  r.close();
  return { txt, y };
}

Deno.test({
  name: "FLUX pipeline: shared loop = a hand-written Euler loop; batch-independent images",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const cond = await conditioning();
    const w = await FluxWeights.open(`${DIR}flux_tiny.safetensors`);
    const opts = { width: 96, height: 64, txtTokens: 8, dtype: "f32" as const };
    const pipe = await FluxPipeline.load(gpu, { transformer: w }, { ...opts, images: 2 });
    const one = await FluxPipeline.load(gpu, { transformer: w }, { ...opts, images: 1 });
    const model = await FluxTransformer.load(gpu, w, {
      batch: 2,
      txtTokens: 8,
      grid: { h: 4, w: 6 },
      dtype: "f32",
    });
    w.close();
    try {
      const previews: number[] = [];
      const got = await pipe.generate({
        conditioning: cond,
        seed: 5,
        steps: 3,
        guidance: 3.5,
        onStep: (done, total, preview) => {
          assert.equal(total, 3);
          const p = preview();
          assert.equal(p.length, 2 * 4 * 8 * 12);
          assert.ok(p.every(Number.isFinite));
          previews.push(done);
        },
      });
      assert.deepEqual(previews, [1, 2, 3]);
      // by hand: noise = Philox stream b of the seed, in latent layout [4, 8, 12]
      const per = 4 * 8 * 12;
      let x: Float32Array = new Float32Array(2 * per);
      for (let b = 0; b < 2; b++) new GaussianNoise(5, b).fill(x.subarray(b * per, (b + 1) * per));
      const s = flowEuler({ steps: 3, shift: fluxShift(24) });
      for (let i = 0; i < 3; i++) {
        const t = Math.fround(s.sigmas[i]);
        const v = await model.forward({
          img: packLatents(x, 2, 4, 8, 12),
          txt: cond.txt,
          y: cond.y,
          timesteps: [t, t],
          guidance: [3.5, 3.5],
        });
        x = s.step(i, x, unpackLatents(v, 2, 4, 8, 12));
      }
      assert.deepEqual(got.latents, x);
      assert.equal(got.stepMs.length, 3);
      assert.equal(got.images, undefined); // no decoder loaded
      // image 0 alone (its own prompt, same seed) is image 0 of the batch
      const solo = await one.generate({
        conditioning: { txt: cond.txt.slice(0, 8 * 48), y: cond.y.slice(0, 32) },
        seed: 5,
        steps: 3,
      });
      let d = 0;
      for (let j = 0; j < per; j++) d = Math.max(d, Math.abs(solo.latents[j] - x[j]));
      assert.ok(d <= 1e-5, `image 0 alone vs in a batch of 2: ${d}`);
      // abort before the second step
      const ac = new AbortController();
      await assert.rejects(
        () =>
          pipe.generate({
            conditioning: cond,
            seed: 1,
            steps: 4,
            signal: ac.signal,
            onStep: () => ac.abort(),
          }),
        { name: "AbortError" },
      );
      await assert.rejects(() => pipe.generate({ conditioning: cond, seed: -1, steps: 2 }), {
        name: "RangeError",
        message: /seed -1/,
      });
      await assert.rejects(() => pipe.generate({ prompts: ["a", "b"], seed: 1, steps: 2 }), {
        name: "TypeError",
        message: /text conditioner/,
      });
      await assert.rejects(
        () => FluxPipeline.load(gpu, { transformer: w }, { ...opts, width: 100 }),
        { name: "RangeError", message: /width 100: use a multiple of 16/ },
      );
    } finally {
      pipe.destroy();
      one.destroy();
      model.destroy();
    }
  },
});

Deno.test({
  name:
    "FLUX pipeline: a schnell model (no guidance embedding) runs unshifted and ignores guidance",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const cond = await conditioning();
    const path = `${DIR}flux_tiny.safetensors`;
    const r = await SafetensorsReader.open(path);
    const config = { ...JSON.parse(r.metadata.model_config), guidance_embed: false };
    r.close();
    const w = await FluxWeights.open(path, config);
    assert.equal(w.config.guidance_embed, false);
    const pipe = await FluxPipeline.load(gpu, { transformer: w }, {
      width: 96,
      height: 64,
      txtTokens: 8,
      images: 2,
      dtype: "f32",
    });
    w.close();
    try {
      const a = await pipe.generate({ conditioning: cond, seed: 2, steps: 4, guidance: 1 });
      const b = await pipe.generate({ conditioning: cond, seed: 2, steps: 4, guidance: 7 });
      assert.deepEqual(a.latents, b.latents); // no guidance embedding
      const shifted = await pipe.generate({
        conditioning: cond,
        seed: 2,
        steps: 4,
        shift: fluxShift(24),
      });
      assert.notDeepEqual(a.latents, shifted.latents); // default for schnell: unshifted
      assert.ok(a.latents.every(Number.isFinite));
    } finally {
      pipe.destroy();
    }
  },
});
