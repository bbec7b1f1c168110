/**
 * gemm_f16 on the GPU against the float64 reference, on fresh random inputs each run (the seed
 * is printed; replay with SEED=...). Outputs are poisoned with NaN first. Error bounds: see
 * _gemm_check.ts (f32: 1e-4·Σ|x||w|; f16: 2⁻¹¹·|y| + 1e-4·Σ|x||w|).
 */
import assert from "node:assert/strict";
import { Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../_wgsl.ts";
import { GemmF16, gemmF16, type GemmF16Shape, type GemmKernel } from "./gemm_f16.ts";
import { gemmF16Ref } from "./gemm_f16_ref.ts";
import { absProducts, checkGemmOutput, inRangeAfterSaturation } from "./_gemm_check.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`gemm_f16 tests skipped: ${NO_GPU_REASON}`);

interface Case extends GemmF16Shape {
  kernel?: GemmKernel;
}

// Every M ∈ {1, 7, 64, 257}, K ∈ {64, 192, 1152} (+ 66, not a multiple of 4), N ∈ {8, 100, 384},
// both dtypes, with and without bias / GELU, both kernels (GEMV for M ≤ 8, tiled otherwise;
// `kernel` forces the other one).
const CASES: Case[] = [
  { m: 1, k: 64, n: 8, dtype: "f32", bias: true },
  { m: 1, k: 1152, n: 384, dtype: "f16", bias: true, gelu: true },
  { m: 7, k: 192, n: 100, dtype: "f16", bias: false },
  { m: 7, k: 66, n: 100, dtype: "f32", bias: false, gelu: true },
  { m: 7, k: 66, n: 100, dtype: "f16", bias: true, kernel: "tiled" },
  { m: 64, k: 64, n: 384, dtype: "f32", bias: true, gelu: true },
  { m: 64, k: 1152, n: 8, dtype: "f16", bias: true },
  { m: 257, k: 192, n: 100, dtype: "f16", bias: true, gelu: true },
  { m: 257, k: 66, n: 384, dtype: "f32", bias: false },
  { m: 257, k: 1152, n: 384, dtype: "f16", bias: false, gelu: true },
  { m: 100, k: 192, n: 257, dtype: "f32", bias: true, kernel: "gemv" },
];

function caseName(c: Case): string {
  const t = c.kernel ? ` (${c.kernel})` : "";
  return `gemm_f16 M=${c.m} K=${c.k} N=${c.n} ${c.dtype}${c.bias ? " bias" : ""}` +
    `${c.gelu ? " gelu" : ""}${t}`;
}

/** Random inputs rounded to the storage dtype (the values the reference sees). */
function inputs(name: string, c: GemmF16Shape) {
  const rng = freshRng(name);
  const x = toActArray(rng.normals(c.m * c.k), c.dtype);
  const w = toActArray(rng.normals(c.n * c.k, 1 / Math.sqrt(c.k) * 3), c.dtype);
  const bias = c.bias ? rng.normals(c.n) : undefined;
  return { x, w, bias };
}

for (const c of CASES) {
  const name = caseName(c);
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return; // covered by the feature test
      const { x, w, bias } = inputs(name, c);
      const bx = await gpu.upload("buffer test x", x);
      const bw = await gpu.upload("buffer test w", w);
      const bb = bias ? await gpu.upload("buffer test bias", bias) : undefined;
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * actBytes(c.dtype)));
      const op = await GemmF16.create(gpu, c, c.kernel);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ x: bx, w: bw, bias: bb, y: by })]);
        const got = fromActBytes(await gpu.read(by), c.dtype, c.m * c.n);
        const ref = gemmF16Ref({ ...c, x, w, bias });
        const s = absProducts(c.m, c.k, c.n, x, w, bias);
        checkGemmOutput(name, got, ref, s, c.dtype === "f16");
      } finally {
        op.destroy();
        gpu.destroy(bx, bw, bb, by);
      }
    },
  });
}

