/**
 * The quantizer's default CPU matrix product: a WebAssembly SIMD GEMM (f32x4, 4×8 register
 * tiles), 3–5× faster than the scalar float64 {@linkcode matmul} of quant/linalg.ts, which stays
 * the exact reference.
 *
 * Layout in the kernel's memory: A `[mp, K]` row-major (rows padded to a multiple of 4 with
 * zeros), B packed `[np/8, K, 8]` (8 output columns side by side along K, padded with zeros),
 * C `[mp, np]`. The product runs in blocks of 256 rows of A × 256 values of K (A's block stays
 * in L2, B's K-block of 8 columns in L1), each call of the kernel sweeping one 8-column tile of
 * B down the rows of the block.
 *
 * Numerics: f32 products and sums (no FMA), the K-sum in order; the error against the exact
 * product is within `K·2⁻²³·Σ_p |a_p·b_p|` (the standard bound for recursive f32 summation).
 *
 * @module
 */
import type { MatMul } from "./linalg.ts";
import { dequantizeWeight, type PackedWeight } from "../formats/packing.ts";
import { assembleModule, type WasmFunction } from "./wasm.ts";

/** Rows of A per cache block. */
const MC = 256;
/** Values of K per cache block. */
const KC = 256;

/**
 * `C[i..i+4, j..j+8] += A[i..i+4, k0..k0+kc] · Bp[tile, k0..k0+kc, 8]` for `tiles` row tiles:
 * $a → A[i0, k0], $b → the tile's packed K-block, $c → C[i0, j0]; strides in bytes.
 */
const PANEL: WasmFunction = {
  name: "panel",
  params: ["$a", "$b", "$c", "$tiles", "$kc", "$lda", "$ldc"],
  i32: ["$t", "$p0", "$p1", "$p2", "$p3", "$pb", "$pbEnd", "$c1", "$c2", "$c3"],
  v128: ["$b0", "$b1", "$av", "$x0", "$y0", "$x1", "$y1", "$x2", "$y2", "$x3", "$y3"],
  body: `
  block loop
    local.get $t  local.get $tiles  i32.ge_u  br_if 1
    local.get $c  local.get $ldc  i32.add  local.tee $c1
    local.get $ldc  i32.add  local.tee $c2
    local.get $ldc  i32.add  local.set $c3
    local.get $c  v128.load  local.set $x0
    local.get $c  v128.load offset=16  local.set $y0
    local.get $c1  v128.load  local.set $x1
    local.get $c1  v128.load offset=16  local.set $y1
    local.get $c2  v128.load  local.set $x2
    local.get $c2  v128.load offset=16  local.set $y2
    local.get $c3  v128.load  local.set $x3
    local.get $c3  v128.load offset=16  local.set $y3
    local.get $a  local.tee $p0
    local.get $lda  i32.add  local.tee $p1
    local.get $lda  i32.add  local.tee $p2
    local.get $lda  i32.add  local.set $p3
    local.get $b  local.tee $pb
    local.get $kc  i32.const 5  i32.shl  i32.add  local.set $pbEnd
    block loop
      local.get $pb  local.get $pbEnd  i32.ge_u  br_if 1
      local.get $pb  v128.load  local.set $b0
      local.get $pb  v128.load offset=16  local.set $b1
      ${
    [0, 1, 2, 3].map((r) => `
      local.get $p${r}  f32.load  f32x4.splat  local.set $av
      local.get $x${r}  local.get $av  local.get $b0  f32x4.mul  f32x4.add  local.set $x${r}
      local.get $y${r}  local.get $av  local.get $b1  f32x4.mul  f32x4.add  local.set $y${r}
      local.get $p${r}  i32.const 4  i32.add  local.set $p${r}`).join("")
  }
      local.get $pb  i32.const 32  i32.add  local.set $pb
      br 0
    end end
    local.get $c  local.get $x0  v128.store
    local.get $c  local.get $y0  v128.store offset=16
    local.get $c1  local.get $x1  v128.store
    local.get $c1  local.get $y1  v128.store offset=16
    local.get $c2  local.get $x2  v128.store
    local.get $c2  local.get $y2  v128.store offset=16
    local.get $c3  local.get $x3  v128.store
    local.get $c3  local.get $y3  v128.store offset=16
    local.get $c3  local.get $ldc  i32.add  local.set $c
    local.get $a  local.get $lda  i32.const 2  i32.shl  i32.add  local.set $a
    local.get $t  i32.const 1  i32.add  local.set $t
    br 0
  end end`,
};

