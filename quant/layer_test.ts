/**
 * Tests of quantizeLinear: the canonical tensors of every method (dtype, shape, byte size), that
 * the stored tensors reproduce the reported error, post-GELU handling, the synthetic fallback and
 * the argument checks. CPU only; small shapes.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import type { LayerStats } from "./calib.ts";
import { geluTanh } from "./calib.ts";
import { floatOutput, relativeError } from "./baselines.ts";
import { evaluateQuantized, type Method, METHODS, quantizeLinear } from "./layer.ts";

const DTYPE_BYTES = { U32: 4, F16: 2, F32: 4, F8_E4M3: 1, I8: 1, U8: 1 } as const;
const ALPHAS = [0, 0.5, 1];

function statsFor(rng: Rng, k: number, s: number, gelu = false): LayerStats {
  const x = new Float32Array(s * k);
  for (let i = 0; i < x.length; i++) {
    const v = rng.normal() * (i % k === 7 ? 25 : 1);
    x[i] = gelu ? geluTanh(v) : v;
  }
  const amax = new Float32Array(k);
  for (let i = 0; i < x.length; i++) amax[i % k] = Math.max(amax[i % k], Math.abs(x[i]));
  return { k, amax: [amax], samples: x, s };
}

const EXPECTED: Record<
  Method,
  (n: number, k: number, r: number, nv: boolean) => Record<string, [string, number[]]>
> = {
  svdquant: (n, k, r, nv) => w4a4(n, k, r, nv, true),
  dilate: (n, k, r, nv) => w4a4(n, k, r, nv, true),
  smooth: (n, k, _r, nv) => w4a4(n, k, 0, nv, true),
  rtn: (n, k, _r, nv) => w4a4(n, k, 0, nv, false),
  w4a16: (n, k) => ({
    qweight: ["U32", [n, k / 8]],
    wscales: ["F16", [n, k / 64]],
    bias: ["F32", [n]],
  }),
  w8a8: (n, k) => ({ qweight: ["I8", [n, k]], wscales: ["F32", [n]], bias: ["F32", [n]] }),
  float: (n, k) => ({ weight: ["F16", [n, k]], bias: ["F32", [n]] }),
};

function w4a4(n: number, k: number, r: number, nv: boolean, smooth: boolean) {
  const t: Record<string, [string, number[]]> = {
    qweight: ["U32", [n, k / 8]],
    wscales: nv ? ["F8_E4M3", [n, k / 16]] : ["F16", [n, k / 64]],
    bias: ["F32", [n]],
  };
  if (nv) t.tensor_scale = ["F32", [1]];
  if (smooth) t.smooth = ["F32", [k]];
  if (r > 0) {
    t.lora_down = ["F16", [r, k]];
    t.lora_up = ["F16", [n, r]];
  }
  return t;
}

Deno.test("quantizeLinear: canonical tensors of every method, and they reproduce relError", async () => {
  const rng = freshRng("quantizeLinear tensors");
  const n = 24, k = 128, r = 8, s = 32;
  const w = rng.normals(n * k, 0.1), bias = rng.normals(n, 0.3), stats = statsFor(rng, k, s);
  const yRef = await floatOutput(w, bias, stats.samples, { m: s, n, k });
  const errors: Record<string, number> = {};
  for (const format of ["int4", "nvfp4"] as const) {
    for (const method of METHODS) {
      if (format === "nvfp4" && ["w4a16", "w8a8", "float"].includes(method)) continue;
      const q = await quantizeLinear("blocks.0.attn.qkv", w, bias, n, k, {
        method,
        format,
        r,
        stats,
        alphas: ALPHAS,
        rounds: 1,
      });
      const label = `${method}/${format}`;
      const want = EXPECTED[method](n, k, r, format === "nvfp4");
      // w4a16: the activation-aware scaling's factors when its search kept α > 0 (quant/awq.ts)
      if (method === "w4a16" && q.alpha! > 0) want.smooth = ["F32", [k]];
      assert.deepEqual([...q.tensors.keys()].sort(), Object.keys(want).sort(), label);
      let bytes = 0;
      for (const [suffix, t] of q.tensors) {
        const [dtype, shape] = want[suffix];
        assert.equal(t.dtype, dtype, `${label} ${suffix}`);
        assert.deepEqual(t.shape, shape, `${label} ${suffix}`);
        assert.equal(t.data.byteLength, shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype]);
        bytes += t.data.byteLength;
      }
      assert.equal(q.bytesAfter, bytes);
      assert.equal(q.bytesBefore, (n * k + n) * 4);
      assert.equal(q.r, method === "svdquant" || method === "dilate" ? r : 0);
      assert.equal(q.actMode, ["w4a16", "w8a8", "float"].includes(method) ? undefined : format);
      // The stored tensors alone give back the measured error.
      const y = await evaluateQuantized(q, stats.samples, s);
      assert.equal(relativeError(y, yRef), q.relError, label);
      errors[label] = q.relError;
    }
  }
  console.log(Object.entries(errors).map(([m, e]) => `${m} ${e.toFixed(4)}`).join(", "));
  assert.ok(errors["float/int4"] < 1e-3);
  assert.ok(errors["svdquant/int4"] < errors["rtn/int4"]);
  assert.ok(errors["w8a8/int4"] < errors["rtn/int4"]);
  assert.ok(errors["svdquant/int4"] < 0.1 && errors["svdquant/nvfp4"] < 0.1);
});

Deno.test("quantizeLinear: post-GELU input → unsigned activations, shift folded, λ ≥ 1", async () => {
  const rng = freshRng("quantizeLinear gelu");
  const n = 16, k = 128, s = 32;
  const w = rng.normals(n * k, 0.1).map((v) => v + 0.02), stats = statsFor(rng, k, s, true);
  const q = await quantizeLinear("blocks.0.mlp.fc2", w, null, n, k, {
    method: "svdquant",
    format: "int4",
    r: 4,
    stats,
    postGelu: true,
    alphas: ALPHAS,
  });
  assert.equal(q.actMode, "int4_unsigned");
  assert.ok(q.tensors.has("bias"), "the folded shift needs a bias even when the layer has none");
  const smooth = new Float32Array(q.tensors.get("smooth")!.data.slice().buffer);
  assert.ok(smooth.every((v) => v >= 1));
  const rtn = await quantizeLinear("fc2", w, null, n, k, {
    method: "rtn",
    format: "int4",
    r: 0,
    stats,
    postGelu: true,
  });
  const signed = await quantizeLinear("fc2", w, null, n, k, {
    method: "rtn",
    format: "int4",
    r: 0,
    stats,
  });
  console.log(
    `post-GELU svdquant ${q.relError.toFixed(4)}, rtn ${rtn.relError.toFixed(4)}, ` +
      `rtn signed ${signed.relError.toFixed(4)}`,
  );
  assert.equal(signed.actMode, "int4");
  // RTN's own error spreads with the seed (0.09–0.20 over seeds); the claim is the comparison:
  // on post-GELU inputs the unsigned mode beats signed INT4 at the same bits
  assert.ok(q.relError < 0.1, "SVDQuant keeps the post-GELU error small");
  assert.ok(rtn.relError < signed.relError, "the unsigned mode beats signed INT4 after a GELU");
  const nv = await quantizeLinear("fc2", w, null, n, k, {
    method: "rtn",
    format: "nvfp4",
    r: 0,
    stats,
    postGelu: true,
  });
  assert.equal(nv.actMode, "nvfp4", "NVFP4 has no unsigned mode");
  assert.ok(!nv.tensors.has("bias"));
});

Deno.test("quantizeLinear without statistics falls back to synthetic ones", async () => {
  const rng = freshRng("quantizeLinear synthetic");
  const n = 8, k = 64, w = rng.normals(n * k, 0.1);
  const q = await quantizeLinear("blocks.1.attn.proj", w, null, n, k, {
    method: "smooth",
    format: "int4",
    r: 0,
    alphas: ALPHAS,
  });
  assert.ok(q.relError > 0 && q.relError < 0.5, `relError ${q.relError}`);
  assert.ok(q.alpha !== undefined && q.beta !== undefined);
});

Deno.test("quantizeLinear refuses bad arguments before any work", async () => {
  const w = new Float32Array(8 * 64),
    opts = { method: "svdquant" as const, format: "int4" as const, r: 4 };
  await assert.rejects(
    () => quantizeLinear("l", w, null, 8, 63, opts),
    /l\.weight has 512 elements, expected \[N=8, K=63\]/,
  );
  await assert.rejects(
    () => quantizeLinear("l", w, new Float32Array(3), 8, 64, opts),
    /l\.bias has 3 elements, expected \[N=8\]/,
  );
  const w96 = new Float32Array(8 * 96);
  await assert.rejects(
    () => quantizeLinear("l", w96, null, 8, 96, opts),
    /K=96 is not a multiple of the group size 64/,
  );
  await assert.rejects(
    () => quantizeLinear("l", w96, null, 8, 96, { ...opts, method: "w4a16" }),
    RangeError,
  );
  await quantizeLinear("l", w96, null, 8, 96, { ...opts, format: "nvfp4", method: "rtn" }); // G = 16 fits
  await assert.rejects(() => quantizeLinear("l", w, null, 8, 64, { ...opts, r: 9 }), /rank 9/);
  await assert.rejects(
    () => quantizeLinear("l", w, null, 8, 64, { ...opts, method: "int3" as Method }),
    /unknown method/,
  );
  const bad = w.slice();
  bad[5] = NaN;
  await assert.rejects(() => quantizeLinear("l", bad, null, 8, 64, opts), /element 5 is NaN/);
  const stats: LayerStats = {
    k: 32,
    amax: [new Float32Array(32)],
    samples: new Float32Array(0),
    s: 0,
  };
  await assert.rejects(() => quantizeLinear("l", w, null, 8, 64, { ...opts, stats }), TypeError);
});
