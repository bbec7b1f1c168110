/**
 * Quality guarantees of the quantizer on the tiny fixture (deterministic): NVFP4 SVDQuant is
 * not worse than INT4 SVDQuant on layers with planted outlier channels, a larger rank never
 * gives a larger layer error, the coarse-to-fine α search lands within 1% of the full grid, and
 * `budget` meets its bytes and beats the uniform policy of the same bytes.
 */
import assert from "node:assert/strict";
import { syntheticStats } from "../quant/calib.ts";
import { QuantFile } from "../formats/format.ts";
import { quantizeLinear, quantizeLinearRanks } from "../quant/layer.ts";
import { quantizeCheckpoint } from "./model.ts";
import { type BudgetLayer, type BudgetPlan, parseBudget, planBudget } from "../quant/budget.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import { DEFAULT_ALPHAS, searchSmoothing } from "../quant/smooth.ts";

const FIXTURE = new URL("../tests/fixtures/tiny_dit.safetensors", import.meta.url).pathname;

/** The fixture's linear `base` (weight, bias, shape) and synthetic stats with planted outliers. */
async function fixtureLayer(base: string, postGelu = false) {
  const reader = await SafetensorsReader.open(FIXTURE);
  try {
    const [n, k] = reader.tensors.get(`${base}.weight`)!.shape;
    const w = await reader.readFloat32(`${base}.weight`);
    const bias = await reader.readFloat32(`${base}.bias`);
    const stats = syntheticStats(new Map([[base, k]]), {
      samples: 96,
      outlierFraction: 1 / 32,
      postGelu: postGelu ? [base] : [],
    }).layers.get(base)!;
    return { n, k, w, bias, stats };
  } finally {
    reader.close();
  }
}

const LAYERS: [string, boolean][] = [
  ["blocks.0.attn.qkv", false],
  ["blocks.1.attn.proj", false],
  ["blocks.0.mlp.fc1", false],
  ["blocks.1.mlp.fc2", true],
];

Deno.test("NVFP4 SVDQuant ≤ INT4 SVDQuant layer error on layers with planted outliers", async () => {
  for (const [base, postGelu] of LAYERS) {
    const { n, k, w, bias, stats } = await fixtureLayer(base, postGelu);
    const err = {} as Record<string, number>;
    for (const format of ["int4", "nvfp4"] as const) {
      const q = await quantizeLinear(base, w, bias, n, k, {
        method: "svdquant",
        format,
        r: 8,
        stats,
        postGelu,
        rounds: 2,
      });
      err[format] = q.relError;
    }
    console.log(`${base}: int4 ${err.int4.toFixed(4)}, nvfp4 ${err.nvfp4.toFixed(4)}`);
    assert.ok(err.nvfp4 <= err.int4, `${base}: NVFP4 ${err.nvfp4} > INT4 ${err.int4}`);
  }
});

Deno.test("rank that never hurts: along the ranks the layer error never grows", async () => {
  const ranks = [0, 4, 8, 16, 32];
  for (const [base, postGelu] of LAYERS.slice(0, 2)) {
    const { n, k, w, bias, stats } = await fixtureLayer(base, postGelu);
    for (const format of ["int4", "nvfp4"] as const) {
      const qs = await quantizeLinearRanks(base, w, bias, n, k, ranks, {
        method: "svdquant",
        format,
        stats,
        postGelu,
        rounds: 1,
      });
      const errs = qs.map((q) => q.relError);
      console.log(`${base} ${format}: ${errs.map((e) => e.toFixed(4)).join(" ")}`);
      for (let i = 1; i < errs.length; i++) {
        assert.ok(
          errs[i] <= errs[i - 1],
          `${format} rank ${ranks[i]}: ${errs[i]} > ${errs[i - 1]}`,
        );
        assert.ok(qs[i].r <= ranks[i], "a stored rank never exceeds the rank asked for");
      }
    }
  }
  await assert.rejects(
    () =>
      quantizeLinearRanks("x", new Float32Array(64 * 64), null, 64, 64, [8, 0], {
        method: "svdquant",
        format: "int4",
      }),
    RangeError,
  );
});

