import assert from "node:assert/strict";
import { gaussianNoise } from "./random.ts";
import {
  ddim,
  ddpm,
  ddpmSchedule,
  dpmSolver2M,
  flowEuler,
  type ModelFn,
  sample,
  type Sampler,
  spacedTimesteps,
} from "./schedulers.ts";

const SCHEDULE = ddpmSchedule();

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function rms(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s / a.length);
}

/** The exact ε for a known clean sample: ε = (x_t − √ᾱ_t·x₀)/√(1−ᾱ_t). */
function oracleEps(x0: Float32Array): ModelFn {
  return (x, t) => {
    const a = SCHEDULE.alphasCumprod[t];
    return Promise.resolve(x.map((v, i) => (v - Math.sqrt(a) * x0[i]) / Math.sqrt(1 - a)));
  };
}

Deno.test("ddpmSchedule is DiT's linear schedule", () => {
  // Values from numpy: np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)).
  assert.equal(SCHEDULE.trainSteps, 1000);
  assert.equal(SCHEDULE.betas[0], 1e-4);
  assert(Math.abs(SCHEDULE.betas[999] - 0.02) < 1e-17);
  assert(Math.abs(SCHEDULE.alphasCumprod[0] - 0.9999) < 1e-15);
  assert(Math.abs(SCHEDULE.alphasCumprod[499] / 0.07858724288177824 - 1) < 1e-12);
  assert(Math.abs(SCHEDULE.alphasCumprod[999] / 4.035829765375676e-05 - 1) < 1e-12);
  assert.throws(() => ddpmSchedule({ trainSteps: 1 }), RangeError);
  assert.throws(() => ddpmSchedule({ betaStart: 0.1, betaEnd: 0.01 }), RangeError);
});

Deno.test("timesteps: descending, in range, requested count, diffusers' values", () => {
  assert.deepEqual(spacedTimesteps(10, "leading"), [
    900,
    800,
    700,
    600,
    500,
    400,
    300,
    200,
    100,
    0,
  ]);
  assert.deepEqual(spacedTimesteps(10, "trailing"), [
    999,
    899,
    799,
    699,
    599,
    499,
    399,
    299,
    199,
    99,
  ]);
  // numpy: np.round(np.arange(1000, 0, -1000 / n)) - 1 (round half to even)
  assert.deepEqual(spacedTimesteps(7, "trailing"), [999, 856, 713, 570, 428, 285, 142]);
  assert.deepEqual(spacedTimesteps(400, "trailing").slice(0, 6), [999, 997, 994, 991, 989, 987]);
  const samplers = (steps: number): Sampler[] => [
    ddim({ steps }),
    ddim({ steps, spacing: "trailing" }),
    dpmSolver2M({ steps }),
    dpmSolver2M({ steps, spacing: "leading" }),
    flowEuler({ steps }),
    flowEuler({ steps, shift: 3 }),
  ];
  for (const steps of [1, 2, 3, 7, 10, 25, 50, 333, 999, 1000]) {
    for (const s of samplers(steps)) {
      const ts = s.timesteps;
      assert.equal(ts.length, steps, `${s.name} ${steps}`);
      for (let i = 0; i < steps; i++) {
        assert(ts[i] >= 0 && ts[i] <= 1000 && (i === 0 || ts[i] < ts[i - 1]), `${s.name} ${ts}`);
        if (s.name !== "flow-euler") assert(Number.isInteger(ts[i]) && ts[i] <= 999);
      }
    }
  }
  assert.deepEqual(spacedTimesteps(1000, "leading"), spacedTimesteps(1000, "trailing"));
  const flow = flowEuler({ steps: 4, shift: 3 });
  assert.equal(flow.sigmas[0], 1);
  assert.equal(flow.sigmas[4], 0);
  assert(Math.abs(flow.sigmas[2] - 0.75) < 1e-15); // 3·½ / (1 + 2·½)
  for (const steps of [0, -1, 1.5, 1001, NaN]) {
    assert.throws(() => ddim({ steps }), { name: "RangeError", message: /steps/ });
    assert.throws(() => dpmSolver2M({ steps }), { name: "RangeError", message: /steps/ });
    assert.throws(() => flowEuler({ steps }), { name: "RangeError", message: /steps/ });
  }
  assert.throws(() => flowEuler({ steps: 4, shift: 0 }), { name: "RangeError", message: /shift/ });
  // @ts-expect-error: a spacing that does not exist
  assert.throws(() => ddim({ steps: 4, spacing: "linear" }), {
    name: "RangeError",
    message: /spacing/,
  });
});

