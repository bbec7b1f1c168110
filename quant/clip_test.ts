import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import { DEFAULT_CLIP_RATIOS, groupErrors, quantizeWeightClipped } from "./clip.ts";
import {
  dequantizeWeight,
  groupSize,
  type PackedWeight,
  quantizeWeight,
  type WeightFormat,
} from "../formats/packing.ts";

function throwsWith(fn: () => unknown, cls: ErrorConstructor, text = "") {
  assert.throws(fn, (e) => e instanceof cls && (e as Error).message.includes(text));
}

/** Heavy-tailed weights (Student-t-like) with a few large outliers, so clipping matters. */
function heavyTailed(rng: Rng, len: number): Float32Array {
  const w = new Float32Array(len);
  for (let i = 0; i < len; i++) {
    const g = rng.normal(), chi = (rng.normal() ** 2 + rng.normal() ** 2 + rng.normal() ** 2) / 3;
    w[i] = g / Math.sqrt(chi + 1e-3);
    if (rng.next() < 0.002) w[i] *= 8;
  }
  return w;
}

const sum = (a: Float64Array) => a.reduce((s, v) => s + v, 0);

/** True when group gi of `p` has the same codes and scale as group gi of `q`. */
function sameGroup(p: PackedWeight, q: PackedWeight, gi: number): boolean {
  const words = groupSize(p.format) / 8;
  if (p.wscales[gi] !== q.wscales[gi]) return false;
  for (let t = 0; t < words; t++) {
    if (p.qweight[gi * words + t] !== q.qweight[gi * words + t]) return false;
  }
  return true;
}

for (const format of ["int4", "nvfp4"] as WeightFormat[]) {
  for (const withX of [false, true]) {
    Deno.test(`quantizeWeightClipped ${format}${withX ? " (output error on x)" : ""}: never worse than any single ratio, groups come from the candidates`, () => {
      const rng = freshRng(`clip ${format} x=${withX}`);
      const n = 24, k = 256;
      const w = heavyTailed(rng, n * k);
      // m = 20 <= G/2 takes the direct path for int4; m = 80 the Gram path for both formats.
      const m = format === "int4" ? (rng.next() < 0.5 ? 20 : 80) : 80;
      const x = withX ? heavyTailed(rng, m * k) : undefined;
      const clipped = quantizeWeightClipped(w, n, k, format, { x, m });
      const objective = (p: PackedWeight) =>
        groupErrors(w, dequantizeWeight(p), n, k, format, x, m);
      const best = objective(clipped);
      const candidates = DEFAULT_CLIP_RATIOS.map((clipRatio) =>
        quantizeWeight(w, n, k, format, { clipRatio })
      );
      const perRatio = candidates.map(objective);
      for (let c = 0; c < candidates.length; c++) {
        assert.ok(sum(best) <= sum(perRatio[c]), `worse than ratio ${DEFAULT_CLIP_RATIOS[c]}`);
        for (let gi = 0; gi < best.length; gi++) assert.ok(best[gi] <= perRatio[c][gi]);
      }
      const gain = 1 - sum(best) / sum(perRatio[0]);
      console.log(
        `${format} x=${withX} m=${m}: objective ${(100 * gain).toFixed(1)}% below clipRatio=1`,
      );
      assert.ok(gain > 0, "heavy-tailed weights should profit from clipping");
      // A valid packed weight: every group is one candidate's group, verbatim.
      for (let gi = 0; gi < best.length; gi++) {
        assert.ok(
          candidates.some((c) => sameGroup(clipped, c, gi)),
          `group ${gi} matches no candidate`,
        );
      }
      if (clipped.format === "nvfp4" && candidates[0].format === "nvfp4") {
        assert.equal(clipped.tensorScale, candidates[0].tensorScale);
      }
    });
  }
}

Deno.test("quantizeWeightClipped with ratios [1] is exactly quantizeWeight", () => {
  const rng = freshRng("clip ratio 1");
  const w = heavyTailed(rng, 8 * 128);
  for (const format of ["int4", "nvfp4"] as WeightFormat[]) {
    assert.deepEqual(
      quantizeWeightClipped(w, 8, 128, format, { ratios: [1] }),
      quantizeWeight(w, 8, 128, format),
    );
  }
});

