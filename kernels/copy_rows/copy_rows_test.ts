/**
 * copy_rows on the GPU against the reference (an exact copy), fresh random inputs each run; the
 * destination is poisoned first, so rows outside the copy must stay poisoned and copied rows must
 * be bit-exact. Converting copies (`dst=`): f16 → f32 (FLUX's img_in / txt_in into its f32
 * residual streams) must be exact too; f32 → f16 must be within one f16 ulp (2⁻¹⁰·|v| + 2⁻²⁴:
 * Vulkan leaves the rounding direction to the driver), with sources drawn beyond the f16 range
 * (`big`, σ = 1e5) stored as exactly ±65504.
 *
 * @module
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { CopyRows, type CopyRowsShape } from "./copy_rows.ts";
import { copyRowsRef } from "./copy_rows_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`copy_rows tests skipped: ${NO_GPU_REASON}`);

/** "B n width srcRows srcOffset dstRows dstOffset dtype [dst=D] [big] [grid=N]" */
const CASES = [
  "2 24 64 24 0 32 8 f32", // join: image tokens after text
  "2 8 64 32 0 8 0 f16", // split: text tokens of the joint output
  "2 24 64 32 8 24 0 f32", // split: image tokens
  "3 5 7 9 4 6 1 f16", // ragged, scalar path
  "1 1 1 1 0 1 0 f32",
  "2 24 100 30 3 40 11 f32 grid=2", // grid-stride loop
  "2 24 64 24 0 24 0 f16 dst=f32", // FLUX: img_in's output into the f32 residual
  "3 5 7 9 4 6 1 f16 dst=f32", // scalar
  "2 8 64 32 0 8 0 f32 dst=f16 big", // narrowing, saturating
  "3 5 7 9 4 6 1 f32 dst=f16 big grid=1",
].map((text) => {
  const [b, n, width, sr, so, dr, dof, dtype, ...flags] = text.split(" ");
  const grid = flags.find((f) => f.startsWith("grid="))?.slice(5);
  const dst = flags.find((f) => f.startsWith("dst="))?.slice(4);
  const shape: CopyRowsShape = {
    b: +b,
    n: +n,
    width: +width,
    srcRows: +sr,
    srcOffset: +so,
    dstRows: +dr,
    dstOffset: +dof,
    dtype: dtype as "f32" | "f16",
    dstDtype: dst as "f32" | "f16" | undefined,
  };
  return { shape, grid: grid ? Number(grid) : undefined, big: flags.includes("big") };
});

for (const { shape: s, grid, big } of CASES) {
  const dt = s.dstDtype ?? s.dtype;
  const name = `copy_rows B=${s.b} n=${s.n} width=${s.width} src=${s.srcRows}@${s.srcOffset} ` +
    `dst=${s.dstRows}@${s.dstOffset} ${s.dtype}${dt !== s.dtype ? ` to ${dt}` : ""}` +
    `${big ? " beyond f16" : ""}${grid ? ` grid=${grid}` : ""}`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if ((s.dtype === "f16" || dt === "f16") && !gpu.caps.shaderF16) return;
      const rng = freshRng(name);
      const src = toActArray(rng.normals(s.b * s.srcRows * s.width, big ? 1e5 : 1), s.dtype);
      const count = s.b * s.dstRows * s.width;
      const bs = await gpu.upload("buffer test src", src);
      const bd = await gpu.upload("buffer test dst", poison(count * actBytes(dt)));
      const op = await CopyRows.create(gpu, s, grid);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ src: bs, dst: bd })]);
        const got = fromActBytes(await gpu.read(bd), dt, count);
        const ref = new Float64Array(count).fill(NaN);
        copyRowsRef(s, src, ref);
        const narrow = s.dtype === "f32" && dt === "f16";
        let saturated = 0;
        for (let i = 0; i < count; i++) {
          const ok = narrow
            ? Math.abs(got[i] - ref[i]) <= 2 ** -10 * Math.abs(ref[i]) + 2 ** -24 ||
              (Number.isNaN(got[i]) && Number.isNaN(ref[i]))
            : Object.is(got[i], ref[i]) || (Number.isNaN(got[i]) && Number.isNaN(ref[i]));
          assert.ok(ok, `${name}: dst[${i}] is ${got[i]}, expected ${ref[i]}`);
          if (Math.abs(ref[i]) === 65504) {
            assert.equal(Math.abs(got[i]), 65504, `${name}: dst[${i}] must saturate`);
            saturated++;
          }
        }
        if (big) assert.ok(saturated > 0, `${name}: nothing reached ±65504`);
      } finally {
        op.destroy();
        gpu.destroy(bs, bd);
      }
    },
  });
}

Deno.test({
  name: "copy_rows rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: CopyRowsShape = {
      b: 2,
      n: 24,
      width: 64,
      srcRows: 24,
      srcOffset: 0,
      dstRows: 32,
      dstOffset: 8,
      dtype: "f32",
    };
    await assert.rejects(() => CopyRows.create(gpu, { ...shape, dstOffset: 9 }), {
      name: "RangeError",
      message: /dstOffset=9 \+ n=24 must fit in dstRows=32/,
    });
    await assert.rejects(() => CopyRows.create(gpu, { ...shape, width: 0 }), {
      name: "RangeError",
      message: /width=0 must be a positive integer/,
    });
    const op = await CopyRows.create(gpu, shape);
    const small = await gpu.createBuffer("buffer test small", 2 * 24 * 64 * 4);
    try {
      assert.throws(() => op.dispatch({ src: small, dst: small }), {
        name: "TypeError",
        message: /dst has 12288 bytes, expected \[B·dstRows=64, 64\] f32 = 16384 bytes/,
      });
    } finally {
      op.destroy();
      gpu.destroy(small);
    }
  },
});
