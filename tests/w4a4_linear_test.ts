/**
 * The whole W4A4 + low-rank linear, end to end: the quantizer (smoothing search, SVD low-rank
 * branch, clipped residual) writes its tensors, the GPU runs quantize_act_lowrank +
 * gemm_w4a4_lowrank on held-out activations, and the output is compared with (a) the quantizer's
 * own CPU simulation of the same arithmetic and (b) the float layer. The method's bars: SVDQuant
 * beats plain W4A4 round-to-nearest, and NVFP4 beats INT4, by stated margins.
 */
import assert from "node:assert/strict";
import { type QuantizedLinear, quantizeLinear } from "../quant/layer.ts";
import { syntheticStats } from "../quant/calib.ts";
import { W4A4Linear } from "../runtime/linear.ts";
import { freshRng, HAS_GPU, maxErrors, NO_GPU_REASON, testGpu } from "../gpu/_testing.ts";
import { evaluateQuantized } from "../quant/layer.ts";

const N = 192, K = 256, M = 48;
if (!HAS_GPU) console.warn(`w4a4 linear tests skipped: ${NO_GPU_REASON}`);

function rel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** A layer with outlier input channels (in the activations) and a few outlier weight rows. */
function makeLayer(seed: number, postGelu: boolean) {
  const rng = freshRng(`w4a4 linear layer (seed offset ${seed})`);
  const w = rng.normals(N * K, 1 / Math.sqrt(K));
  for (let i = 0; i < 3; i++) {
    const row = rng.int(0, N - 1);
    for (let k = 0; k < K; k++) w[row * K + k] *= 6;
  }
  const bias = rng.normals(N, 0.1);
  const name = "blocks.0.mlp.fc";
  // calibration rows and held-out rows from the same heavy-tailed distribution
  const stats = syntheticStats(new Map([[name, K]]), {
    samples: 128 + M,
    seed: rng.int(0, 2 ** 31),
    postGelu: postGelu ? [name] : [],
  }).layers.get(name)!;
  const calib = { ...stats, samples: stats.samples.slice(0, 128 * K), s: 128 };
  const heldOut = stats.samples.slice(128 * K);
  return { name, w, bias, calib, heldOut };
}

async function floatY(w: Float32Array, bias: Float32Array, x: Float32Array): Promise<Float64Array> {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias[n];
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  }
  return await Promise.resolve(y);
}

async function runOnGpu(q: QuantizedLinear, x: Float32Array): Promise<Float32Array> {
  const gpu = (await testGpu())!;
  const lin = await W4A4Linear.create(gpu, {
    name: q.name,
    m: M,
    n: N,
    k: K,
    format: q.format as "int4" | "nvfp4",
    actMode: q.actMode!,
    dtype: "f32",
  }, q.tensors);
  const xb = await gpu.upload("buffer test x", x);
  const yb = await gpu.upload("buffer test y", new Float32Array(M * N).fill(NaN));
  try {
    await gpu.runChecked("run w4a4 linear", lin.dispatch({ x: xb, y: yb }));
    return new Float32Array(await gpu.read(yb));
  } finally {
    lin.destroy();
    gpu.destroy(xb, yb);
  }
}

for (const postGelu of [false, true]) {
  Deno.test({
    name: `w4a4 linear end to end${postGelu ? " (post-GELU, unsigned activations)" : ""}: ` +
      "GPU = quantizer simulation; SVDQuant < RTN; NVFP4 < INT4",
    ignore: !HAS_GPU, // NO_GPU_REASON
    fn: async () => {
      const errs: Record<string, number> = {};
      // two independent layers, errors averaged, so one unlucky draw does not decide
      for (const seed of [0, 1]) {
        const { name, w, bias, calib, heldOut } = makeLayer(seed, postGelu);
        const yFloat = await floatY(w, bias, heldOut);
        for (const format of ["int4", "nvfp4"] as const) {
          for (const method of ["svdquant", "rtn"] as const) {
            const q = await quantizeLinear(name, w, bias, N, K, {
              method,
              format,
              r: 32,
              stats: calib,
              postGelu,
              alphas: [0.3, 0.5, 0.7],
              rounds: 1,
            });
            const yGpu = await runOnGpu(q, heldOut);
            const ySim = await evaluateQuantized(q, heldOut, M);
            // the GPU runs exactly the simulated arithmetic: only f32 rounding differs
            const e = maxErrors(yGpu, ySim);
            const scale = Math.max(...Array.from(ySim, Math.abs));
            assert.ok(
              e.maxAbs <= 2e-4 * scale,
              `${method} ${format}: GPU vs simulation max abs err ${e.maxAbs} (scale ${scale})`,
            );
            const key = `${method}/${format}`;
            errs[key] = (errs[key] ?? 0) + rel(yGpu, yFloat) / 2;
          }
        }
      }
      console.log(
        `held-out relative output error${postGelu ? " (post-GELU)" : ""}: ` +
          Object.entries(errs).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(", "),
      );
      // Bars (measured first over several fresh seeds, then set with headroom; see the log line
      // above): SVDQuant cuts RTN's error at least 1.5× in both formats (measured 3–12×).
      // NVFP4 SVDQuant beats INT4 SVDQuant by ≥ 1.3× on signed inputs (measured 1.67–1.72×) and
      // by ≥ 1.05× after a GELU (measured 1.18–1.22×: INT4 gains the unsigned mode there, NVFP4
      // has none).
      for (const f of ["int4", "nvfp4"]) {
        assert.ok(
          errs[`rtn/${f}`] > 1.5 * errs[`svdquant/${f}`],
          `${f}: RTN ${errs[`rtn/${f}`]} vs SVDQuant ${errs[`svdquant/${f}`]}`,
        );
      }
      const nvfp4Bar = postGelu ? 1.05 : 1.3;
      assert.ok(
        errs["svdquant/int4"] > nvfp4Bar * errs["svdquant/nvfp4"],
        `SVDQuant INT4 ${errs["svdquant/int4"]} vs NVFP4 ${errs["svdquant/nvfp4"]}`,
      );
    },
  });
}
