/**
 * Tests of the runtime simulation: the W4A4 simulation against a plain-loop reference of the
 * kernel arithmetic (integer group sums × scales), the post-GELU shift folded into the bias
 * (derivation checked numerically), the stored low-rank factors, and the small helpers. CPU only.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import {
  actCodes,
  actGroupScales,
  type ActMode,
  dequantizeAct,
  GELU_SHIFT,
  groupSize,
  quantizeAct,
  weightCodes,
  type WeightFormat,
  weightGroupScales,
} from "../formats/packing.ts";
import {
  buildW4A4,
  floatOutput,
  foldGeluShift,
  gemmWeightValues,
  loraFactors,
  quantizeRowsInt8,
  relativeError,
  simulateW4A4,
  type W4A4Layer,
} from "./baselines.ts";
import { geluTanh } from "./calib.ts";

/** Plain float64 loops over the kernel's arithmetic: Σ_g s_x·s_w·Σ_k q_x·q_w + lora + bias. */
function refW4A4(layer: W4A4Layer, x: Float32Array, m: number): Float64Array {
  const { n, k, r } = layer;
  const qa = quantizeAct(x, m, k, layer.actMode, layer.smooth ?? undefined);
  const ac = actCodes(qa), as = actGroupScales(qa);
  const wc = weightCodes(layer.residual), ws = weightGroupScales(layer.residual);
  const G = groupSize(layer.actMode), groups = k / G;
  const loraAct = new Float64Array(m * r);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let c = 0; c < k; c++) acc += x[i * k + c] * layer.down[j * k + c];
      loraAct[i * r + j] = Math.fround(acc);
    }
  }
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < n; o++) {
      let acc = 0;
      for (let g = 0; g < groups; g++) {
        let dot = 0; // exact integer
        for (let t = 0; t < G; t++) dot += ac[i * k + g * G + t] * wc[o * k + g * G + t];
        acc += as[i * groups + g] * ws[o * groups + g] * dot;
      }
      for (let j = 0; j < r; j++) acc += loraAct[i * r + j] * layer.up[o * r + j];
      y[i * n + o] = acc + (layer.bias ? layer.bias[o] : 0);
    }
  }
  return y;
}

function heavyRows(rng: Rng, m: number, k: number, gelu = false): Float32Array {
  const x = new Float32Array(m * k);
  for (let i = 0; i < x.length; i++) {
    const v = rng.normal() * (i % k === 5 ? 20 : 1) /
      Math.sqrt((rng.normal() ** 2 + rng.normal() ** 2) / 2);
    x[i] = gelu ? geluTanh(v) : v;
  }
  return x;
}

async function layerFor(
  rng: Rng,
  n: number,
  k: number,
  format: WeightFormat,
  actMode: ActMode,
  r: number,
  mean = 0,
) {
  const w = rng.normals(n * k, 0.1).map((v) => v + mean);
  const lambda = Float32Array.from({ length: k }, () => 1 + 3 * rng.next());
  const bias = rng.normals(n, 0.5);
  return {
    w,
    bias,
    layer: await buildW4A4(w, n, k, { lambda, r, format, actMode, rounds: 0, bias }),
  };
}

Deno.test("simulateW4A4 equals the kernel arithmetic (integer group sums × scales)", async () => {
  const rng = freshRng("simulate W4A4");
  const cases: [WeightFormat, ActMode, number, number, number, number][] = [
    ["int4", "int4", 5, 24, 128, 8],
    ["int4", "int4_unsigned", 3, 17, 192, 0],
    ["nvfp4", "nvfp4", 4, 9, 48, 4],
    ["int4", "int4", 1, 8, 64, 0],
  ];
  for (const [format, actMode, m, n, k, r] of cases) {
    const { layer } = await layerFor(rng, n, k, format, actMode, r);
    const x = heavyRows(rng, m, k, actMode === "int4_unsigned");
    const got = await simulateW4A4(layer, x, m);
    const want = refW4A4(layer, x, m);
    let scale = 0;
    for (const v of want) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < want.length; i++) {
      assert.ok(
        Math.abs(got[i] - want[i]) <= 1e-5 * scale,
        `${format}/${actMode} [${m},${n},${k}] r=${r}: y[${i}] ${got[i]} vs ${want[i]}`,
      );
    }
  }
});

