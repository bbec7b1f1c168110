/**
 * flash_attention on the GPU against the float64 reference, on fresh random inputs each run (the
 * seed is printed; replay with SEED=...), outputs poisoned with NaN first. Some cases scale q and
 * k by 5 (logits ×25) and add a common offset to every key of a head (logits shifted by up to
 * a few hundred per row): without the running max, exp() would overflow f32.
 *
 * Error bound, per output element (b, i, h, c), from the same (already rounded) inputs the
 * reference used, with u = 2⁻²⁴, w_j the softmax weights of query i, A = Σ_j w_j·|v_jc| and
 * L = scale·max_j Σ_d |q_id|·|k_jd|:
 * - a logit's f32 error is at most (D + 2)·u·L (FMA chain; q pre-multiplied by scale·log2 e),
 *   subtracting the running max adds 2·u·L, exp2 ≈ 4 ulp; a relative error ε of every weight moves
 *   O by at most 2·ε·A (the max and the per-tile rescales α cancel between O and the sum l);
 * - accumulating O and l over T keys with ⌈T/BK⌉ rescales and one division: (2T + 2⌈T/BK⌉ + 4)·u·A.
 * So f32: |err| ≤ A·u·(2(D + 6)·L + 2T + 2⌈T/BK⌉ + 40). That is ≈ 1e-4·A at T = 257 for unit
 * inputs (the worst case; measured errors are ~1e-6·A) and grows with L for large logits, as it
 * must for any f32 attention. f16 inputs are exact in f32; the f16 output adds one rounding:
 * 2⁻¹⁰·|o| + 2⁻²⁴ (one ulp, Vulkan leaves the f32 → f16 rounding direction to the driver,
 * subnormals included).
 *
 * @module
 */
import assert from "node:assert/strict";
import { Gpu } from "../../gpu/device.ts";
import { GpuFeatureError } from "../../gpu/errors.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, testGpu } from "../../gpu/_testing.ts";
import { fromActBytes, toActArray } from "../_wgsl.ts";
import {
  bufferSizes,
  FlashAttention,
  flashAttention,
  type FlashAttentionBuffers,
  type FlashAttentionShape,
} from "./flash_attention.ts";
import { flashAttentionRef } from "./flash_attention_ref.ts";

const ignore = !HAS_GPU; // NO_GPU_REASON explains the skip
if (ignore) console.warn(`flash_attention tests skipped: ${NO_GPU_REASON}`);

interface Case extends FlashAttentionShape {
  /** q and k are multiplied by this (logits by its square). */
  gain: number;
  /** Std of a per-(b, h) offset added to every key before the gain. */
  shift: number;
}

/** "B T H D dtype [gain=G] [shift=S] [scale=X] [tile=BQxBK]" */
const CASES: Case[] = [
  "1 1 1 32 f32",
  "2 1 3 72 f16 gain=5",
  "1 7 3 64 f16",
  "2 7 1 32 f32 scale=0.3",
  "2 64 1 72 f32",
  "1 64 3 64 f16 gain=5 shift=3",
  "2 130 3 32 f16 gain=5",
  "1 130 1 72 f32 gain=5 shift=3",
  "2 257 1 64 f32",
  "1 257 3 72 f16 gain=5 shift=3",
  "1 130 2 128 f16",
  "1 257 1 32 f32 gain=5 tile=8x16", // many key tiles, 8 invocations
  "2 100 1 72 f32 tile=16x16", // fewer logit tiles than invocations
  "1 70 1 256 f32", // autoencoder mid-block attention: one head, D = channels
  "2 37 1 512 f16 gain=5 shift=3",
  "1 45 1 512 f32",
].map(parseCase);

function parseCase(text: string): Case {
  const [b, t, h, d, dtype, ...flags] = text.split(" ");
  const flag = (name: string) =>
    flags.find((f) => f.startsWith(name + "="))?.slice(name.length + 1);
  const tile = flag("tile")?.split("x").map(Number);
  return {
    b: Number(b),
    t: Number(t),
    h: Number(h),
    d: Number(d),
    dtype: dtype as "f16" | "f32",
    gain: Number(flag("gain") ?? 1),
    shift: Number(flag("shift") ?? 0),
    scale: flag("scale") ? Number(flag("scale")) : undefined,
    tile: tile ? { bq: tile[0], bk: tile[1] } : undefined,
  };
}

function caseName(c: Case): string {
  return `flash_attention B=${c.b} T=${c.t} H=${c.h} D=${c.d} ${c.dtype}` +
    (c.gain !== 1 ? ` gain=${c.gain}` : "") + (c.shift ? ` shift=${c.shift}` : "") +
    (c.scale ? ` scale=${c.scale}` : "") + (c.tile ? ` tile=${c.tile.bq}x${c.tile.bk}` : "");
}

