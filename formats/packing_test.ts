/**
 * Tests of the one packing module: code tables against brute-force nearest-value searches,
 * bit layouts against hand-written words, and quantize → dequantize error bounds on fresh
 * random shapes. CPU only.
 */
import assert from "node:assert/strict";
import { geluTanh as gelu } from "../gpu/activations.ts";
import { freshRng, maxErrors, type Rng } from "../gpu/_testing.ts";
import {
  actCodes,
  actGroupScales,
  type ActMode,
  decodeE2M1,
  decodeE4M3,
  dequantizeAct,
  dequantizeGroupInto,
  dequantizeWeight,
  E2M1_VALUES,
  E4M3_MAX,
  encodeE2M1,
  encodeE4M3,
  GELU_SHIFT,
  groupAmax,
  groupFactor,
  groupSize,
  nvfp4TensorScale,
  packBytes,
  packF16,
  packNibbles,
  packNibblesInto,
  quantizeAct,
  quantizeGroupInto,
  quantizeWeight,
  roundF16,
  roundHalfEven,
  unpackBytes,
  unpackF16,
  unpackNibbles,
  weightCodes,
  type WeightFormat,
  weightGroupScales,
  weightScaleWords,
} from "./packing.ts";

// ---- brute-force references ------------------------------------------------------------------

/** Nearest code among `values` (magnitudes, ascending codes 0..n-1) to |x|; ties → even code. */
function nearest(values: number[], x: number, sign: number): number {
  const a = Math.min(Math.abs(x), values[values.length - 1]);
  let best = 0, bestD = Infinity;
  for (let c = 0; c < values.length; c++) {
    const d = Math.abs(a - values[c]);
    if (d < bestD || (d === bestD && c % 2 === 0)) [best, bestD] = [c, d];
  }
  return (x < 0 || Object.is(x, -0) ? sign : 0) | best;
}

/** Positive E4M3 values by code 0..0x7E, straight from the bit definition. */
const E4M3_POS: number[] = Array.from({ length: 0x7f }, (_, c) => {
  const e = c >> 3, m = c & 7;
  return e === 0 ? m / 8 * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
});
const E2M1_POS = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
const refE4M3 = (x: number) => nearest(E4M3_POS, x, 0x80);
const refE2M1 = (x: number) => nearest(E2M1_POS, x, 8);

/** Half the gap of the E2M1 grid around |y| (y already divided by the scale); past 6, y - 6. */
function e2m1HalfStep(y: number): number {
  const a = Math.abs(y);
  return a <= 2 ? 0.25 : a <= 4 ? 0.5 : a <= 6 ? 1 : a - 6;
}

/** Midpoints of consecutive values, and each nudged both ways, with both signs. */
function tieCases(values: number[]): number[] {
  const out: number[] = [];
  for (let c = 0; c + 1 < values.length; c++) {
    const mid = (values[c] + values[c + 1]) / 2;
    for (const v of [mid, mid * (1 + 2 ** -40), mid * (1 - 2 ** -40), values[c]]) out.push(v, -v);
  }
  return out;
}

// ---- scalar formats --------------------------------------------------------------------------

Deno.test("roundHalfEven and roundF16", () => {
  const cases: [number, number][] = [
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [-0.5, -0],
    [-1.5, -2],
    [
      -2.5,
      -2,
    ],
    [2.4999, 2],
    [2.5001, 3],
    [7, 7],
    [-7.5, -8],
  ];
  for (const [x, r] of cases) assert.equal(roundHalfEven(x), r, `roundHalfEven(${x})`);
  const rng = freshRng("roundF16");
  for (let i = 0; i < 2000; i++) {
    const x = rng.normal() * 2 ** rng.int(-26, 17);
    assert.equal(roundF16(x), Float16Array.of(x)[0], `roundF16(${x})`);
  }
});

