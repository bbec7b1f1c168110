/**
 * End to end through `deno task gen` for a latent model: a tiny random latent DiT in the public
 * DiT layout with no metadata (config inferred from shapes, ImageNet class names attached) plus
 * an autoencoder (the tiny BFL fixture: 4 latent channels, 2× per side) or a TAESD-shaped tiny
 * decoder (4× per side) → a PNG of the decoded size. Also: a latent model without --vae is a
 * one-line usage error.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../kernels/_testing.ts";
import { ModelFile } from "../runtime/model_file.ts";
import { ditConfig } from "../runtime/dit.ts";
import { randomTaesd, writePublicLatentDit, writeTensors } from "./_latent_fixtures.ts";
import { Rng } from "../kernels/_testing.ts";

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
    await writePublicLatentDit(`${dir}/dit.safetensors`);
    const f = await ModelFile.open(`${dir}/dit.safetensors`);
    try {
      const c = ditConfig(f);
      assert.deepEqual(
        [c.hidden_size, c.depth, c.num_heads, c.patch_size, c.in_channels, c.input_size],
        [64, 2, 1, 2, 4, 16],
      );
      assert.deepEqual([c.num_classes, c.learn_sigma, c.mlp_ratio], [1000, true, 4]);
      assert.equal(c.class_names?.[207], "golden retriever");
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
