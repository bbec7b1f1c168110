/**
 * The method-accuracy bars (issues 2 and 3), on synthetic layers shaped like diffusion-transformer
 * linears: heavy-tailed activations (Student-t, 4 degrees of freedom, per-token scale) with 4
 * outlier input channels ×30, Gaussian weights with 4 outlier rows ×8. Errors are the relative
 * output error `||Y_q − Y|| / ||Y||` on HELD-OUT rows (not the calibration rows the search saw),
 * computed from the stored tensors with the runtime's arithmetic (evaluateQuantized).
 *
 * A method's error is the mean over two independent layers. Bars, with the minimum measured over
 * 30 fresh seeds in brackets (the median in parentheses); each bar keeps ≥ 17% headroom below the
 * minimum:
 * - smoothing-only / SVDQuant ≥ 1.6 [2.41] (2.7);  RTN / smoothing-only ≥ 1.2 [1.46] (1.85), INT4
 * - SVDQuant INT4 / NVFP4 ≥ 1.3 [1.62] (1.67);  RTN INT4 / NVFP4 ≥ 1.1 [1.29] (1.55)
 * - RTN / dilation (+ low-rank) ≥ 1.4 [1.72] (1.87); dilation vs smoothing-only is reported
 *   (0.58–1.12: dilation alone barely shrinks the ×30 activation outliers; here its gain over RTN
 *   comes mostly from the low-rank branch)
 * - dilation never widens an out-channel's weight range and is invertible to f32 precision.
 *
 * CPU only; N = K = 256, R = 16 (the same R/K as R = 32 at K = 512), 128 + 128 rows, 5 α values.
 */
import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import type { LayerStats } from "../quant/calib.ts";
import { floatOutput, relativeError } from "../quant/baselines.ts";
import { applyDilation, dilateActivations, dilationFactors } from "../quant/dilate.ts";
import { evaluateQuantized, type Method, quantizeLinear } from "../quant/layer.ts";
import type { WeightFormat } from "../formats/packing.ts";

const N = 256, K = 256, R = 16, CALIB = 128, HELD = 128;
const ALPHAS = [0, 0.25, 0.5, 0.75, 1];
const SMOOTH_OVER_SVDQUANT = 1.6;
const RTN_OVER_SMOOTH = 1.2;
const INT4_OVER_NVFP4_SVDQUANT = 1.3;
const INT4_OVER_NVFP4_RTN = 1.1;
const RTN_OVER_DILATE = 1.4;

function studentT(rng: Rng, dof: number): number {
  let chi2 = 0;
  for (let i = 0; i < dof; i++) chi2 += rng.normal() ** 2;
  return rng.normal() / Math.sqrt(chi2 / dof);
}

/** The synthetic layer described in the module docs. */
function syntheticLayer(rng: Rng) {
  const chScale = Float64Array.from({ length: K }, () => Math.exp(0.3 * rng.normal()));
  const outliers = new Set<number>();
  while (outliers.size < 4) outliers.add(rng.int(0, K - 1));
  for (const c of outliers) chScale[c] *= 30;
  const rows = CALIB + HELD, x = new Float32Array(rows * K);
  for (let i = 0; i < rows; i++) {
    const rowScale = Math.exp(0.25 * rng.normal());
    for (let c = 0; c < K; c++) x[i * K + c] = studentT(rng, 4) * chScale[c] * rowScale;
  }
  const w = rng.normals(N * K, 1 / Math.sqrt(K));
  for (let j = 0; j < 4; j++) {
    const row = rng.int(0, N - 1);
    for (let c = 0; c < K; c++) w[row * K + c] *= 8;
  }
  const calib = x.slice(0, CALIB * K), held = x.slice(CALIB * K);
  const amax = new Float32Array(K);
  for (let i = 0; i < calib.length; i++) amax[i % K] = Math.max(amax[i % K], Math.abs(calib[i]));
  const stats: LayerStats = { k: K, amax: [amax], samples: calib, s: CALIB };
  return { w, stats, held };
}

interface Measured {
  errors: Map<string, number>;
  w: Float32Array;
}

let measured: Promise<Measured> | null = null;

const LAYERS = 2;

/**
 * Quantizes LAYERS independent layers once per (method, format) and scores each on its held-out
 * rows; a method's error is the mean over the layers (two draws halve the spread of the ratios).
 */