Deno.test("E4M3: decode → encode is the identity on all 254 non-NaN codes", () => {
  for (let c = 0; c < 256; c++) {
    const v = decodeE4M3(c);
    if ((c & 0x7f) === 0x7f) {
      assert.ok(Number.isNaN(v), `code ${c} is NaN`);
      continue;
    }
    assert.equal(Math.abs(v), E4M3_POS[c & 0x7f], `value of code ${c}`);
    assert.equal(encodeE4M3(v), c, `encode(decode(${c}))`);
  }
  assert.equal(decodeE4M3(0x7e), E4M3_MAX);
  assert.equal(decodeE4M3(0x01), 2 ** -9);
  assert.equal(decodeE4M3(0x08), 2 ** -6);
  assert.throws(() => decodeE4M3(256), RangeError);
  assert.throws(() => decodeE4M3(1.5), RangeError);
});

Deno.test("E4M3: encode matches the brute-force nearest value (ties to even code)", () => {
  const rng = freshRng("E4M3 brute force");
  const xs = tieCases(E4M3_POS);
  for (let i = 0; i < 20000; i++) {
    const x = (rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-13, 9.5);
    xs.push(x, Math.fround(x));
  }
  xs.push(0, -0, 1e-300, -1e-300, 448, 449, 464, 479, 480, 1e9, Infinity, -Infinity);
  for (const x of xs) assert.equal(encodeE4M3(x), refE4M3(x), `encodeE4M3(${x})`);
  // spot checks of the rounding rule: subnormal ties, the subnormal/normal boundary, saturation
  assert.equal(encodeE4M3(0.5 * 2 ** -9), 0x00);
  assert.equal(encodeE4M3(1.5 * 2 ** -9), 0x02);
  assert.equal(encodeE4M3(7.5 * 2 ** -9), 0x08);
  assert.equal(encodeE4M3(-0), 0x80);
  assert.equal(encodeE4M3(-1e9), 0xfe);
  assert.throws(() => encodeE4M3(NaN), /Cannot encode NaN as E4M3/);
});

Deno.test("E2M1: all codes, ties to even, brute force", () => {
  for (let c = 0; c < 16; c++) {
    assert.equal(decodeE2M1(c), E2M1_VALUES[c]);
    assert.equal(encodeE2M1(decodeE2M1(c)), c, `encode(decode(${c}))`);
  }
  const ties: [number, number][] = [
    [0.25, 0],
    [0.75, 1],
    [1.25, 1],
    [1.75, 2],
    [2.5, 2],
    [
      3.5,
      4,
    ],
    [5, 4],
    [7, 6],
    [-5, -4],
    [-0.2, -0],
  ];
  for (const [x, v] of ties) assert.equal(E2M1_VALUES[encodeE2M1(x)], v, `encodeE2M1(${x})`);
  const rng = freshRng("E2M1 brute force");
  const xs = tieCases(E2M1_POS);
  for (let i = 0; i < 20000; i++) xs.push(rng.uniform(-7.5, 7.5));
  xs.push(0, -0, 100, -Infinity);
  for (const x of xs) assert.equal(encodeE2M1(x), refE2M1(x), `encodeE2M1(${x})`);
  assert.throws(() => encodeE2M1(NaN), RangeError);
  assert.throws(() => decodeE2M1(16), RangeError);
});

// ---- bit layouts ---------------------------------------------------------------------------

Deno.test("f16 packing: layout and round trip vs Float16Array", () => {
  assert.deepEqual([...packF16([1, -2, 0.5])], [0xc0003c00, 0x00003800]);
  assert.equal(packF16([]).length, 0);
  const rng = freshRng("f16 packing");
  for (const count of [1, 2, 7, 64, 1001]) {
    const v = Array.from(
      { length: count },
      () => rng.normal() * 2 ** rng.int(-26, 17),
    );
    const words = packF16(v);
    assert.equal(words.length, Math.ceil(count / 2));
    const view = new DataView(new ArrayBuffer(2 * count));
    v.forEach((x, i) => view.setFloat16(2 * i, x, true));
    for (let i = 0; i < count; i++) {
      assert.equal((words[i >> 1] >>> (16 * (i & 1))) & 0xffff, view.getUint16(2 * i, true));
    }
    if (count % 2) assert.equal(words[words.length - 1] >>> 16, 0, "padding half is zero");
    assert.deepEqual(unpackF16(words, count), Float32Array.from(Float16Array.from(v)));
  }
  assert.throws(() => unpackF16(new Uint32Array(2), 5), /expected 3 or more/);
});

