// The requirements read from a model's header are enough: a device created with exactly those
// limits (not the adapter's own) and without shader-f16 generates with the bundled INT4 model;
// an adapter below them is named.
import assert from "node:assert/strict";
import { HAS_GPU } from "../gpu/_testing.ts";
import { Gpu } from "../gpu/device.ts";
import { ModelFile } from "./model_file.ts";
import { Pipeline } from "./pipeline.ts";
import { requirementsOf, unmetRequirements } from "./requirements.ts";

const INT4 = new URL("../models/dit_emoji.int4.safetensors", import.meta.url).pathname;
const TINY = new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname;

Deno.test("requirements: W4A4 needs dot4I8Packed, a float model does not; limits cover tensors", async () => {
  const q = await ModelFile.open(INT4);
  const f = await ModelFile.open(TINY);
  try {
    const nq = requirementsOf(q), nf = requirementsOf(f);
    assert.deepEqual(nq.wgslLanguageFeatures, ["packed_4x8_integer_dot_product"]);
    assert.deepEqual(nf.wgslLanguageFeatures, []);
    assert.deepEqual(nq.features, []);
    for (const t of q.reader.tensors.values()) {
      assert.ok(t.end - t.begin <= nq.limits.maxStorageBufferBindingSize, t.name);
    }
    // 2 (guidance) × 64 tokens × 3·256 (qkv) × 4 bytes
    assert.equal(nq.limits.maxStorageBufferBindingSize, Math.max(2 * 64 * 768 * 4, 262144));
    const adapter = {
      features: new Set<string>(),
      limits: { ...nq.limits, maxStorageBufferBindingSize: 1000 },
    };
    assert.deepEqual(unmetRequirements(adapter, new Set(), nq), [
      'WGSL lacks "packed_4x8_integer_dot_product" (dot4I8Packed, for the 4-bit layers)',
      `maxStorageBufferBindingSize is 1000, the model needs ${nq.limits.maxStorageBufferBindingSize}`,
    ]);
    assert.deepEqual(
      unmetRequirements({ features: new Set(), limits: nq.limits }, undefined, nq),
      [],
    );
  } finally {
    q.close();
    f.close();
  }
});

Deno.test({
  name: "requirements: the INT4 model generates on a device with only the declared limits, f32",
  ignore: !HAS_GPU, // needs a WebGPU adapter (llvmpipe here)
  sanitizeResources: false,
  fn: async () => {
    const f = await ModelFile.open(INT4);
    const need = requirementsOf(f);
    f.close();
    const gpu = await Gpu.create({ limits: need.limits, disableF16: true });
    try {
      assert.equal(gpu.caps.maxComputeWorkgroupStorageSize, 26624);
      assert.equal(gpu.caps.maxStorageBuffersPerShaderStage, 8);
      const pipe = await Pipeline.load(gpu, INT4);
      try {
        const r = await pipe.generate({ classes: [1], seed: 3, steps: 1, cfg: 2 });
        assert.ok(r.images.every(Number.isFinite));
      } finally {
        pipe.destroy();
      }
    } finally {
      gpu.close();
    }
  },
});
