import assert from "node:assert/strict";
import { freshRng } from "../gpu/_testing.ts";
import {
  cpuMatMul,
  frobeniusDistance,
  frobeniusNorm,
  matmul,
  qrThin,
  transpose,
} from "./linalg.ts";

function throwsWith(fn: () => unknown, cls: ErrorConstructor, text = "") {
  assert.throws(fn, (e) => e instanceof cls && (e as Error).message.includes(text));
}

/** Plain float64 reference: C = A·B (B [k,n]) or A·Bᵀ (B [n,k]). */
function naive(a: Float32Array, b: Float32Array, m: number, k: number, n: number, tb: boolean) {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * (tb ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = s;
    }
  }
  return c;
}

Deno.test("matmul matches a float64 reference on ragged shapes, both B layouts", async () => {
  const rng = freshRng("matmul");
  // Shapes straddle the 4×2 register tile, the 64-column panel and the 256 K-block.
  const shapes = [[1, 1, 1], [7, 300, 65], [5, 513, 3], [4, 256, 64], [13, 37, 129], [0, 5, 3], [
    3,
    0,
    2,
  ]];
  for (const [m, k, n] of shapes) {
    const a = rng.normals(m * k), b = rng.normals(k * n);
    for (const tb of [false, true]) {
      const ref = naive(a, b, m, k, n, tb);
      const got = matmul(a, b, m, k, n, tb);
      const viaSeam = await cpuMatMul(a, b, m, k, n, tb);
      assert.deepEqual(got.length, m * n);
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        // f64 accumulation, one f32 rounding at the end: error ≤ ½ ulp(f32) of the value
        // (plus f64 summation-order noise, far below 1e-12 at these sizes).
        const excess = Math.abs(got[i] - ref[i]) - (2 ** -24 * Math.abs(ref[i]) + 1e-12);
        worst = Math.max(worst, excess);
      }
      assert.ok(worst <= 0, `[${m},${k},${n}] transB=${tb}: error beyond ½ ulp by ${worst}`);
      // The seam runs the f32 SIMD GEMM: recursive f32 summation, |error| ≤ K·2⁻²³·Σ|a·b|.
      assert.equal(viaSeam.length, m * n);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let absSum = 0;
          for (let p = 0; p < k; p++) {
            absSum += Math.abs(a[i * k + p] * (tb ? b[j * k + p] : b[p * n + j]));
          }
          const bound = k * 2 ** -23 * absSum + 2 ** -24 * Math.abs(ref[i * n + j]);
          const e = Math.abs(viaSeam[i * n + j] - ref[i * n + j]);
          assert.ok(
            e <= bound,
            `[${m},${k},${n}] transB=${tb} (${i},${j}): SIMD error ${e} > ${bound}`,
          );
        }
      }
    }
  }
});

Deno.test("matmul rejects bad shapes with a TypeError naming the operand", () => {
  const a = new Float32Array(6), b = new Float32Array(6);
  throwsWith(() => matmul(a, b, 2, 3, 3), TypeError, "B has 6 elements, expected [k=3, n=3]");
  throwsWith(() => matmul(a, b, 3, 3, 2, true), TypeError, "A has 6 elements");
  throwsWith(() => matmul(a, b, -1, 3, 2), RangeError, "m must be a non-negative integer");
});

Deno.test("transpose and Frobenius norms", () => {
  const a = Float32Array.from([1, 2, 3, 4, 5, 6]); // [2,3]
  assert.deepEqual(Array.from(transpose(a, 2, 3)), [1, 4, 2, 5, 3, 6]);
  const big = Float64Array.from({ length: 70 * 45 }, (_, i) => i);
  assert.deepEqual(transpose(transpose(big, 70, 45), 45, 70), big);
  assert.deepEqual(frobeniusNorm(Float32Array.from([3, 4])), 5);
  assert.deepEqual(frobeniusDistance(Float32Array.from([3, 4]), Float32Array.from([0, 0])), 5);
  throwsWith(() => transpose(a, 4, 2), TypeError);
});

function checkQr(a: Float32Array, rows: number, cols: number) {
  const { q, r } = qrThin(a, rows, cols);
  let orth = 0, recon = 0, lower = 0;
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let t = 0; t < rows; t++) s += q[t * cols + i] * q[t * cols + j];
      orth = Math.max(orth, Math.abs(s - (i === j ? 1 : 0)));
      if (j < i) lower = Math.max(lower, Math.abs(r[i * cols + j]));
    }
  }
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let t = 0; t <= j; t++) s += q[i * cols + t] * r[t * cols + j];
      recon = Math.max(recon, Math.abs(s - a[i * cols + j]));
    }
  }
  return { orth, recon, lower, r };
}

Deno.test("qrThin: orthonormal Q, upper-triangular R, A = QR (also rank-deficient)", () => {
  const rng = freshRng("qrThin");
  const a = rng.normals(200 * 24);
  const full = checkQr(a, 200, 24);
  assert.ok(full.orth < 1e-13, `QᵀQ − I: ${full.orth}`);
  assert.ok(full.recon < 1e-12, `A − QR: ${full.recon}`);
  assert.deepEqual(full.lower, 0);
  // Rank 2 with a zero column and a duplicated one: Q must stay orthonormal.
  const rows = 50, cols = 6, d = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const u = rng.normal(), v = rng.normal();
    d[i * cols + 0] = u;
    d[i * cols + 1] = 2 * u;
    d[i * cols + 2] = 0;
    d[i * cols + 3] = v;
    d[i * cols + 4] = u - v;
    d[i * cols + 5] = v;
  }
  const def = checkQr(d, rows, cols);
  assert.ok(def.orth < 1e-12, `rank-deficient QᵀQ − I: ${def.orth}`);
  assert.ok(def.recon < 1e-5, `rank-deficient A − QR: ${def.recon}`);
  for (const j of [1, 2, 4, 5]) assert.ok(Math.abs(def.r[j * cols + j]) < 1e-5, `R[${j},${j}]`);
  throwsWith(() => qrThin(new Float32Array(6), 2, 3), RangeError, "rows >= cols");
});