Deno.test("nibble and byte packing: layout and round trip on ragged shapes", () => {
  assert.deepEqual([...packNibbles([1, 2, 3, 4, 5, 6, 7, -8], 1, 8)], [0x87654321]);
  assert.deepEqual([...unpackNibbles(new Uint32Array([0x87654321]), 1, 8, true)], [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    -8,
  ]);
  assert.deepEqual([...packBytes([1, 2, 3, 4, 0xfe])], [0x04030201, 0xfe]);
  const rng = freshRng("nibble packing");
  for (let trial = 0; trial < 40; trial++) {
    const rows = rng.int(1, 9), cols = 8 * rng.int(1, 12), signed = trial % 2 === 0;
    const codes = Int8Array.from(
      { length: rows * cols },
      () => signed ? rng.int(-8, 7) : rng.int(0, 15),
    );
    const words = packNibbles(codes, rows, cols);
    assert.equal(words.length, rows * cols / 8);
    assert.deepEqual(unpackNibbles(words, rows, cols, signed), codes, `[${rows}, ${cols}]`);
    const bytes = Uint8Array.from({ length: rows * cols - trial % 4 }, () => rng.int(0, 255));
    assert.deepEqual(unpackBytes(packBytes(bytes), bytes.length), bytes);
  }
  assert.throws(() => packNibbles(new Int8Array(12), 1, 12), /multiple of 8/);
  assert.throws(() => packNibbles(new Int8Array(8), 2, 8), /expected \[2, 8\] = 16/);
  assert.throws(() => unpackNibbles(new Uint32Array(1), 2, 8, true), TypeError);
});

// ---- weights -------------------------------------------------------------------------------

/** Check a packed weight against the format's rule element by element; max |err| / scale. */
function checkWeight(w: Float32Array, n: number, k: number, format: WeightFormat, clip = 1) {
  const p = quantizeWeight(w, n, k, format, { clipRatio: clip });
  const G = groupSize(format), codes = weightCodes(p), scales = weightGroupScales(p);
  const deq = dequantizeWeight(p);
  const ts = p.format === "nvfp4" ? p.tensorScale : 1;
  let worst = 0;
  if (p.format === "nvfp4") {
    let tmax = 0;
    for (const v of w) tmax = Math.max(tmax, Math.abs(v));
    assert.equal(ts, Math.fround(tmax / 2688) || 1, "tensorScale");
  }
  for (let g = 0; g < n * k / G; g++) {
    let amax = 0;
    for (let t = 0; t < G; t++) amax = Math.max(amax, Math.abs(w[g * G + t]));
    if (p.format === "int4") {
      assert.equal(p.wscales[g], roundF16(amax * clip / 7), `int4 scale of group ${g}`);
    } else assert.equal(p.wscales[g], refE4M3(amax * clip / 6 / ts), `e4m3 scale of group ${g}`);
    const s = format === "int4" ? scales[g] : 2 * scales[g];
    for (let t = 0; t < G; t++) {
      const i = g * G + t, x = w[i];
      if (s > 0) worst = Math.max(worst, Math.abs(deq[i] - x) / s);
      assert.equal(deq[i], Math.fround(codes[i] * scales[g]), `code · scale at ${i}`);
      if (s === 0) {
        assert.equal(codes[i], 0);
        continue;
      }
      if (format === "int4") {
        const q = Math.min(7, Math.max(-8, roundHalfEven(x / s))) + 0; // + 0: -0 → 0
        assert.equal(codes[i], q, `int4 code ${i}`);
        if (clip === 1) assert.ok(Math.abs(deq[i] - x) <= s / 2 + 1e-7 * Math.abs(x), `err ${i}`);
      } else {
        assert.equal(codes[i], 2 * E2M1_VALUES[refE2M1(x / s)] + 0, `e2m1 code ${i}`);
        const bound = e2m1HalfStep(x / s) * s + 1e-7 * Math.abs(x);
        assert.ok(Math.abs(deq[i] - x) <= bound, `nvfp4 err ${i}: ${deq[i]} vs ${x}`);
      }
    }
  }
  const words = weightScaleWords(p);
  if (p.format === "int4") assert.deepEqual(unpackF16(words, p.wscales.length), p.wscales);
  else assert.deepEqual(unpackBytes(words, p.wscales.length), p.wscales);
  const raw = unpackNibbles(p.qweight, n, k, format === "int4"); // the nibble layout itself
  for (let i = 0; i < n * k; i++) {
    assert.equal(format === "int4" ? raw[i] : 2 * E2M1_VALUES[raw[i]] + 0, codes[i], `nibble ${i}`);
  }
  return { p, deq, worst };
}

