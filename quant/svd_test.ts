import assert from "node:assert/strict";
import { freshRng, type Rng } from "../gpu/_testing.ts";
import { frobeniusDistance, frobeniusNorm, type MatMul, matmul, qrThin } from "./linalg.ts";
import { denseSvd, topRSvd } from "./svd.ts";

function throwsWith(fn: () => unknown, cls: ErrorConstructor, text = "") {
  assert.throws(fn, (e) => e instanceof cls && (e as Error).message.includes(text));
}

async function rejectsWith(p: Promise<unknown>, cls: ErrorConstructor, text = "") {
  await assert.rejects(p, (e) => e instanceof cls && (e as Error).message.includes(text));
}

/** A = U·diag(s)·Vᵀ with random orthonormal U [rows, p], V [cols, p], p = s.length. */
function planted(rng: Rng, rows: number, cols: number, s: number[]): Float32Array {
  const p = s.length;
  const u = qrThin(rng.normals(rows * p), rows, p).q, v = qrThin(rng.normals(cols * p), cols, p).q;
  const a = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let acc = 0;
      for (let t = 0; t < p; t++) acc += u[i * p + t] * s[t] * v[j * p + t];
      a[i * cols + j] = acc;
    }
  }
  return a;
}

/** max |MᵀM − I| over the columns of a row-major [rows, cols] matrix. */
function colOrthError(m: Float32Array, rows: number, cols: number): number {
  let e = 0;
  for (let i = 0; i < cols; i++) {
    for (let j = i; j < cols; j++) {
      let s = 0;
      for (let t = 0; t < rows; t++) s += m[t * cols + i] * m[t * cols + j];
      e = Math.max(e, Math.abs(s - (i === j ? 1 : 0)));
    }
  }
  return e;
}

/** max |MMᵀ − I| over the rows. */
function rowOrthError(m: Float32Array, rows: number, cols: number): number {
  let e = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = i; j < rows; j++) {
      let s = 0;
      for (let t = 0; t < cols; t++) s += m[i * cols + t] * m[j * cols + t];
      e = Math.max(e, Math.abs(s - (i === j ? 1 : 0)));
    }
  }
  return e;
}

function reconstruct(
  u: Float32Array,
  s: ArrayLike<number>,
  vt: Float32Array,
  rows: number,
  p: number,
  cols: number,
) {
  const us = new Float32Array(rows * p);
  for (let i = 0; i < rows; i++) for (let j = 0; j < p; j++) us[i * p + j] = u[i * p + j] * s[j];
  return matmul(us, vt, rows, p, cols);
}

Deno.test("denseSvd reconstructs A to 1e-5 and finds planted singular values (tall, wide, square, QR path)", () => {
  const rng = freshRng("denseSvd");
  for (const [rows, cols] of [[60, 20], [20, 60], [100, 20], [33, 33], [1, 7], [7, 1]]) {
    const p = Math.min(rows, cols);
    const known = Array.from({ length: p }, (_, i) => 10 * 0.7 ** i);
    const a = planted(rng, rows, cols, known);
    const { u, s, vt } = denseSvd(a, rows, cols);
    assert.equal(u.length, rows * p);
    assert.equal(vt.length, p * cols);
    const rel = frobeniusDistance(reconstruct(u, s, vt, rows, p, cols), a) / frobeniusNorm(a);
    assert.ok(rel < 1e-5, `[${rows},${cols}] reconstruction ${rel}`);
    let sErr = 0;
    for (let i = 0; i < p; i++) sErr = Math.max(sErr, Math.abs(s[i] - known[i]) / known[0]);
    assert.ok(sErr < 1e-6, `[${rows},${cols}] singular values off by ${sErr}`);
    assert.ok(colOrthError(u, rows, p) < 1e-5, `[${rows},${cols}] UᵀU`);
    assert.ok(rowOrthError(vt, p, cols) < 1e-5, `[${rows},${cols}] VᵀV`);
  }
});

Deno.test("denseSvd of a rank-deficient matrix: zero singular values, U and V still orthonormal", () => {
  const rng = freshRng("denseSvd rank-deficient");
  const rows = 40, cols = 12;
  const a = planted(rng, rows, cols, [5, 2, 1]);
  const { u, s, vt } = denseSvd(a, rows, cols);
  assert.ok(Math.abs(s[0] - 5) < 1e-5 && Math.abs(s[1] - 2) < 1e-5 && Math.abs(s[2] - 1) < 1e-5);
  for (let i = 3; i < cols; i++) assert.ok(s[i] < 1e-5, `s[${i}] = ${s[i]}`);
  assert.ok(colOrthError(u, rows, cols) < 1e-5);
  assert.ok(rowOrthError(vt, cols, cols) < 1e-5);
  const zero = denseSvd(new Float32Array(15), 5, 3);
  assert.deepEqual(Array.from(zero.s), [0, 0, 0]);
  assert.ok(colOrthError(zero.u, 5, 3) < 1e-6);
  throwsWith(
    () => denseSvd(new Float32Array(5), 2, 3),
    TypeError,
    "A has 5 elements, expected [2, 3]",
  );
});