interface Kernel {
  memory: WebAssembly.Memory;
  panel(
    a: number,
    b: number,
    c: number,
    tiles: number,
    kc: number,
    lda: number,
    ldc: number,
  ): void;
}

let kernel: Kernel | undefined;

/** The kernel instance, its memory grown to at least `bytes`. */
function kernelWith(bytes: number): Kernel {
  if (!kernel) {
    const memory = new WebAssembly.Memory({ initial: 16 });
    const inst = new WebAssembly.Instance(assembleModule([PANEL]), { e: { m: memory } });
    kernel = { memory, panel: inst.exports.panel as Kernel["panel"] };
  }
  const have = kernel.memory.buffer.byteLength;
  if (bytes > have) kernel.memory.grow(Math.ceil((bytes - have) / 65536));
  return kernel;
}

function check(a: Float32Array, b: Float32Array, m: number, k: number, n: number, tb: boolean) {
  for (const [name, v] of [["m", m], ["k", k], ["n", n]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(
        `Cannot multiply matrices: ${name} must be a non-negative integer, got ${v}`,
      );
    }
  }
  if (a.length !== m * k) {
    throw new TypeError(
      `Cannot multiply matrices: A has ${a.length} elements, expected [m=${m}, k=${k}] = ${m * k}`,
    );
  }
  if (b.length !== k * n) {
    const shape = tb ? `[n=${n}, k=${k}]` : `[k=${k}, n=${n}]`;
    throw new TypeError(
      `Cannot multiply matrices: B has ${b.length} elements, expected ${shape} = ${k * n}`,
    );
  }
}

/**
 * `C[m,n] = A[m,k] · (transB ? B[n,k]ᵀ : B[k,n])` in WebAssembly SIMD (f32 accumulation; see
 * the module docs for the bound). Same contract as {@linkcode MatMul}: a new array of m·n values,
 * or `out` (m·n values, e.g. a block of rows of a larger result) overwritten and returned. Each
 * value depends only on its row of A and its column of B, so products split by rows or columns
 * give bit-identical blocks.
 *
 * @example
 * ```ts
 * import { simdMatMul } from "./linalg_wasm.ts";
 * const c = simdMatMul(new Float32Array([1, 2, 3, 4, 5, 6]), new Float32Array([1, 0, 0, 1, 1, 1]), 2, 3, 2, false);
 * // c = [4, 5, 10, 11]
 * ```
 */
export function simdMatMul(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  transB = false,
  out?: Float32Array,
): Float32Array {
  check(a, b, m, k, n, transB);
  if (out !== undefined && out.length !== m * n) {
    throw new TypeError(
      `Cannot multiply matrices: the output has ${out.length} elements, expected [m=${m}, n=${n}]`,
    );
  }
  return product(a, b, m, k, n, transB, n, 0, out ?? new Float32Array(m * n));
}

/**
 * Columns `c0 … c0+n−1` of `A[m,k] · B[k, ldb]` (B not transposed, row-major with `ldb` columns):
 * `[m, n]`, each value bit-identical to the same column of {@linkcode simdMatMul}`(a, b, m, k,
 * ldb)` (a column's sums do not depend on the other columns). Lets a product be split by output
 * columns without copying B's strided column block.
 */
export function simdMatMulColumns(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  ldb: number,
  c0: number,
  n: number,
): Float32Array {
  check(a, b, m, k, ldb, false);
  if (!(Number.isInteger(c0) && Number.isInteger(n) && c0 >= 0 && n >= 0 && c0 + n <= ldb)) {
    throw new RangeError(
      `Cannot multiply matrices: columns ${c0} … ${c0 + n - 1} are outside B's ${ldb} columns`,
    );
  }
  return product(a, b, m, k, n, false, ldb, c0, new Float32Array(m * n));
}

/**
 * `xa [m, K] · deq(p)ᵀ` ([m, N]) with the dequantized weight written straight into the kernel's
 * operand memory (no [N, K] f32 array): bit-identical to `simdMatMul(xa, dequantizeWeight(p), m,
 * K, N, true)` — the same values, the same sums.
 */