function randomWeight(rng: Rng, n: number, k: number): Float32Array {
  const w = new Float32Array(n * k);
  for (let r = 0; r < n; r++) {
    const scale = 2 ** rng.uniform(-4, 4);
    for (let c = 0; c < k; c++) w[r * k + c] = rng.normal() * scale;
  }
  return w;
}

Deno.test("quantizeWeight → dequantizeWeight within half a grid step (int4, nvfp4)", () => {
  const rng = freshRng("quantizeWeight bounds");
  for (const format of ["int4", "nvfp4"] as const) {
    for (const k of [64, 192, 1152]) {
      const n = rng.int(1, 6), w = randomWeight(rng, n, k);
      const { worst } = checkWeight(w, n, k, format);
      console.log(`  ${format} [N=${n}, K=${k}]: max |err| / group scale ${worst.toFixed(4)}`);
    }
    checkWeight(randomWeight(rng, 2, 128), 2, 128, format, 0.8); // clipping: codes still exact
  }
});

Deno.test("quantizeWeight: all zeros and a single huge outlier", () => {
  for (const format of ["int4", "nvfp4"] as const) {
    const { p, deq } = checkWeight(new Float32Array(3 * 128), 3, 128, format);
    assert.ok(deq.every((v) => v === 0) && p.qweight.every((v) => v === 0));
    assert.ok(weightScaleWords(p).every((v) => v === 0));
    if (p.format === "nvfp4") assert.equal(p.tensorScale, 1);
  }
  const rng = freshRng("quantizeWeight outlier");
  const n = 3, k = 192, at = 1 * k + 70; // row 1, group 1 (int4) / group 4 (nvfp4)
  for (const format of ["int4", "nvfp4"] as const) {
    const G = groupSize(format), w = randomWeight(rng, n, k).map((v) => Math.max(-30, v));
    const plain = quantizeWeight(w, n, k, format);
    w[at] = 1000 * (rng.next() < 0.5 ? -1 : 1);
    const { p, deq } = checkWeight(w, n, k, format);
    const codes = weightCodes(p), g0 = Math.floor(at / G) * G;
    for (let i = g0; i < g0 + G; i++) if (i !== at) assert.equal(codes[i], 0, `zeroed ${i}`);
    assert.ok(Math.abs(deq[at] - w[at]) <= 2e-3 * 1000, `outlier kept: ${deq[at]}`); // f16 scale
    if (p.format === "int4" && plain.format === "int4") {
      // other groups are bit-identical to quantizing without the outlier
      const a = weightCodes(plain);
      for (let i = 0; i < n * k; i++) if (i < g0 || i >= g0 + G) assert.equal(codes[i], a[i]);
      for (let g = 0; g < n * k / G; g++) {
        if (g !== g0 / G) assert.equal(p.wscales[g], plain.wscales[g]);
      }
    } else {
      // other groups keep normal E4M3 scales (the per-element bound is checked by checkWeight)
      const sc = p.wscales as Uint8Array;
      for (let g = 0; g < n * k / G; g++) if (g !== g0 / G) assert.ok(sc[g] >= 0x08, `group ${g}`);
    }
  }
});

