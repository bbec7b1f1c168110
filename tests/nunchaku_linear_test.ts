/**
 * Our GPU W4A4 linear (quantize_act_lowrank + gemm_w4a4_lowrank, convention "nunchaku") on the
 * tensors imported from upstream-packed Nunchaku layers (tests/fixtures/nunchaku/) against the
 * fixture's `y_ref` (Nunchaku's layer math in f64 from the exact operands, rounded to f32).
 *
 * Tolerance, derived: the activation codes and scales are the fixture's exactly (the CPU mirror
 * checks that in quant/nunchaku_test.ts; the kernel matches the mirror, with rare ±1 codes only
 * where a GPU's reciprocal is not correctly rounded — none on llvmpipe), the integer group sums
 * are exact, so only f32 rounding remains: per element
 * |y − y_ref| ≤ 1e-5·S + 2⁻²⁴·K·Σ_r |lora_up[n,r]|·Σ_k |x·lora_down[r]| + 2⁻²⁴·|y_ref|,
 * with S = Σ |every group product, low-rank product, bias| (the gemm_w4a4_lowrank bound), the
 * second term the f32 low-rank down-projection (K products) and the last y_ref's own rounding.
 * Also reported: the error relative to max |y_ref| (the fixture README expects ≤ 1% for INT4 and
 * 0.5% for NVFP4 from Nunchaku's own bf16 kernels).
 */
import assert from "node:assert/strict";
import { canonicalW4A4 } from "../quant/nunchaku.ts";
import { quantizeAct } from "../formats/packing.ts";
import { W4A4Linear } from "../runtime/linear.ts";
import { HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../gpu/_testing.ts";
import { gemmW4A4LowrankRef } from "../kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank_ref.ts";
import { loraActRef } from "../kernels/quantize_act_lowrank/quantize_act_lowrank_ref.ts";
import { loadFixture, M, packedOf } from "../quant/_nunchaku_testing.ts";

if (!HAS_GPU) console.warn(`nunchaku linear tests skipped: ${NO_GPU_REASON}`);

for (const p of ["int4", "nvfp4"] as const) {
  Deno.test({
    name: `nunchaku ${p} layer on the GPU matches Nunchaku's y_ref`,
    ignore: !HAS_GPU,
    async fn() {
      const gpu = (await testGpu())!;
      const { layer, truth } = await loadFixture(p);
      const { n, k, r } = layer;
      const lin = await W4A4Linear.create(gpu, {
        name: layer.name,
        m: M,
        n,
        k,
        format: p,
        actMode: p,
        dtype: "f32",
        convention: "nunchaku",
      }, canonicalW4A4(layer).tensors);
      const x = truth.get("x")!;
      const xb = await gpu.upload("test x", x);
      const yb = await gpu.upload("test y", poison(M * n * 4));
      let y: Float32Array;
      try {
        gpu.run(lin.dispatch({ x: xb, y: yb }));
        y = new Float32Array(await gpu.read(yb));
      } finally {
        lin.destroy();
        gpu.destroy(xb, yb);
      }
      // the error terms of the bound, from the float64 reference on the same operands
      const act = quantizeAct(x, M, k, p, layer.smooth, "nunchaku");
      const loraAct = loraActRef(x, layer.loraDown, M, k, r);
      const { absSum } = gemmW4A4LowrankRef({
        act,
        weight: packedOf(layer),
        r,
        loraAct,
        loraUp: layer.loraUp,
        bias: layer.bias,
      });
      const yref = truth.get("y_ref")!;
      let worst = 0, maxAbs = 0, maxRef = 0;
      for (let i = 0; i < M; i++) {
        for (let j = 0; j < n; j++) {
          let lora = 0;
          for (let t = 0; t < r; t++) {
            let xd = 0;
            for (let c = 0; c < k; c++) xd += Math.abs(x[i * k + c] * layer.loraDown[t * k + c]);
            lora += Math.abs(layer.loraUp[j * r + t]) * xd;
          }
          const e = i * n + j;
          const bound = 1e-5 * absSum[e] + 2 ** -24 * k * lora + 2 ** -24 * Math.abs(yref[e]);
          const err = Math.abs(y[e] - yref[e]);
          if (!(err <= bound)) {
            assert.fail(`y[${i}, ${j}] is ${y[e]}, y_ref ${yref[e]} (bound ${bound})`);
          }
          worst = Math.max(worst, err / bound);
          maxAbs = Math.max(maxAbs, err);
          maxRef = Math.max(maxRef, Math.abs(yref[e]));
        }
      }
      console.log(
        `  ${p}: max |y − y_ref| ${maxAbs.toExponential(2)} = ` +
          `${(maxAbs / maxRef).toExponential(2)} of max |y_ref| (${maxRef.toFixed(3)}), ` +
          `worst err/bound ${worst.toFixed(3)}`,
      );
    },
  });
}
