/**
 * qk_norm_rope on the GPU against the float64 reference, on fresh random inputs each run (the seed
 * is printed; replay with SEED=...). The joint qkv is poisoned first: rows of the part must match
 * the reference, every other row must stay poisoned (no stray writes).
 *
 * Error bound per element of a rotated pair (x0, x1) → (c·x0 − s·x1, s·x0 + c·x1), with n0, n1
 * the normalised, scaled inputs: f32: 2⁻¹⁹·(|n0| + |n1|) (a few roundings in the sum of squares,
 * the inverse square root — whose accuracy Vulkan leaves at 2 ulp — and the rotation); f16 adds
 * the rounding of the output, 2⁻¹⁰·(|n0| + |n1|). v is copied exactly.
 *
 * @module
 */
import assert from "node:assert/strict";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { actBytes, fromActBytes, toActArray } from "../_wgsl.ts";
import { QkNormRope, type QkNormRopeShape } from "./qk_norm_rope.ts";
import { qkNormRopeRef } from "./qk_norm_rope_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`qk_norm_rope tests skipped: ${NO_GPU_REASON}`);

/** "B n L rowOffset H D extraStride dtype [grid=N]" */
const CASES = [
  "2 8 32 0 2 32 0 f32", // FLUX tiny, text part
  "2 24 32 8 2 32 0 f32", // FLUX tiny, image part
  "1 32 32 0 2 32 256 f32", // a strided slice of a wider row (linear1 with the MLP)
  "2 24 32 8 2 32 0 f16",
  "1 5 9 3 3 128 12 f16", // real head dim, ragged sizes
  "3 7 7 0 1 2 2 f32", // smallest head dim
  "1 7 10 2 2 72 0 f32", // D/2 not a power of two
  "2 9 12 3 2 16 0 f32 grid=5", // 2-D row grid
].map((text) => {
  const [b, n, l, off, h, d, extra, dtype, ...flags] = text.split(" ");
  const grid = flags.find((f) => f.startsWith("grid="))?.slice(5);
  const shape: QkNormRopeShape = {
    b: +b,
    n: +n,
    l: +l,
    rowOffset: +off,
    h: +h,
    d: +d,
    srcStride: 3 * +h * +d + +extra,
    dtype: dtype as "f16" | "f32",
  };
  return { shape, grid: grid ? Number(grid) : undefined };
});

for (const { shape: s, grid } of CASES) {
  const name = `qk_norm_rope B=${s.b} n=${s.n} L=${s.l} off=${s.rowOffset} H=${s.h} D=${s.d} ` +
    `stride=${s.srcStride} ${s.dtype}${grid ? ` grid=${grid}` : ""}`;
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (s.dtype === "f16" && !gpu.caps.shaderF16) return; // covered by the launcher's check
      const rng = freshRng(name);
      // a common offset and a spread per row, as real q/k rows have
      const src = toActArray(
        rng.normals(s.b * s.n * s.srcStride, 1).map((v, i) => 3 * v + (i % 7) - 3),
        s.dtype,
      );
      const qscale = Float32Array.from({ length: s.d }, () => 1 + 0.3 * rng.normal());
      const kscale = Float32Array.from({ length: s.d }, () => 1 + 0.3 * rng.normal());
      const rope = new Float32Array(s.l * s.d);
      for (let i = 0; i < rope.length; i += 2) {
        const a = rng.uniform(-Math.PI, Math.PI);
        rope[i] = Math.cos(a);
        rope[i + 1] = Math.sin(a);
      }
      const hd = s.h * s.d, count = s.b * s.l * 3 * hd, e = actBytes(s.dtype);
      const bufs = {
        src: await gpu.upload("buffer test src", src),
        qscale: await gpu.upload("buffer test qscale", qscale),
        kscale: await gpu.upload("buffer test kscale", kscale),
        rope: await gpu.upload("buffer test rope", rope),
        qkv: await gpu.upload("buffer test qkv", poison(count * e)),
      };
      const op = await QkNormRope.create(gpu, s, grid);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch(bufs)]);
        const got = fromActBytes(await gpu.read(bufs.qkv), s.dtype, count);
        const ref = new Float64Array(count).fill(NaN);
        qkNormRopeRef(s, { src, qscale, kscale, rope }, ref);
        // magnitudes of the normalised pairs, from the reference with the rotation undone
        let worst = 0;
        for (let r = 0; r < s.b * s.l; r++) {
          const t = r % s.l;
          const inside = t >= s.rowOffset && t < s.rowOffset + s.n;
          for (let j = 0; j < 3 * hd; j += 2) {
            const i = r * 3 * hd + j;
            if (!inside) {
              assert.ok(
                Number.isNaN(got[i]) && Number.isNaN(got[i + 1]),
                `${name}: row ${r} written`,
              );
              continue;
            }
            const mag = Math.abs(ref[i]) + Math.abs(ref[i + 1]);
            const isV = j >= 2 * hd;
            const bound = isV
              ? 0
              : 2 ** -19 * 2 * mag + (s.dtype === "f16" ? 2 ** -10 * 2 * mag : 0);
            for (const k of [i, i + 1]) {
              const err = Math.abs(got[k] - ref[k]);
              if (!(err <= bound)) {
                throw new Error(
                  `${name}: qkv[${r}, ${k - r * 3 * hd}] is ${got[k]}, expected ${ref[k]} ` +
                    `(error ${err.toExponential(3)}, bound ${bound.toExponential(3)})`,
                );
              }
              if (bound > 0) worst = Math.max(worst, err / bound);
            }
          }
        }
        console.log(`${name}: max |err| / bound = ${worst.toFixed(3)}`);
      } finally {
        op.destroy();
        gpu.destroy(...Object.values(bufs));
      }
    },
  });
}

Deno.test({
  name: "qk_norm_rope rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: QkNormRopeShape = {
      b: 2,
      n: 24,
      l: 32,
      rowOffset: 8,
      h: 2,
      d: 32,
      srcStride: 192,
      dtype: "f32",
    };
    const bad: [Partial<QkNormRopeShape>, string, RegExp][] = [
      [{ d: 31 }, "RangeError", /D=31 must be even/],
      [{ rowOffset: 9 }, "RangeError", /rowOffset=9 \+ n=24 must fit in L=32/],
      [{ srcStride: 100 }, "RangeError", /srcStride=100 is less than 3·H·D=192/],
      [{ n: 0 }, "RangeError", /N=0 must be a positive integer/],
      [{ dtype: "bf16" as "f16" }, "TypeError", /dtype "bf16"/],
    ];
    for (const [patch, errName, message] of bad) {
      await assert.rejects(() => QkNormRope.create(gpu, { ...shape, ...patch }), {
        name: errName,
        message,
      });
    }
    const op = await QkNormRope.create(gpu, shape);
    const small = await gpu.createBuffer("buffer test small", 16);
    const big = await gpu.createBuffer("buffer test big", 2 * 32 * 192 * 4);
    try {
      assert.throws(
        () => op.dispatch({ src: big, qscale: small, kscale: big, rope: big, qkv: big }),
        { name: "TypeError", message: /qscale has 16 bytes, expected \[D=32\] f32 = 128 bytes/ },
      );
      assert.throws(
        () => op.dispatch({ src: big, qscale: big, kscale: big, rope: big, qkv: big }),
        { name: "TypeError", message: /qkv and src are the same buffer/ },
      );
    } finally {
      op.destroy();
      gpu.destroy(small, big);
    }
  },
});