Deno.test("quantizeWeight: non-finite values and bad shapes are refused", () => {
  const w = new Float32Array(2 * 64);
  w[77] = NaN;
  assert.throws(
    () => quantizeWeight(w, 2, 64, "int4", { name: "blocks.0.qkv" }),
    (e: Error) =>
      e instanceof RangeError && /blocks\.0\.qkv/.test(e.message) &&
      /element 77 \(row 1, column 13\) is NaN/.test(e.message),
  );
  w[77] = 0;
  w[5] = -Infinity;
  assert.throws(() => quantizeWeight(w, 2, 64, "nvfp4"), /quantize weight: element 5 .*-Infinity/);
  assert.throws(() => quantizeWeight(new Float32Array(100), 2, 64, "int4"), TypeError);
  assert.throws(() => quantizeWeight(new Float32Array(2 * 96), 2, 96, "int4"), /group size 64/);
  assert.throws(() => quantizeWeight(new Float32Array(24), 1, 24, "nvfp4"), /\[N=1, K=24\]/);
  assert.throws(
    () => quantizeWeight(new Float32Array(64), 1, 64, "int4", { clipRatio: 0 }),
    RangeError,
  );
  assert.throws(() => quantizeWeight(new Float32Array(64).fill(1e6), 1, 64, "int4"), /f16/);
});

// ---- activations -----------------------------------------------------------------------------

/** The activation rule of packing_api, as plain loops: scales and GEMM codes. */
function refAct(x: Float32Array, m: number, k: number, mode: ActMode, smooth?: Float32Array) {
  const G = groupSize(mode), f = Math.fround;
  const scales: number[] = [], codes: number[] = [], xsAll: number[] = [];
  for (let r = 0; r < m; r++) {
    for (let g = 0; g < k / G; g++) {
      const xs: number[] = [];
      for (let t = 0; t < G; t++) {
        const c = g * G + t;
        let v = f(x[r * k + c] / (smooth ? smooth[c] : 1));
        if (mode === "int4_unsigned") v = f(v + GELU_SHIFT);
        xs.push(v);
      }
      let amax = 0;
      for (const v of xs) amax = Math.max(amax, mode === "int4_unsigned" ? v : Math.abs(v));
      const s = mode === "nvfp4"
        ? E4M3_POS[refE4M3(f(amax / 6))]
        : f(amax / (mode === "int4" ? 7 : 15));
      scales.push(s);
      for (const v of xs) {
        xsAll.push(mode === "int4_unsigned" ? f(v - GELU_SHIFT) : v);
        if (s === 0) codes.push(0);
        else if (mode === "nvfp4") codes.push(2 * E2M1_VALUES[refE2M1(f(v / s))] + 0);
        else {
          const q = roundHalfEven(f(v / s));
          codes.push(
            (mode === "int4" ? Math.min(7, Math.max(-8, q)) : Math.min(15, Math.max(0, q))) + 0,
          );
        }
      }
    }
  }
  return { scales, codes, xs: xsAll };
}

