/**
 * The TAESD-family decoder on the GPU against its float64 CPU reference, on a random-weight
 * decoder written in both key layouts (the original `nn.Sequential` indices with the clamp at 0,
 * and diffusers' `decoder.layers.N`). Bounds: max|Δ| ≤ 1e-5·max|ref| in f32; f16 storage:
 * 5e-3·max|ref| (measured 1.3e-3 on llvmpipe, printed).
 */
import assert from "node:assert/strict";
import { readTinyDecoder, TinyDecoder } from "./tiny_autoencoder.ts";
import { tinyDecoderRef } from "./tiny_autoencoder_ref.ts";
import { FormatError } from "../gpu/errors.ts";
import { randomTaesd, writeTensors as writeFile } from "../tests/_latent_fixtures.ts";
import { HAS_GPU, NO_GPU_REASON, relMax, Rng, testGpu } from "../gpu/_testing.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`tiny decoder tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: "tiny decoder (TAESD layouts) matches its float64 reference in f32 and f16",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      const rng = new Rng(5);
      const z = 4;
      const tensors = randomTaesd(z, rng);
      const bare = `${dir}/taesd_decoder.safetensors`;
      const diffusers = `${dir}/diffusion_pytorch_model.safetensors`;
      await writeFile(bare, tensors, (k) => k);
      await writeFile(diffusers, tensors, (k) => {
        const [i, ...rest] = k.split(".");
        return `decoder.layers.${Number(i) - 1}.${rest.join(".")}`;
      });
      const shape = [2, z, 5, 7] as const;
      const latent = rng.normals(2 * z * 5 * 7, 2);
      const { layers } = await readTinyDecoder(bare);
      assert.deepEqual(layers.map((l) => l.kind === "conv" ? l.role : `block ${l.cin}→${l.cout}`), [
        "in",
        "block 16→16",
        "up",
        "block 16→24",
        "up",
        "block 24→24",
        "out",
      ]);
      const ref = tinyDecoderRef(layers, latent, shape);
      const runs = [[bare, "f32", 1e-5], [diffusers, "f32", 1e-5], [bare, "f16", 5e-3]] as const;
      for (const [file, dtype, bound] of runs) {
        if (dtype === "f16" && !gpu.caps.shaderF16) continue; // no f16 path on this device
        const tiny = await TinyDecoder.load(gpu, file, { dtype });
        try {
          assert.equal(tiny.factor, 4);
          assert.equal(tiny.zChannels, z);
          const img = await tiny.decode(latent, shape);
          assert.equal(img.length, 2 * 3 * 20 * 28);
          const r = relMax(img, ref);
          console.log(`${file.split("/").pop()} ${dtype}: max|Δ|/max|ref| = ${r.toExponential(2)}`);
          assert.ok(r <= bound, `${dtype}: ${r} > ${bound}`);
        } finally {
          tiny.destroy();
        }
      }
      await assert.rejects(
        () =>
          readTinyDecoder(
            new URL("../tests/fixtures/ae_tiny.safetensors", import.meta.url).pathname,
          ),
        (e) => e instanceof FormatError && /not a tiny autoencoder decoder|TAESD/.test(e.message),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