/** Random qkv [B·T, 3·H·D] rounded to the storage dtype (the values the reference sees). */
function inputs(name: string, c: Case): Float16Array | Float32Array {
  const rng = freshRng(name);
  const { b: B, t: T, h: H, d: D } = c;
  const offset = rng.normals(B * H * D, c.shift);
  const qkv = new Float32Array(B * T * 3 * H * D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        for (let e = 0; e < D; e++) {
          const at = (b * T + t) * 3 * H * D + h * D + e;
          qkv[at] = c.gain * rng.normal();
          qkv[at + H * D] = c.gain * (rng.normal() + offset[(b * H + h) * D + e]);
          qkv[at + 2 * H * D] = rng.normal();
        }
      }
    }
  }
  return toActArray(qkv, c.dtype);
}

/** Per output element A and the bound of the module doc (float64, from the rounded inputs). */
function bounds(
  c: Case,
  qkv: ArrayLike<number>,
  ref: Float64Array,
  bk: number,
): { a: Float64Array; bound: Float64Array } {
  const { b: B, t: T, h: H, d: D } = c;
  const u = 2 ** -24;
  const scale = c.scale ?? 1 / Math.sqrt(D);
  const row = 3 * H * D;
  const bound = new Float64Array(ref.length);
  const aw = new Float64Array(ref.length);
  const s = new Float64Array(T);
  const acc = 2 * T + 2 * Math.ceil(T / bk) + 40;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const q = (b * T + i) * row + h * D;
        let max = -Infinity, l = 0;
        for (let j = 0; j < T; j++) {
          const k = (b * T + j) * row + H * D + h * D;
          let dot = 0, abs = 0;
          for (let e = 0; e < D; e++) {
            dot += qkv[q + e] * qkv[k + e];
            abs += Math.abs(qkv[q + e] * qkv[k + e]);
          }
          s[j] = scale * dot;
          max = Math.max(max, s[j]);
          l = Math.max(l, scale * abs);
        }
        let sum = 0;
        for (let j = 0; j < T; j++) sum += s[j] = Math.exp(s[j] - max);
        const out = (b * T + i) * H * D + h * D;
        for (let e = 0; e < D; e++) {
          let a = 0;
          for (let j = 0; j < T; j++) {
            a += (s[j] / sum) * Math.abs(qkv[(b * T + j) * row + 2 * H * D + h * D + e]);
          }
          let bnd = a * u * (2 * (D + 6) * l + acc);
          if (c.dtype === "f16") bnd += 2 ** -10 * Math.abs(ref[out + e]) + 2 ** -24;
          bound[out + e] = bnd;
          aw[out + e] = a;
        }
      }
    }
  }
  return { a: aw, bound };
}

for (const c of CASES) {
  const name = caseName(c);
  Deno.test({
    name,
    ignore,
    async fn() {
      const gpu = (await testGpu())!;
      if (c.dtype === "f16" && !gpu.caps.shaderF16) return; // covered by the feature test
      const qkv = inputs(name, c);
      const [, oBytes] = bufferSizes(c)[1];
      const bqkv = await gpu.upload("buffer test qkv", qkv);
      const bo = await gpu.upload("buffer test o", poison(oBytes));
      const op = await FlashAttention.create(gpu, c);
      try {
        await gpu.runChecked(`run ${name}`, [op.dispatch({ qkv: bqkv, o: bo })]);
        const got = fromActBytes(await gpu.read(bo), c.dtype, c.b * c.t * c.h * c.d);
        const ref = flashAttentionRef({ ...c, qkv });
        const { a, bound } = bounds(c, qkv, ref, op.tile.bk);
        let worst = -1, worstRatio = 0, maxAbs = 0, maxRelA = 0;
        for (let i = 0; i < ref.length; i++) {
          const d = Math.abs(got[i] - ref[i]);
          const ratio = d / bound[i];
          if (!(ratio <= worstRatio)) { // NaN (an unwritten element) always becomes the worst
            worstRatio = Number.isNaN(ratio) ? Infinity : ratio;
            worst = i;
          }
          maxAbs = Math.max(maxAbs, d);
          maxRelA = Math.max(maxRelA, d / a[i]);
        }
        const stats = `max abs err ${maxAbs.toExponential(3)}, max err/A ` +
          `${maxRelA.toExponential(3)}, worst err/bound ${worstRatio.toFixed(4)}`;
        if (!(worstRatio <= 1)) {
          throw new Error(
            `${name}: element ${worst} is ${got[worst]}, expected ${ref[worst]} ` +
              `(bound ${bound[worst].toExponential(3)}); ${stats}`,
          );
        }
        console.log(`${name} (tile ${op.tile.bq}x${op.tile.bk}): ${stats}`);
      } finally {
        op.destroy();
        gpu.destroy(bqkv, bo);
      }
    },
  });
}