Deno.test("quantizeAct → dequantizeAct bounds, each mode, with and without smooth", () => {
  const rng = freshRng("quantizeAct bounds");
  for (const mode of ["int4", "int4_unsigned", "nvfp4"] as const) {
    for (const withSmooth of [false, true]) {
      const m = rng.int(1, 5), k = [64, 192][rng.int(0, 1)], G = groupSize(mode);
      const smooth = withSmooth
        ? Float32Array.from({ length: k }, () => 2 ** rng.uniform(-1, 1))
        : undefined;
      const x = new Float32Array(m * k);
      for (let i = 0; i < x.length; i++) {
        const v = mode === "int4_unsigned" ? gelu(3 * rng.normal()) : 3 * rng.normal();
        x[i] = v * (smooth ? smooth[i % k] : 1);
      }
      const q = quantizeAct(x, m, k, mode, smooth);
      const ref = refAct(x, m, k, mode, smooth);
      assert.deepEqual([...q.ascales], ref.scales, `${mode} scales`);
      const codes = actCodes(q), factors = actGroupScales(q), deq = dequantizeAct(q);
      assert.deepEqual([...codes], ref.codes, `${mode} codes`);
      const shift = mode === "int4_unsigned" ? GELU_SHIFT : 0;
      let worst = 0;
      for (let i = 0; i < deq.length; i++) {
        const g = Math.floor(i / G), s = q.ascales[g], xs = ref.xs[i];
        assert.equal(deq[i], Math.fround(codes[i] * factors[g] - shift), `code · factor at ${i}`);
        worst = Math.max(worst, Math.abs(deq[i] - xs) / s);
        const bound = mode === "nvfp4" ? e2m1HalfStep(xs / s) * s : s / 2;
        assert.ok(Math.abs(deq[i] - xs) <= bound + 1e-6 * (Math.abs(xs) + 1), `${mode} err ${i}`);
        if (mode === "nvfp4") assert.ok(Math.abs(xs / s) <= 6.4, "E4M3 scale within 1/16");
      }
      const err = maxErrors(deq, ref.xs);
      console.log(
        `  ${mode}${withSmooth ? " +smooth" : ""} [M=${m}, K=${k}]: ` +
          `max abs err ${err.maxAbs.toExponential(3)}, max |err| / scale ${worst.toFixed(4)}`,
      );
    }
  }
});

Deno.test("quantizeAct: zeros, non-finite values and bad shapes", () => {
  for (const mode of ["int4", "nvfp4"] as const) {
    const q = quantizeAct(new Float32Array(2 * 64), 2, 64, mode);
    assert.ok(q.qact.every((v) => v === 0) && q.ascales.every((v) => v === 0));
  }
  const u = quantizeAct(new Float32Array(64), 1, 64, "int4_unsigned"); // all at the shift
  assert.ok(actCodes(u).every((c) => c === 15));
  assert.ok(dequantizeAct(u).every((v) => Math.abs(v) < 1e-7));
  const x = new Float32Array(2 * 64);
  x[70] = Infinity;
  assert.throws(
    () => quantizeAct(x, 2, 64, "int4"),
    /Cannot quantize activation: element 70 \(row 1, column 6\) is Infinity/,
  );
  assert.throws(() => quantizeAct(new Float32Array(64), 2, 64, "int4"), /\[M=2, K=64\] = 128/);
  assert.throws(() => quantizeAct(new Float32Array(24), 1, 24, "nvfp4"), /group size 16/);
  assert.throws(
    () => quantizeAct(new Float32Array(64), 1, 64, "int4", new Float32Array(64)),
    /smooth\[0\] is 0/,
  );
  assert.throws(
    () => quantizeAct(new Float32Array(64), 1, 64, "int4", new Float32Array(32).fill(1)),
    /expected \[K=64\]/,
  );
});

// ---- per-group primitives --------------------------------------------------------------------

/**
 * The previous whole-matrix quantizeWeight (before the per-group primitives), kept verbatim as
 * the reference that the rewrite must match bit for bit.
 */
