/**
 * gemm_w8a16 on the GPU against the float64 reference, fresh random inputs (seed printed; replay
 * with SEED=...), outputs poisoned with NaN first, ragged shapes (M, N not multiples of the 64
 * tile, K not a multiple of 16). Bound: with S = s[n]·Σ_k |x·q| (the products are exact in f32,
 * the sum of K terms is sequential in f32), |err| ≤ (K + 4)·2⁻²⁴·S + 2⁻²⁴·|bias|; an f16 output
 * adds 2⁻¹⁰·|y|.
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { inRangeAfterSaturation } from "../gemm_f16/_gemm_check.ts";
import { GemmW8A16, type GemmW8A16Shape } from "./gemm_w8a16.ts";
import { gemmW8A16Ref } from "./gemm_w8a16_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`gemm_w8a16 tests skipped: ${NO_GPU_REASON}`);

const CASES: GemmW8A16Shape[] = [
  { m: 1, k: 4, n: 1, dtype: "f32", bias: false },
  { m: 7, k: 68, n: 65, dtype: "f32", bias: true },
  { m: 70, k: 256, n: 130, dtype: "f16", bias: true },
  { m: 129, k: 100, n: 64, dtype: "f32", bias: false },
  { m: 33, k: 160, n: 200, dtype: "f16", bias: false },
];

for (const c of CASES) {
  const name = `gemm_w8a16 M=${c.m} K=${c.k} N=${c.n} ${c.dtype}${c.bias ? " bias" : ""}`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const x = toActArray(rng.normals(c.m * c.k, 1), c.dtype);
      const q = Int8Array.from({ length: c.n * c.k }, () => Math.round(rng.next() * 254) - 127);
      const scales = new Float32Array(rng.normals(c.n, 0.01).map(Math.abs));
      const bias = c.bias ? new Float32Array(rng.normals(c.n, 1)) : undefined;
      const ref = gemmW8A16Ref({ ...c, x, q, scales, bias });
      const bufs = {
        x: await gpu.upload("buffer test x", x),
        qweight: await gpu.upload("buffer test q", q),
        wscales: await gpu.upload("buffer test s", scales),
        bias: bias ? await gpu.upload("buffer test bias", bias) : undefined,
        y: await gpu.upload("buffer test y", poison(c.m * c.n * actBytes(c.dtype))),
      };
      const op = await GemmW8A16.create(gpu, c);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch(bufs)]);
        const y = fromActBytes(await gpu.read(bufs.y), c.dtype, c.m * c.n);
        let worst = 0;
        for (let i = 0; i < c.m; i++) {
          for (let j = 0; j < c.n; j++) {
            let s = 0;
            for (let k = 0; k < c.k; k++) s += Math.abs(x[i * c.k + k] * q[j * c.k + k]);
            const r = ref[i * c.n + j];
            let bound = (c.k + 4) * 2 ** -24 * s * scales[j] +
              2 ** -24 * Math.abs(bias?.[j] ?? 0);
            if (c.dtype === "f16") bound += 2 ** -10 * Math.abs(r) + 2 ** -24; // + subnormal step
            const err = Math.abs(y[i * c.n + j] - r);
            if (!(err <= bound)) {
              throw new Error(`${name}: y[${i}, ${j}] is ${y[i * c.n + j]}, expected ${r}`);
            }
            worst = Math.max(worst, err / bound);
          }
        }
        console.log(`${name}: worst err/bound ${worst.toFixed(4)}`);
      } finally {
        op.destroy();
        gpu.destroy(...Object.values(bufs));
      }
    },
  });
}

Deno.test({
  name: "gemm_w8a16 rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    await assert.rejects(
      () => GemmW8A16.create(gpu, { m: 1, k: 6, n: 1, dtype: "f32", bias: false }),
      /K=6 must be a multiple of 4/,
    );
    const op = await GemmW8A16.create(gpu, { m: 2, k: 8, n: 2, dtype: "f32", bias: false });
    const b = await gpu.createBuffer("buffer test small", 8);
    try {
      assert.throws(
        () => op.dispatch({ x: b, qweight: b, wscales: b, y: b }),
        /Cannot run gemm_w8a16: x has 8 bytes, expected \[M=2, K=8\] f32 = 64 bytes/,
      );
    } finally {
      op.destroy();
      gpu.destroy(b);
    }
  },
});

Deno.test({
  name: "gemm_w8a16 f16 output saturates at ±65504 (no inf), other outputs unchanged",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    if (!gpu.caps.shaderF16) return; // the f16 output needs shader-f16
    const c: GemmW8A16Shape = { m: 9, k: 64, n: 70, dtype: "f16", bias: true };
    const rng = freshRng("gemm_w8a16 saturate");
    const x = toActArray(rng.normals(c.m * c.k, 1), c.dtype);
    const q = Int8Array.from({ length: c.n * c.k }, () => Math.round(rng.next() * 254) - 127);
    const scales = new Float32Array(rng.normals(c.n, 0.01).map(Math.abs));
    // every fifth column's bias far beyond f16's range
    const bias = Float32Array.from(
      rng.normals(c.n, 1),
      (v, j) => j % 5 ? v : (j % 10 ? -1e5 : 1e5),
    );
    const ref = gemmW8A16Ref({ ...c, x, q, scales, bias });
    const bufs = {
      x: await gpu.upload("buffer test x", x),
      qweight: await gpu.upload("buffer test q", q),
      wscales: await gpu.upload("buffer test s", scales),
      bias: await gpu.upload("buffer test bias", bias),
      y: await gpu.upload("buffer test y", poison(c.m * c.n * 2)),
    };
    const op = await GemmW8A16.create(gpu, c);
    try {
      await gpu.runChecked("run gemm_w8a16 saturate", [op.dispatch(bufs)]);
      const y = fromActBytes(await gpu.read(bufs.y), "f16", c.m * c.n);
      for (const i of inRangeAfterSaturation("gemm_w8a16 saturate", y, ref)) {
        // in range: within the f16 output rounding of the reference (the f32 sum's error is far
        // below it at these magnitudes; the random-shape tests above hold the exact bound)
        assert.ok(Math.abs(y[i] - ref[i]) <= 2 ** -10 * Math.abs(ref[i]) + 1e-3, `y[${i}]`);
      }
    } finally {
      op.destroy();
      gpu.destroy(...Object.values(bufs));
    }
  },
});
