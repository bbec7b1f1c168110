/**
 * Tests of the activation-aware W4A16 scaling (quant/awq.ts): the factors, and on a tiny
 * deterministic layer with planted activation outliers that the searched result beats plain
 * W4A16 (α = 0) while staying never worse elsewhere, and that its stored tensors reproduce the
 * measured error. CPU only.
 */
import assert from "node:assert/strict";
import { Rng } from "../gpu/_testing.ts";
import { cpuMatMul } from "./linalg.ts";
import { floatOutput, relativeError } from "./baselines.ts";
import { AMAX_FLOOR, awqFactors, quantizeW4A16Awq } from "./awq.ts";
import { evaluateQuantized, quantizeLinear } from "./layer.ts";

Deno.test("awqFactors: amax^α at geometric mean 1, α = 0 and dead channels handled", () => {
  const amax = Float32Array.of(1, 4, 16, 64);
  assert.deepEqual([...awqFactors(amax, 1)], [0.125, 0.5, 2, 8]);
  assert.deepEqual([...awqFactors(amax, 0)], [1, 1, 1, 1]);
  const half = awqFactors(amax, 0.5);
  const logMean = half.reduce((a, v) => a + Math.log(v), 0) / 4;
  assert.ok(Math.abs(logMean) < 1e-6, `geometric mean ${Math.exp(logMean)}`);
  assert.ok(Math.abs(half[3] / half[0] - 8) < 1e-5); // (64 / 1)^0.5
  // a zero channel is clamped to AMAX_FLOOR·max, not 0 (which would divide X by 0)
  const dead = awqFactors(Float32Array.of(0, 1, 1, 1), 1);
  assert.ok(dead.every((v) => Number.isFinite(v) && v > 0));
  assert.ok(Math.abs(dead[0] / dead[1] - AMAX_FLOOR) < 1e-9);
  assert.deepEqual([...awqFactors(new Float32Array(3), 0.7)], [1, 1, 1]);
});

/** A layer whose inputs have a few large channels (×30), as post-attention activations have. */
function outlierLayer(seed: number, outliers: boolean) {
  const rng = new Rng(seed);
  const n = 32, k = 128, s = 96;
  const w = rng.normals(n * k, 0.1), bias = rng.normals(n, 0.1);
  const big = new Set([3, 40, 77, 101]);
  const x = Float32Array.from(
    rng.normals(s * k),
    (v, i) => v * (outliers && big.has(i % k) ? 30 : 1),
  );
  return { n, k, s, w, bias, x };
}

Deno.test("quantizeW4A16Awq: planted outliers → α > 0, strictly lower error than plain W4A16", async () => {
  const { n, k, s, w, bias, x } = outlierLayer(18, true);
  const yRef = await floatOutput(w, bias, x, { m: s, n, k });
  const inp = { w, bias, n, k, x, s, yRef, matmul: cpuMatMul };
  const plain = await quantizeW4A16Awq(inp, { alphas: [0] });
  const awq = await quantizeW4A16Awq(inp);
  console.log(
    `plain ${plain.relError.toFixed(4)}, AWQ ${awq.relError.toFixed(4)} (α ${awq.alpha})`,
  );
  assert.equal(plain.alpha, 0);
  assert.ok(!plain.tensors.has("smooth"));
  assert.ok(awq.relError <= plain.relError);
  assert.ok(awq.relError < 0.9 * plain.relError, "the outlier channels gain from scaling");
  assert.ok(awq.alpha > 0);
  const sm = awq.tensors.get("smooth")!;
  assert.equal(sm.dtype, "F32");
  assert.deepEqual(sm.shape, [k]);
  // the stored factors are the ones the error was measured with
  const f = new Float32Array(sm.data.slice().buffer);
  assert.deepEqual([...f], [...awqFactors(
    Float32Array.from({ length: k }, (_, c) => {
      let a = 0;
      for (let i = 0; i < s; i++) a = Math.max(a, Math.abs(x[i * k + c]));
      return a;
    }),
    awq.alpha,
  )]);
});

Deno.test("quantizeW4A16Awq: never worse than α = 0, which it keeps when scaling does not help", async () => {
  for (const seed of [1, 2]) {
    const { n, k, s, w, bias, x } = outlierLayer(seed, false);
    const yRef = await floatOutput(w, bias, x, { m: s, n, k });
    const inp = { w, bias, n, k, x, s, yRef, matmul: cpuMatMul };
    const plain = await quantizeW4A16Awq(inp, { alphas: [0] });
    const awq = await quantizeW4A16Awq(inp);
    assert.ok(awq.relError <= plain.relError, `seed ${seed}`);
    assert.equal(awq.tensors.has("smooth"), awq.alpha > 0);
    if (awq.alpha === 0) assert.equal(awq.relError, plain.relError);
  }
});

Deno.test("quantizeLinear w4a16 --awq: the α is reported and the stored smooth reproduces relError", async () => {
  const { n, k, s, w, bias, x } = outlierLayer(18, true);
  const amax = new Float32Array(k);
  for (let i = 0; i < x.length; i++) amax[i % k] = Math.max(amax[i % k], Math.abs(x[i]));
  const opts = {
    method: "w4a16" as const,
    format: "int4" as const,
    r: 0,
    stats: { k, amax: [amax], samples: x, s },
  };
  // off by default: plain W4A16, no smooth
  const plain = await quantizeLinear("blocks.0.attn.proj", w, bias, n, k, opts);
  assert.equal(plain.alpha, undefined);
  assert.ok(!plain.tensors.has("smooth"));
  const q = await quantizeLinear("blocks.0.attn.proj", w, bias, n, k, { ...opts, awq: true });
  assert.ok(q.alpha! > 0);
  assert.ok(q.relError < plain.relError);
  assert.ok(q.tensors.has("smooth"));
  const yRef = await floatOutput(w, bias, x, { m: s, n, k });
  assert.equal(relativeError(await evaluateQuantized(q, x, s), yRef), q.relError);
  // without the factors the same codes are far off: evaluateQuantized really applies them
  const noSmooth = { ...q, tensors: new Map([...q.tensors].filter(([t]) => t !== "smooth")) };
  assert.ok(relativeError(await evaluateQuantized(noSmooth, x, s), yRef) > 2 * q.relError);
});
