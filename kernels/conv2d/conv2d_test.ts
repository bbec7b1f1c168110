/**
 * conv2d on the GPU against the float64 reference, on fresh random inputs each run (the seed is
 * printed; replay with SEED=...), outputs poisoned with NaN first. Error bound per element (the
 * GEMM bound of kernels/gemm_f16/_gemm_check.ts with S = Σ|w·in| + |bias| + |residual|): f32
 * 1e-4·S; f16 2⁻¹¹·|y| + 1e-4·S (inputs are rounded to f16 before the reference sees them).
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, type ActDtype, fromActBytes, toActArray } from "../_wgsl.ts";
import { checkGemmOutput } from "../gemm_f16/_gemm_check.ts";
import {
  Conv2d,
  conv2d,
  conv2dGeometry,
  type Conv2dKernel,
  type Conv2dShape,
  packConvWeight,
  quantizeConvWeightInt8,
} from "./conv2d.ts";
import { conv2dAbsRef, conv2dRef } from "./conv2d_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`conv2d tests skipped: ${NO_GPU_REASON}`);

// Cout ≤ 8 runs the narrow kernel (Cout = 3, 5, 7, 8 below; `which` forces the other one).
// Awkward sizes: odd H/W, Cin = 3 (not a multiple of 4 or of the 16-deep K tile), Cout = 3 and
// 130 (past one 128-wide N tile), B·Ho·Wo past one 128-row M tile, each fusion, both dtypes.
const CASES: (Conv2dShape & { which?: Conv2dKernel })[] = [
  { b: 2, h: 7, w: 9, cin: 12, cout: 8, kernel: 3, bias: true, residual: true, dtype: "f32" },
  {
    b: 1,
    h: 5,
    w: 6,
    cin: 16,
    cout: 3,
    kernel: 3,
    upsample: true,
    siluIn: true,
    bias: true,
    dtype: "f16",
  },
  {
    b: 1,
    h: 8,
    w: 7,
    cin: 9,
    cout: 5,
    kernel: 3,
    stride: 2,
    pad: [0, 1, 0, 1],
    bias: true,
    weights: "int8",
    dtype: "f32",
  },
  { b: 2, h: 4, w: 4, cin: 6, cout: 8, kernel: 3, bias: true, dtype: "f32", which: "tiled" },
  {
    b: 1,
    h: 5,
    w: 5,
    cin: 7,
    cout: 16,
    kernel: 1,
    bias: true,
    relu: true,
    dtype: "f32",
    which: "tiled",
  },
  { b: 1, h: 5, w: 7, cin: 3, cout: 8, kernel: 3, bias: true, dtype: "f32" },
  { b: 1, h: 6, w: 7, cin: 5, cout: 130, kernel: 3, bias: true, weights: "int8", dtype: "f32" },
  {
    b: 2,
    h: 4,
    w: 5,
    cin: 16,
    cout: 24,
    kernel: 3,
    upsample: true,
    bias: true,
    residual: true,
    weights: "int8",
    dtype: "f16",
  },
  { b: 1, h: 5, w: 5, cin: 12, cout: 7, kernel: 1, bias: false, weights: "int8", dtype: "f32" },
  {
    b: 2,
    h: 5,
    w: 9,
    cin: 16,
    cout: 16,
    kernel: 3,
    bias: true,
    residual: true,
    relu: true,
    dtype: "f32",
  },
  {
    b: 1,
    h: 4,
    w: 6,
    cin: 24,
    cout: 24,
    kernel: 3,
    upsample: true,
    bias: false,
    relu: true,
    dtype: "f16",
  },
  { b: 2, h: 9, w: 11, cin: 16, cout: 130, kernel: 3, bias: true, dtype: "f16" },
  { b: 2, h: 6, w: 13, cin: 20, cout: 3, kernel: 3, bias: true, residual: true, dtype: "f32" },
  { b: 1, h: 12, w: 12, cin: 32, cout: 17, kernel: 1, bias: true, residual: true, dtype: "f16" },
  { b: 3, h: 7, w: 5, cin: 9, cout: 12, kernel: 1, bias: false, dtype: "f32" },
  {
    b: 1,
    h: 9,
    w: 10,
    cin: 8,
    cout: 8,
    kernel: 3,
    stride: 2,
    pad: [0, 1, 0, 1],
    bias: true,
    dtype: "f32",
  },
  {
    b: 2,
    h: 8,
    w: 7,
    cin: 12,
    cout: 20,
    kernel: 3,
    stride: 2,
    pad: [0, 1, 0, 1],
    bias: true,
    dtype: "f16",
  },
  { b: 1, h: 6, w: 5, cin: 8, cout: 8, kernel: 3, stride: 2, bias: false, dtype: "f32" },
  { b: 1, h: 5, w: 6, cin: 16, cout: 12, kernel: 3, upsample: true, bias: true, dtype: "f32" },
  { b: 2, h: 7, w: 3, cin: 4, cout: 36, kernel: 3, upsample: true, bias: true, dtype: "f16" },
  {
    b: 1,
    h: 8,
    w: 9,
    cin: 7,
    cout: 5,
    kernel: 3,
    siluIn: true,
    bias: true,
    residual: true,
    dtype: "f32",
  },
  {
    b: 1,
    h: 6,
    w: 6,
    cin: 32,
    cout: 32,
    kernel: 3,
    siluIn: true,
    upsample: true,
    bias: true,
    dtype: "f16",
  },
];

function caseName(c: Conv2dShape & { which?: Conv2dKernel }): string {
  const flags = [
    c.stride === 2 ? "s2" : "",
    c.pad !== undefined ? `pad ${JSON.stringify(c.pad)}` : "",
    c.upsample ? "up2" : "",
    c.siluIn ? "silu" : "",
    c.bias ? "bias" : "",
    c.residual ? "residual" : "",
    c.relu ? "relu" : "",
    c.weights === "int8" ? "int8-w" : "",
    (c.which ?? (c.cout <= 8 ? "narrow" : "")) ? `(${c.which ?? "narrow"})` : "",
  ].filter((f) => f).join(" ");
  return `conv2d ${c.kernel}×${c.kernel} B=${c.b} ${c.h}×${c.w} ${c.cin}→${c.cout} ${flags} ${c.dtype}`;
}

for (const c of CASES) {
  const name = caseName(c);
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return; // no f16 path on this device
      const rng = freshRng(name);
      const { ho, wo } = conv2dGeometry(c);
      const ks = c.kernel;
      const round = (a: Float32Array) => Float32Array.from(toActArray(a, c.dtype));
      const x = round(rng.normals(c.b * c.h * c.w * c.cin));
      let w = round(rng.normals(c.cout * c.cin * ks * ks, 1 / Math.sqrt(c.cin * ks * ks)));
      const int8 = c.weights === "int8"
        ? quantizeConvWeightInt8(packConvWeight(w, c.cout, c.cin, ks), c.cout)
        : undefined;
      if (int8) { // the reference sees the stored codes times their scales, in its own layout
        const codes = new Int8Array(int8.codes.buffer), taps = ks * ks;
        w = w.map((_, i) => {
          const o = Math.floor(i / (c.cin * taps)), ci = Math.floor(i / taps) % c.cin;
          return codes[(o * taps + (i % taps)) * c.cin + ci] * int8.scales[o];
        });
      }
      const bias = c.bias ? rng.normals(c.cout, 0.1) : undefined;
      const residual = c.residual ? round(rng.normals(c.b * ho * wo * c.cout)) : undefined;
      const outBytes = c.b * ho * wo * c.cout * actBytes(c.dtype);
      const bx = await gpu.upload("buffer test x", toActArray(x, c.dtype));
      const bw = int8 ? undefined : await gpu.upload(
        "buffer test w",
        toActArray(packConvWeight(w, c.cout, c.cin, ks), c.dtype),
      );
      const bq = int8 ? await gpu.upload("buffer test wq", int8.codes) : undefined;
      const bs = int8 ? await gpu.upload("buffer test wscale", int8.scales) : undefined;
      const bb = bias ? await gpu.upload("buffer test bias", bias) : undefined;
      const br = residual
        ? await gpu.upload("buffer test residual", toActArray(residual, c.dtype))
        : undefined;
      const by = await gpu.upload("buffer test y", poison(outBytes));
      try {
        const op = await Conv2d.create(gpu, c, c.which);
        try {
          await gpu.runChecked(`run ${name}`, [
            op.dispatch({ x: bx, w: bw, bias: bb, residual: br, y: by, wq: bq, wscale: bs }),
          ]);
        } finally {
          op.destroy();
        }
        const got = fromActBytes(await gpu.read(by), c.dtype, c.b * ho * wo * c.cout);
        const inputs = { ...c, x, weight: w, bias, residual };
        checkGemmOutput(name, got, conv2dRef(inputs), conv2dAbsRef(inputs), c.dtype === "f16");
      } finally {
        gpu.destroy(bx, bw, bb, br, by, bq, bs);
      }
    },
  });
}

Deno.test({
  name: "conv2d rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const dtype: ActDtype = "f32";
    const base: Conv2dShape = { b: 1, h: 4, w: 4, cin: 2, cout: 3, kernel: 3, bias: true, dtype };
    await assert.rejects(() => Conv2d.create(gpu, { ...base, cin: 0 }), {
      name: "RangeError",
      message: /cin=0 must be a positive integer/,
    });
    await assert.rejects(() => Conv2d.create(gpu, { ...base, kernel: 5 as 3 }), {
      name: "RangeError",
      message: /kernel=5 must be 1 or 3/,
    });
    await assert.rejects(() => Conv2d.create(gpu, { ...base, pad: [0, 3, 0, 0] }), {
      name: "RangeError",
      message: /pad \[0,3,0,0\]/,
    });
    await assert.rejects(() => Conv2d.create(gpu, { ...base, h: 1, pad: 0 }), {
      name: "RangeError",
      message: /smaller than the 3×3 kernel/,
    });
    const op = await Conv2d.create(gpu, { ...base, residual: true });
    const x = await gpu.createBuffer("buffer test x", 4 * 4 * 2 * 4 - 4);
    const w = await gpu.createBuffer("buffer test w", 3 * 9 * 2 * 4);
    const bias = await gpu.createBuffer("buffer test bias", 3 * 4);
    const y = await gpu.createBuffer("buffer test y", 4 * 4 * 3 * 4);
    try {
      assert.throws(() => op.dispatch({ x, w, bias, residual: y, y }), {
        name: "TypeError",
        message: /residual and y are the same buffer/,
      });
      assert.throws(() => op.dispatch({ x, w, bias, residual: w, y }), {
        name: "TypeError",
        message: "Cannot run conv2d: x has 124 bytes, expected [B=1, H=4, W=4, Cin=2] f32 = " +
          "128 bytes or more",
      });
      assert.throws(() => op.dispatch({ x: y, w, bias, y: w }), {
        name: "TypeError",
        message: /residual is missing/,
      });
      await assert.rejects(() => conv2d(gpu, { ...base, h: 2, w: 2 }, { x, w, y }), {
        name: "TypeError",
        message: /bias is missing/,
      });
      await assert.rejects(() => Conv2d.create(gpu, { ...base, cout: 9 }, "narrow"), {
        name: "RangeError",
        message: /narrow kernel takes Cout ≤ 8, got 9/,
      });
    } finally {
      op.destroy();
      gpu.destroy(x, w, bias, y);
    }
  },
});

Deno.test("conv2d packConvWeight reorders [Cout, Cin, KS, KS] to [Cout, KS, KS, Cin]", () => {
  // Cout=1, Cin=2, KS=3: value = 10·c + tap.
  const w = Float32Array.from({ length: 18 }, (_, i) => 10 * Math.floor(i / 9) + (i % 9));
  const p = packConvWeight(w, 1, 2, 3);
  assert.deepEqual([...p.slice(0, 6)], [0, 10, 1, 11, 2, 12]);
  assert.throws(() => packConvWeight(w, 1, 3, 3), { name: "TypeError", message: /expected/ });
});
