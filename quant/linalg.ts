/**
 * Small dense linear algebra for the quantizer, on row-major `Float32Array` matrices: a
 * cache-blocked CPU GEMM behind the {@link MatMul} seam (so the quantizer's large products can be
 * sent to a GPU by injecting another implementation), a thin QR, transpose and norms.
 *
 * Nothing here needs a GPU.
 *
 * @module
 */
import { simdMatMul } from "./linalg_wasm.ts";

/**
 * A matrix product `C[m,n] = A[m,k] · (transB ? B[n,k]ᵀ : B[k,n])` on row-major `Float32Array`s.
 *
 * The quantizer sends every product with a full weight matrix through one of these, so the
 * caller can inject a GPU GEMM; {@link cpuMatMul} is the default. The result must be a new
 * `Float32Array` of `m·n` values that the caller owns (it may be modified in place).
 */
export interface MatMul {
  (
    a: Float32Array,
    b: Float32Array,
    m: number,
    k: number,
    n: number,
    transB: boolean,
  ): Promise<Float32Array> | Float32Array;
}

/** Rows of the reduction dimension per cache block (A and B panels stay in L1/L2). */
const KC = 256;
/** Columns of C per cache block (the packed B panel is NC × KC f32 = 64 KiB). */
const NC = 64;

function checkDims(op: string, m: number, k: number, n: number): void {
  for (const [name, v] of [["m", m], ["k", k], ["n", n]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`Cannot ${op}: ${name} must be a non-negative integer, got ${v}`);
    }
  }
}

function checkLength(op: string, name: string, a: ArrayLike<number>, shape: string, len: number) {
  if (a.length !== len) {
    throw new TypeError(
      `Cannot ${op}: ${name} has ${a.length} elements, expected ${shape} = ${len}`,
    );
  }
}

/**
 * `C[m,n] = A[m,k] · (transB ? B[n,k]ᵀ : B[k,n])`, on the CPU.
 *
 * Cache-blocked (K in blocks of 256, N in panels of 64 columns packed contiguously along K) with a
 * 4×2 register tile; accumulation in float64, the result rounded once to f32. About 3–4 GFLOP/s
 * single-threaded on a current x86 core.
 *
 * @example
 * ```ts
 * import { matmul } from "./linalg.ts";
 * // [2,3] · [3,2]
 * const c = matmul(new Float32Array([1, 2, 3, 4, 5, 6]), new Float32Array([1, 0, 0, 1, 1, 1]), 2, 3, 2);
 * // c = [4, 5, 10, 11]
 * ```
 */
export function matmul(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  transB = false,
): Float32Array {
  const op = "multiply matrices";
  checkDims(op, m, k, n);
  checkLength(op, "A", a, `[m=${m}, k=${k}]`, m * k);
  checkLength(op, "B", b, transB ? `[n=${n}, k=${k}]` : `[k=${k}, n=${n}]`, k * n);
  const c = new Float64Array(m * n);
  const panel = new Float32Array(NC * KC);
  for (let k0 = 0; k0 < k; k0 += KC) {
    const kc = Math.min(KC, k - k0);
    for (let j0 = 0; j0 < n; j0 += NC) {
      const nc = Math.min(NC, n - j0);
      // Pack B[k0:k0+kc, j0:j0+nc] as panel[j][p] (contiguous along K).
      if (transB) {
        for (let j = 0; j < nc; j++) {
          const src = (j0 + j) * k + k0;
          panel.set(b.subarray(src, src + kc), j * kc);
        }
      } else {
        for (let p = 0; p < kc; p++) {
          const src = (k0 + p) * n + j0;
          for (let j = 0; j < nc; j++) panel[j * kc + p] = b[src + j];
        }
      }
      microBlock(a, panel, c, m, k, n, k0, kc, j0, nc);
    }
  }
  return Float32Array.from(c);
}

/** C[:, j0:j0+nc] += A[:, k0:k0+kc] · panelᵀ, 4 rows × 2 columns per register tile. */
function microBlock(
  a: Float32Array,
  panel: Float32Array,
  c: Float64Array,
  m: number,
  k: number,
  n: number,
  k0: number,
  kc: number,
  j0: number,
  nc: number,
): void {
  let i = 0;
  for (; i + 4 <= m; i += 4) {
    const a0 = i * k + k0, a1 = a0 + k, a2 = a1 + k, a3 = a2 + k;
    let j = 0;
    for (; j + 2 <= nc; j += 2) {
      const b0 = j * kc, b1 = b0 + kc;
      let c00 = 0, c01 = 0, c10 = 0, c11 = 0, c20 = 0, c21 = 0, c30 = 0, c31 = 0;
      for (let p = 0; p < kc; p++) {
        const y0 = panel[b0 + p], y1 = panel[b1 + p];
        const x0 = a[a0 + p], x1 = a[a1 + p], x2 = a[a2 + p], x3 = a[a3 + p];
        c00 += x0 * y0;
        c01 += x0 * y1;
        c10 += x1 * y0;
        c11 += x1 * y1;
        c20 += x2 * y0;
        c21 += x2 * y1;
        c30 += x3 * y0;
        c31 += x3 * y1;
      }
      const o = i * n + j0 + j;
      c[o] += c00;
      c[o + 1] += c01;
      c[o + n] += c10;
      c[o + n + 1] += c11;
      c[o + 2 * n] += c20;
      c[o + 2 * n + 1] += c21;
      c[o + 3 * n] += c30;
      c[o + 3 * n + 1] += c31;
    }
    for (; j < nc; j++) {
      const b0 = j * kc;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let p = 0; p < kc; p++) {
        const y = panel[b0 + p];
        s0 += a[a0 + p] * y;
        s1 += a[a1 + p] * y;
        s2 += a[a2 + p] * y;
        s3 += a[a3 + p] * y;
      }
      const o = i * n + j0 + j;
      c[o] += s0;
      c[o + n] += s1;
      c[o + 2 * n] += s2;
      c[o + 3 * n] += s3;
    }
  }
  for (; i < m; i++) {
    const a0 = i * k + k0;
    for (let j = 0; j < nc; j++) {
      const b0 = j * kc;
      let s = 0;
      for (let p = 0; p < kc; p++) s += a[a0 + p] * panel[b0 + p];
      c[i * n + j0 + j] += s;
    }
  }
}