/** Frobenius error of the best rank-r approximation, from exact singular values. */
function optimalError(s: Float64Array, r: number): number {
  let e = 0;
  for (let i = r; i < s.length; i++) e += s[i] * s[i];
  return Math.sqrt(e);
}

// Randomized subspace iteration with the defaults (q = 2, p = 16) lands within 1e-4 of the
// optimum on these decaying spectra and within ~1% on a flat (Gaussian) one, the hard case for
// any sketch; 1.05× is the stated bound for both.
const FACTOR = 1.05;

Deno.test("topRSvd: rank-R error within 1.05× of optimal (decaying and flat spectra), orthogonal factors", async () => {
  const rng = freshRng("topRSvd");
  const n = 96, k = 160;
  const spectrum = Array.from({ length: n }, (_, i) => 0.95 ** i + 1e-3 * rng.next());
  spectrum.sort((x, y) => y - x);
  const w = planted(rng, n, k, spectrum);
  const exact = denseSvd(w, n, k);
  for (const r of [8, 16]) {
    const { up, down, r: rr } = await topRSvd(w, n, k, r, { seed: rng.int(0, 2 ** 31) });
    assert.equal(rr, r);
    assert.equal(up.length, n * r);
    assert.equal(down.length, r * k);
    const err = frobeniusDistance(matmul(up, down, n, r, k), w);
    const ratio = err / optimalError(exact.s, r);
    console.log(`R=${r}: error / optimal = ${ratio.toFixed(6)}`);
    assert.ok(ratio <= FACTOR, `R=${r}: ratio ${ratio}`);
    // down = Vᵀ has orthonormal rows; up = U·Σ has orthogonal columns of norm σ_i.
    assert.ok(rowOrthError(down, r, k) < 1e-5, "down rows orthonormal");
    for (let i = 0; i < r; i++) {
      for (let j = i; j < r; j++) {
        let s = 0;
        for (let t = 0; t < n; t++) s += up[t * r + i] * up[t * r + j];
        const expect = i === j ? exact.s[i] ** 2 : 0;
        assert.ok(
          Math.abs(s - expect) < 1e-3 * exact.s[0] ** 2,
          `upᵀup[${i},${j}] = ${s}, expected ${expect}`,
        );
      }
    }
  }
  const flat = rng.normals(n * k);
  const flatExact = denseSvd(flat, n, k);
  const lr = await topRSvd(flat, n, k, 16);
  const ratio = frobeniusDistance(matmul(lr.up, lr.down, n, 16, k), flat) /
    optimalError(flatExact.s, 16);
  console.log(`flat spectrum R=16: error / optimal = ${ratio.toFixed(6)}`);
  assert.ok(ratio <= FACTOR, `flat: ratio ${ratio}`);
});

Deno.test("topRSvd sends every product with W through the injected MatMul", async () => {
  const rng = freshRng("topRSvd matmul injection");
  const n = 70, k = 130, r = 8;
  const w = rng.normals(n * k);
  for (const iters of [0, 1, 3]) {
    let calls = 0, flops = 0;
    const counting: MatMul = (a, b, m, kk, nn, tb) => {
      calls++;
      flops += 2 * m * kk * nn;
      // One operand is always W itself.
      assert.ok(a === w || b === w, "a product not involving W went through the seam");
      return Promise.resolve(matmul(a, b, m, kk, nn, tb));
    };
    const viaSeam = await topRSvd(w, n, k, r, { iters, matmul: counting });
    const plain = await topRSvd(w, n, k, r, {
      iters,
      matmul: (a, b, m, kk, nn, tb) => matmul(a, b, m, kk, nn, tb),
    });
    assert.equal(calls, 2 * iters + 2);
    assert.equal(flops, calls * 2 * n * k * (r + 16));
    assert.deepEqual(viaSeam, plain);
  }
  const bad: MatMul = () => new Float32Array(3);
  await rejectsWith(
    topRSvd(w, n, k, r, { matmul: bad }),
    TypeError,
    "the injected matmul returned 3 values",
  );
});

Deno.test("topRSvd edge cases: R = 0, R = min(N, K), bad arguments", async () => {
  const rng = freshRng("topRSvd edges");
  const w = rng.normals(12 * 20);
  const zero = await topRSvd(w, 12, 20, 0);
  assert.deepEqual(zero, { r: 0, up: new Float32Array(0), down: new Float32Array(0) });
  // R = N: the sketch spans everything, so the factorisation is exact.
  const full = await topRSvd(w, 12, 20, 12);
  assert.ok(frobeniusDistance(matmul(full.up, full.down, 12, 12, 20), w) / frobeniusNorm(w) < 1e-5);
  // An all-zero W gives zero factors, not NaN.
  const z = await topRSvd(new Float32Array(12 * 20), 12, 20, 4);
  assert.ok(z.up.every((v) => v === 0) && z.down.every(Number.isFinite));
  await rejectsWith(topRSvd(w, 12, 20, 13), RangeError, "rank R=13");
  await rejectsWith(topRSvd(w, 12, 21, 4), TypeError, "W has 240 elements, expected [12, 21]");
  await rejectsWith(topRSvd(w, 12, 20, 4, { iters: -1 }), RangeError, "iters");
});