Deno.test("DDIM and DPM-Solver++ recover x₀ from pure noise with the exact ε", async () => {
  const n = 512;
  const x0 = gaussianNoise(11, n).map((v) => 0.8 * v + 0.3);
  const model = oracleEps(x0);
  let worst = 0;
  for (const steps of [1, 2, 3, 7, 10, 50, 250, 1000]) {
    for (const spacing of ["leading", "trailing"] as const) {
      for (const sampler of [ddim({ steps, spacing }), dpmSolver2M({ steps, spacing })]) {
        const out = await sample(sampler, gaussianNoise(12, n), { model });
        const err = maxAbsDiff(out, x0);
        worst = Math.max(worst, err);
        // The only error left is float32 rounding of ε (|ε| ≲ 4), amplified by σ/α in x̂₀ at
        // the last model call: 2e-5 after one step from t = 999, where σ/α = 157.
        const a = SCHEDULE.alphasCumprod[sampler.timesteps[steps - 1]];
        const tol = 1e-6 + 2.5e-7 * Math.sqrt((1 - a) / a);
        assert(err < tol, `${sampler.name} ${steps} ${spacing}: max error ${err}, bound ${tol}`);
      }
    }
  }
  console.log(`max |x - x0| over all step counts: ${worst.toExponential(2)} (1 step from t=999)`);
});

Deno.test("flow Euler with the exact straight-path velocity recovers x₀", async () => {
  const n = 512;
  const x0 = gaussianNoise(21, n).map((v) => 0.5 * v - 0.2);
  // On x_σ = (1−σ)·x₀ + σ·noise the velocity is v = noise − x₀ = (x_σ − x₀)/σ.
  const model: ModelFn = (x, t) => Promise.resolve(x.map((v, i) => (v - x0[i]) / (t / 1000)));
  let worst = 0;
  for (const steps of [1, 2, 5, 28, 100]) {
    for (const shift of [1, 3, 0.5]) {
      const out = await sample(flowEuler({ steps, shift }), gaussianNoise(22, n), { model });
      const err = maxAbsDiff(out, x0);
      worst = Math.max(worst, err);
      assert(err < 1e-5, `flow-euler ${steps} shift ${shift}: max error ${err}`);
    }
  }
  console.log(`max |x - x0|: ${worst.toExponential(2)}`);
});

/**
 * The exact ε of a 1-D Gaussian mixture Σ w_k N(μ_k, s_k²) under the DDPM forward process:
 * p_t = Σ w_k N(√ᾱ μ_k, ᾱ s_k² + 1 − ᾱ), ε = −√(1−ᾱ)·∇ log p_t.
 */
function mixtureEps(w: number[], mu: number[], s: number[]): ModelFn {
  return (x, t) => {
    const a = SCHEDULE.alphasCumprod[t], sa = Math.sqrt(a), sig = Math.sqrt(1 - a);
    const logp = new Float64Array(w.length), grad = new Float64Array(w.length);
    return Promise.resolve(x.map((xi) => {
      let top = -Infinity;
      for (let k = 0; k < w.length; k++) {
        const v = a * s[k] * s[k] + 1 - a, d = xi - sa * mu[k];
        logp[k] = Math.log(w[k]) - 0.5 * Math.log(v) - 0.5 * d * d / v;
        grad[k] = -d / v;
        top = Math.max(top, logp[k]);
      }
      let z = 0, score = 0;
      for (let k = 0; k < w.length; k++) {
        const e = Math.exp(logp[k] - top);
        z += e;
        score += e * grad[k];
      }
      return -sig * score / z;
    }));
  };
}

