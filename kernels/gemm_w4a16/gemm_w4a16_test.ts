/**
 * gemm_w4a16 on the GPU against the float64 reference (dequantised INT4 weight × X as stored),
 * on fresh random inputs each run (the seed is printed; replay with SEED=...). Outputs are
 * poisoned with NaN first. Error bounds: see ../gemm_f16/_gemm_check.ts (f32: 1e-4·Σ|x||w|;
 * f16: 2⁻¹¹·|y| + 1e-4·Σ|x||w|, with w the dequantised weight; the in-register dequantisation
 * is exact, so only f32 accumulation and the output rounding remain).
 */
import assert from "node:assert/strict";
import { Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import {
  dequantizeWeight,
  type Int4Weight,
  packF16,
  packNibbles,
  quantizeWeight,
  roundF16,
  weightScaleWords,
} from "../../formats/packing.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../_wgsl.ts";
import { absProducts, checkGemmOutput, inRangeAfterSaturation } from "../gemm_f16/_gemm_check.ts";
import { type GemmKernel, GemmW4A16, gemmW4A16, type GemmW4A16Shape } from "./gemm_w4a16.ts";
import { gemmW4A16Ref } from "./gemm_w4a16_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`gemm_w4a16 tests skipped: ${NO_GPU_REASON}`);

interface Case extends GemmW4A16Shape {
  kernel?: GemmKernel;
}

// Every M ∈ {1, 7, 64, 257}, K ∈ {64, 192, 1152}, N ∈ {8, 100, 384}, both dtypes, with and
// without bias / GELU, both kernels (GEMV for M ≤ 8, tiled otherwise; `kernel` forces one).
const CASES: Case[] = [
  { m: 1, k: 64, n: 8, dtype: "f32", bias: true },
  { m: 1, k: 1152, n: 384, dtype: "f16", bias: true, gelu: true },
  { m: 2, k: 192, n: 100, dtype: "f32", bias: false, gelu: true },
  { m: 7, k: 192, n: 100, dtype: "f16", bias: false },
  { m: 7, k: 64, n: 384, dtype: "f16", bias: true, kernel: "tiled" },
  { m: 64, k: 192, n: 8, dtype: "f32", bias: true, gelu: true },
  { m: 64, k: 1152, n: 100, dtype: "f16", bias: true, kernel: "gemv" },
  { m: 257, k: 64, n: 100, dtype: "f16", bias: false, gelu: true },
  { m: 257, k: 1152, n: 384, dtype: "f32", bias: true },
  { m: 130, k: 192, n: 384, dtype: "f16", bias: true, gelu: true },
];

function caseName(c: Case): string {
  return `gemm_w4a16 M=${c.m} K=${c.k} N=${c.n} ${c.dtype}${c.bias ? " bias" : ""}` +
    `${c.gelu ? " gelu" : ""}${c.kernel ? ` (${c.kernel})` : ""}`;
}

for (const c of CASES) {
  const name = caseName(c);
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return; // covered by the feature test
      const rng = freshRng(name);
      const x = toActArray(rng.normals(c.m * c.k), c.dtype);
      const weight = quantizeWeight(rng.normals(c.n * c.k, 3 / Math.sqrt(c.k)), c.n, c.k, "int4", {
        name,
      }) as Int4Weight;
      const bias = c.bias ? rng.normals(c.n) : undefined;
      const bx = await gpu.upload("buffer test x", x);
      const bq = await gpu.upload("buffer test qweight", weight.qweight);
      const bs = await gpu.upload("buffer test wscales", weightScaleWords(weight));
      const bb = bias ? await gpu.upload("buffer test bias", bias) : undefined;
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * actBytes(c.dtype)));
      const op = await GemmW4A16.create(gpu, c, c.kernel);
      try {
        const buffers = { x: bx, qweight: bq, wscales: bs, bias: bb, y: by };
        await gpu.runChecked(`run ${name}`, [op.dispatch(buffers)]);
        const got = fromActBytes(await gpu.read(by), c.dtype, c.m * c.n);
        const ref = gemmW4A16Ref({ m: c.m, x, weight, bias, gelu: c.gelu });
        const s = absProducts(c.m, c.k, c.n, x, dequantizeWeight(weight), bias);
        checkGemmOutput(name, got, ref, s, c.dtype === "f16");
      } finally {
        op.destroy();
        gpu.destroy(bx, bq, bs, bb, by);
      }
    },
  });
}