Deno.test({
  name: "gemm_f16 rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dtype: ActDtype = "f32";
    await assert.rejects(
      () => GemmF16.create(gpu, { m: 0, k: 64, n: 8, dtype, bias: false }),
      { name: "RangeError", message: /M=0 must be a positive integer/ },
    );
    await assert.rejects(
      () => GemmF16.create(gpu, { m: 7, k: 1.5, n: 8, dtype, bias: false }),
      { name: "RangeError", message: /K=1.5/ },
    );
    const shape: GemmF16Shape = { m: 7, k: 64, n: 8, dtype, bias: true };
    const x = await gpu.createBuffer("buffer test x", 7 * 64 * 4 - 4);
    const w = await gpu.createBuffer("buffer test w", 8 * 64 * 4);
    const bias = await gpu.createBuffer("buffer test bias", 8 * 4);
    const y = await gpu.createBuffer("buffer test y", 7 * 8 * 4);
    const op = await GemmF16.create(gpu, shape);
    try {
      assert.throws(() => op.dispatch({ x, w, bias, y }), {
        name: "TypeError",
        message:
          "Cannot run gemm_f16: x has 1788 bytes, expected [M=7, K=64] f32 = 1792 bytes or more",
      });
      assert.throws(() => op.dispatch({ x: w, w: x, y, bias }), {
        name: "TypeError",
        message: /w has 1788 bytes/,
      });
      assert.throws(() => op.dispatch({ x: w, w, y }), {
        name: "TypeError",
        message: /bias is missing/,
      });
      await assert.rejects(() => gemmF16(gpu, { ...shape, m: 8 }, { x: w, w, bias, y }), {
        name: "TypeError",
        message: /y has 224 bytes/,
      });
    } finally {
      op.destroy();
      gpu.destroy(x, w, bias, y);
    }
  },
});

Deno.test({
  name: "gemm_f16 refuses f16 on a device without shader-f16",
  ignore,
  async fn() {
    const gpu = await Gpu.create({ disableF16: true, selfTest: false });
    try {
      await assert.rejects(
        () => GemmF16.create(gpu, { m: 7, k: 64, n: 8, dtype: "f16", bias: false }),
        (e) => e instanceof GpuFeatureError && /shader-f16/.test(e.message),
      );
    } finally {
      gpu.close();
    }
  },
});

Deno.test({
  name: "gemm_f16 f16 output saturates at ±65504 (no inf), both kernels, other outputs unchanged",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // the f16 output needs shader-f16 (feature test above)
    for (const kernel of ["gemv", "tiled"] as const) {
      const c: GemmF16Shape = { m: 7, k: 64, n: 40, dtype: "f16", bias: true };
      const name = `gemm_f16 saturate (${kernel})`;
      const { x, w, bias } = inputs(name, c);
      // f16 inputs cannot exceed 65504 themselves; large products and sums can: scale row 0 of x
      // and every fourth weight row so their outputs pass the range
      for (let l = 0; l < c.k; l++) x[l] = 3000;
      for (let j = 0; j < c.n; j += 4) for (let l = 0; l < c.k; l++) w[j * c.k + l] = 2;
      const xa = toActArray(x, "f16"), wa = toActArray(w, "f16");
      const bx = await gpu.upload("buffer test x", xa);
      const bw = await gpu.upload("buffer test w", wa);
      const bb = await gpu.upload("buffer test bias", bias!);
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * 2));
      const op = await GemmF16.create(gpu, c, kernel);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ x: bx, w: bw, bias: bb, y: by })]);
        const got = fromActBytes(await gpu.read(by), "f16", c.m * c.n);
        const ref = gemmF16Ref({ ...c, x: xa, w: wa, bias });
        const s = absProducts(c.m, c.k, c.n, xa, wa, bias);
        const keep = inRangeAfterSaturation(name, got, ref);
        const [g, r, a] = [got, ref, s].map((v) => keep.map((i) => v[i]));
        checkGemmOutput(name, g, r, a, true);
      } finally {
        op.destroy();
        gpu.destroy(bx, bw, bb, by);
      }
    }
  },
});
