/**
 * Benchmark of `gemm_f16`. As a program: a small shape (M=64, K=256, N=256) that finishes quickly
 * on a software adapter, or with `--large` the model-sized shapes (M=4096, K=N=3072 and
 * K=3072, N=12288; a real GPU) plus the GEMV shape M=1, K=3072, N=18432 (adaLN).
 *
 *   deno run --allow-read --allow-env kernels/gemm_f16/gemm_f16_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import type { ActDtype } from "../_wgsl.ts";
import { bufferSizes, GemmF16, type GemmKernel } from "./gemm_f16.ts";

/** Shape of one benchmark run. */
export interface GemmF16BenchShape {
  m: number;
  k: number;
  n: number;
  dtype: ActDtype;
  bias?: boolean;
  gelu?: boolean;
  /** Force a kernel (default: the launcher's choice). */
  kernel?: GemmKernel;
  /** Dispatches per timed pass (default 8); the timing is per dispatch. */
  repeat?: number;
}

/**
 * Time `gemm_f16` on `shape` (inputs are zeros: speed does not depend on values), per dispatch, on the GPU clock
 * when the device has `timestamp-query` (see _gpu_time.ts).
 * ops = 2·M·N·K; bytes = X + W + Y (+ bias) moved once.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchGemmF16 } from "./gemm_f16_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchGemmF16(gpu, { m: 64, k: 256, n: 256, dtype: "f32" })));
 * ```
 */
export async function benchGemmF16(gpu: Gpu, shape: GemmF16BenchShape): Promise<KernelTiming> {
  const { m, k, n, dtype } = shape;
  const s = { m, k, n, dtype, bias: shape.bias ?? false, gelu: shape.gelu ?? false };
  const op = await GemmF16.create(gpu, s, shape.kernel);
  return await timeOp(gpu, op, { rows: bufferSizes(s), ops: 2 * m * n * k, repeat: shape.repeat });
}

/** The label of a GEMM benchmark line: `M=… K=… N=… dtype [bias] [gelu]`. */
export function gemmBenchLabel(s: GemmF16BenchShape): string {
  return `M=${s.m} K=${s.k} N=${s.n} ${s.dtype}${s.bias ? " bias" : ""}${s.gelu ? " gelu" : ""}`;
}

if (import.meta.main) {
  await benchMain({
    kernel: "gemm_f16",
    shapes: (dtype, large): GemmF16BenchShape[] =>
      large
        ? [
          { m: 4096, k: 3072, n: 3072, dtype },
          { m: 4096, k: 3072, n: 12288, dtype },
          { m: 4096, k: 3072, n: 3072, dtype, bias: true, gelu: true },
          { m: 1, k: 3072, n: 18432, dtype, bias: true },
          { m: 2, k: 3072, n: 18432, dtype, bias: true },
        ]
        : [{ m: 64, k: 256, n: 256, dtype, repeat: 1 }, { m: 1, k: 256, n: 256, dtype, repeat: 1 }],
    bench: benchGemmF16,
    label: gemmBenchLabel,
    width: 36,
  });
}
