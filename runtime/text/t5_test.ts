/**
 * The T5 encoder on the GPU against the upstream goldens (tests/fixtures/text/t5_golden): the
 * bucket table and layer-0 position bias exactly, every block output and the final output of
 * the unmasked (FLUX) and masked runs in f32 (bound 1e-5 of the tensor's max |value|) and in f16
 * (measured bound, below), and the f16-overflow case: weights scaled so the residual stream
 * exceeds 65504, where an f16 residual would be inf and ours matches the float64 reference.
 */
import assert from "node:assert/strict";
import { HAS_GPU, NO_GPU_REASON, testGpu } from "../../gpu/_testing.ts";
import {
  bucketTable,
  relativePositionBucket,
  t5ConfigFrom,
  T5Encoder,
  t5PositionBias,
} from "./t5.ts";
import { t5EncoderRef } from "./t5_ref.ts";
import { numel, SafetensorsWriter } from "../../formats/safetensors.ts";
import { Checkpoint } from "./checkpoint.ts";
import {
  assertScaledErrors,
  fixturePath,
  readGolden,
  scaledError,
  shardCheckpoint,
} from "./_golden.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`T5 GPU tests skipped: ${NO_GPU_REASON}`);

const golden = await readGolden("t5_golden.safetensors");
const g = (k: string) => golden.get(k) as Float32Array;
const ids = golden.get("input_ids") as number[];
const mask = golden.get("attention_mask") as number[];

Deno.test("T5 relative position buckets match upstream for offsets −200 … 200", () => {
  const rel = golden.get("relative_position") as number[];
  const want = golden.get("relative_position_bucket") as number[];
  assert.deepEqual(rel.map((r) => relativePositionBucket(r, 32, 128)), want);
  const t = bucketTable(40, 32, 128);
  for (let i = 0; i < t.length; i++) assert.equal(t[i], want[rel.indexOf(i - 39)]);
});

Deno.test("T5 position bias of block 0 matches upstream compute_bias", async () => {
  const ck = await Checkpoint.open(fixturePath("t5_tiny.safetensors"));
  try {
    const table = await ck.float(
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    );
    const bias = t5PositionBias(table, { numHeads: 4, numBuckets: 32, maxDistance: 128 }, 40);
    assert.deepEqual(bias, g("position_bias.layer0"));
  } finally {
    ck.close();
  }
});

/**
 * f16 bound: the worst scaled error measured (llvmpipe) was 7.9e-4 over all golden tensors and
 * both runs, 1.45e-3 in the overflow test below (its final output).
 */
const F16_BOUND = 2e-3;

for (const dtype of ["f32", "f16"] as const) {
  Deno.test({
    name: `T5 encoder ${dtype} matches the goldens (unmasked and masked, every block)`,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (dtype === "f16" && !gpu.caps.shaderF16) return;
      const t5 = await T5Encoder.create(gpu, fixturePath("t5_tiny.safetensors"), {
        batch: 2,
        length: 40,
        dtype,
        keepBlockOutputs: true,
      });
      const bound = dtype === "f32" ? 1e-5 : F16_BOUND;
      try {
        for (const run of ["nomask", "masked"] as const) {
          const out = await t5.encode(ids, run === "masked" ? { mask } : {});
          const checks: [string, Float32Array][] = [
            [`${run}.block_out.0`, out.blockOutputs![0]],
            [`${run}.block_out.1`, out.blockOutputs![1]],
            [`${run}.last_hidden_state`, out.lastHiddenState],
          ];
          assertScaledErrors(dtype, checks, g, bound);
        }
        // the mask matters: masked and unmasked outputs differ on the padded row
        const a = await t5.encode(ids), b = await t5.encode(ids, { mask });
        assert.ok(scaledError(a.lastHiddenState, b.lastHiddenState).rel > 1e-3);
      } finally {
        t5.destroy();
      }
    },
  });
}