Deno.test({
  name: "flash_attention rejects bad shapes and buffers before any GPU work",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: FlashAttentionShape = { b: 2, t: 7, h: 3, d: 32, dtype: "f32" };
    await assert.rejects(() => FlashAttention.create(gpu, { ...shape, d: 48 }), {
      name: "RangeError",
      message: /head dim D=48 is unsupported; use one of 32, 64, 72, 128/,
    });
    await assert.rejects(() => FlashAttention.create(gpu, { ...shape, t: 0 }), {
      name: "RangeError",
      message: /T=0 must be a positive integer/,
    });
    await assert.rejects(() => FlashAttention.create(gpu, { ...shape, scale: -1 }), {
      name: "RangeError",
      message: /scale=-1 must be a finite positive number/,
    });
    await assert.rejects(() => FlashAttention.create(gpu, { ...shape, tile: { bq: 6, bk: 8 } }), {
      name: "RangeError",
      message: /bq and bk must be multiples of 4/,
    });
    await assert.rejects(
      () => FlashAttention.create(gpu, { ...shape, d: 128, tile: { bq: 256, bk: 256 } }),
      { name: "RangeError", message: /over this device's limits/ },
    );
    const qkv = await gpu.createBuffer("buffer test qkv", 2 * 7 * 3 * 3 * 32 * 4 - 4);
    const o = await gpu.createBuffer("buffer test o", 2 * 7 * 3 * 32 * 4);
    const small = await gpu.createBuffer("buffer test small", 64);
    const full = await gpu.createBuffer("buffer test full qkv", 2 * 7 * 3 * 3 * 32 * 4);
    const op = await FlashAttention.create(gpu, shape);
    try {
      assert.throws(() => op.dispatch({ qkv, o }), {
        name: "TypeError",
        message: "Cannot run flash_attention: qkv has 16124 bytes, expected " +
          "[B·T=14, 3·H·D=288] f32 = 16128 bytes or more",
      });
      assert.throws(() => op.dispatch({ qkv: full } as FlashAttentionBuffers), {
        name: "TypeError",
        message: /o is missing, expected \[B·T=14, H·D=96\] f32/,
      });
      await assert.rejects(() => flashAttention(gpu, { ...shape, b: 1, t: 6 }, { qkv, o: small }), {
        name: "TypeError",
        message: /o has 64 bytes, expected \[B·T=6, H·D=96\] f32 = 2304 bytes or more/,
      });
    } finally {
      op.destroy();
      gpu.destroy(qkv, o, small, full);
    }
  },
});

Deno.test({
  name: "flash_attention one-shot call on equal values returns them",
  ignore,
  async fn() {
    const gpu = (await testGpu())!;
    const shape: FlashAttentionShape = { b: 1, t: 5, h: 2, d: 64, dtype: "f32" };
    const qkv = await gpu.upload("buffer test qkv", new Float32Array(5 * 3 * 2 * 64).fill(0.75));
    const o = await gpu.upload("buffer test o", poison(5 * 2 * 64 * 4));
    try {
      await flashAttention(gpu, shape, { qkv, o });
      assert.deepEqual(
        new Float32Array(await gpu.read(o)),
        new Float32Array(5 * 2 * 64).fill(0.75),
      );
    } finally {
      gpu.destroy(qkv, o);
    }
  },
});

Deno.test({
  name: "flash_attention refuses f16 on a device without shader-f16",
  ignore,
  async fn() {
    const gpu = await Gpu.create({ disableF16: true, selfTest: false });
    try {
      await assert.rejects(
        () => FlashAttention.create(gpu, { b: 1, t: 7, h: 1, d: 64, dtype: "f16" }),
        (e) => e instanceof GpuFeatureError && /shader-f16/.test(e.message),
      );
    } finally {
      gpu.close();
    }
  },
});

/**
 * The optional logit terms (text encoders): relative bias (T5, scale 1), causal (CLIP) and a key
 * padding mask, alone and together, on random inputs, tables and masks over several key tiles.
 * Bound: with A = Σ_j w_j·|v_jc| (the reference run on |v|), f32 |err| ≤ 2e-5·A (the module
 * doc's bound at these T and unit-scale logits is ≤ 1.4e-5·A); f16 adds 2⁻¹⁰·|o| + 2⁻²⁴.
 * A query whose keys are all skipped (causal row 0 with key 0 masked) must output zeros.
 */
