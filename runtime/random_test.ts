import assert from "node:assert/strict";
import { GaussianNoise, gaussianNoise, philox4x32 } from "./random.ts";

/** A fresh seed per run for the statistical tests (replay with SEED=...). */
function freshSeed(name: string): number {
  const env = Deno.env.get("SEED");
  const seed = env ? Number(env) : (Math.random() * 2 ** 32) >>> 0;
  console.log(`${name}: SEED=${seed}`);
  return seed;
}

Deno.test("philox4x32 matches Random123's known-answer vectors", () => {
  const kat: [number[], number[], number[]][] = [
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [
      [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
      [0xffffffff, 0xffffffff],
      [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ],
    [
      [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
      [0xa4093822, 0x299f31d0],
      [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ],
  ];
  for (const [ctr, key, want] of kat) {
    assert.deepStrictEqual(Array.from(philox4x32(ctr, key)), want);
  }
});

// Golden values, computed independently: a Python script with its own Philox4x32-10 on Python
// integers (checked against the vectors above) and Box–Muller in 40-digit mpmath, rounded to
// float32. Equality is exact: these bits must come out on every platform.
const GOLDEN: Record<number, number[]> = {
  0: [
    0.9911377,
    -0.9246626,
    -0.61760896,
    -0.4820686,
    -0.15363823,
    0.1808259,
    0.83173513,
    0.19743972,
  ],
  1: [
    0.38040075,
    -0.29627788,
    -0.24923342,
    -1.0038372,
    0.6269479,
    -0.6339838,
    -0.6782716,
    -1.0130806,
  ],
  [2 ** 32 - 1]: [
    0.27956194,
    -0.03415849,
    -0.70824474,
    0.040430307,
    0.7085303,
    -0.87534016,
    0.91899246,
    0.19899285,
  ],
};
const GOLDEN_SEED0_STREAM7 = [
  -0.34948665,
  0.3626272,
  0.20679617,
  -1.7291002,
  -1.1440111,
  -0.49061027,
  -1.6858791,
  -0.9354062,
];

Deno.test("gaussianNoise reproduces the golden values bit for bit", () => {
  for (const [seed, want] of Object.entries(GOLDEN)) {
    assert.deepStrictEqual(
      Array.from(gaussianNoise(Number(seed), 8)),
      want.map(Math.fround),
      `seed ${seed}`,
    );
  }
  assert.deepStrictEqual(Array.from(gaussianNoise(0, 8, 7)), GOLDEN_SEED0_STREAM7.map(Math.fround));
});

Deno.test("GaussianNoise is seekable: draws in pieces equal one draw", () => {
  const whole = gaussianNoise(99, 37, 3);
  const g = new GaussianNoise(99, 3);
  const parts = [1, 6, 9, 0, 21].map((n) => g.next(n));
  assert.deepStrictEqual(g.position, 37);
  const joined = new Float32Array(37);
  let at = 0;
  for (const p of parts) joined.set(p, (at += p.length) - p.length);
  assert.deepStrictEqual(joined, whole);
  const g2 = new GaussianNoise(99, 3);
  g2.position = 10;
  assert.deepStrictEqual(g2.next(5), whole.subarray(10, 15));
});

Deno.test("gaussianNoise agrees with Box–Muller on Math.log/cos/sin to float32 rounding", () => {
  // The module's own ln/sqrt/sincos must be as accurate as the engine's; any difference may
  // only show as a float32 rounding of the same float64 value (≤ 1 ulp of the result).
  const seed = freshSeed("math agreement");
  const n = 100_000, z = gaussianNoise(seed, n);
  const w = new Uint32Array(4), key = [seed, 0];
  let maxUlps = 0;
  for (let b = 0; b < n / 4; b++) {
    philox4x32([b, 0, 0, 0], key, w);
    for (let p = 0; p < 2; p++) {
      const r = Math.sqrt(-2 * Math.log((w[2 * p] + 0.5) / 2 ** 32));
      const th = 2 * Math.PI * ((w[2 * p + 1] + 0.5) / 2 ** 32);
      for (const [lane, v] of [[2 * p, r * Math.cos(th)], [2 * p + 1, r * Math.sin(th)]]) {
        const got = z[4 * b + lane];
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(v), 2 ** -126))) - 23);
        maxUlps = Math.max(maxUlps, Math.abs(got - v) / ulp);
      }
    }
  }
  console.log(`max difference from Math-based Box–Muller: ${maxUlps.toFixed(3)} float32 ulps`);
  assert(maxUlps <= 1, `${maxUlps} ulps`);
});

