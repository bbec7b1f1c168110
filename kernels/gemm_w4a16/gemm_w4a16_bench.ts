/**
 * Benchmark of `gemm_w4a16`. As a program: a small shape (M=64, K=256, N=256) that finishes
 * quickly on a software adapter, or with `--large` the model-sized shapes (M=4096, K=N=3072 and
 * K=3072, N=12288; a real GPU) plus the adaLN GEMV shapes M=1..2, K=3072, N=18432; a few with the
 * activation divisor `smooth` (AWQ scaling) next to the same shape without.
 *
 *   deno run --allow-read --allow-env kernels/gemm_w4a16/gemm_w4a16_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import { gemmBenchLabel, type GemmF16BenchShape } from "../gemm_f16/gemm_f16_bench.ts";
import { bufferSizes, GemmW4A16 } from "./gemm_w4a16.ts";

/** Shape of one benchmark run (gemm_f16's, plus the activation divisor `smooth`). */
export type GemmW4A16BenchShape = GemmF16BenchShape & { smooth?: boolean };

/**
 * Time `gemm_w4a16` on `shape` (zero inputs: speed does not depend on values), per dispatch, on the GPU clock
 * when the device has `timestamp-query` (see _gpu_time.ts).
 * ops = 2·M·N·K; bytes = X + qweight (K/2 per row) + scales (2 bytes per 64) + Y (+ bias).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchGemmW4A16 } from "./gemm_w4a16_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchGemmW4A16(gpu, { m: 1, k: 3072, n: 18432, dtype: "f16" })));
 * ```
 */
export async function benchGemmW4A16(
  gpu: Gpu,
  shape: GemmW4A16BenchShape,
): Promise<KernelTiming> {
  const { m, k, n, dtype } = shape;
  const s = {
    m,
    k,
    n,
    dtype,
    bias: shape.bias ?? false,
    gelu: shape.gelu ?? false,
    smooth: shape.smooth ?? false,
  };
  const op = await GemmW4A16.create(gpu, s, shape.kernel);
  return await timeOp(gpu, op, { rows: bufferSizes(s), ops: 2 * m * n * k, repeat: shape.repeat });
}

if (import.meta.main) {
  await benchMain({
    kernel: "gemm_w4a16",
    shapes: (dtype, large): GemmW4A16BenchShape[] =>
      large
        ? [
          { m: 4096, k: 3072, n: 3072, dtype },
          { m: 4096, k: 3072, n: 3072, dtype, smooth: true },
          { m: 4096, k: 3072, n: 12288, dtype },
          { m: 1, k: 3072, n: 18432, dtype, bias: true },
          { m: 1, k: 3072, n: 18432, dtype, bias: true, smooth: true },
          { m: 2, k: 3072, n: 18432, dtype, bias: true },
          { m: 8, k: 3072, n: 18432, dtype, bias: true },
          { m: 16, k: 3072, n: 18432, dtype, bias: true },
        ]
        : [
          { m: 64, k: 256, n: 256, dtype, repeat: 1 },
          { m: 64, k: 256, n: 256, dtype, repeat: 1, smooth: true },
          { m: 1, k: 256, n: 256, dtype, repeat: 1 },
          { m: 1, k: 256, n: 256, dtype, repeat: 1, smooth: true },
        ],
    bench: benchGemmW4A16,
    label: (sh) => `${gemmBenchLabel(sh)}${sh.smooth ? " smooth" : ""}`,
    width: 36,
  });
}