Deno.test("rank that never hurts, plain --rank: a layer where rank R is worse stores rank 0", async () => {
  const base = "blocks.0.attn.qkv";
  const { n, k, w: w0, bias } = await fixtureLayer(base);
  const { stats } = await fixtureLayer(base);
  // The fixture's weight and inputs snapped onto the INT4 g64 grids (power-of-two scales, a ±7
  // in every group): rank 0 at λ = 1 is exact, while any rank R > 0 leaves an off-grid residual.
  const snap = (v: Float32Array, scaleOf: (amax: number) => number) => {
    for (let g = 0; g < v.length; g += 64) {
      let amax = 0;
      for (let i = 0; i < 64; i++) amax = Math.max(amax, Math.abs(v[g + i]));
      const sc = scaleOf(amax);
      for (let i = 0; i < 64; i++) {
        v[g + i] = Math.max(-7, Math.min(7, Math.round(v[g + i] / sc))) * sc;
      }
      v[g] = 7 * sc;
    }
  };
  const w = w0.slice();
  snap(w, () => 1 / 16);
  snap(stats.samples, (amax) => 2 ** Math.round(Math.log2(amax / 7)));
  const opts = { method: "svdquant", format: "int4", stats, rounds: 1 } as const;
  const zero = await quantizeLinear(base, w, bias, n, k, { ...opts, r: 0 });
  const onlyR = await quantizeLinear(base, w, bias, n, k, { ...opts, r: 8, rankZeroFloor: false });
  const plain = await quantizeLinear(base, w, bias, n, k, { ...opts, r: 8 });
  console.log(
    `rank 0 ${zero.relError}, rank 8 alone ${onlyR.relError}, plain --rank 8 ${plain.relError}`,
  );
  assert.ok(onlyR.relError > zero.relError, "the case under test: rank 8 alone is worse");
  assert.ok(plain.relError <= zero.relError, `${plain.relError} > rank-0 ${zero.relError}`);
  assert.equal(plain.r, 0);
  // On an ordinary layer the rank-R fit wins and is what is stored.
  const real = await fixtureLayer(base);
  const r8 = await quantizeLinear(base, real.w, real.bias, n, k, {
    ...opts,
    stats: real.stats,
    r: 8,
  });
  const r0 = await quantizeLinear(base, real.w, real.bias, n, k, {
    ...opts,
    stats: real.stats,
    r: 0,
  });
  assert.equal(r8.r, 8);
  assert.ok(r8.relError <= r0.relError);
});

Deno.test("coarse-to-fine α search: within 1% of the full 0.05 grid's error", async () => {
  for (const [base, postGelu] of LAYERS) {
    const { n, k, w, stats } = await fixtureLayer(base, postGelu);
    for (const format of ["int4", "nvfp4"] as const) {
      const opts = { r: 8, format, postGelu };
      const fast = await searchSmoothing(w, n, k, stats, opts);
      const full = await searchSmoothing(w, n, k, stats, { ...opts, alphas: DEFAULT_ALPHAS });
      console.log(
        `${base} ${format}: coarse-to-fine α=${fast.alpha} ${fast.error.toFixed(5)} ` +
          `(${fast.tried.length} candidates), full grid α=${full.alpha} ${full.error.toFixed(5)} ` +
          `(${full.tried.length})`,
      );
      assert.ok(fast.tried.length <= 19 && full.tried.length === 41);
      assert.ok(fast.error <= 1.01 * full.error, `${fast.error} vs ${full.error}`);
    }
  }
});

/** Brute force over every assignment (tiny cases only). */
function bruteForce(layers: BudgetLayer[], budget: number): number {
  let best = Infinity;
  const rec = (i: number, bytes: number, cost: number) => {
    if (bytes > budget) return;
    if (i === layers.length) {
      best = Math.min(best, cost);
      return;
    }
    for (const c of layers[i].choices) rec(i + 1, bytes + c.bytes, cost + c.error ** 2);
  };
  rec(0, 0, 0);
  return best;
}

