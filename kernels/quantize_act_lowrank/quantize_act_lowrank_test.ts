/**
 * GPU vs reference for `quantize_act_lowrank` on fresh random inputs (outputs poisoned first).
 *
 * Bounds:
 * - codes: equal to quantizeAct's, except that a code may be one grid step off where the
 *   reference's pre-rounding value `fround(xs / s)` lies within 1e-5 (relative) of the rounding
 *   boundary between the two codes (WGSL division is not correctly rounded on every GPU); such
 *   cases must stay rare (≤ 1 + 0.1% of the elements). llvmpipe gives none.
 * - scales: int4 modes relative error ≤ 1e-6; nvfp4 exactly the reference's E4M3 value, except
 *   (then the group's codes are not compared) where amax/6 lies within 1e-5 of an E4M3 rounding
 *   boundary and smoothing (a division) fed amax.
 * - lora_act: |err| ≤ K·2⁻²⁴·Σ_k |x·lora_down| (recursive f32 summation of K products, any order).
 *
 * @module
 */
import { rejects } from "node:assert/strict";
import {
  type ActMode,
  decodeE4M3,
  encodeE4M3,
  GELU_SHIFT,
  groupSize,
  packF16,
  type QuantAct,
  roundBf16,
} from "../../formats/packing.ts";
import type { Gpu } from "../../gpu/device.ts";
import { type ActDtype, toActArray } from "../_wgsl.ts";
import { freshRng, HAS_GPU, NO_GPU_REASON, poison, type Rng, testGpu } from "../../gpu/_testing.ts";
import {
  bufferSizes,
  QuantizeActLowrank,
  quantizeActLowrank,
  type QuantizeActLowrankShape,
} from "./quantize_act_lowrank.ts";
import { quantizeActLowrankRef } from "./quantize_act_lowrank_ref.ts";
import { geluTanh } from "../../gpu/activations.ts";

if (!HAS_GPU) console.log(`quantize_act_lowrank GPU tests skipped: ${NO_GPU_REASON}`);

const E2M1_MIDS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5];
const E2M1_GRID = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

interface Inputs {
  x: Float32Array; // values as stored (f16-rounded for f16)
  smooth?: Float32Array;
  loraDown?: Float32Array; // f16-rounded values [R, K]
}

interface GpuOut {
  qact: Uint32Array;
  ascales: Float32Array;
  loraAct: Float32Array;
}

/** Gaussian activations with a few outlier channels (post-GELU-like for the unsigned mode). */
function randomInputs(rng: Rng, s: QuantizeActLowrankShape): Inputs {
  const { m, k, r } = s, g = groupSize(s.mode);
  const outliers = new Set([rng.int(0, k - 1), rng.int(0, k - 1), rng.int(0, k - 1)]);
  const x = new Float32Array(m * k);
  for (let i = 0; i < m; i++) {
    for (let c = 0; c < k; c++) {
      let v = rng.normal();
      if (s.mode === "int4_unsigned") v = geluTanh(2 * v);
      if (outliers.has(c)) v *= 25;
      x[i * k + c] = v;
    }
  }
  // an all-zero group (scale 0) and, for the unsigned mode, values below -GELU_SHIFT (clamped)
  if (k >= 2 * g) {
    const row = rng.int(0, m - 1);
    x.fill(s.mode === "int4_unsigned" ? -GELU_SHIFT : 0, row * k + g, row * k + 2 * g);
  }
  if (s.mode === "int4_unsigned") { for (let i = 0; i < 3; i++) x[rng.int(0, m * k - 1)] = -0.4; }
  const inputs: Inputs = { x: s.dtype === "f16" ? Float32Array.from(toActArray(x, "f16")) : x };
  if (s.smooth) {
    inputs.smooth = Float32Array.from(
      { length: k },
      (_, c) => Math.exp(0.5 * rng.normal()) * (outliers.has(c) ? 20 : 1),
    );
  }
  if (r > 0) {
    inputs.loraDown = Float32Array.from(toActArray(rng.normals(r * k, 0.05), "f16"));
  }
  return inputs;
}