// AWQ zero points (the adaLN of imported Nunchaku checkpoints): unsigned codes, W = q·s + z with
// z ≈ −7·s rounded on its own (as Nunchaku stores it), both kernels.
const ZP_CASES: Case[] = [
  { m: 1, k: 192, n: 100, dtype: "f32", bias: true, zeroPoint: true },
  { m: 2, k: 1152, n: 384, dtype: "f16", bias: true, zeroPoint: true },
  { m: 64, k: 192, n: 100, dtype: "f32", bias: false, zeroPoint: true, kernel: "tiled" },
  { m: 7, k: 64, n: 8, dtype: "f32", bias: true, zeroPoint: true, kernel: "tiled" },
];

for (const c of ZP_CASES) {
  const name = `${caseName(c)} zero points`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const x = toActArray(rng.normals(c.m * c.k), c.dtype);
      const groups = c.n * c.k / 64;
      const codes = Uint8Array.from({ length: c.n * c.k }, () => rng.int(0, 15));
      const scales = Float32Array.from({ length: groups }, () => roundF16(0.01 * (1 + rng.next())));
      const zeros = scales.map((v) => roundF16(-7 * v * (1 + 0.01 * rng.normal())));
      const weight: Int4Weight = {
        format: "int4",
        n: c.n,
        k: c.k,
        qweight: packNibbles(codes, c.n, c.k),
        wscales: scales,
      };
      const bias = c.bias ? rng.normals(c.n) : undefined;
      const bx = await gpu.upload("buffer test x", x);
      const bq = await gpu.upload("buffer test qweight", weight.qweight);
      const bs = await gpu.upload("buffer test wscales", packF16(scales));
      const bz = await gpu.upload("buffer test wzeros", packF16(zeros));
      const bb = bias ? await gpu.upload("buffer test bias", bias) : undefined;
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * actBytes(c.dtype)));
      const op = await GemmW4A16.create(gpu, c, c.kernel);
      try {
        const buffers = { x: bx, qweight: bq, wscales: bs, bias: bb, y: by, wzeros: bz };
        await gpu.runChecked(`run ${name}`, [op.dispatch(buffers)]);
        const got = fromActBytes(await gpu.read(by), c.dtype, c.m * c.n);
        const ref = gemmW4A16Ref({ m: c.m, x, weight, bias, gelu: c.gelu, zeros });
        const w = Float32Array.from(
          codes,
          (q, i) => q * scales[Math.floor(i / 64)] + zeros[Math.floor(i / 64)],
        );
        const s = absProducts(c.m, c.k, c.n, x, w, bias);
        checkGemmOutput(name, got, ref, s, c.dtype === "f16");
      } finally {
        op.destroy();
        gpu.destroy(bx, bq, bs, bz, bb, by);
      }
    },
  });
}

// Activation-aware scaling (quant/awq.ts): X divided by smooth [K] (f32, factors over ~4 binades as
// amax^α gives) before the product; every path: both kernels, both dtypes, two's complement
// and zero-point codes, awkward M and N. The error bound uses |x / smooth|.
const SMOOTH_CASES: Case[] = [
  { m: 1, k: 192, n: 100, dtype: "f32", bias: true },
  { m: 2, k: 1152, n: 384, dtype: "f16", bias: true, gelu: true },
  { m: 7, k: 64, n: 8, dtype: "f16", bias: false, zeroPoint: true },
  { m: 3, k: 128, n: 100, dtype: "f32", bias: true, zeroPoint: true },
  { m: 5, k: 128, n: 100, dtype: "f32", bias: false, kernel: "tiled" },
  { m: 64, k: 192, n: 100, dtype: "f32", bias: false, zeroPoint: true, kernel: "tiled" },
  { m: 257, k: 192, n: 384, dtype: "f16", bias: true },
  { m: 130, k: 64, n: 100, dtype: "f32", bias: false, gelu: true },
  { m: 33, k: 1152, n: 8, dtype: "f16", bias: true, zeroPoint: true },
  { m: 40, k: 64, n: 36, dtype: "f16", bias: false, kernel: "gemv" },
];