Deno.test("1e6 samples have normal moments and quantiles", () => {
  const n = 1_000_000, z = gaussianNoise(freshSeed("moments"), n);
  let s1 = 0, maxAbs = 0;
  for (const v of z) {
    s1 += v;
    maxAbs = Math.max(maxAbs, Math.abs(v));
  }
  const mean = s1 / n;
  let m2 = 0, m4 = 0;
  for (const v of z) {
    const d = (v - mean) ** 2;
    m2 += d;
    m4 += d * d;
  }
  const variance = m2 / n, kurt = m4 / n / (variance * variance) - 3;
  console.log(
    `mean ${mean.toExponential(2)} var ${variance.toFixed(5)} excess kurtosis ${kurt.toFixed(4)}`,
  );
  // Six standard errors: sd(mean) = 1/√n, sd(var) = √(2/n), sd(excess kurtosis) = √(24/n).
  assert(Math.abs(mean) < 6 / Math.sqrt(n), `mean ${mean}`);
  assert(Math.abs(variance - 1) < 6 * Math.sqrt(2 / n), `variance ${variance}`);
  assert(Math.abs(kurt) < 6 * Math.sqrt(24 / n), `excess kurtosis ${kurt}`);
  assert(maxAbs <= Math.sqrt(2 * Math.log(2 ** 33)), `max |z| ${maxAbs}`);
  // Φ(z) at a few points; six binomial standard errors.
  const cdf: [number, number][] = [
    [-3, 0.0013498980316301],
    [-2, 0.0227501319481792],
    [-1, 0.1586552539314571],
    [0, 0.5],
    [0.5, 0.6914624612740131],
    [1.5, 0.9331927987311419],
    [2.5, 0.9937903346742238],
  ];
  for (const [x, p] of cdf) {
    let below = 0;
    for (const v of z) if (v < x) below++;
    const frac = below / n;
    assert(Math.abs(frac - p) < 6 * Math.sqrt(p * (1 - p) / n), `P(z < ${x}) = ${frac}, want ${p}`);
  }
});

function correlation(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  let ma = 0, mb = 0;
  for (let i = 0; i < n; i++) ma += a[i], mb += b[i];
  ma /= n, mb /= n;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i] - ma, db = b[i] - mb;
    sab += da * db, saa += da * da, sbb += db * db;
  }
  return sab / Math.sqrt(saa * sbb);
}

Deno.test("different seeds, streams and positions are uncorrelated", () => {
  const seed = freshSeed("independence") % (2 ** 32 - 1);
  const n = 100_000, bound = 6 / Math.sqrt(n);
  const base = gaussianNoise(seed, n + 1);
  const pairs: [string, ArrayLike<number>, ArrayLike<number>][] = [
    ["seed vs seed+1", base.subarray(0, n), gaussianNoise(seed + 1, n)],
    ["seed vs seed^0x80000000", base.subarray(0, n), gaussianNoise((seed ^ 0x80000000) >>> 0, n)],
    ["stream 0 vs 1", base.subarray(0, n), gaussianNoise(seed, n, 1)],
    ["stream 1 vs 2", gaussianNoise(seed, n, 1), gaussianNoise(seed, n, 2)],
    ["lag 1", base.subarray(0, n), base.subarray(1, n + 1)],
  ];
  // Lanes within a block: cos vs sin of one radius, and the two radii.
  const lanes = [0, 1, 2, 3].map((l) =>
    Float32Array.from({ length: n / 4 }, (_, b) => base[4 * b + l])
  );
  pairs.push(["lane 0 vs 1", lanes[0], lanes[1]], ["lane 0 vs 2", lanes[0], lanes[2]]);
  pairs.push(["|lane 0| vs |lane 1|", lanes[0].map(Math.abs), lanes[1].map(Math.abs)]);
  for (const [what, a, b] of pairs) {
    const r = correlation(a, b);
    const lim = a.length === n ? bound : 6 / Math.sqrt(a.length);
    // |z0| and |z1| of one Box–Muller pair are independent, so the same bound holds.
    assert(Math.abs(r) < lim, `${what}: correlation ${r}, bound ${lim}`);
  }
});

Deno.test("out-of-range seeds, streams and counts are RangeErrors", () => {
  for (const bad of [-1, 1.5, 2 ** 32, NaN, Infinity, -0.5]) {
    assert.throws(() => gaussianNoise(bad, 4), { name: "RangeError", message: /seed/ });
    assert.throws(() => gaussianNoise(0, 4, bad), { name: "RangeError", message: /stream/ });
  }
  for (const bad of [-1, 1.5, NaN]) {
    assert.throws(() => gaussianNoise(0, bad), { name: "RangeError", message: /count/ });
  }
  assert.deepStrictEqual(gaussianNoise(2 ** 32 - 1, 0).length, 0);
});
