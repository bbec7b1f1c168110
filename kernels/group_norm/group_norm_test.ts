/**
 * group_norm on the GPU against the float64 reference, on fresh random inputs each run (the seed
 * is printed; replay with SEED=...), outputs poisoned with NaN first. Inputs get a per-group
 * offset of up to ±50 standard deviations, so a single-pass Σx² − (Σx)² variance would fail.
 * Bounds: f32 |Δ| ≤ 2e-5·(1 + |y|) (normalising by √var in f32 after ~10⁴ merged values);
 * f16 adds the output rounding 2⁻¹¹·|y| and the f16 input's own rounding, which the reference
 * sees (inputs are rounded before).
 */
import assert from "node:assert/strict";
import {
  assertClose,
  freshRng,
  HAS_GPU,
  NO_GPU_REASON,
  poison,
  testGpu,
} from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { GroupNorm, groupNorm, type GroupNormShape } from "./group_norm.ts";
import { groupNormRef } from "./group_norm_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`group_norm tests skipped: ${NO_GPU_REASON}`);

// HW = 1, prime HW, HW past one 16-pixel chunk and past 512 chunks (chunk > 16), C below, at and
// above the 256 channel lanes (96: not a divisor of 256), channels per group 1, 2, 3, 16.
const CASES: GroupNormShape[] = [
  { b: 1, hw: 1, c: 32, dtype: "f32" },
  { b: 2, hw: 37, c: 64, silu: true, dtype: "f32" },
  { b: 1, hw: 97, c: 96, dtype: "f16" },
  { b: 3, hw: 10, c: 512, silu: true, dtype: "f16" },
  { b: 1, hw: 9000, c: 32, dtype: "f32" },
  { b: 2, hw: 200, c: 128, silu: true, dtype: "f16" },
  { b: 1, hw: 50, c: 320, groups: 32, eps: 1e-5, dtype: "f32" },
];

for (const c of CASES) {
  const name = `group_norm B=${c.b} HW=${c.hw} C=${c.c}${c.silu ? " silu" : ""} ${c.dtype}`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return; // no f16 path on this device
      const rng = freshRng(name);
      const g = c.groups ?? 32;
      const offsets = Array.from({ length: c.b * g }, () => rng.uniform(-50, 50));
      const cpg = c.c / g;
      const raw = rng.normals(c.b * c.hw * c.c);
      for (let i = 0; i < raw.length; i++) {
        const n = Math.floor(i / (c.hw * c.c));
        raw[i] += offsets[n * g + Math.floor((i % c.c) / cpg)];
      }
      const xs = toActArray(raw, c.dtype);
      const x = Float32Array.from(xs);
      const gamma = Float32Array.from({ length: c.c }, () => 1 + 0.2 * rng.normal());
      const beta = rng.normals(c.c, 0.1);
      const bytes = c.b * c.hw * c.c * actBytes(c.dtype);
      const bx = await gpu.upload("buffer test x", xs);
      const bg = await gpu.upload("buffer test gamma", gamma);
      const bb = await gpu.upload("buffer test beta", beta);
      const by = await gpu.upload("buffer test y", poison(bytes));
      try {
        await groupNorm(gpu, c, { x: bx, gamma: bg, beta: bb, y: by });
        const got = fromActBytes(await gpu.read(by), c.dtype, c.b * c.hw * c.c);
        const ref = groupNormRef({ ...c, x, gamma, beta });
        // f16: the (x − mean) of an input with |x| ≈ 50 carries the input's storage rounding
        // only once (the reference sees the same rounded x), so the bound is the output's.
        const rtol = c.dtype === "f16" ? 2 ** -11 + 2e-5 : 2e-5;
        assertClose(got, ref, { atol: 2e-5, rtol, name });
      } finally {
        gpu.destroy(bx, bg, bb, by);
      }
    },
  });
}

Deno.test({
  name: "group_norm rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    await assert.rejects(() => GroupNorm.create(gpu, { b: 1, hw: 4, c: 48, dtype: "f32" }), {
      name: "RangeError",
      message: /groups=32 must be an integer in 1..64 dividing C=48/,
    });
    await assert.rejects(() => GroupNorm.create(gpu, { b: 1, hw: 0, c: 32, dtype: "f32" }), {
      name: "RangeError",
      message: /HW=0|hw=0/,
    });
    const op = await GroupNorm.create(gpu, { b: 1, hw: 4, c: 32, dtype: "f32" });
    const x = await gpu.createBuffer("buffer test x", 4 * 32 * 4);
    const v = await gpu.createBuffer("buffer test v", 31 * 4);
    try {
      assert.throws(() => op.dispatches({ x, gamma: v, beta: v, y: x }), {
        name: "TypeError",
        message: /x and y are the same buffer/,
      });
      assert.throws(() => op.dispatches({ x, gamma: v, beta: v, y: v }), {
        name: "TypeError",
        message: "Cannot run group_norm: gamma has 124 bytes, expected [C=32] f32 = 128 bytes " +
          "or more",
      });
    } finally {
      op.destroy();
      gpu.destroy(x, v);
    }
  },
});