async function runGpu(gpu: Gpu, s: QuantizeActLowrankShape, inp: Inputs): Promise<GpuOut> {
  const sizes = Object.fromEntries(bufferSizes(s).map(([n, b]) => [n, b]));
  const bufs = {
    x: await gpu.upload("test x", toActArray(inp.x, s.dtype)),
    smooth: inp.smooth ? await gpu.upload("test smooth", inp.smooth) : undefined,
    lora_down: inp.loraDown ? await gpu.upload("test lora_down", packF16(inp.loraDown)) : undefined,
    qact: await gpu.upload("test qact", poison(sizes.qact)),
    ascales: await gpu.upload("test ascales", poison(sizes.ascales)),
    lora_act: s.r > 0 ? await gpu.upload("test lora_act", poison(sizes.lora_act)) : undefined,
  };
  try {
    await quantizeActLowrank(gpu, s, bufs);
    return {
      qact: new Uint32Array(await gpu.read(bufs.qact, sizes.qact)),
      ascales: new Float32Array(await gpu.read(bufs.ascales, sizes.ascales)),
      loraAct: bufs.lora_act
        ? new Float32Array(await gpu.read(bufs.lora_act, sizes.lora_act))
        : new Float32Array(0),
    };
  } finally {
    gpu.destroy(...Object.values(bufs));
  }
}

/**
 * xs as the reference computes it (x / smooth, + shift in unsigned mode; convention "nunchaku":
 * shift first, bf16-rounded), per element.
 */
function smoothed(s: QuantizeActLowrankShape, inp: Inputs): Float32Array {
  const xs = new Float32Array(inp.x.length);
  const nunchaku = s.convention === "nunchaku", unsigned = s.mode === "int4_unsigned";
  for (let i = 0; i < xs.length; i++) {
    let v = inp.x[i];
    if (nunchaku && unsigned) v = roundBf16(v + GELU_SHIFT);
    if (inp.smooth) v = Math.fround(v / inp.smooth[i % s.k]);
    if (nunchaku) v = roundBf16(v);
    else if (unsigned) v = Math.fround(v + GELU_SHIFT);
    xs[i] = v;
  }
  return xs;
}

/** The value the code of `xs` rounds: xs / s, or (convention "nunchaku") xs · f32(1/s). */
function preRound(s: QuantizeActLowrankShape, xs: Float32Array, i: number, scale: number): number {
  if (s.convention !== "nunchaku") return Math.fround(xs[i] / scale);
  const g = groupSize(s.mode), g0 = i - (i % g);
  let amax = 0;
  for (let t = 0; t < g; t++) amax = Math.max(amax, Math.abs(xs[g0 + t]));
  const f = s.mode === "nvfp4" ? 1 / 6 : s.mode === "int4" ? 1 / 7 : 1 / 15;
  let raw = Math.fround(amax * Math.fround(f));
  if (s.mode === "nvfp4") raw = Math.min(raw, 448);
  return Math.fround(xs[i] * Math.fround(1 / raw));
}

const nibble = (q: Uint32Array, i: number) => (q[i >> 3] >>> ((i & 7) * 4)) & 15;
const nearRel = (v: number, b: number) => Math.abs(v - b) <= 1e-5 * Math.abs(b);

/** Is `a` → `b` a one-step code change across a boundary that `pre` lies next to? */
function boundaryNeighbours(mode: ActMode, a: number, b: number, pre: number): boolean {
  if (mode === "nvfp4") {
    if ((a & 8) !== (b & 8) || Math.abs((a & 7) - (b & 7)) !== 1) return false;
    const lo = Math.min(a & 7, b & 7);
    return nearRel(Math.abs(pre), (E2M1_GRID[lo] + E2M1_GRID[lo + 1]) / 2);
  }
  const sa = mode === "int4" ? (a << 28) >> 28 : a, sb = mode === "int4" ? (b << 28) >> 28 : b;
  return Math.abs(sa - sb) === 1 && nearRel(pre, Math.min(sa, sb) + 0.5);
}

