import assert from "node:assert/strict";
import { gpuMatMul } from "./gpu_matmul.ts";
import { matmul } from "../quant/linalg.ts";
import { topRSvd } from "../quant/svd.ts";
import { freshRng, HAS_GPU, maxErrors, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";

const ignore = !HAS_GPU;
if (ignore) console.warn(`gpu matmul tests skipped: ${NO_GPU_REASON}`);

Deno.test({
  name: "gpu matmul: equals the CPU product on ragged shapes, both B layouts",
  ignore,
  fn: async () => {
    const rng = freshRng("gpu matmul");
    const { matmul: gpu } = await gpuMatMul((await testGpu())!);
    for (const [m, k, n] of [[1, 7, 5], [33, 64, 17], [70, 129, 48]]) {
      for (const transB of [false, true]) {
        const a = rng.normals(m * k), b = rng.normals(k * n);
        const want = matmul(a, b, m, k, n, transB);
        const got = await gpu(a, b, m, k, n, transB);
        const e = maxErrors(got, want);
        // f32 storage and accumulation: K·2⁻²⁴ relative to Σ|a||b| ≤ K·max|a||b|
        assert.ok(e.maxAbs < 1e-4 * k, `[${m},${k},${n}] transB=${transB}: ${e.maxAbs}`);
      }
    }
  },
});

Deno.test({
  name: "gpu matmul: the quantizer's randomized SVD runs its products on the GPU",
  ignore,
  fn: async () => {
    const rng = freshRng("gpu svd");
    const n = 96, k = 128, r = 8;
    const w = rng.normals(n * k);
    const { matmul: gpu } = await gpuMatMul((await testGpu())!);
    let calls = 0;
    const counted = (...args: Parameters<typeof gpu>) => {
      calls++;
      return gpu(...args);
    };
    const viaGpu = await topRSvd(w, n, k, r, { seed: 1, matmul: counted });
    const viaCpu = await topRSvd(w, n, k, r, { seed: 1 });
    assert.ok(calls > 0);
    const rec = (lr: typeof viaGpu) => matmul(lr.up, lr.down, n, r, k);
    const e = maxErrors(rec(viaGpu), rec(viaCpu));
    assert.ok(e.maxAbs < 1e-3, `GPU and CPU rank-${r} reconstructions differ by ${e.maxAbs}`);
  },
});