Deno.test("groupErrors: direct and Gram paths agree with a brute-force output error", () => {
  const rng = freshRng("groupErrors");
  const n = 3, k = 128, G = 64;
  const w = rng.normals(n * k), approx = rng.normals(n * k);
  for (const m of [5, 70]) {
    const x = rng.normals(m * k);
    const got = groupErrors(w, approx, n, k, "int4", x, m);
    for (let row = 0; row < n; row++) {
      for (let g = 0; g < k / G; g++) {
        let e = 0;
        for (let s = 0; s < m; s++) {
          let y = 0;
          for (let t = g * G; t < (g + 1) * G; t++) {
            y += x[s * k + t] * (w[row * k + t] - approx[row * k + t]);
          }
          e += y * y;
        }
        const gi = row * (k / G) + g;
        assert.ok(Math.abs(got[gi] - e) <= 1e-9 * e, `m=${m} group ${gi}: ${got[gi]} vs ${e}`);
      }
    }
  }
});

Deno.test("quantizeWeightClipped rejects bad arguments before quantizing", () => {
  const w = new Float32Array(4 * 64);
  throwsWith(() => quantizeWeightClipped(w, 4, 64, "int4", { ratios: [] }), RangeError, "ratios");
  throwsWith(
    () => quantizeWeightClipped(w, 4, 64, "int4", { ratios: [1, 0] }),
    RangeError,
    "ratios",
  );
  throwsWith(() => quantizeWeightClipped(w, 4, 63, "int4"), TypeError, "expected [N=4, K=63]");
  throwsWith(
    () => quantizeWeightClipped(w, 2, 128, "nvfp4", { x: new Float32Array(10), m: 1 }),
    TypeError,
    "x have 10 elements",
  );
  throwsWith(
    () => quantizeWeightClipped(new Float32Array(4 * 40), 4, 40, "int4"),
    RangeError,
    "not a multiple",
  );
});

// ---- the previous algorithm, kept as the reference -------------------------------------------

/**
 * The previous quantizeWeightClipped, verbatim in substance: one whole-matrix quantizeWeight +
 * dequantizeWeight per ratio, scored by the previous objective, picked per group with `<`
 * (earlier ratio wins ties). Slow; the rewrite must match it bit for bit.
 */
function slowQuantizeWeightClipped(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  ratios: readonly number[],
  x?: Float32Array,
  m?: number,
): PackedWeight {
  const objective = slowObjective(w, n, k, format, x, m);
  let best: PackedWeight | null = null, bestErr: Float64Array = new Float64Array(0);
  const words = groupSize(format) / 8;
  for (const clipRatio of ratios) {
    const cand = quantizeWeight(w, n, k, format, { clipRatio });
    const err = objective(dequantizeWeight(cand));
    if (best === null) {
      [best, bestErr] = [cand, err];
      continue;
    }
    for (let gi = 0; gi < err.length; gi++) {
      if (!(err[gi] < bestErr[gi])) continue;
      bestErr[gi] = err[gi];
      best.wscales[gi] = cand.wscales[gi];
      for (let t = 0; t < words; t++) best.qweight[gi * words + t] = cand.qweight[gi * words + t];
    }
  }
  return best!;
}

/** The previous per-group objective (plain loops; direct when 2m <= G, else Gram). */
function slowObjective(
  w: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
  x?: Float32Array,
  m?: number,
): (approx: Float32Array) => Float64Array {
  const G = groupSize(format), groups = k / G, d = new Float64Array(G);
  const diff = (approx: Float32Array, base: number) => {
    for (let t = 0; t < G; t++) d[t] = w[base + t] - approx[base + t];
  };
  if (x === undefined || m === undefined) {
    return (approx) =>
      Float64Array.from({ length: n * groups }, (_, gi) => {
        let s = 0;
        for (let t = gi * G; t < gi * G + G; t++) s += (w[t] - approx[t]) ** 2;
        return s;
      });
  }
  if (2 * m <= G) {
    return (approx) =>
      Float64Array.from({ length: n * groups }, (_, gi) => {
        diff(approx, gi * G);
        let e = 0;
        for (let s = 0; s < m; s++) {
          let y = 0;
          for (let t = 0; t < G; t++) y += x[s * k + (gi % groups) * G + t] * d[t];
          e += y * y;
        }
        return e;
      });
  }
  const gram = new Float64Array(groups * G * G);
  for (let s = 0; s < m; s++) {
    for (let g = 0; g < groups; g++) {
      for (let a = 0; a < G; a++) {
        const xa = x[s * k + g * G + a];
        if (xa === 0) continue;
        for (let b = a; b < G; b++) gram[g * G * G + a * G + b] += xa * x[s * k + g * G + b];
      }
    }
  }
  return (approx) =>
    Float64Array.from({ length: n * groups }, (_, gi) => {
      diff(approx, gi * G);
      const ho = (gi % groups) * G * G;
      let e = 0;
      for (let a = 0; a < G; a++) {
        const da = d[a];
        if (da === 0) continue;
        let acc = 0;
        for (let b = a + 1; b < G; b++) acc += gram[ho + a * G + b] * d[b];
        e += da * (gram[ho + a * G + a] * da + 2 * acc);
      }
      return e;
    });
}