function previousQuantizeWeight(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  clip: number,
) {
  const G = groupSize(format), groups = k / G;
  const qweight = new Uint32Array((n * k) >> 3);
  const e2m1Mag = (a: number) =>
    a <= 0.25
      ? 0
      : a < 0.75
      ? 1
      : a <= 1.25
      ? 2
      : a < 1.75
      ? 3
      : a <= 2.5
      ? 4
      : a < 3.5
      ? 5
      : a <= 5
      ? 6
      : 7;
  const e2m1 = (x: number) => x < 0 || 1 / x < 0 ? 8 | e2m1Mag(-x) : e2m1Mag(x);
  let tmax = 0;
  for (let i = 0; i < w.length; i++) tmax = Math.max(tmax, Math.abs(w[i]));
  const tensorScale = Math.fround(tmax / (6 * E4M3_MAX)) || 1;
  const wscales = format === "int4" ? new Float32Array(n * groups) : new Uint8Array(n * groups);
  for (let gi = 0; gi < n * groups; gi++) {
    const base = gi * G;
    let amax = 0;
    for (let t = 0; t < G; t++) amax = Math.max(amax, Math.abs(w[base + t]));
    let s: number;
    if (format === "int4") s = wscales[gi] = roundF16(amax * clip / 7);
    else {
      const code = wscales[gi] = previousEncodeE4M3(amax * clip / 6 / tensorScale);
      s = Math.fround(decodeE4M3(code) * tensorScale);
    }
    if (s === 0) continue;
    for (let t = 0; t < G; t += 8) {
      let word = 0;
      for (let j = 0; j < 8; j++) {
        const r = w[base + t + j] / s;
        const c = format === "int4" ? Math.min(7, Math.max(-8, roundHalfEven(r))) : e2m1(r);
        word |= (c & 15) << (j << 2);
      }
      qweight[(base + t) >> 3] = word;
    }
  }
  return format === "int4"
    ? { format, n, k, qweight, wscales }
    : { format, n, k, qweight, wscales, tensorScale };
}

/** The previous encodeE4M3 (log2 for the binade, Math.round-based rounding), as a reference. */
function previousEncodeE4M3(x: number): number {
  const sign = x < 0 || 1 / x < 0 ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= E4M3_MAX) return sign | 0x7e;
  let e = -6;
  if (a >= 2 ** -6) {
    e = Math.floor(Math.log2(a));
    if (2 ** e > a) e--;
    else if (2 ** (e + 1) <= a) e++;
  }
  return sign | ((e + 6) * 8 + roundHalfEven(a * 2 ** (3 - e)));
}

/**
 * Weights full of exact rounding ties: the tensor scale is a power of two, each group's amax
 * puts its scale on a round value, and the other elements sit exactly on grid points and
 * midpoints (±, -0 and 0 included), mixed with random values and rows of random scale.
 */
function tieWeight(rng: Rng, n: number, k: number, format: WeightFormat): Float32Array {
  const G = groupSize(format), w = rng.normals(n * k, 0.05);
  const ts = 2 ** -10, mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 0.5, 1, 6];
  w[0] = 6 * E4M3_MAX * ts; // tensor scale exactly 2^-10
  for (let g = 1; g < (n * k) / G; g++) {
    if (rng.next() < 0.3) continue;
    const base = g * G;
    // int4: s = 2^e exactly (amax = 7s); nvfp4: an E4M3 value v (amax = 6·v·ts)
    const S = format === "int4" ? 2 ** rng.int(-12, 2) : decodeE4M3(rng.int(1, 0x7e)) * ts;
    w[base] = (format === "int4" ? 7 : 6) * S;
    for (let t = 1; t < G; t++) {
      const u = rng.next(), sign = rng.next() < 0.5 ? -1 : 1;
      const v = format === "int4" ? (rng.int(-7, 6) + 0.5) * S : sign * mids[rng.int(0, 9)] * S;
      w[base + t] = u < 0.1 ? -0 : u < 0.15 ? 0 : v;
    }
  }
  return w;
}

Deno.test("quantizeWeight is bit-identical to the previous whole-matrix implementation", () => {
  const rng = freshRng("quantizeWeight previous");
  let groups = 0;
  for (const format of ["int4", "nvfp4"] as const) {
    for (const clip of [1, 0.95, 0.8137, 1.25, 0.5, 2 ** -20]) {
      for (const ties of [false, true]) {
        const n = rng.int(1, 5), k = groupSize(format) * rng.int(1, 6);
        const w = ties ? tieWeight(rng, n, k, format) : randomWeight(rng, n, k);
        if (!ties && rng.next() < 0.5) w[rng.int(0, n * k - 1)] *= 300; // an outlier
        assert.deepEqual(
          quantizeWeight(w, n, k, format, { clipRatio: clip }),
          previousQuantizeWeight(w, n, k, format, clip),
          `${format} clip ${clip} ties ${ties}`,
        );
        groups += (n * k) / groupSize(format);
      }
    }
  }
  console.log(`  ${groups} groups identical`);
});