Deno.test("DPM-Solver++(2M) in 10 steps beats DDIM in 10 steps on a Gaussian mixture", async () => {
  // Asymmetric two-mode data, 0.3·N(−1.5, 0.2²) + 0.7·N(1, 0.5²), where the true score is
  // analytic. Reference: 1000-step DDIM from the same noise (its own error against
  // 1000-step DPM-Solver++ is 4e-3 rms). Measured rms errors against it at 10 steps
  // (trailing spacing): DDIM 0.20, DPM-Solver++(2M) 0.096; at 20: 0.13 vs 0.045. Not a law at
  // 10 steps: on the symmetric 0.5·N(∓2, 0.3²) both give 0.11 (at 20: 0.057 vs 0.046, at 40:
  // 0.030 vs 0.0087, where second order takes over).
  const model = mixtureEps([0.3, 0.7], [-1.5, 1], [0.2, 0.5]);
  const noise = gaussianNoise(3, 2000);
  const ref = await sample(ddim({ steps: 1000, spacing: "trailing" }), noise, { model });
  const eDdim = rms(await sample(ddim({ steps: 10, spacing: "trailing" }), noise, { model }), ref);
  const eDpm = rms(await sample(dpmSolver2M({ steps: 10 }), noise, { model }), ref);
  console.log(
    `rms error vs 1000-step DDIM: ddim(10) ${eDdim.toFixed(4)}, dpm(10) ${eDpm.toFixed(4)}`,
  );
  assert(eDpm < 0.12, `dpm-solver++(2m) 10 steps: rms ${eDpm}`);
  assert(eDpm < 0.6 * eDdim, `dpm ${eDpm} vs ddim ${eDdim}`);
});

Deno.test("sample reports progress and stops when aborted", async () => {
  const x0 = gaussianNoise(5, 16);
  let calls = 0;
  const inner = oracleEps(x0);
  const model: ModelFn = (x, t) => (calls++, inner(x, t));
  const progress: string[] = [];
  const sampler = ddim({ steps: 5 });
  await sample(sampler, gaussianNoise(6, 16), {
    model,
    onStep: (i, n) => progress.push(`${i}/${n}`),
  });
  assert.deepEqual(progress, ["1/5", "2/5", "3/5", "4/5", "5/5"]);

  // Abort from the progress callback: no further model call.
  calls = 0;
  const stop = new AbortController();
  const onStep = (i: number) => i === 2 && stop.abort();
  await assert.rejects(
    sample(dpmSolver2M({ steps: 10 }), gaussianNoise(6, 16), {
      model,
      onStep,
      signal: stop.signal,
    }),
    { name: "AbortError" },
  );
  assert.equal(calls, 2);

  // Abort while the model runs: its output is discarded, no step is taken.
  let steps = 0;
  const mid = new AbortController();
  const slow: ModelFn = async (x, t) => {
    mid.abort(new Error("user cancelled"));
    return await inner(x, t);
  };
  await assert.rejects(
    sample(ddim({ steps: 3 }), gaussianNoise(6, 16), {
      model: slow,
      onStep: () => steps++,
      signal: mid.signal,
    }),
    { message: "user cancelled" },
  );
  assert.equal(steps, 0);

  // Already aborted: the model is never called.
  calls = 0;
  await assert.rejects(
    sample(ddim({ steps: 3 }), gaussianNoise(6, 16), { model, signal: AbortSignal.abort() }),
    { name: "AbortError" },
  );
  assert.equal(calls, 0);
});

Deno.test("step checks its index, the output length and DPM-Solver++'s order", () => {
  const x = new Float32Array(8), eps = new Float32Array(8);
  for (const s of [ddim({ steps: 4 }), dpmSolver2M({ steps: 4 }), flowEuler({ steps: 4 })]) {
    assert.throws(() => s.step(4, x, eps), { name: "RangeError", message: /i must be/ });
    assert.throws(() => s.step(-1, x, eps), { name: "RangeError" });
    // A learned-sigma output passed whole (2C channels) is refused with a hint.
    assert.throws(() => s.step(0, x, new Float32Array(16)), {
      name: "TypeError",
      message: /ε half/,
    });
  }
  const dpm = dpmSolver2M({ steps: 4 });
  assert.throws(() => dpm.step(1, x, eps), { name: "RangeError", message: /in order/ });
  dpm.step(0, x, eps);
  dpm.step(1, x, eps);
  assert.throws(() => dpm.step(3, x, eps), { name: "RangeError", message: /in order/ });
  dpm.step(0, x, eps); // starts over
  assert.throws(() => dpm.step(1, new Float32Array(4), new Float32Array(4)), TypeError);
});

/** The oracle ε followed by a constant variance interpolation v, for samplers with usesVariance. */
function withVariance(model: ModelFn, v: number): ModelFn {
  return async (x, t) => {
    const out = new Float32Array(2 * x.length);
    out.set(await model(x, t));
    out.fill(v, x.length);
    return out;
  };
}

