/**
 * Singular value decompositions for the low-rank branch: an exact dense SVD (one-sided Jacobi,
 * for small matrices and tests) and a randomized top-R SVD (subspace iteration) whose products
 * with the large matrix go through an injectable {@link MatMul}, so they can run on a GPU while
 * the small dense steps (QR, the small SVD) stay on the CPU.
 *
 * @module
 */
import { cpuMatMul, type MatMul, qrThin, transpose } from "./linalg.ts";

/** A rank-R factorisation `W ≈ up · down`. */
export interface LowRank {
  /** Rank R (0 allowed: both factors empty). */
  r: number;
  /** L1 = U·Σ, row-major `[N, R]`. */
  up: Float32Array;
  /** L2 = Vᵀ, row-major `[R, K]`. */
  down: Float32Array;
  /**
   * The sketch's right singular vectors, row-major `[l, K]` (l = min(R + p, N, K)), for
   * {@link TopRSvdOptions.start} of a later call (absent for R = 0).
   */
  basis?: Float32Array;
}

/** Options of {@link topRSvd}. */
export interface TopRSvdOptions {
  /** Power (subspace) iterations q; each costs two products with W. Default 2. */
  iters?: number;
  /** Oversampling p: the sketch has min(R + p, N, K) columns. Default 16. */
  oversample?: number;
  /** Seed of the Gaussian test matrix. Default 0x5eed. */
  seed?: number;
  /** Product with W (default {@link cpuMatMul}); inject a GPU GEMM here. */
  matmul?: MatMul;
  /**
   * Warm start: `[l, K]` rows spanning a guess of W's dominant row space (l = min(R + p, N, K)),
   * e.g. the `basis` of a previous call on a nearby matrix; replaces the Gaussian sketch, so
   * fewer power iterations reach the same accuracy.
   */
  start?: Float32Array;
}

/** Off-diagonal tolerance of the Jacobi sweeps, relative to the column norms. */
const JACOBI_TOL = 1e-15;
const JACOBI_MAX_SWEEPS = 60;

/**
 * Exact thin SVD `A = U·diag(s)·Vᵀ` of a row-major `[rows, cols]` matrix by one-sided (Hestenes)
 * Jacobi in float64; a tall matrix (rows > 2·cols) is first reduced by a thin QR. With
 * p = min(rows, cols): `u` is `[rows, p]`, `s` is `[p]` in descending order, `vt` is `[p, cols]`.
 * Meant for small matrices (≤ 512×512) and for the small step of {@link topRSvd}.
 *
 * @example
 * ```ts
 * import { denseSvd } from "./svd.ts";
 * const { s } = denseSvd(new Float32Array([3, 0, 0, 4]), 2, 2); // s = [4, 3]
 * ```
 */
export function denseSvd(
  a: Float32Array | Float64Array,
  rows: number,
  cols: number,
): { u: Float32Array; s: Float64Array; vt: Float32Array } {
  checkShape("compute a dense SVD", "A", a, rows, cols);
  if (rows < cols) {
    const t = svdTall(transpose(Float64Array.from(a), rows, cols), cols, rows);
    // Aᵀ = U' S V'ᵀ  ⇒  A = V' S U'ᵀ.
    return { u: Float32Array.from(t.v), s: t.s, vt: Float32Array.from(transpose(t.u, cols, rows)) };
  }
  const t = svdTall(Float64Array.from(a), rows, cols);
  return { u: Float32Array.from(t.u), s: t.s, vt: Float32Array.from(transpose(t.v, cols, cols)) };
}

/** SVD of a tall row-major [rows, cols] (rows ≥ cols): u [rows, cols], s, v [cols, cols] row-major. */
function svdTall(
  a: Float64Array,
  rows: number,
  cols: number,
): { u: Float64Array; s: Float64Array; v: Float64Array } {
  if (rows > 2 * cols) {
    const { q, r } = qrThin(a, rows, cols);
    const inner = jacobi(r, cols, cols);
    const u = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let t = 0; t < cols; t++) {
        const qit = q[i * cols + t];
        if (qit === 0) continue;
        const ur = t * cols, o = i * cols;
        for (let j = 0; j < cols; j++) u[o + j] += qit * inner.u[ur + j];
      }
    }
    return { u, s: inner.s, v: inner.v };
  }
  return jacobi(a, rows, cols);
}

