/**
 * add_norm on the GPU against the float64 reference, fresh random inputs (seed printed; replay
 * with SEED=...), outputs poisoned with NaN first. Rows of random scale and offset (LayerNorm
 * must not lose precision to a common offset). Bound per element of h, with n the normalised
 * value: f32 |err| ≤ 1e-5·|w|·(1 + |n|) + 1e-7·|b|; an f16 h adds 2⁻¹⁰·|h| (one f16 ulp).
 * `xOut` is an f32 sum of two values: |err| ≤ 2⁻²⁴·|x + y|. One case holds a residual of 1e6,
 * beyond the f16 range: h stays finite and exact in f16 (the T5-XXL case).
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { AddNorm, type AddNormShape } from "./add_norm.ts";
import { addNormRef } from "./add_norm_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`add_norm tests skipped: ${NO_GPU_REASON}`);

const CASES: (AddNormShape & { scale: number })[] = [
  { rows: 1, d: 1, dtype: "f32", norm: "rms", eps: 1e-6, scale: 1 },
  { rows: 3, d: 7, dtype: "f32", norm: "layer", eps: 1e-5, addY: true, scale: 1 },
  { rows: 17, d: 64, dtype: "f16", norm: "rms", eps: 1e-6, addY: true, yDtype: "f32", scale: 1 },
  { rows: 5, d: 300, dtype: "f16", norm: "layer", eps: 1e-5, addY: true, scale: 3 },
  { rows: 2, d: 4096, dtype: "f32", norm: "rms", eps: 1e-6, addY: true, yDtype: "f16", scale: 1 },
  { rows: 4, d: 513, dtype: "f16", norm: "rms", eps: 1e-6, addY: true, yDtype: "f32", scale: 1e6 },
];

for (const c of CASES) {
  const name = `add_norm ${c.norm} rows=${c.rows} D=${c.d} h ${c.dtype}` +
    (c.addY ? ` + y ${c.yDtype ?? c.dtype}` : "") + (c.scale !== 1 ? ` scale=${c.scale}` : "");
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if ((c.dtype === "f16" || c.yDtype === "f16") && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const n = c.rows * c.d;
      const x = new Float32Array(n);
      for (let r = 0; r < c.rows; r++) {
        const off = rng.normal() * 4 * c.scale, s = Math.exp(rng.normal()) * c.scale;
        for (let e = 0; e < c.d; e++) x[r * c.d + e] = off + s * rng.normal();
      }
      const yDtype = c.yDtype ?? c.dtype;
      const y = c.addY ? toActArray(rng.normals(n, c.scale), yDtype) : undefined;
      const weight = new Float32Array(rng.normals(c.d, 0.5).map((v) => 1 + v));
      const bias = c.norm === "layer" ? new Float32Array(rng.normals(c.d, 0.3)) : undefined;
      const ref = addNormRef({ ...c, x, y, weight, bias, layerNorm: c.norm === "layer" });
      const bufs = {
        x: await gpu.upload("buffer test x", x),
        y: y ? await gpu.upload("buffer test y", y) : undefined,
        weight: await gpu.upload("buffer test weight", weight),
        bias: bias ? await gpu.upload("buffer test bias", bias) : undefined,
        xOut: c.addY ? await gpu.upload("buffer test xOut", poison(n * 4)) : undefined,
        h: await gpu.upload("buffer test h", poison(n * actBytes(c.dtype))),
      };
      const op = await AddNorm.create(gpu, c);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch(bufs)]);
        const h = fromActBytes(await gpu.read(bufs.h), c.dtype, n);
        let worst = 0;
        for (let i = 0; i < n; i++) {
          const e = i % c.d;
          const nv = bias ? (ref.h[i] - bias[e]) / weight[e] : ref.h[i] / weight[e];
          let bound = 1e-5 * Math.abs(weight[e]) * (1 + Math.abs(nv)) +
            (bias ? 1e-7 * Math.abs(bias[e]) : 0);
          if (c.dtype === "f16") bound += 2 ** -10 * Math.abs(ref.h[i]) + 2 ** -24; // + subnormal step
          const err = Math.abs(h[i] - ref.h[i]);
          if (!(err <= bound)) {
            throw new Error(`${name}: h[${i}] is ${h[i]}, expected ${ref.h[i]} (bound ${bound})`);
          }
          worst = Math.max(worst, err / bound);
        }
        if (bufs.xOut) {
          const xo = new Float32Array(await gpu.read(bufs.xOut));
          for (let i = 0; i < n; i++) {
            const err = Math.abs(xo[i] - ref.xOut[i]);
            assert.ok(err <= 2 ** -24 * Math.abs(ref.xOut[i]) + 1e-30, `${name}: xOut[${i}]`);
          }
          if (c.scale >= 1e5) assert.ok(ref.xOut.some((v) => Math.abs(v) > 65504));
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
  name: "add_norm rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    await assert.rejects(
      () => AddNorm.create(gpu, { rows: 0, d: 4, dtype: "f32", norm: "rms", eps: 0 }),
      RangeError,
    );
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      () => AddNorm.create(gpu, { rows: 1, d: 4, dtype: "f32", norm: "batch" as any, eps: 0 }),
      TypeError,
    );
    const op = await AddNorm.create(gpu, {
      rows: 2,
      d: 4,
      dtype: "f32",
      norm: "layer",
      eps: 1e-5,
      addY: true,
    });
    const small = await gpu.createBuffer("buffer test small", 16);
    try {
      assert.throws(
        () => op.dispatch({ x: small, y: small, weight: small, xOut: small, h: small }),
        /Cannot run add_norm: x has 16 bytes, expected \[rows=2, D=4\] f32 = 32 bytes/,
      );
    } finally {
      op.destroy();
      gpu.destroy(small);
    }
  },
});