const TERM_CASES = [
  { b: 2, t: 70, h: 3, d: 32, rel: true, causal: false, mask: false },
  { b: 2, t: 77, h: 2, d: 64, rel: false, causal: true, mask: false },
  { b: 2, t: 40, h: 4, d: 32, rel: false, causal: false, mask: true },
  { b: 2, t: 45, h: 2, d: 64, rel: true, causal: true, mask: true },
];
for (const tc of TERM_CASES) {
  for (const dtype of ["f32", "f16"] as const) {
    const terms = [tc.rel && "relativeBias", tc.causal && "causal", tc.mask && "keyMask"]
      .filter(Boolean).join("+");
    const name = `flash_attention ${terms} B=${tc.b} T=${tc.t} H=${tc.h} D=${tc.d} ${dtype}`;
    Deno.test({
      name,
      ignore,
      async fn() {
        const gpu = (await testGpu())!;
        if (dtype === "f16" && !gpu.caps.shaderF16) return;
        const rng = freshRng(name);
        const { b, t, h, d } = tc;
        const nb = 32;
        const shape: FlashAttentionShape = {
          b,
          t,
          h,
          d,
          dtype,
          scale: tc.rel ? 1 : undefined,
          causal: tc.causal,
          keyMask: tc.mask,
          relativeBias: tc.rel ? { buckets: nb } : undefined,
        };
        const qkv = toActArray(rng.normals(b * t * 3 * h * d, tc.rel ? 0.3 : 1), dtype);
        const table = new Float32Array(rng.normals(h * nb, 1));
        const bucket = Uint32Array.from({ length: 2 * t - 1 }, () => Math.floor(rng.next() * nb));
        const keyMask = Uint32Array.from({ length: b * t }, () => rng.next() < 0.7 ? 1 : 0);
        keyMask[0] = 1;
        keyMask[t] = 0; // batch 1, key 0 skipped: with causal, its query 0 has no key at all
        const refShape = { b, t, h, d, scale: shape.scale, causal: tc.causal };
        const ref = flashAttentionRef({
          ...refShape,
          qkv,
          mask: tc.mask ? keyMask : undefined,
          bias: tc.rel ? { buckets: nb, table, bucket } : undefined,
        });
        const absV = Float64Array.from(
          qkv,
          (v, i) => (i % (3 * h * d)) >= 2 * h * d ? Math.abs(v) : v,
        );
        const a = flashAttentionRef({
          ...refShape,
          qkv: absV,
          mask: tc.mask ? keyMask : undefined,
          bias: tc.rel ? { buckets: nb, table, bucket } : undefined,
        });
        const bufs = {
          qkv: await gpu.upload("buffer test qkv", qkv),
          o: await gpu.upload("buffer test o", poison(b * t * h * d * (dtype === "f16" ? 2 : 4))),
          biasTable: tc.rel ? await gpu.upload("buffer test table", table) : undefined,
          biasBucket: tc.rel ? await gpu.upload("buffer test bucket", bucket) : undefined,
          keyMask: tc.mask ? await gpu.upload("buffer test mask", keyMask) : undefined,
        };
        const op = await FlashAttention.create(gpu, shape);
        try {
          await gpu.runChecked(`run ${name}`, [op.dispatch(bufs)]);
          const got = fromActBytes(await gpu.read(bufs.o), dtype, ref.length);
          let worst = 0, maxAbs = 0;
          for (let i = 0; i < ref.length; i++) {
            let bound = 2e-5 * a[i];
            if (dtype === "f16") bound += 2 ** -10 * Math.abs(ref[i]) + 2 ** -24;
            const err = Math.abs(got[i] - ref[i]);
            maxAbs = Math.max(maxAbs, err);
            const r = err / bound;
            if (!(r <= 1) && !(err === 0)) {
              throw new Error(
                `${name}: element ${i} is ${got[i]}, expected ${ref[i]} (bound ${bound})`,
              );
            }
            worst = Math.max(worst, err === 0 ? 0 : r);
          }
          if (tc.causal && tc.mask) {
            const row0 = got.subarray(t * h * d, t * h * d + h * d); // batch 1, query 0
            assert.ok(row0.every((v) => v === 0), "a query with no key outputs zeros");
          }
          console.log(
            `${name}: max abs err ${maxAbs.toExponential(3)}, worst err/bound ${worst.toFixed(4)}`,
          );
        } finally {
          op.destroy();
          gpu.destroy(...Object.values(bufs));
        }
      },
    });
  }
}