/** One-sided Jacobi on a row-major [rows, cols] matrix, rows ≥ cols. */
function jacobi(
  a: Float64Array,
  rows: number,
  cols: number,
): { u: Float64Array; s: Float64Array; v: Float64Array } {
  const g = transpose(a, rows, cols); // column-major: column j at g[j*rows ..]
  const v = new Float64Array(cols * cols); // column-major too
  for (let j = 0; j < cols; j++) v[j * cols + j] = 1;
  const norms = new Float64Array(cols);
  for (let sweep = 0; sweep < JACOBI_MAX_SWEEPS; sweep++) {
    for (let j = 0; j < cols; j++) norms[j] = sumSq(g, j * rows, rows);
    let rotated = false;
    for (let i = 0; i < cols - 1; i++) {
      for (let j = i + 1; j < cols; j++) {
        const alpha = norms[i], beta = norms[j];
        if (alpha === 0 || beta === 0) continue;
        const gamma = dotAt(g, i * rows, j * rows, rows);
        if (Math.abs(gamma) <= JACOBI_TOL * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t), s = c * t;
        rotate(g, i * rows, j * rows, rows, c, s);
        rotate(v, i * cols, j * cols, cols, c, s);
        norms[i] = alpha - t * gamma;
        norms[j] = beta + t * gamma;
      }
    }
    if (!rotated) break;
  }
  // Sort by singular value, normalise U's columns.
  const sig = new Float64Array(cols);
  for (let j = 0; j < cols; j++) sig[j] = Math.sqrt(sumSq(g, j * rows, rows));
  const order = Array.from({ length: cols }, (_, j) => j).sort((x, y) => sig[y] - sig[x]);
  const s = new Float64Array(cols);
  const u = new Float64Array(rows * cols);
  const vr = new Float64Array(cols * cols);
  let degenerate = false;
  order.forEach((src, dst) => {
    s[dst] = sig[src];
    const inv = sig[src] > 0 ? 1 / sig[src] : 0;
    if (inv === 0 || !Number.isFinite(inv)) degenerate = true;
    for (let t = 0; t < rows; t++) u[t * cols + dst] = g[src * rows + t] * inv;
    for (let t = 0; t < cols; t++) vr[t * cols + dst] = v[src * cols + t];
  });
  // Zero singular values leave zero columns in U: complete them to an orthonormal set.
  return { u: degenerate ? qrThin(u, rows, cols).q : u, s, v: vr };
}

function sumSq(x: Float64Array, o: number, len: number): number {
  let s = 0;
  for (let t = 0; t < len; t++) s += x[o + t] * x[o + t];
  return s;
}

function dotAt(x: Float64Array, oi: number, oj: number, len: number): number {
  let s = 0;
  for (let t = 0; t < len; t++) s += x[oi + t] * x[oj + t];
  return s;
}

function rotate(x: Float64Array, oi: number, oj: number, len: number, c: number, s: number) {
  for (let t = 0; t < len; t++) {
    const xi = x[oi + t], xj = x[oj + t];
    x[oi + t] = c * xi - s * xj;
    x[oj + t] = s * xi + c * xj;
  }
}

/**
 * The top-R singular triplets of a row-major `W [N, K]` by randomized subspace iteration
 * (Halko–Martinsson–Tropp): a Gaussian sketch of min(R + p, N, K) columns, q power iterations
 * with a thin QR after every product, then the exact SVD of the small projected matrix.
 *
 * Every product with W (2q + 2 of them, each `2·N·K·(R+p)` flops) goes through `opts.matmul`,
 * with W as the left operand and `transB = true` (`W·Ωᵀ`) or as the right operand with
 * `transB = false` (`Qᵀ·W`); everything else is `O((N + K)·(R+p)²)` on the CPU.
 * Returns `up = U·Σ` `[N, R]` and `down = Vᵀ` `[R, K]`; R = 0 gives empty factors.
 *
 * @example
 * ```ts
 * import { topRSvd } from "./svd.ts";
 * const w = new Float32Array(96 * 160).map((_, i) => Math.sin(i));
 * const { up, down } = await topRSvd(w, 96, 160, 8); // w ≈ up · down
 * ```
 */
