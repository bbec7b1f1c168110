/**
 * Tests of the smoothing factors and search: sanitising (zero spans, NaN/Inf, clamps, post-GELU
 * floor), the exact λ formula, and a search that never does worse than no smoothing and returns
 * the error it measured. CPU only.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import type { LayerStats } from "./calib.ts";
import { floatOutput, relativeError, simulateW4A4 } from "./baselines.ts";
import {
  applySmoothing,
  LAMBDA_MAX,
  LAMBDA_MIN,
  searchSmoothing,
  smoothingFactors,
  weightColumnAmax,
} from "./smooth.ts";

Deno.test("smoothingFactors: formula, zero spans → 1, NaN/Inf → 1, clamps", () => {
  const ax = Float32Array.from([4, 0, 9, 1e30, 1e-30, 2, NaN, 3]);
  const aw = Float32Array.from([0.25, 1, 0, 1e-30, 1e30, 0.5, 1, Infinity]);
  const l = smoothingFactors(ax, aw, 0.5, 0.5);
  assert.equal(l[0], Math.fround(2 / 0.5)); // 4^0.5 / 0.25^0.5
  assert.equal(l[1], 1, "zero activation span");
  assert.equal(l[2], 1, "zero weight span");
  assert.equal(l[3], LAMBDA_MAX, "clamped high");
  assert.equal(l[4], LAMBDA_MIN, "clamped low");
  assert.equal(l[5], Math.fround(Math.sqrt(2) / Math.sqrt(0.5)));
  assert.equal(l[6], 1, "NaN → 1");
  assert.equal(l[7], 1, "infinite span → 1");
  assert.deepEqual([...smoothingFactors(ax, aw, 0, 0)], [1, 1, 1, 1, 1, 1, 1, 1]);
  const g = smoothingFactors(Float32Array.from([0.01, 4]), Float32Array.from([1, 1]), 1, 0, {
    postGelu: true,
  });
  assert.deepEqual([...g], [1, 4], "post-GELU floor λ ≥ 1");
  assert.throws(() => smoothingFactors(ax, new Float32Array(2), 0.5, 0.5), TypeError);
});

Deno.test("weightColumnAmax and applySmoothing", () => {
  const w = Float32Array.from([1, -3, 2, -0.5]); // [2, 2]
  assert.deepEqual([...weightColumnAmax(w, 2, 2)], [2, 3]);
  const { x, w: ws } = applySmoothing(
    Float32Array.from([4, 9]),
    1,
    w,
    2,
    2,
    Float32Array.from([2, 3]),
  );
  assert.deepEqual([...x], [2, 3]);
  assert.deepEqual([...ws], [2, -9, 4, -1.5]);
});

/** A layer with heavy-tailed activations and 3 outlier input channels ×30. */
function outlierLayer(rng: Rng, n: number, k: number, s: number) {
  const scale = Float64Array.from({ length: k }, () => Math.exp(0.3 * rng.normal()));
  for (let j = 0; j < 3; j++) scale[rng.int(0, k - 1)] *= 30;
  const x = new Float32Array(s * k);
  for (let i = 0; i < s * k; i++) {
    const chi = (rng.normal() ** 2 + rng.normal() ** 2 + rng.normal() ** 2) / 3;
    x[i] = rng.normal() / Math.sqrt(chi) * scale[i % k];
  }
  const amax = new Float32Array(k);
  for (let i = 0; i < s * k; i++) amax[i % k] = Math.max(amax[i % k], Math.abs(x[i]));
  const stats: LayerStats = { k, amax: [amax], samples: x, s };
  return { w: rng.normals(n * k, 0.05), stats };
}

Deno.test("searchSmoothing beats no smoothing and reports the error it measured", async () => {
  const rng = freshRng("smoothing search");
  const n = 64, k = 128, s = 48;
  const { w, stats } = outlierLayer(rng, n, k, s);
  for (const format of ["int4", "nvfp4"] as const) {
    const res = await searchSmoothing(w, n, k, stats, { r: 8, format, alphas: [0, 0.5, 1] });
    // The α = β = 0 candidate is "no smoothing"; the search must not do worse.
    const plain = await searchSmoothing(w, n, k, stats, { r: 8, format, alphas: [0] });
    assert.ok(res.error <= plain.error, `${res.error} > ${plain.error}`);
    assert.ok(res.alpha > 0, `outlier channels should be smoothed, got α = ${res.alpha}`);
    assert.ok(res.beta === 0 || Math.abs(res.beta - (1 - res.alpha)) < 1e-12);
    assert.deepEqual(
      res.lambda,
      smoothingFactors(stats.amax[0], weightColumnAmax(w, n, k), res.alpha, res.beta),
    );
    // Re-score the chosen candidate from scratch: identical error.
    const layer = res.layer!;
    assert.deepEqual(layer.smooth, res.lambda);
    const y = await simulateW4A4(layer, stats.samples, s);
    const yRef = await floatOutput(w, null, stats.samples, { m: s, n, k });
    assert.equal(relativeError(y, yRef), res.error);
    console.log(
      `${format}: α=${res.alpha} β=${res.beta} error ${res.error.toFixed(4)} vs ` +
        `no smoothing ${plain.error.toFixed(4)}`,
    );
  }
});

Deno.test("searchSmoothing: post-GELU λ ≥ 1, no samples, bad input", async () => {
  const rng = freshRng("smoothing edge");
  const n = 16, k = 64;
  const { w, stats } = outlierLayer(rng, n, k, 8);
  for (let i = 0; i < stats.samples.length; i++) {
    stats.samples[i] = Math.max(-0.17, stats.samples[i]); // GELU-like lower bound
  }
  const g = await searchSmoothing(w, n, k, stats, {
    r: 4,
    format: "int4",
    alphas: [0.5],
    postGelu: true,
  });
  assert.ok(g.lambda.every((v) => v >= 1));
  const empty: LayerStats = { k, amax: stats.amax, samples: new Float32Array(0), s: 0 };
  const e = await searchSmoothing(w, n, k, empty, { r: 4, format: "int4" });
  assert.ok(Number.isNaN(e.error));
  assert.equal(e.alpha, 0.5);
  await assert.rejects(() => searchSmoothing(w, n, 32, stats, { r: 4, format: "int4" }), TypeError);
  await assert.rejects(
    () => searchSmoothing(w, n, k, stats, { r: 4, format: "int4", alphas: [1.5] }),
    RangeError,
  );
});
