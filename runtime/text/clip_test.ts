/**
 * The CLIP text model on the GPU against the upstream goldens (tests/fixtures/text/clip_golden):
 * every layer output, the penultimate hidden state, the final LayerNorm output and the pooled
 * output, in f32 (bound 1e-5 of each tensor's max |value|) and f16 (measured bound, below).
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../../gpu/_testing.ts";
import { clipConfigFrom, clipEosIndex, ClipTextEncoder } from "./clip.ts";
import { assertScaledErrors, fixturePath, readGolden, scaledError } from "./_golden.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`CLIP GPU tests skipped: ${NO_GPU_REASON}`);

const golden = await readGolden("clip_golden.safetensors");
const g = (k: string) => golden.get(k) as Float32Array;
const ids = golden.get("input_ids") as number[];

Deno.test("CLIP pooled position: argmax of ids (eos_token_id 2), else the first EOS id", () => {
  assert.deepEqual(clipEosIndex(ids, 2, 77, 2), golden.get("eos_index"));
  assert.deepEqual(clipEosIndex([5, 9, 3, 9], 1, 4, 2), [1]); // the first maximal id
  assert.deepEqual(clipEosIndex([5, 9, 3, 3], 1, 4, 3), [2]); // first position of id 3
  const cfg = JSON.parse(
    Deno.readTextFileSync(fixturePath("clip_config.json")),
  );
  assert.equal(clipConfigFrom(cfg).eosTokenId, 2);
  assert.throws(() => clipConfigFrom({ ...cfg, hidden_act: "gelu" }), /quick_gelu/);
});

/** f16 bound: the worst scaled error measured (llvmpipe) over every tensor was 6.5e-4. */
const F16_BOUND = 2e-3;

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `CLIP text encoder ${dtype} matches the goldens (layers, penultimate, final, pooled)`,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (dtype === "f16" && !gpu.caps.shaderF16) return;
      const clip = await ClipTextEncoder.create(gpu, fixturePath("clip_tiny.safetensors"), {
        batch: 2,
        dtype,
        keepLayerOutputs: true,
      });
      const bound = dtype === "f32" ? 1e-5 : F16_BOUND;
      try {
        const out = await clip.encode(ids);
        assert.deepEqual(out.eosIndex, golden.get("eos_index"));
        const checks: [string, Float32Array][] = [
          ["layer_out.0", out.layerOutputs![0]],
          ["layer_out.1", out.layerOutputs![1]],
          ["hidden_states_penultimate", out.penultimate],
          ["last_hidden_state", out.lastHiddenState],
          ["pooler_output", out.pooled],
        ];
        assertScaledErrors(dtype, checks, g, bound);
      } finally {
        clip.destroy();
      }
      // without kept layer outputs (two alternating residual buffers) the penultimate survives
      const lean = await ClipTextEncoder.create(gpu, fixturePath("clip_tiny.safetensors"), {
        batch: 2,
        dtype,
      });
      try {
        const out = await lean.encode(ids);
        assert.ok(scaledError(out.penultimate, g("hidden_states_penultimate")).rel <= bound);
        assert.ok(scaledError(out.pooled, g("pooler_output")).rel <= bound);
      } finally {
        lean.destroy();
      }
    },
  });
}