Deno.test("T5 CPU reference reproduces the goldens (it is the spec of the overflow test)", async () => {
  const ck = await Checkpoint.open(fixturePath("t5_tiny.safetensors"));
  try {
    const cfg = t5ConfigFrom(ck.config);
    const ref = await t5EncoderRef((n) => ck.float(n), cfg, { b: 2, l: 40, ids, mask });
    assert.ok(scaledError(ref.lastHiddenState, g("masked.last_hidden_state")).rel < 1e-6);
    assert.ok(scaledError(ref.blockOutputs[0], g("masked.block_out.0")).rel < 1e-6);
  } finally {
    ck.close();
  }
});

/**
 * f16 overflow: every `wo` weight scaled by 1e5 (T5-XXL's overflow is in its FFN output) pushes
 * the residual stream far past the
 * f16 range (asserted: max |residual| > 65504, so an f16 residual would hold inf and the next
 * RMSNorm NaN). The f16 encoder (f32 residual, wo with f32 activations) stays finite and matches
 * the float64 reference within the measured f16 bound.
 */
Deno.test({
  name: "T5 encoder f16 stays finite and correct when the residual exceeds the f16 range",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return;
    const dir = await Deno.makeTempDir();
    const src = await Checkpoint.open(fixturePath("t5_tiny.safetensors"));
    try {
      const scaled = (n: string) => /\.wo\.weight$/.test(n);
      const names = src.names();
      const w = await SafetensorsWriter.create(`${dir}/model.safetensors`, {
        tensors: names.map((name) => {
          const t = src.meta(name);
          return { name, dtype: "F32", shape: t.shape, byteLength: 4 * numel(t.shape) };
        }),
        metadata: src.metadata,
      });
      for (const name of names) {
        const v = await src.float(name);
        if (scaled(name)) { for (let i = 0; i < v.length; i++) v[i] *= 1e5; }
        await w.write(name, new Uint8Array(v.buffer));
      }
      await w.commit();
      const ck = await Checkpoint.open(dir);
      const cfg = t5ConfigFrom(ck.config);
      const ref = await t5EncoderRef((n) => ck.float(n), cfg, { b: 2, l: 40, ids });
      const peak = Math.max(...ref.blockOutputs.map((o) => Math.max(...o.map(Math.abs))));
      assert.ok(peak > 65504, `the residual peaks at ${peak}, inside the f16 range`);
      assert.ok(ref.blockOutputs[1].some((v) => !Number.isFinite(Math.f16round(v))));
      const t5 = await T5Encoder.create(gpu, ck, {
        batch: 2,
        length: 40,
        dtype: "f16",
        keepBlockOutputs: true,
      });
      ck.close();
      try {
        const out = await t5.encode(ids);
        assert.ok(out.lastHiddenState.every(Number.isFinite));
        for (const [i, got] of out.blockOutputs!.entries()) {
          const e = scaledError(got, ref.blockOutputs[i]);
          console.log(
            `overflow block ${i}: peak ${peak.toExponential(3)}, scaled error ${
              e.rel.toExponential(3)
            }`,
          );
          assert.ok(e.rel <= F16_BOUND);
        }
        const e = scaledError(out.lastHiddenState, ref.lastHiddenState);
        console.log(`overflow last_hidden_state: scaled error ${e.rel.toExponential(3)}`);
        assert.ok(e.rel <= F16_BOUND);
      } finally {
        t5.destroy();
      }
    } finally {
      src.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "T5 encoder loads a sharded folder (two shards + index + config.json) identically",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dir = await Deno.makeTempDir();
    try {
      await shardCheckpoint(fixturePath("t5_tiny.safetensors"), dir);
      await Deno.copyFile(fixturePath("t5_config.json"), `${dir}/config.json`);
      const opts = { batch: 2, length: 40, dtype: "f32" as const };
      const a = await T5Encoder.create(gpu, dir, opts);
      const b = await T5Encoder.create(gpu, fixturePath("t5_tiny.safetensors"), opts);
      try {
        const x = (await a.encode(ids)).lastHiddenState;
        assert.deepEqual(x, (await b.encode(ids)).lastHiddenState);
        assert.ok(scaledError(x, g("nomask.last_hidden_state")).rel <= 1e-5);
      } finally {
        a.destroy();
        b.destroy();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