/**
 * The default {@link MatMul}: the WebAssembly SIMD GEMM of quant/linalg_wasm.ts (f32
 * accumulation, 3–5× faster than {@link matmul}, which stays the exact float64 reference).
 */
export const cpuMatMul: MatMul = (a, b, m, k, n, transB) => simdMatMul(a, b, m, k, n, transB);

/** Aᵀ of a row-major `[rows, cols]` matrix, as a row-major `[cols, rows]` matrix. */
export function transpose<T extends Float32Array | Float64Array>(
  a: T,
  rows: number,
  cols: number,
): T {
  checkDims("transpose", rows, cols, 0);
  checkLength("transpose", "A", a, `[${rows}, ${cols}]`, rows * cols);
  const t = a instanceof Float64Array ? new Float64Array(a.length) : new Float32Array(a.length);
  const B = 32;
  for (let i0 = 0; i0 < rows; i0 += B) {
    const i1 = Math.min(rows, i0 + B);
    for (let j0 = 0; j0 < cols; j0 += B) {
      const j1 = Math.min(cols, j0 + B);
      for (let i = i0; i < i1; i++) {
        for (let j = j0; j < j1; j++) t[j * rows + i] = a[i * cols + j];
      }
    }
  }
  return t as T;
}

/** Frobenius norm ‖A‖_F, accumulated in float64 (any shape: the flat vector's 2-norm). */
export function frobeniusNorm(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** ‖A − B‖_F, accumulated in float64. */
export function frobeniusDistance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) {
    throw new TypeError(
      `Cannot compute a distance: the operands have ${a.length} and ${b.length} elements`,
    );
  }
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    s += d * d;
  }
  return Math.sqrt(s);
}

/** Columns whose residual after projection falls below this fraction of their norm are dependent. */
const DEPENDENT = 1e-10;

/**
 * Thin QR of a row-major `[rows, cols]` matrix (rows ≥ cols) by classical Gram–Schmidt with one
 * full re-orthogonalisation ("twice is enough"), in float64.
 *
 * Returns Q `[rows, cols]` with orthonormal columns and upper-triangular R `[cols, cols]` (both
 * row-major float64) with A = Q·R. A column that is (numerically) dependent on the previous ones
 * gets R[j,j] = 0 and a deterministic unit vector orthogonal to the previous columns, so Q stays
 * orthonormal even for rank-deficient A.
 */
export function qrThin(
  a: Float32Array | Float64Array,
  rows: number,
  cols: number,
): { q: Float64Array; r: Float64Array } {
  const op = "compute a thin QR";
  checkDims(op, rows, cols, 0);
  checkLength(op, "A", a, `[rows=${rows}, cols=${cols}]`, rows * cols);
  if (rows < cols) {
    throw new RangeError(`Cannot ${op}: A is [${rows}, ${cols}], it needs rows >= cols`);
  }
  // Column-major working copy: column j is qc[j*rows .. (j+1)*rows).
  const qc = transpose(Float64Array.from(a), rows, cols);
  const r = new Float64Array(cols * cols);
  let seed = 0x9e3779b9;
  for (let j = 0; j < cols; j++) {
    const v = qc.subarray(j * rows, (j + 1) * rows);
    const norm0 = Math.sqrt(dot(v, v));
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < j; i++) {
        const qi = qc.subarray(i * rows, (i + 1) * rows);
        const h = dot(qi, v);
        r[i * cols + j] += h;
        axpy(-h, qi, v);
      }
    }
    let norm = Math.sqrt(dot(v, v));
    if (!(norm > DEPENDENT * norm0) || norm === 0) {
      // Dependent column: R[j,j] = 0, Q gets a pseudo-random unit vector orthogonal to Q[:, :j].
      for (let attempt = 0; attempt < 8; attempt++) {
        for (let t = 0; t < rows; t++) {
          seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
          v[t] = seed / 4294967296 - 0.5;
        }
        for (let pass = 0; pass < 2; pass++) {
          for (let i = 0; i < j; i++) {
            axpy(
              -dot(qc.subarray(i * rows, (i + 1) * rows), v),
              qc.subarray(i * rows, (i + 1) * rows),
              v,
            );
          }
        }
        norm = Math.sqrt(dot(v, v));
        if (norm > 1e-3) break;
      }
      r[j * cols + j] = 0;
    } else {
      r[j * cols + j] = norm;
    }
    const inv = 1 / norm;
    for (let t = 0; t < rows; t++) v[t] *= inv;
  }
  return { q: transpose(qc, cols, rows), r };
}

function dot(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}

function axpy(alpha: number, x: Float64Array, y: Float64Array): void {
  for (let i = 0; i < x.length; i++) y[i] += alpha * x[i];
}
