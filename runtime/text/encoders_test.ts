/**
 * TextEncoders end to end on the tiny fixtures: text → tokenizer → CLIP and T5 on the GPU must
 * give the upstream goldens of the FLUX-style batch (row 0: a long prompt, truncated; row 1:
 * "a photo of a cat", padded), f32 within 1e-5 of each tensor's scale; the process cache returns
 * the same embedding without GPU work; `offload()` frees the encoders and they reload on demand.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../../gpu/_testing.ts";
import { clearPromptCache, TextEncoders, truncationWarning } from "./encoders.ts";
import { fixturePath, readGolden, scaledError, shardCheckpoint } from "./_golden.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`TextEncoders tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: "TextEncoders: prompts → goldens (CLIP pooled, T5 unmasked), cache, offload",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const pairs = JSON.parse(await Deno.readTextFile(fixturePath("tokenizer_pairs.json")));
    const texts: string[] = pairs.t5_batch.texts;
    assert.deepEqual(texts, pairs.clip_batch.texts);
    const t5g = await readGolden("t5_golden.safetensors");
    const clipg = await readGolden("clip_golden.safetensors");
    clearPromptCache();
    const enc = await TextEncoders.create(gpu, {
      clip: fixturePath("clip_tiny.safetensors"),
      clipTokenizer: fixturePath("clip_tokenizer.json"),
      t5: fixturePath("t5_tiny.safetensors"),
      t5Tokenizer: fixturePath("t5_tokenizer.json"),
      t5Length: 40,
      dtype: "f32",
      t5Weights: "float", // exact path: compared with the goldens at 1e-5
    });
    try {
      assert.equal(enc.resident, false); // nothing on the GPU before the first prompt
      for (const [row, text] of texts.entries()) {
        const e = await enc.encode(text);
        assert.equal(e.t5Dim, 64);
        assert.equal(e.t5Length, 40);
        assert.deepEqual(e.truncated, { clip: row === 0, t5: row === 0 });
        const t5 = (t5g.get("nomask.last_hidden_state") as Float32Array)
          .subarray(row * 40 * 64, (row + 1) * 40 * 64);
        const pooled = (clipg.get("pooler_output") as Float32Array)
          .subarray(row * 64, (row + 1) * 64);
        assert.ok(scaledError(e.t5, t5).rel < 1e-5, `T5 row ${row}`);
        assert.ok(scaledError(e.pooled, pooled).rel < 1e-5, `CLIP row ${row}`);
        const w = truncationWarning(e);
        if (row === 0) {
          assert.match(w!, /^prompt truncated: CLIP kept 77 of \d+ tokens; T5 kept 40 of/);
        } else assert.equal(w, null);
      }
      // concurrent calls on uncached prompts queue up and each gets its own result
      clearPromptCache();
      const [p0, p1] = await Promise.all([enc.encode(texts[0]), enc.encode(texts[1])]);
      const t5All = t5g.get("nomask.last_hidden_state") as Float32Array;
      assert.ok(scaledError(p0.t5, t5All.subarray(0, 40 * 64)).rel < 1e-5);
      assert.ok(scaledError(p1.t5, t5All.subarray(40 * 64, 80 * 64)).rel < 1e-5);
      assert.equal(enc.resident, true);
      const again = await enc.encode(texts[1]);
      assert.equal(again, await enc.encode(texts[1])); // same object: from the cache
      enc.offload();
      assert.equal(enc.resident, false);
      assert.equal(await enc.encode(texts[1]), again); // cached: no reload
      assert.equal(enc.resident, false);
      const other = await enc.encode("a cat"); // uncached: reloads
      assert.equal(enc.resident, true);
      assert.equal(other.pooled.length, 64);
    } finally {
      enc.destroy();
      clearPromptCache();
    }
  },
});

Deno.test({
  name: "TextEncoders.fromFluxFolder reads the diffusers layout (sharded T5, tokenizer folders)",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const root = await Deno.makeTempDir();
    try {
      // text_encoder/ (one file + config.json), tokenizer/, text_encoder_2/ (two shards + index
      // + config.json), tokenizer_2/ (tokenizer.json + special_tokens_map.json), as
      // black-forest-labs/FLUX.1-schnell ships them
      for (const sub of ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]) {
        await Deno.mkdir(`${root}/${sub}`);
      }
      await Deno.copyFile(
        fixturePath("clip_tiny.safetensors"),
        `${root}/text_encoder/model.safetensors`,
      );
      await Deno.copyFile(fixturePath("clip_config.json"), `${root}/text_encoder/config.json`);
      await Deno.copyFile(fixturePath("clip_tokenizer.json"), `${root}/tokenizer/tokenizer.json`);
      await Deno.writeTextFile(
        `${root}/tokenizer/special_tokens_map.json`,
        JSON.stringify({ pad_token: "<|endoftext|>" }),
      );
      await shardCheckpoint(fixturePath("t5_tiny.safetensors"), `${root}/text_encoder_2`);
      await Deno.copyFile(fixturePath("t5_config.json"), `${root}/text_encoder_2/config.json`);
      await Deno.copyFile(fixturePath("t5_tokenizer.json"), `${root}/tokenizer_2/tokenizer.json`);
      await Deno.writeTextFile(
        `${root}/tokenizer_2/special_tokens_map.json`,
        JSON.stringify({ pad_token: "<pad>", eos_token: "</s>" }),
      );
      clearPromptCache();
      const enc = await TextEncoders.fromFluxFolder(gpu, root, {
        variant: "schnell",
        dtype: "f32",
      });
      try {
        assert.equal(enc.options.t5Length, 256);
        const e = await enc.encode("a photo of a cat");
        assert.equal(e.t5.length, 256 * 64);
        const pooled = (await readGolden("clip_golden.safetensors")).get(
          "pooler_output",
        ) as Float32Array;
        assert.ok(scaledError(e.pooled, pooled.subarray(64, 128)).rel < 1e-5);
        assert.ok(e.t5.every(Number.isFinite));
      } finally {
        enc.destroy();
        clearPromptCache();
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