/** Heavy-tailed weights with some exact zeros, -0 and repeated values (ties between ratios). */
function awkwardWeight(rng: Rng, len: number): Float32Array {
  const w = heavyTailed(rng, len);
  for (let i = 0; i < len; i++) {
    const u = rng.next();
    if (u < 0.03) w[i] = 0;
    else if (u < 0.05) w[i] = -0;
    else if (u < 0.08 && i > 0) w[i] = -w[i - 1];
  }
  return w;
}

Deno.test("quantizeWeightClipped is bit-identical to the previous whole-matrix algorithm", () => {
  const rng = freshRng("clip vs previous");
  const ratioLists: (readonly number[])[] = [
    DEFAULT_CLIP_RATIOS,
    [1],
    [0.9, 0.9, 1, 0.9], // exact ties: the earlier ratio must win
    [1.1, 1, 0.97, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5], // more than 8 lanes
  ];
  let groups = 0;
  for (const format of ["int4", "nvfp4"] as WeightFormat[]) {
    const G = groupSize(format);
    // no x; direct (2m <= G, odd and even m); Gram (2m > G)
    const ms = format === "int4" ? [0, 7, 32, 33, 70] : [0, 1, 8, 9, 24];
    for (const m of ms) {
      for (const ratios of ratioLists) {
        const n = rng.int(1, 4), k = G * rng.int(1, 4);
        const w = awkwardWeight(rng, n * k);
        // a group of ±0 and a group so small that its scale rounds to 0 (codes all 0)
        const z = rng.int(0, (n * k) / G - 1) * G, tiny = rng.int(0, (n * k) / G - 1) * G;
        for (let t = 0; t < G; t++) w[z + t] = rng.next() < 0.5 ? -0 : 0;
        for (let t = 0; t < G; t++) w[tiny + t] = rng.normal() * 1e-12;
        const x = m ? awkwardWeight(rng, m * k) : undefined;
        if (x) {
          // a dead channel, and a group no sample reaches: all ratios tie, the first must win
          for (let s = 0; s < m; s++) x[s * k + rng.int(0, k - 1)] = 0;
          const g0 = rng.int(0, k / G - 1) * G;
          for (let s = 0; s < m; s++) x.fill(0, s * k + g0, s * k + g0 + G);
          if (rng.next() < 0.2) x[rng.int(0, m * k - 1)] = rng.next() < 0.5 ? NaN : Infinity;
        }
        const fast = quantizeWeightClipped(w, n, k, format, { ratios, x, m: m || undefined });
        const slow = slowQuantizeWeightClipped(w, n, k, format, ratios, x, m || undefined);
        assert.deepEqual(fast, slow, `${format} m=${m} ratios [${ratios}]`);
        const approx = dequantizeWeight(fast);
        assert.deepEqual(
          groupErrors(w, approx, n, k, format, x, m || undefined),
          slowObjective(w, n, k, format, x, m || undefined)(approx),
          `groupErrors ${format} m=${m}`,
        );
        groups += (n * k) / G;
      }
    }
  }
  console.log(`  ${groups} groups identical`);
});

Deno.test("quantizeWeightClipped throws what the previous algorithm threw", () => {
  const message = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return `${(e as Error).constructor.name}: ${(e as Error).message}`;
    }
    return "no error";
  };
  const w = new Float32Array(3 * 128).fill(0.5);
  const cases: [Float32Array, WeightFormat, readonly number[]][] = [];
  const nan = w.slice();
  nan[200] = NaN;
  cases.push([nan, "int4", DEFAULT_CLIP_RATIOS], [nan, "nvfp4", DEFAULT_CLIP_RATIOS]);
  // an int4 scale past f16: the first ratio that overflows names its first group
  const big = w.slice();
  big[20] = 400_000; // group 0: past f16 for ratio 1.3 only
  big[150] = 470_000; // group 2: past f16 for ratios 1 and 1.3
  cases.push([big, "int4", [1, 1.3]], [big, "int4", [1.3, 1]], [big, "int4", [0.5, 1]]);
  for (const [wt, format, ratios] of cases) {
    const slow = message(() => slowQuantizeWeightClipped(wt, 3, 128, format, ratios));
    const fast = message(() => quantizeWeightClipped(wt, 3, 128, format, { ratios }));
    assert.equal(fast, slow);
    assert.notEqual(fast, "no error");
  }
});
