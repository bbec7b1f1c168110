/**
 * ffn_act on the GPU against the float64 reference, fresh random inputs (seed printed; replay
 * with SEED=...), outputs poisoned with NaN first, ragged sizes. Bound: f32 math has a few ulp
 * of error in exp and the products, so |err| ≤ 4e-6·(|y| + s) with s = |b| (gated) or |x|
 * (quick), the magnitude the activation's sigmoid multiplies (its absolute error near 0 scales
 * with s, not y); an f16 output adds 2⁻¹⁰·|y|. Large inputs (±30) check the saturated tails.
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { FfnAct, type FfnActShape } from "./ffn_act.ts";
import { ffnActRef } from "./ffn_act_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`ffn_act tests skipped: ${NO_GPU_REASON}`);

const CASES: (FfnActShape & { scale: number })[] = [
  { m: 1, f: 1, gated: true, dtype: "f32", scale: 1 },
  { m: 7, f: 45, gated: true, dtype: "f32", scale: 30 },
  { m: 33, f: 160, gated: true, dtype: "f16", outDtype: "f32", scale: 3 },
  { m: 5, f: 129, gated: false, dtype: "f32", scale: 30 },
  { m: 77, f: 128, gated: false, dtype: "f16", scale: 2 },
  { m: 3, f: 1000, gated: true, dtype: "f32", outDtype: "f16", scale: 2 },
];

for (const c of CASES) {
  const name = `ffn_act ${c.gated ? "gated-gelu" : "quick-gelu"} M=${c.m} F=${c.f} ${c.dtype}` +
    ` → ${c.outDtype ?? c.dtype} scale=${c.scale}`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if ((c.dtype === "f16" || c.outDtype === "f16") && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const w = c.gated ? 2 * c.f : c.f;
      const x = toActArray(rng.normals(c.m * w, c.scale), c.dtype);
      const ref = ffnActRef({ ...c, x });
      const out = c.outDtype ?? c.dtype;
      const bx = await gpu.upload("buffer test x", x);
      const by = await gpu.upload("buffer test y", poison(c.m * c.f * actBytes(out)));
      const op = await FfnAct.create(gpu, c);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ x: bx, y: by })]);
        const y = fromActBytes(await gpu.read(by), out, c.m * c.f);
        let worst = 0;
        for (let i = 0; i < ref.length; i++) {
          const r = Math.floor(i / c.f), col = i % c.f;
          const s = c.gated ? Math.abs(x[r * 2 * c.f + c.f + col]) : Math.abs(x[i]);
          let bound = 4e-6 * (Math.abs(ref[i]) + s);
          // f16 rounding: relative 2^-11 for normal numbers, but absolute half a step (2^-25)
          // among subnormals (|y| < 2^-14), where a relative bound alone fails (seen at 1.5e-7)
          if (out === "f16") bound += 2 ** -10 * Math.abs(ref[i]) + 2 ** -24;
          const err = Math.abs(y[i] - ref[i]);
          if (!(err <= bound)) {
            throw new Error(`${name}: y[${i}] is ${y[i]}, expected ${ref[i]} (bound ${bound})`);
          }
          worst = Math.max(worst, err / bound);
        }
        console.log(`${name}: worst err/bound ${worst.toFixed(4)}`);
      } finally {
        op.destroy();
        gpu.destroy(bx, by);
      }
    },
  });
}

Deno.test({
  name: "ffn_act rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    await assert.rejects(
      () => FfnAct.create(gpu, { m: 1, f: 0, gated: true, dtype: "f32" }),
      RangeError,
    );
    const op = await FfnAct.create(gpu, { m: 2, f: 4, gated: true, dtype: "f32" });
    const b = await gpu.createBuffer("buffer test small", 32);
    try {
      assert.throws(
        () => op.dispatch({ x: b, y: b }),
        /Cannot run ffn_act: x has 32 bytes, expected \[M=2, 2F=8\] f32 = 64 bytes/,
      );
    } finally {
      op.destroy();
      gpu.destroy(b);
    }
  },
});