Deno.test("post-GELU: the shift folded into the bias cancels exactly", async () => {
  const rng = freshRng("gelu shift fold");
  const m = 6, n = 20, k = 128;
  for (const r of [0, 4]) {
    // Rows of W with a non-zero mean, so Σ_k R̂[n,k] (what the shift multiplies) is sizeable
    // (with R > 0 the low-rank branch takes most of the mean and the residual's sum shrinks).
    const { w, bias, layer } = await layerFor(rng, n, k, "int4", "int4_unsigned", r, 0.05);
    // b_eff[n] = b[n] − c·Σ_k R̂[n,k]
    const rv = gemmWeightValues(layer.residual), rowSum = new Float64Array(n);
    for (let o = 0; o < n; o++) {
      for (let c = 0; c < k; c++) rowSum[o] += rv[o * k + c];
      assert.equal(layer.bias![o], Math.fround(bias[o] - GELU_SHIFT * rowSum[o]));
    }
    assert.deepEqual(
      foldGeluShift(layer.residual, null),
      Float32Array.from(rowSum, (v) => -GELU_SHIFT * v),
    );
    // The runtime's output equals (dequantized X̂, shift removed)·R̂ᵀ + lora + the ORIGINAL bias.
    const x = Float32Array.from({ length: m * k }, () => geluTanh(2 * rng.normal()));
    const got = await simulateW4A4(layer, x, m);
    const xs = dequantizeAct(quantizeAct(x, m, k, "int4_unsigned", layer.smooth!)); // ≈ X/λ
    const want = new Float64Array(m * n);
    let scale = 0;
    for (let i = 0; i < m; i++) {
      for (let o = 0; o < n; o++) {
        let acc = bias[o];
        for (let c = 0; c < k; c++) acc += xs[i * k + c] * rv[o * k + c];
        for (let j = 0; j < r; j++) {
          let la = 0;
          for (let c = 0; c < k; c++) la += x[i * k + c] * layer.down[j * k + c];
          acc += Math.fround(la) * layer.up[o * r + j];
        }
        want[i * n + o] = acc;
        scale = Math.max(scale, Math.abs(acc));
      }
    }
    for (let i = 0; i < want.length; i++) {
      assert.ok(
        Math.abs(got[i] - want[i]) <= 2e-5 * scale,
        `r=${r} y[${i}] ${got[i]} vs ${want[i]}`,
      );
    }
    if (r === 0) {
      // Without the fold every output row is off by c·Σ R̂: a much larger error.
      const yRef = await floatOutput(w, bias, x, { m, n, k });
      const unfolded = await simulateW4A4({ ...layer, bias: Float32Array.from(bias) }, x, m);
      const eFold = relativeError(got, yRef), eNo = relativeError(unfolded, yRef);
      assert.ok(eNo > 3 * eFold, `folded ${eFold} vs unfolded ${eNo}`);
      console.log(`relative error with the fold ${eFold.toFixed(4)}, without ${eNo.toFixed(4)}`);
    }
  }
});

Deno.test("loraFactors: down = L2/λ and up = L1, balanced by powers of two, f16", () => {
  const rng = freshRng("lora factors");
  const n = 12, k = 32, r = 3;
  const down = rng.normals(r * k, 0.2), up = rng.normals(n * r, 40);
  const lambda = Float32Array.from({ length: k }, () => 2 ** rng.uniform(-3, 6));
  const f = loraFactors({ r, up, down }, lambda, n, k);
  for (let j = 0; j < r; j++) {
    let maxD = 0, maxU = 0;
    for (let c = 0; c < k; c++) maxD = Math.max(maxD, Math.abs(f.down[j * k + c]));
    for (let o = 0; o < n; o++) maxU = Math.max(maxU, Math.abs(f.up[o * r + j]));
    assert.ok(maxU / maxD <= 2.01 && maxU / maxD >= 0.49, `component ${j}: ${maxU} vs ${maxD}`);
    for (let o = 0; o < n; o++) {
      for (let c = 0; c < k; c++) {
        const exact = up[o * r + j] * (Math.fround(down[j * k + c] / lambda[c]));
        const got = f.up[o * r + j] * f.down[j * k + c];
        assert.ok(Math.abs(got - exact) <= 2 ** -10 * Math.abs(exact) * 1.01, `${o},${j},${c}`);
      }
    }
    assert.ok([...f.down, ...f.up].every((v) => Math.f16round(v) === v), "f16 values");
  }
  const none = loraFactors(
    { r: 0, up: new Float32Array(0), down: new Float32Array(0) },
    null,
    n,
    k,
  );
  assert.equal(none.down.length + none.up.length, 0);
  assert.throws(
    () =>
      loraFactors(
        { r: 1, up: Float32Array.from([1e6]), down: Float32Array.from([1e6, 0]) },
        null,
        1,
        2,
      ),
    /overflows f16/,
  );
});

Deno.test("relativeError and quantizeRowsInt8", () => {
  assert.equal(relativeError([1, 2], [1, 2]), 0);
  assert.equal(relativeError([0, 0], [0, 0]), 0);
  assert.equal(relativeError([1, 0], [0, 0]), Infinity);
  assert.ok(Number.isNaN(relativeError([], [])));
  assert.equal(relativeError([3, 4], [0, 5]), Math.sqrt(10 / 25));
  const { q, scale } = quantizeRowsInt8(Float32Array.from([127, -63.5, 0, 0]), 2, 2);
  assert.deepEqual([...q], [127, -64, 0, 0]); // -63.5 → -64 (ties to even)
  assert.deepEqual([...scale], [1, 0]);
});