/** Is amax/6 next to an E4M3 rounding boundary? */
function nearE4M3Boundary(amax: number): boolean {
  const q = amax / 6, c = encodeE4M3(q);
  const mids = [c > 0 ? (decodeE4M3(c - 1) + decodeE4M3(c)) / 2 : NaN];
  if (c < 126) mids.push((decodeE4M3(c) + decodeE4M3(c + 1)) / 2);
  return mids.some((b) => nearRel(q, b));
}

/** Compare codes, scales and lora_act; return statistics for the log. */
function check(
  s: QuantizeActLowrankShape,
  inp: Inputs,
  got: GpuOut,
  opts: { exact?: boolean } = {},
): string {
  const { m, k, r, mode } = s, g = groupSize(mode), groups = k / g;
  const label = JSON.stringify(s);
  const ref = quantizeActLowrankRef(s, inp);
  const q: QuantAct = ref.quant;
  const xs = smoothed(s, inp);
  let near = 0, skippedGroups = 0, maxScaleRel = 0;
  for (let gi = 0; gi < m * groups; gi++) {
    const sr = q.ascales[gi], sg = got.ascales[gi];
    let skip = false;
    if (mode === "nvfp4") {
      if (sg !== sr) {
        let amax = 0;
        for (let t = 0; t < g; t++) amax = Math.max(amax, Math.abs(xs[gi * g + t]));
        if (opts.exact || !s.smooth || !nearE4M3Boundary(amax)) {
          throw new Error(`${label}: ascales[${gi}] is ${sg}, expected ${sr}`);
        }
        skip = true;
        skippedGroups++;
      }
    } else {
      const rel = sr === 0 ? Math.abs(sg) : Math.abs(sg - sr) / sr;
      // convention "nunchaku": a product and a bf16 rounding, both exact on every GPU
      if (!(rel <= (opts.exact || s.convention === "nunchaku" ? 0 : 1e-6))) {
        throw new Error(`${label}: ascales[${gi}] is ${sg}, expected ${sr} (rel err ${rel})`);
      }
      maxScaleRel = Math.max(maxScaleRel, rel);
    }
    if (skip) continue;
    for (let t = 0; t < g; t++) {
      const i = gi * g + t, a = nibble(q.qact, i), b = nibble(got.qact, i);
      if (a === b) continue;
      const pre = preRound(s, xs, i, sr);
      if (opts.exact || !boundaryNeighbours(mode, a, b, pre)) {
        throw new Error(
          `${label}: code of element ${i} (row ${Math.floor(i / k)}, column ${i % k}) is ${b}, ` +
            `expected ${a} (xs ${xs[i]}, scale ${sr}, xs/scale ${pre})`,
        );
      }
      near++;
    }
  }
  if (near > 1 + 0.001 * m * k) {
    throw new Error(`${label}: ${near} of ${m * k} codes differ at rounding boundaries`);
  }
  let maxRatio = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < r; j++) {
      let abs = 0;
      for (let c = 0; c < k; c++) abs += Math.abs(inp.x[i * k + c] * inp.loraDown![j * k + c]);
      const err = Math.abs(got.loraAct[i * r + j] - ref.loraAct[i * r + j]);
      const bound = k * 2 ** -24 * abs;
      if (!(err <= bound)) {
        throw new Error(
          `${label}: lora_act[${i}, ${j}] is ${got.loraAct[i * r + j]}, expected ` +
            `${ref.loraAct[i * r + j]} (err ${err}, bound ${bound})`,
        );
      }
      if (abs > 0) maxRatio = Math.max(maxRatio, err / abs);
    }
  }
  return `boundary codes ${near}, skipped groups ${skippedGroups}, max scale rel err ` +
    `${maxScaleRel.toExponential(2)}, max lora |err|/Σ|x·d| ${maxRatio.toExponential(2)}`;
}

