/**
 * The quantizer's big matrix products on the GPU: a `MatMul` (quant/linalg.ts) backed by the
 * `gemm_f16` kernel in f32 storage. Operands larger than a storage binding are split into row
 * blocks, so layers of any size work within the adapter's limits.
 *
 * @module
 */
import { GemmF16 } from "../kernels/gemm_f16/gemm_f16.ts";
import type { MatMul } from "../quant/linalg.ts";
import { transpose } from "../quant/linalg.ts";
import { getGpu, type Gpu } from "../gpu/device.ts";

/**
 * A GPU `MatMul` and a `close()` that releases the device.
 *
 * @example
 * ```ts ignore
 * import { gpuMatMul } from "./gpu_matmul.ts";
 * const { matmul, close } = await gpuMatMul();
 * const c = await matmul(new Float32Array([1, 2]), new Float32Array([3, 4]), 1, 2, 1, false); // [11]
 * close();
 * ```
 */
export async function gpuMatMul(gpu?: Gpu): Promise<{ matmul: MatMul; close: () => void }> {
  const g = gpu ?? await getGpu();
  const matmul: MatMul = (a, b, m, k, n, transB) => {
    const w = transB ? b : transpose(b, k, n); // gemm_f16 wants W as [N, K]
    return product(g, a, w, m, k, n);
  };
  return { matmul, close: () => gpu ? undefined : g.close() };
}

async function product(
  gpu: Gpu,
  a: Float32Array,
  w: Float32Array,
  m: number,
  k: number,
  n: number,
): Promise<Float32Array> {
  const limit = Math.min(gpu.caps.maxStorageBufferBindingSize, 1 << 30);
  const rowBytes = k * 4;
  // blocks of rows of A (mb) and of W (nb) whose operands and output each fit one binding
  const nb = Math.max(1, Math.min(n, Math.floor(limit / Math.max(rowBytes, 1))));
  const mb = Math.max(1, Math.min(m, Math.floor(limit / Math.max(rowBytes, nb * 4, 1))));
  const c = new Float32Array(m * n);
  for (let n0 = 0; n0 < n; n0 += nb) {
    const nn = Math.min(nb, n - n0);
    const wb = await gpu.upload("buffer matmul w", w.subarray(n0 * k, (n0 + nn) * k));
    try {
      for (let m0 = 0; m0 < m; m0 += mb) {
        const mm = Math.min(mb, m - m0);
        const op = await GemmF16.create(gpu, { m: mm, k, n: nn, dtype: "f32", bias: false });
        const xb = await gpu.upload("buffer matmul x", a.subarray(m0 * k, (m0 + mm) * k));
        const yb = await gpu.createBuffer("buffer matmul y", mm * nn * 4);
        try {
          gpu.run([op.dispatch({ x: xb, w: wb, y: yb })], "matmul");
          const y = new Float32Array(await gpu.read(yb, mm * nn * 4));
          for (let i = 0; i < mm; i++) c.set(y.subarray(i * nn, (i + 1) * nn), (m0 + i) * n + n0);
        } finally {
          op.destroy();
          gpu.destroy(xb, yb);
        }
      }
    } finally {
      gpu.destroy(wb);
    }
  }
  return c;
}
