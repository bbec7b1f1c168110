import assert from "node:assert/strict";
import { freshRng, type Rng } from "../kernels/_testing.ts";
import { DEFAULT_CLIP_RATIOS, groupErrors, quantizeWeightClipped } from "./clip.ts";
import {
  dequantizeWeight,
  groupSize,
  type PackedWeight,
  quantizeWeight,
  type WeightFormat,
} from "./packing.ts";

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