type Case = Omit<QuantizeActLowrankShape, "dtype">;

function casesFor(mode: ActMode, dtype: ActDtype): QuantizeActLowrankShape[] {
  const nv = mode === "nvfp4";
  const f16 = dtype === "f16";
  const list: Case[] = [
    { m: 1, k: nv ? 16 : 64, r: 0, mode, smooth: false },
    { m: 7, k: nv ? 48 : 192, r: 16, mode, smooth: true },
    { m: 64, k: 1152, r: 32, mode, smooth: f16, rowsPerWorkgroup: 8 },
    {
      m: 257,
      k: 192,
      r: f16 ? 32 : 5,
      mode,
      smooth: !f16,
      rowsPerWorkgroup: 16,
    },
    { m: 257, k: nv ? 48 : 64, r: f16 ? 16 : 64, mode, smooth: f16 },
  ];
  if (f16) list.push({ m: 257, k: 1152, r: 32, mode, smooth: true });
  return list.map((c) => ({ ...c, dtype }));
}

for (const mode of ["int4", "int4_unsigned", "nvfp4"] as const) {
  Deno.test({
    name: `quantize_act_lowrank ${mode} matches quantizeAct and the float64 low-rank product`,
    ignore: !HAS_GPU,
    async fn() {
      const gpu = (await testGpu())!;
      const rng = freshRng(`quantize_act_lowrank ${mode}`);
      for (const dtype of ["f32", "f16"] as const) {
        if (dtype === "f16" && !gpu.caps.shaderF16) continue;
        for (const s of casesFor(mode, dtype)) {
          const inp = randomInputs(rng, s);
          console.log(`  ${JSON.stringify(s)}: ${check(s, inp, await runGpu(gpu, s, inp))}`);
        }
      }
    },
  });
}

Deno.test({
  name: "quantize_act_lowrank with Nunchaku's rounding matches quantizeAct's nunchaku convention",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const rng = freshRng("quantize_act_lowrank nunchaku convention");
    for (const mode of ["int4", "int4_unsigned", "nvfp4"] as const) {
      for (const c of casesFor(mode, "f32").slice(0, 4)) {
        const s: QuantizeActLowrankShape = { ...c, convention: "nunchaku" };
        const inp = randomInputs(rng, s);
        console.log(`  ${JSON.stringify(s)}: ${check(s, inp, await runGpu(gpu, s, inp))}`);
      }
    }
  },
});

function f32Step(v: number, dir: number): number {
  const f = new Float32Array([v]), u = new Uint32Array(f.buffer);
  u[0] += dir; // v > 0
  return f[0];
}