Deno.test("DDPM recovers x₀ with the exact ε, whatever noise it adds on the way", async () => {
  const n = 256;
  const x0 = gaussianNoise(31, n).map((v) => 0.6 * v - 0.1);
  for (const steps of [1, 2, 10, 100]) {
    for (const variance of ["learned", "posterior"] as const) {
      let calls = 0;
      const s = ddpm({
        steps,
        variance,
        noise: (i, len) => (calls++, gaussianNoise(32, len, i + 1)),
      });
      assert.equal(s.usesVariance, variance === "learned");
      const model = variance === "learned" ? withVariance(oracleEps(x0), 0.3) : oracleEps(x0);
      const out = await sample(s, gaussianNoise(33, n), { model });
      // The last step returns x̂₀, which the exact ε gives back up to float32 rounding.
      const a = SCHEDULE.alphasCumprod[s.timesteps[steps - 1]];
      const err = maxAbsDiff(out, x0), tol = 1e-6 + 2.5e-7 * Math.sqrt((1 - a) / a);
      assert(err < tol, `ddpm ${steps} ${variance}: max error ${err}, bound ${tol}`);
      assert.equal(calls, steps - 1, "noise is drawn once per step but the last");
    }
  }
});

Deno.test("DDPM with the exact score samples a Gaussian mixture", async () => {
  // 0.3·N(−1.5, 0.2²) + 0.7·N(1, 0.5²) as in the DPM-Solver++ test; 4000 independent chains,
  // split at −0.25. Exact values of that split (the right mode's tail below it holds 0.62% of its
  // mass): left weight 0.3043, right mean 1.0088, right sd 0.489; standard errors at n = 4000:
  // 0.0073, 0.0095, 0.0067. The tolerances are 4 standard errors.
  const model = mixtureEps([0.3, 0.7], [-1.5, 1], [0.2, 0.5]);
  const n = 4000;
  const cases: [number, "learned" | "posterior", number][] = [
    [1000, "posterior", 0],
    [1000, "learned", 1], // σ² = β: the other end of the interpolation, also exact at T steps
    [250, "learned", -0.5],
  ];
  for (const [steps, variance, v] of cases) {
    const s = ddpm({ steps, variance, noise: (i, len) => gaussianNoise(41, len, i + 1) });
    const m = variance === "learned" ? withVariance(model, v) : model;
    const out = await sample(s, gaussianNoise(40, n), { model: m });
    const left = out.filter((x) => x < -0.25), right = out.filter((x) => x >= -0.25);
    const w = left.length / n;
    const mean = right.reduce((p, x) => p + x, 0) / right.length;
    const sd = Math.sqrt(right.reduce((p, x) => p + (x - mean) ** 2, 0) / right.length);
    console.log(
      `ddpm ${steps} ${variance} v=${v}: left weight ${w.toFixed(4)}, right mean ` +
        `${mean.toFixed(4)} sd ${sd.toFixed(4)}`,
    );
    assert(Math.abs(w - 0.3043) < 0.029, `left-mode weight ${w}, expected 0.3043`);
    assert(Math.abs(mean - 1.0088) < 0.038, `right-mode mean ${mean}, expected 1.0088`);
    assert(Math.abs(sd - 0.489) < 0.027, `right-mode sd ${sd}, expected 0.489`);
  }
});

Deno.test("DDPM checks its options, the output length and the noise it is given", () => {
  const noise = (_i: number, len: number) => new Float32Array(len);
  const x = new Float32Array(8);
  const learned = ddpm({ steps: 4, noise });
  // Learned variance needs ε and v: the ε half alone is refused, saying what is expected.
  assert.throws(() => learned.step(0, x, new Float32Array(8)), {
    name: "TypeError",
    message: /expected 16 .*learned variance/,
  });
  assert.throws(() => learned.step(4, x, new Float32Array(16)), { name: "RangeError" });
  const posterior = ddpm({ steps: 4, variance: "posterior", noise });
  assert.throws(() => posterior.step(0, x, new Float32Array(16)), { name: "TypeError" });
  const bad = ddpm({ steps: 4, noise: () => new Float32Array(3) });
  assert.throws(() => bad.step(0, x, new Float32Array(16)), {
    name: "TypeError",
    message: /noise\(0, 8\) must return/,
  });
  assert.throws(() => ddpm({ steps: 0, noise }), { name: "RangeError", message: /steps/ });
  // @ts-expect-error: a variance mode that does not exist
  assert.throws(() => ddpm({ steps: 4, noise, variance: "large" }), RangeError);
  // @ts-expect-error: noise is required
  assert.throws(() => ddpm({ steps: 4 }), { name: "TypeError", message: /noise/ });
});