export async function topRSvd(
  w: Float32Array,
  n: number,
  k: number,
  r: number,
  opts: TopRSvdOptions = {},
): Promise<LowRank> {
  const op = "compute a top-R SVD";
  checkShape(op, "W", w, n, k);
  if (!Number.isInteger(r) || r < 0 || r > Math.min(n, k)) {
    throw new RangeError(
      `Cannot ${op}: rank R=${r} must be an integer in [0, min(N, K) = ${Math.min(n, k)}]`,
    );
  }
  const iters = opts.iters ?? 2, p = opts.oversample ?? 16;
  if (!Number.isInteger(iters) || iters < 0 || !Number.isInteger(p) || p < 0) {
    throw new RangeError(
      `Cannot ${op}: iters (${iters}) and oversample (${p}) must be non-negative integers`,
    );
  }
  if (r === 0) return { r: 0, up: new Float32Array(0), down: new Float32Array(0) };
  const mm = opts.matmul ?? cpuMatMul;
  const l = Math.min(r + p, n, k);
  const product = async (
    a: Float32Array,
    b: Float32Array,
    m: number,
    kk: number,
    nn: number,
    tb: boolean,
  ) => {
    const c = await mm(a, b, m, kk, nn, tb);
    if (!(c instanceof Float32Array) || c.length !== m * nn) {
      throw new TypeError(
        `Cannot ${op}: the injected matmul returned ${c?.length} values, expected [${m}, ${nn}] = ${
          m * nn
        } f32`,
      );
    }
    return c;
  };
  let omegaT: Float32Array;
  if (opts.start) {
    checkShape(op, "start", opts.start, l, k);
    omegaT = opts.start;
  } else {
    const rng = gaussian(opts.seed ?? 0x5eed);
    omegaT = new Float32Array(l * k);
    for (let i = 0; i < omegaT.length; i++) omegaT[i] = rng();
  }

  // Range basis Q [N, l] of W·Ω, refined by q rounds of Q ← orth(W·orth(Wᵀ·Q)).
  let q = qrThin(await product(w, omegaT, n, k, l, true), n, l).q;
  for (let it = 0; it < iters; it++) {
    const zt = await product(toF32(transpose(q, n, l)), w, l, n, k, false); // (Wᵀ Q)ᵀ [l, K]
    const qz = qrThin(transpose(zt, l, k), k, l).q; // [K, l]
    q = qrThin(await product(w, toF32(transpose(qz, k, l)), n, k, l, true), n, l).q;
  }
  const b = await product(toF32(transpose(q, n, l)), w, l, n, k, false); // B = Qᵀ W [l, K]
  const small = denseSvd(b, l, k); // u [l, l], s [l], vt [l, K]

  const up = new Float32Array(n * r);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let t = 0; t < l; t++) acc += q[i * l + t] * small.u[t * l + j];
      up[i * r + j] = acc * small.s[j];
    }
  }
  return { r, up, down: small.vt.slice(0, r * k), basis: small.vt };
}

function toF32(a: Float64Array): Float32Array {
  return Float32Array.from(a);
}

function checkShape(op: string, name: string, a: ArrayLike<number>, rows: number, cols: number) {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0) {
    throw new RangeError(
      `Cannot ${op}: ${name} dimensions must be non-negative integers, got [${rows}, ${cols}]`,
    );
  }
  if (a.length !== rows * cols) {
    throw new TypeError(
      `Cannot ${op}: ${name} has ${a.length} elements, expected [${rows}, ${cols}] = ${
        rows * cols
      }`,
    );
  }
}

/** Seeded standard normals (mulberry32 + Box–Muller). */
function gaussian(seed: number): () => number {
  let st = seed >>> 0;
  const uniform = () => {
    let t = (st = (st + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}