Deno.test({
  name: "quantize_act_lowrank nvfp4 scales and codes at every E4M3 and E2M1 rounding boundary",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const rng = freshRng("quantize_act_lowrank E4M3 boundaries");
    // group amax values: every E4M3 value and midpoint (times 6) and their f32 neighbours
    const amaxes = [0, 6 * 2 ** -11, 6 * 2 ** -10, 6 * 448, 6 * 464, 6 * 500, 1e6];
    for (let c = 0; c <= 126; c++) {
      if (c > 0) amaxes.push(6 * decodeE4M3(c));
      if (c < 126) {
        const a = Math.fround(3 * (decodeE4M3(c) + decodeE4M3(c + 1)));
        amaxes.push(a, f32Step(a, -1), f32Step(a, 1));
      }
    }
    const k = 1024, groups = k / 16, m = Math.ceil(amaxes.length / groups);
    const x = new Float32Array(m * k);
    for (let gi = 0; gi < m * groups; gi++) {
      const amax = gi < amaxes.length ? amaxes[gi] : Math.fround(Math.abs(rng.normal()) * 10);
      const s = decodeE4M3(encodeE4M3(Math.fround(amax / 6)));
      const sign = () => (rng.next() < 0.5 ? -1 : 1);
      x[gi * 16] = sign() * amax;
      for (let t = 1; t < 16; t++) {
        let v = rng.next() < 0.7 ? E2M1_MIDS[rng.int(0, 6)] * s : E2M1_GRID[rng.int(0, 7)] * s;
        if (v > 0) v = f32Step(v, rng.int(-1, 1));
        if (!(v <= amax)) v = Math.fround(amax * rng.next());
        x[gi * 16 + t] = sign() * v;
      }
    }
    const shape: QuantizeActLowrankShape = {
      m,
      k,
      r: 0,
      mode: "nvfp4",
      dtype: "f32",
      smooth: false,
    };
    const got = await runGpu(gpu, shape, { x });
    console.log(`  ${amaxes.length} amax values: ${check(shape, { x }, got, { exact: true })}`);
  },
});

Deno.test({
  name: "quantize_act_lowrank rejects bad shapes and buffers before any GPU work",
  ignore: !HAS_GPU,
  async fn() {
    const gpu = (await testGpu())!;
    const base: QuantizeActLowrankShape = {
      m: 7,
      k: 64,
      r: 16,
      mode: "int4",
      dtype: "f32",
      smooth: true,
    };
    const bad: [Partial<QuantizeActLowrankShape>, RegExp][] = [
      [{ k: 96 }, /K=96 is not a multiple of the int4 group size G=64/],
      [{ k: 40, mode: "nvfp4" }, /K=40 is not a multiple of the nvfp4 group size G=16/],
      [{ m: 0 }, /M is 0/],
      [{ r: 65 }, /R=65 exceeds/],
      [{ r: 1.5 }, /R is 1.5/],
      [{ rowsPerWorkgroup: 5 as 4 }, /rowsPerWorkgroup is 5/],
    ];
    for (const [change, msg] of bad) {
      await rejects(QuantizeActLowrank.create(gpu, { ...base, ...change }), msg);
    }
    await rejects(
      QuantizeActLowrank.create(gpu, { ...base, mode: "int8" as ActMode }),
      TypeError,
    );
    const op = await QuantizeActLowrank.create(gpu, base);
    const buf = (n: number) => gpu.createBuffer("test buffer", n);
    const good = {
      x: await buf(7 * 64 * 4),
      smooth: await buf(64 * 4),
      lora_down: await buf(16 * 64 * 2),
      qact: await buf(7 * 64 / 2),
      ascales: await buf(7 * 4),
      lora_act: await buf(7 * 16 * 4),
    };
    try {
      op.dispatch(good);
      const small = await buf(16);
      try {
        for (const name of Object.keys(good) as (keyof typeof good)[]) {
          const msg = new RegExp(`Cannot run quantize_act_lowrank: ${name} has 16 bytes`);
          let thrown: unknown = null;
          try {
            op.dispatch({ ...good, [name]: small });
          } catch (e) {
            thrown = e;
          }
          if (!(thrown instanceof TypeError) || !msg.test(thrown.message)) {
            throw new Error(`undersized ${name}: expected a TypeError, got ${thrown}`);
          }
        }
      } finally {
        gpu.destroy(small);
      }
      let thrown: unknown = null;
      try {
        op.dispatch({ ...good, lora_down: undefined });
      } catch (e) {
        thrown = e;
      }
      if (!(thrown instanceof TypeError) || !/lora_down is missing/.test(thrown.message)) {
        throw new Error(`missing lora_down: expected a TypeError, got ${thrown}`);
      }
    } finally {
      op.destroy();
      gpu.destroy(...Object.values(good));
    }
  },
});