Deno.test("planBudget: meets the budget, never worse than uniform, near the brute force", () => {
  let seed = 7;
  const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  let worst = 1;
  for (let trial = 0; trial < 40; trial++) {
    const layers: BudgetLayer[] = Array.from({ length: 5 }, (_, i) => {
      const size = 1000 + Math.floor(rand() * 3000), sens = 0.02 + rand() * 0.1;
      return {
        name: `l${i}`,
        choices: [0, 16, 32, 64].flatMap((r) =>
          (["int4", "nvfp4"] as const).map((format) => ({
            format,
            r,
            bytes: size * (format === "nvfp4" ? 0.56 : 0.52) + r * 40,
            error: sens * (format === "nvfp4" ? 0.9 + 0.2 * rand() : 1) / (1 + r / 16),
          }))
        ),
      };
    });
    const min = layers.reduce((a, l) => a + Math.min(...l.choices.map((c) => c.bytes)), 0);
    const budget = min * (1.05 + rand() * 0.5);
    const plan = planBudget(layers, budget);
    assert.ok(plan.bytes <= budget);
    for (const f of ["int4", "nvfp4"]) {
      for (const r of [0, 16, 32, 64]) {
        const uni = layers.map((l) => l.choices.find((c) => c.format === f && c.r === r)!);
        const bytes = uni.reduce((a, c) => a + c.bytes, 0);
        if (bytes <= budget) assert.ok(plan.cost <= uni.reduce((a, c) => a + c.error ** 2, 0));
      }
    }
    const opt = bruteForce(layers, budget);
    assert.ok(plan.cost >= opt - 1e-15);
    worst = Math.max(worst, plan.cost / opt);
  }
  console.log(`greedy cost ≤ ${worst.toFixed(4)}× the brute-force optimum over 40 random cases`);
  assert.ok(worst < 1.1);
  assert.throws(
    () => planBudget([{ name: "a", choices: [{ format: "int4", r: 0, bytes: 10, error: 1 }] }], 5),
    RangeError,
  );
  assert.deepEqual(parseBudget("4.5bits"), { bits: 4.5 });
  assert.deepEqual(parseBudget("3000000"), { bytes: 3000000 });
  assert.throws(() => parseBudget("3MB"), RangeError);
});

Deno.test("budget on the fixture: meets its bytes, beats the uniform INT4 r=16 policy of the same bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Measure once (the plan callback sees every layer's choices), then hold the budget to the
    // bytes of the uniform INT4 r=16 assignment of the same measurements.
    let layers: BudgetLayer[] = [];
    let plan: BudgetPlan | undefined;
    const common = { alphas: [0, 0.5, 1], rounds: 1 };
    await quantizeCheckpoint(FIXTURE, `${dir}/probe.safetensors`, {
      ...common,
      budget: { bytes: 1e12 },
      onPlan: (_p, l) => (layers = l),
    });
    const uniform = layers.map((l) => l.choices.find((c) => c.format === "int4" && c.r === 16)!);
    const budget = uniform.reduce((a, c) => a + c.bytes, 0);
    const uniformCost = uniform.reduce((a, c) => a + c.error ** 2, 0);
    const out = `${dir}/budget.safetensors`;
    const reports = await quantizeCheckpoint(FIXTURE, out, {
      ...common,
      budget: { bytes: budget },
      onPlan: (p) => (plan = p),
    });
    assert.ok(plan);
    const w4a4 = reports.filter((r) => r.method === "svdquant");
    const bytes = w4a4.reduce((a, r) => a + r.bytesAfter, 0);
    const cost = w4a4.reduce((a, r) => a + r.relError ** 2, 0);
    console.log(
      `budget ${budget} B: wrote ${bytes} B, Σerr² ${cost.toExponential(3)} vs uniform INT4 r=16 ` +
        `${uniformCost.toExponential(3)} (${plan.how})`,
    );
    assert.ok(bytes <= budget, `${bytes} > ${budget}`);
    assert.equal(bytes, plan.bytes, "the file holds exactly the planned layers");
    assert.ok(Math.abs(cost - plan.cost) <= 1e-12 * plan.cost, "the planned layers were rebuilt");
    assert.ok(cost < uniformCost, `${cost} ≥ uniform ${uniformCost}`);
    const q = await QuantFile.open(out);
    try {
      const formats = new Set(w4a4.map((r) => q.meta.policy[r.name].format));
      console.log(
        `  formats used: ${[...formats].join(", ")}; ranks ${w4a4.map((r) => r.r).join(" ")}`,
      );
      for (const r of w4a4) {
        assert.equal(q.meta.policy[r.name].format, r.format);
        assert.equal(q.meta.policy[r.name].r, r.r);
      }
    } finally {
      q.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