for (const c of SMOOTH_CASES) {
  const name = `${caseName(c)}${c.zeroPoint ? " zero points" : ""} smooth`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const smooth = Float32Array.from({ length: c.k }, () => Math.exp(1.5 * rng.normal()));
      // X with the channel spread the factors undo (outlier channels get large factors)
      const x = toActArray(
        Float32Array.from(rng.normals(c.m * c.k), (v, i) => v * smooth[i % c.k]),
        c.dtype,
      );
      const groups = c.n * c.k / 64;
      let weight: Int4Weight, zeros: Float32Array | undefined, w: Float32Array;
      if (c.zeroPoint) {
        const codes = Uint8Array.from({ length: c.n * c.k }, () => rng.int(0, 15));
        const scales = Float32Array.from(
          { length: groups },
          () => roundF16(0.01 * (1 + rng.next())),
        );
        const z = scales.map((v) => roundF16(-7 * v * (1 + 0.01 * rng.normal())));
        weight = {
          format: "int4",
          n: c.n,
          k: c.k,
          qweight: packNibbles(codes, c.n, c.k),
          wscales: scales,
        };
        zeros = z;
        w = Float32Array.from(
          codes,
          (q, i) => q * scales[Math.floor(i / 64)] + z[Math.floor(i / 64)],
        );
      } else {
        weight = quantizeWeight(rng.normals(c.n * c.k, 3 / Math.sqrt(c.k)), c.n, c.k, "int4", {
          name,
        }) as Int4Weight;
        w = dequantizeWeight(weight);
      }
      const bias = c.bias ? rng.normals(c.n) : undefined;
      const shape = { ...c, smooth: true };
      const bx = await gpu.upload("buffer test x", x);
      const bq = await gpu.upload("buffer test qweight", weight.qweight);
      const bs = await gpu.upload(
        "buffer test wscales",
        zeros ? packF16(weight.wscales) : weightScaleWords(weight),
      );
      const bz = zeros ? await gpu.upload("buffer test wzeros", packF16(zeros)) : undefined;
      const bl = await gpu.upload("buffer test smooth", smooth);
      const bb = bias ? await gpu.upload("buffer test bias", bias) : undefined;
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * actBytes(c.dtype)));
      const op = await GemmW4A16.create(gpu, shape, c.kernel);
      try {
        const buffers = {
          x: bx,
          qweight: bq,
          wscales: bs,
          bias: bb,
          y: by,
          wzeros: bz,
          smooth: bl,
        };
        await gpu.runChecked(`run ${name}`, [op.dispatch(buffers)]);
        const got = fromActBytes(await gpu.read(by), c.dtype, c.m * c.n);
        const ref = gemmW4A16Ref({ m: c.m, x, weight, bias, gelu: c.gelu, zeros, smooth });
        const xs = Float64Array.from(x, (v, i) => v / smooth[i % c.k]);
        const s = absProducts(c.m, c.k, c.n, xs, w, bias);
        checkGemmOutput(name, got, ref, s, c.dtype === "f16");
        // the factors matter: without them the reference is far off
        const plain = gemmW4A16Ref({ m: c.m, x, weight, bias, gelu: c.gelu, zeros });
        assert.ok(plain.some((v, i) => Math.abs(v - ref[i]) > 1e-2 * (s[i] + 1e-3)));
      } finally {
        op.destroy();
        gpu.destroy(bx, bq, bs, bz, bl, bb, by);
      }
    },
  });
}

