/**
 * Tests of weight dilation: no out-channel's weight range grows (exactly, in f32), factors are
 * ≥ 1 and 1 on channels holding a row extreme, and the scaling is invertible to f32 precision.
 * CPU only.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import { applyDilation, dilateActivations, DILATION_MAX, dilationFactors } from "./dilate.ts";

function rowRange(w: Float32Array, row: number, k: number): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let c = 0; c < k; c++) {
    lo = Math.min(lo, w[row * k + c]);
    hi = Math.max(hi, w[row * k + c]);
  }
  return [lo, hi];
}

/** Gaussian weights with a few ×8 outlier rows, some exact zeros and one zero column. */
function weights(rng: Rng, n: number, k: number): Float32Array {
  const w = rng.normals(n * k, 0.05);
  for (let j = 0; j < 3; j++) {
    const r = rng.int(0, n - 1);
    for (let c = 0; c < k; c++) w[r * k + c] *= 8;
  }
  for (let j = 0; j < n; j++) w[j * k + rng.int(0, k - 1)] = 0;
  for (let j = 0; j < n; j++) w[j * k + 3] = 0;
  return w;
}

Deno.test("dilation never widens any out-channel's weight range (exact in f32)", () => {
  const rng = freshRng("dilation range");
  for (const [n, k] of [[1, 8], [7, 33], [64, 128], [100, 256]]) {
    const w = weights(rng, n, k);
    const s = dilationFactors(w, n, k);
    const wd = applyDilation(w, n, k, s);
    for (let row = 0; row < n; row++) {
      const [lo, hi] = rowRange(w, row, k), [dlo, dhi] = rowRange(wd, row, k);
      assert.ok(dlo >= lo && dhi <= hi, `row ${row}: [${dlo}, ${dhi}] outside [${lo}, ${hi}]`);
      assert.equal(dlo, lo);
      assert.equal(dhi, hi);
    }
    assert.ok(s.every((v) => v >= 1 && v <= DILATION_MAX), "factors must lie in [1, cap]");
    assert.equal(s[3], 1, "an all-zero column keeps 1");
    // Channels holding a row's max or min keep s = 1.
    for (let row = 0; row < n; row++) {
      const [lo, hi] = rowRange(w, row, k);
      for (let c = 0; c < k; c++) {
        const v = w[row * k + c];
        if (v !== 0 && (v === lo || v === hi)) {
          assert.equal(s[c], 1, `column ${c} holds an extreme`);
        }
      }
    }
    if (n >= 64) assert.ok(s.some((v) => v > 1.05), "random weights should leave room to dilate");
  }
});

Deno.test("dilation factors are as large as the ranges allow (tight up to one f32 ulp)", () => {
  const rng = freshRng("dilation tight");
  const n = 16, k = 64, w = weights(rng, n, k);
  const s = dilationFactors(w, n, k);
  for (let c = 0; c < k; c++) {
    if (s[c] === 1) continue;
    let bound = Infinity;
    for (let row = 0; row < n; row++) {
      const v = w[row * k + c], [lo, hi] = rowRange(w, row, k);
      if (v > 0) bound = Math.min(bound, hi / v);
      if (v < 0) bound = Math.min(bound, lo / v);
    }
    assert.ok(s[c] <= bound && s[c] >= bound * (1 - 2 ** -22), `column ${c}: ${s[c]} vs ${bound}`);
  }
});

Deno.test("dilation is invertible: (X/s)·(s·W)ᵀ = X·Wᵀ to f32 precision", () => {
  const rng = freshRng("dilation inverse");
  const m = 9, n = 40, k = 96;
  const w = weights(rng, n, k), x = rng.normals(m * k, 2);
  const s = dilationFactors(w, n, k);
  const xd = dilateActivations(x, m, k, s), wd = applyDilation(w, n, k, s);
  let worst = 0;
  for (let i = 0; i < m * k; i++) {
    for (let row = 0; row < n; row++) {
      const c = i % k;
      const exact = x[i] * w[row * k + c];
      const got = xd[i] * wd[row * k + c];
      // Two f32 roundings (X/s and s·W), each ≤ 2⁻²⁴ relative.
      const err = Math.abs(got - exact);
      assert.ok(err <= 2 ** -23 * Math.abs(exact) * 1.0001, `product error ${err} at ${i}, ${row}`);
      worst = Math.max(worst, exact === 0 ? 0 : err / Math.abs(exact));
    }
  }
  // The whole output: sums of such products.
  for (let i = 0; i < m; i++) {
    for (let row = 0; row < n; row++) {
      let y = 0, yd = 0, mag = 0;
      for (let c = 0; c < k; c++) {
        y += x[i * k + c] * w[row * k + c];
        yd += xd[i * k + c] * wd[row * k + c];
        mag += Math.abs(x[i * k + c] * w[row * k + c]);
      }
      assert.ok(Math.abs(y - yd) <= 2 ** -23 * mag, `Y[${i}, ${row}]: ${yd} vs ${y}`);
    }
  }
  console.log(`max relative product error ${worst.toExponential(2)} (bound 2^-23 = 1.19e-7)`);
});

Deno.test("dilation: cap, example, bad input", () => {
  // Column 1 is tiny: without a cap it could grow ×1e6.
  const w = Float32Array.from([1, 1e-6, -1, 2, -1e-6, -2]); // [N=2, K=3]
  assert.deepEqual([...dilationFactors(w, 2, 3)], [1, Math.fround(DILATION_MAX), 1]);
  assert.equal(dilationFactors(w, 2, 3, { maxFactor: 4 })[1], 4);
  const ex = Float32Array.from([1, 0.5, -2, 4, 0.25, -1]);
  assert.deepEqual([...dilationFactors(ex, 2, 3)], [1, 2, 1]);
  assert.deepEqual([...applyDilation(ex, 2, 3, Float32Array.from([1, 2, 1]))], [
    1,
    1,
    -2,
    4,
    0.5,
    -1,
  ]);
  assert.throws(() => dilationFactors(new Float32Array(5), 2, 3), TypeError);
  assert.throws(() => dilationFactors(Float32Array.from([1, NaN]), 1, 2), /weight\[0, 1\] is NaN/);
  assert.throws(() => dilationFactors(ex, 2, 3, { maxFactor: 0.5 }), RangeError);
  assert.throws(() => applyDilation(ex, 2, 3, new Float32Array(2)), TypeError);
});
