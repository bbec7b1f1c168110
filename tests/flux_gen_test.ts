/**
 * `deno task gen "<prompt>" --model <FLUX folder>` end to end on the tiny FLUX model folder
 * (tests/fixtures/flux_tiny_model: tiny CLIP + T5 with their tokenizers, a random transformer in
 * diffusers layout, BFL's tiny autoencoder): the exact command of the issue writes a PNG; a
 * folder missing a part is refused with the part named.
 *
 * @module
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON } from "../gpu/_testing.ts";
import { REPO_ROOT as ROOT, runGenTask as gen } from "./_gen_task.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`FLUX gen tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: 'deno task gen "a red apple" --model tests/fixtures/flux_tiny_model --steps 2 writes a PNG',
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "flux_gen_" });
    try {
      const out = `${dir}/x.png`;
      const r = await gen([
        "a red apple",
        "--model",
        "tests/fixtures/flux_tiny_model",
        "--steps",
        "2",
        "--seed",
        "3",
        "--out",
        out,
      ]);
      assert.equal(r.code, 0, r.out + r.err);
      assert.match(r.out, /FLUX\.1-dev \(diffusers layout, float\)/);
      assert.match(r.out, /memory plan \(64×64, 1 image per forward, 512 text tokens/);
      assert.match(r.out, /step 2\/2/);
      assert.match(r.out, /wrote .*x\.png \(64×64\)/);
      const png = await Deno.readFile(out);
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
      const view = new DataView(png.buffer, png.byteOffset);
      assert.equal(view.getUint32(16), 64); // IHDR width
      assert.equal(view.getUint32(20), 64); // IHDR height
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "deno task gen refuses a FLUX folder without its T5 encoder, naming it",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "flux_gen_missing_" });
    try {
      const src = `${ROOT}tests/fixtures/flux_tiny_model`;
      for (const p of ["transformer", "text_encoder", "tokenizer", "tokenizer_2"]) {
        await Deno.mkdir(`${dir}/${p}`);
        for await (const e of Deno.readDir(`${src}/${p}`)) {
          await Deno.copyFile(`${src}/${p}/${e.name}`, `${dir}/${p}/${e.name}`);
        }
      }
      await Deno.copyFile(`${src}/ae.safetensors`, `${dir}/ae.safetensors`);
      const r = await gen(["a red apple", "--model", dir, "--out", `${dir}/x.png`]);
      assert.notEqual(r.code, 0);
      assert.match(r.err, /lacks the T5 text encoder \(text_encoder_2\/\)/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "deno task gen runs the tiny FLUX folder with INT4 and NVFP4 transformers (--transformer)",
  ignore,
  async fn() {
    const { quantizeFlux } = await import("../convert/flux_model.ts");
    const dir = await Deno.makeTempDir({ prefix: "flux_gen_quant_" });
    try {
      for (const format of ["int4", "nvfp4"] as const) {
        const q = `${dir}/transformer.${format}.safetensors`;
        await quantizeFlux(`${ROOT}tests/fixtures/flux_tiny_model`, q, {
          format,
          rank: 8,
          alphas: [0, 0.5, 1],
          rounds: 0,
        });
        const out = `${dir}/${format}.png`;
        const r = await gen([
          "a red apple",
          "--model",
          "tests/fixtures/flux_tiny_model",
          "--transformer",
          q,
          "--steps",
          "2",
          "--out",
          out,
        ]);
        assert.equal(r.code, 0, r.out + r.err);
        assert.match(r.out, new RegExp(`FLUX\\.1-dev \\(ours layout, ${format}\\)`));
        assert.ok((await Deno.stat(out)).size > 100);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