Deno.test("encodeE4M3 matches the previous implementation (random, binade edges, midpoints)", () => {
  const rng = freshRng("encodeE4M3 previous");
  const xs: number[] = [0, -0, Infinity, -Infinity, 448, 449, 5e-324, 1e-300];
  for (let e = -12; e <= 9; e++) {
    for (let j = 0; j < 32; j++) {
      const v = 2 ** e * (1 + j / 32);
      xs.push(v, v * (1 + 2 ** -52), v * (1 - 2 ** -53), -v);
    }
  }
  for (let i = 0; i < 200_000; i++) xs.push((rng.next() - 0.5) * 2 ** rng.uniform(-14, 10));
  for (const x of xs) assert.equal(encodeE4M3(x), previousEncodeE4M3(x), `x = ${x}`);
});

Deno.test("per-group primitives reproduce quantizeWeight and dequantizeWeight group by group", () => {
  const rng = freshRng("group primitives");
  for (const format of ["int4", "nvfp4"] as const) {
    const G = groupSize(format), n = 3, k = 4 * G, clip = rng.uniform(0.6, 1.1);
    const w = rng.next() < 0.5 ? tieWeight(rng, n, k, format) : randomWeight(rng, n, k);
    const p = quantizeWeight(w, n, k, format, { clipRatio: clip });
    const deq = dequantizeWeight(p), factors = weightGroupScales(p);
    const ts = p.format === "nvfp4" ? p.tensorScale : 1;
    assert.equal(format === "nvfp4" ? nvfp4TensorScale(w) : 1, ts);
    const words = new Uint32Array(p.qweight.length), stride = 3;
    const out32 = new Float32Array(G), res = new Float64Array(G * stride);
    for (let gi = 0; gi < (n * k) / G; gi++) {
      const base = gi * G, off = rng.int(0, 5);
      const i8 = new Int8Array(G + off), u8 = new Uint8Array(G + off);
      const scale = quantizeGroupInto(w, base, G, format, clip, ts, i8, off);
      const amax = groupAmax(w, base, G);
      const withRes = quantizeGroupInto(
        w,
        base,
        G,
        format,
        clip,
        ts,
        u8,
        off,
        amax,
        res,
        1,
        stride,
      );
      assert.equal(withRes, scale);
      assert.equal(scale, p.wscales[gi], `scale of group ${gi}`);
      assert.equal(groupFactor(format, scale, ts), factors[gi]);
      packNibblesInto(u8, off, G, words, base >> 3);
      dequantizeGroupInto(u8, off, G, format, scale, ts, out32, 0);
      for (let t = 0; t < G; t++) {
        assert.equal(i8[off + t] & 15, u8[off + t] & 15);
        assert.equal(out32[t], deq[base + t], `dequantized ${base + t}`);
        assert.ok(Object.is(res[1 + t * stride], w[base + t] - deq[base + t]), `residual ${t}`);
      }
    }
    assert.deepEqual(words, p.qweight);
  }
});

Deno.test("dequantizeWeight (fused) equals weightCodes · weightGroupScales bit for bit", () => {
  const n = 24, k = 128;
  const w = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 0.71) ** 3 * (1 + (i % 7)));
  for (const format of ["int4", "nvfp4"] as const) {
    const p = quantizeWeight(w, n, k, format);
    const codes = weightCodes(p), scales = weightGroupScales(p), G = groupSize(format);
    const got = dequantizeWeight(p);
    assert.equal(got.length, n * k);
    let nonzero = 0;
    for (let i = 0; i < got.length; i++) {
      const want = Math.fround(codes[i] * scales[Math.floor(i / G)]);
      assert.ok(Object.is(got[i], want), `${format} [${i}]: ${got[i]} vs ${want}`);
      if (want !== 0) nonzero++;
    }
    assert.ok(nonzero > n * k / 2, `${format}: most values are nonzero (${nonzero})`);
  }
});