function measure(): Promise<Measured> {
  measured ??= (async () => {
    const rng = freshRng("quant method bars");
    const errors = new Map<string, number>();
    const runs: [Method, WeightFormat][] = [
      ["svdquant", "int4"],
      ["smooth", "int4"],
      ["rtn", "int4"],
      ["dilate", "int4"],
      ["svdquant", "nvfp4"],
      ["rtn", "nvfp4"],
    ];
    let w: Float32Array = new Float32Array(0);
    for (let layer = 0; layer < LAYERS; layer++) {
      const d = syntheticLayer(rng);
      w = d.w;
      const yHeld = await floatOutput(d.w, null, d.held, { m: HELD, n: N, k: K });
      for (const [method, format] of runs) {
        const q = await quantizeLinear(`blocks.${layer}.attn.qkv`, d.w, null, N, K, {
          method,
          format,
          r: R,
          stats: d.stats,
          alphas: ALPHAS,
          rounds: 1,
        });
        const e = relativeError(await evaluateQuantized(q, d.held, HELD), yHeld);
        const key = `${method}/${format}`;
        errors.set(key, (errors.get(key) ?? 0) + e / LAYERS);
      }
    }
    console.log([...errors].map(([k, e]) => `${k} ${e.toFixed(4)}`).join(", "));
    return { errors, w };
  })();
  return measured;
}

function ratio(errors: Map<string, number>, worse: string, better: string): number {
  const r = errors.get(worse)! / errors.get(better)!;
  console.log(`${worse} / ${better} = ${r.toFixed(2)}`);
  return r;
}

Deno.test("method bars: SVDQuant < smoothing-only < RTN W4A4 (INT4), by stated margins", async () => {
  const { errors } = await measure();
  const a = ratio(errors, "smooth/int4", "svdquant/int4");
  const b = ratio(errors, "rtn/int4", "smooth/int4");
  assert.ok(
    a >= SMOOTH_OVER_SVDQUANT,
    `smoothing-only / SVDQuant = ${a}, bar ${SMOOTH_OVER_SVDQUANT}`,
  );
  assert.ok(b >= RTN_OVER_SMOOTH, `RTN / smoothing-only = ${b}, bar ${RTN_OVER_SMOOTH}`);
});

Deno.test("method bars: NVFP4 beats INT4 (SVDQuant and RTN)", async () => {
  const { errors } = await measure();
  const a = ratio(errors, "svdquant/int4", "svdquant/nvfp4");
  const b = ratio(errors, "rtn/int4", "rtn/nvfp4");
  assert.ok(
    a >= INT4_OVER_NVFP4_SVDQUANT,
    `SVDQuant INT4 / NVFP4 = ${a}, bar ${INT4_OVER_NVFP4_SVDQUANT}`,
  );
  assert.ok(b >= INT4_OVER_NVFP4_RTN, `RTN INT4 / NVFP4 = ${b}, bar ${INT4_OVER_NVFP4_RTN}`);
});

Deno.test("method bars: dilation keeps every out-channel range, is invertible, beats RTN", async () => {
  const { errors, w } = await measure();
  const s = dilationFactors(w, N, K);
  const wd = applyDilation(w, N, K, s);
  for (let row = 0; row < N; row++) {
    let lo = Infinity, hi = -Infinity, dlo = Infinity, dhi = -Infinity;
    for (let c = 0; c < K; c++) {
      lo = Math.min(lo, w[row * K + c]);
      hi = Math.max(hi, w[row * K + c]);
      dlo = Math.min(dlo, wd[row * K + c]);
      dhi = Math.max(dhi, wd[row * K + c]);
    }
    assert.ok(dlo >= lo && dhi <= hi, `row ${row}: [${dlo}, ${dhi}] outside [${lo}, ${hi}]`);
  }
  // Invertible: (X/s)·(s·W)ᵀ = X·Wᵀ to f32 precision (|Δ| ≤ 2⁻²³ Σ|x·w| per output).
  const rng = freshRng("dilation invert");
  const m = 4, x = rng.normals(m * K, 3), xd = dilateActivations(x, m, K, s);
  for (let i = 0; i < m; i++) {
    for (let row = 0; row < N; row++) {
      let y = 0, yd = 0, mag = 0;
      for (let c = 0; c < K; c++) {
        y += x[i * K + c] * w[row * K + c];
        yd += xd[i * K + c] * wd[row * K + c];
        mag += Math.abs(x[i * K + c] * w[row * K + c]);
      }
      assert.ok(Math.abs(y - yd) <= 2 ** -23 * mag, `Y[${i}, ${row}] = ${yd}, expected ${y}`);
    }
  }
  const grown = s.filter((v) => v > 1).length;
  console.log(`dilation: ${grown}/${K} channels scaled, max factor ${Math.max(...s).toFixed(3)}`);
  ratio(errors, "dilate/int4", "smooth/int4");
  ratio(errors, "dilate/int4", "svdquant/int4");
  const r = ratio(errors, "rtn/int4", "dilate/int4");
  assert.ok(r >= RTN_OVER_DILATE, `RTN / dilate = ${r}, bar ${RTN_OVER_DILATE}`);
});