export function simdResidualProduct(xa: Float32Array, m: number, p: PackedWeight): Float32Array {
  const { n, k } = p;
  check(xa, new Float32Array(0), m, k, 0, true);
  const out = new Float32Array(m * n);
  if (m === 0 || n === 0 || k === 0) return out;
  // (deq · xaᵀ)ᵀ, the order simdMatMul takes for n > m; for n ≤ m its unswapped sums are
  // Σ xa·w against Σ w·xa here: the same products (exact commutation) in the same order.
  const t = product(
    null,
    xa,
    n,
    k,
    m,
    true,
    m,
    0,
    new Float32Array(m * n),
    (dst) => dequantizeWeight(p, dst),
  );
  for (let j = 0; j < n; j++) for (let i = 0; i < m; i++) out[i * n + j] = t[j * m + i];
  return out;
}

function product(
  a: Float32Array | null,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
  transB: boolean,
  ldb: number,
  c0: number,
  out: Float32Array,
  fillA?: (dst: Float32Array) => void,
): Float32Array {
  if (a && transB && n > m && m > 0 && k > 0) {
    // A·Bᵀ = (B·Aᵀ)ᵀ: pack the smaller operand (packing is the strided part).
    const t = product(b, a, n, k, m, true, m, 0, new Float32Array(m * n));
    for (let j = 0; j < n; j++) for (let i = 0; i < m; i++) out[i * n + j] = t[j * m + i];
    return out;
  }
  if (m === 0 || n === 0 || k === 0) return out.fill(0);
  const mp = Math.ceil(m / 4) * 4, np = Math.ceil(n / 8) * 8;
  const aBytes = mp * k * 4, bBytes = np * k * 4, cBytes = mp * np * 4;
  const kern = kernelWith(aBytes + bBytes + cBytes);
  const buf = kern.memory.buffer;
  const A = new Float32Array(buf, 0, mp * k);
  if (a) A.set(a);
  else fillA!(A.subarray(0, m * k));
  A.fill(0, m * k);
  // B packed [np/8][K][8].
  const B = new Float32Array(buf, aBytes, np * k);
  if (np !== n) B.fill(0);
  for (let j0 = 0; j0 < n; j0 += 8) {
    const tile = (j0 >> 3) * k * 8, w = Math.min(8, n - j0);
    if (transB) {
      for (let jj = 0; jj < w; jj++) {
        const src = (j0 + jj) * k;
        for (let p = 0, d = tile + jj; p < k; p++, d += 8) B[d] = b[src + p];
      }
    } else if (w === 8) {
      for (let p = 0, d = tile, src = c0 + j0; p < k; p++, d += 8, src += ldb) {
        B[d] = b[src];
        B[d + 1] = b[src + 1];
        B[d + 2] = b[src + 2];
        B[d + 3] = b[src + 3];
        B[d + 4] = b[src + 4];
        B[d + 5] = b[src + 5];
        B[d + 6] = b[src + 6];
        B[d + 7] = b[src + 7];
      }
    } else {
      for (let p = 0; p < k; p++) {
        for (let jj = 0; jj < w; jj++) B[tile + p * 8 + jj] = b[p * ldb + c0 + j0 + jj];
      }
    }
  }
  const cOff = aBytes + bBytes;
  const C = new Float32Array(buf, cOff, mp * np);
  C.fill(0);
  for (let i0 = 0; i0 < mp; i0 += MC) {
    const tiles = Math.min(MC, mp - i0) >> 2;
    for (let k0 = 0; k0 < k; k0 += KC) {
      const kc = Math.min(KC, k - k0);
      for (let jt = 0; jt < np >> 3; jt++) {
        kern.panel(
          (i0 * k + k0) * 4,
          aBytes + (jt * k + k0) * 32,
          cOff + (i0 * np + jt * 8) * 4,
          tiles,
          kc,
          k * 4,
          np * 4,
        );
      }
    }
  }
  if (np === n) out.set(C.subarray(0, m * n));
  else for (let i = 0; i < m; i++) out.set(C.subarray(i * np, i * np + n), i * n);
  return out;
}

/** {@linkcode simdMatMul} behind the {@linkcode MatMul} seam. */
export const simdCpuMatMul: MatMul = (a, b, m, k, n, transB) => simdMatMul(a, b, m, k, n, transB);