Deno.test({
  name: "gemm_w4a16 rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dtype: ActDtype = "f32";
    await assert.rejects(
      () => GemmW4A16.create(gpu, { m: 1, k: 96, n: 8, dtype, bias: false }),
      { name: "RangeError", message: /K=96 must be a multiple of the INT4 group size 64/ },
    );
    await assert.rejects(
      () => GemmW4A16.create(gpu, { m: 1, k: 64, n: -8, dtype, bias: false }),
      { name: "RangeError", message: /N=-8/ },
    );
    const shape: GemmW4A16Shape = { m: 2, k: 128, n: 8, dtype, bias: true };
    const x = await gpu.createBuffer("buffer test x", 2 * 128 * 4);
    const qweight = await gpu.createBuffer("buffer test qweight", 8 * 128 / 2 - 4);
    const wscales = await gpu.createBuffer("buffer test wscales", 8 * 2 * 2);
    const bias = await gpu.createBuffer("buffer test bias", 8 * 4);
    const y = await gpu.createBuffer("buffer test y", 2 * 8 * 4);
    const small = await gpu.createBuffer("buffer test small", 28);
    const op = await GemmW4A16.create(gpu, shape);
    try {
      assert.throws(() => op.dispatch({ x, qweight, wscales, bias, y }), {
        name: "TypeError",
        message: "Cannot run gemm_w4a16: qweight has 508 bytes, expected [N=8, K/8=16] u32 = " +
          "512 bytes or more",
      });
      assert.throws(() => op.dispatch({ x, qweight: x, wscales: small, bias, y }), {
        name: "TypeError",
        message: /wscales has 28 bytes, expected \[N=8, K\/64=2\] f16 \(2 per u32\) = 32/,
      });
      assert.throws(() => op.dispatch({ x, qweight: x, wscales, y }), {
        name: "TypeError",
        message: /bias is missing/,
      });
      await assert.rejects(
        () => gemmW4A16(gpu, { ...shape, m: 3 }, { x: y, qweight: x, wscales, bias, y }),
        { name: "TypeError", message: /x has 64 bytes, expected \[M=3, K=128\] f32 = 1536/ },
      );
      await assert.rejects(
        () => gemmW4A16(gpu, { ...shape, smooth: true }, { x, qweight: x, wscales, bias, y }),
        { name: "TypeError", message: /smooth is missing, expected \[K=128\] f32/ },
      );
      await assert.rejects(
        () =>
          gemmW4A16(gpu, { ...shape, smooth: true }, {
            x,
            qweight: x,
            wscales,
            bias,
            y,
            smooth: small,
          }),
        { name: "TypeError", message: /smooth has 28 bytes, expected \[K=128\] f32 = 512/ },
      );
    } finally {
      op.destroy();
      gpu.destroy(x, qweight, wscales, bias, y, small);
    }
  },
});

Deno.test({
  name: "gemm_w4a16 refuses f16 on a device without shader-f16",
  ignore,
  async fn() {
    const gpu = await Gpu.create({ disableF16: true, selfTest: false });
    try {
      await assert.rejects(
        () => GemmW4A16.create(gpu, { m: 1, k: 64, n: 8, dtype: "f16", bias: false }),
        (e) => e instanceof GpuFeatureError && /shader-f16/.test(e.message),
      );
    } finally {
      gpu.close();
    }
  },
});

Deno.test({
  name: "gemm_w4a16 f16 output saturates at ±65504 (no inf), both kernels, other outputs unchanged",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // the f16 output needs shader-f16
    for (const kernel of ["gemv", "tiled"] as const) {
      const c: Case = { m: 7, k: 64, n: 40, dtype: "f16", bias: true, kernel };
      const name = `gemm_w4a16 saturate (${kernel})`;
      const rng = freshRng(name);
      const x = toActArray(rng.normals(c.m * c.k), c.dtype);
      const weight = quantizeWeight(rng.normals(c.n * c.k, 0.1), c.n, c.k, "int4", {
        name,
      }) as Int4Weight;
      // every fifth column's bias (f32) far beyond f16's range
      const bias = Float64Array.from(rng.normals(c.n), (v, j) => j % 5 ? v : (j % 10 ? -1e5 : 1e5));
      const bx = await gpu.upload("buffer test x", x);
      const bq = await gpu.upload("buffer test qweight", weight.qweight);
      const bs = await gpu.upload("buffer test wscales", weightScaleWords(weight));
      const bb = await gpu.upload("buffer test bias", Float32Array.from(bias));
      const by = await gpu.upload("buffer test y", poison(c.m * c.n * 2));
      const op = await GemmW4A16.create(gpu, c, kernel);
      try {
        const buffers = { x: bx, qweight: bq, wscales: bs, bias: bb, y: by };
        await gpu.runChecked(`run ${name}`, [op.dispatch(buffers)]);
        const got = fromActBytes(await gpu.read(by), "f16", c.m * c.n);
        const ref = gemmW4A16Ref({ m: c.m, x, weight, bias });
        const s = absProducts(c.m, c.k, c.n, x, dequantizeWeight(weight), bias);
        const keep = inRangeAfterSaturation(name, got, ref);
        const [g, r, a] = [got, ref, s].map((v) => keep.map((i) => v[i]));
        checkGemmOutput(name, g, r, a, true);
      } finally {
        op.destroy();
        gpu.destroy(bx, bq, bs, bb, by);
      }
    }
  },
});
