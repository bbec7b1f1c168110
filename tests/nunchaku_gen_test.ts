/**
 * `deno task gen "<prompt>" --model <FLUX folder> --transformer <Nunchaku checkpoint>`: a tiny
 * FLUX transformer in Nunchaku's layout (our packer; its text widths match the tiny model
 * folder's encoders) is imported on first use into models/.cache/nunchaku/ and generates a PNG
 * with the folder's encoders and autoencoder; the second run reuses the import.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../gpu/_testing.ts";
import { REPO_ROOT as ROOT, runGenTask as gen } from "./_gen_task.ts";
import { writeTinyNunchakuFlux } from "../quant/_nunchaku_testing.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`Nunchaku gen tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: "deno task gen --transformer <Nunchaku svdq file> imports it once and writes a PNG",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "nunchaku_gen_" });
    let cached: string | undefined;
    try {
      const src = `${dir}/svdq-int4_r16-tiny-${crypto.randomUUID().slice(0, 8)}.safetensors`;
      // the tiny folder's encoders: T5 width 64, CLIP pooled 64, a dev-style guidance embedding;
      // its autoencoder makes 4-channel latents (16 packed)
      await writeTinyNunchakuFlux(src, "int4", 5, undefined, {
        in_channels: 16,
        joint_attention_dim: 64,
        pooled_projection_dim: 64,
        guidance_embeds: true,
      });
      const args = (out: string) => [
        "a red apple",
        "--model",
        "tests/fixtures/flux_tiny_model",
        "--transformer",
        src,
        "--steps",
        "2",
        "--seed",
        "3",
        "--out",
        out,
      ];
      const r = await gen(args(`${dir}/a.png`));
      assert.equal(r.code, 0, r.out + r.err);
      cached = r.out.match(/cached in (\S+\.safetensors)\)/)?.[1];
      assert.ok(cached?.includes("models/.cache/nunchaku/svdq-int4_r16-tiny"), r.out);
      assert.match(r.out, /imported int4 \(rank 16\): 12 W4A4 layers, 3 W4A16 adaLN layers/);
      assert.match(r.out, /wrote .*a\.png \(64×64\)/);
      const png = await Deno.readFile(`${dir}/a.png`);
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
      const again = await gen(args(`${dir}/b.png`));
      assert.equal(again.code, 0, again.out + again.err);
      assert.doesNotMatch(again.out, /importing the Nunchaku checkpoint/);
      assert.deepEqual(await Deno.readFile(`${dir}/b.png`), png, "same seed, same image");
    } finally {
      await Deno.remove(dir, { recursive: true });
      if (cached) await Deno.remove(`${ROOT}${cached.replace(ROOT, "")}`).catch(() => {});
    }
  },
});
