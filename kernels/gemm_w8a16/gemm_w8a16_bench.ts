/**
 * Times `gemm_w8a16` at the T5-XXL shapes (512 tokens: q/k/v/o 4096×4096, wi 20480×4096, wo
 * 4096×10240) and CLIP-L's (77 × 768 → 3072). Prints time, GB/s and TFLOP/s.
 *
 * Run: `deno run -A kernels/gemm_w8a16/gemm_w8a16_bench.ts [--large]`
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { benchMain, timeOp } from "../_launch.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import type { ActDtype } from "../_wgsl.ts";
import { bufferSizes, GemmW8A16, type GemmW8A16Shape } from "./gemm_w8a16.ts";

/** Time one shape. */
export async function benchGemmW8A16(gpu: Gpu, s: GemmW8A16Shape): Promise<KernelTiming> {
  return await timeOp(gpu, await GemmW8A16.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 2 * s.m * s.k * s.n,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "gemm_w8a16",
    shapes: (dtype: ActDtype, large: boolean): GemmW8A16Shape[] =>
      large
        ? [
          { m: 512, k: 4096, n: 4096, dtype, bias: false },
          { m: 512, k: 4096, n: 20480, dtype, bias: false },
          { m: 512, k: 10240, n: 4096, dtype: "f32", bias: false },
          { m: 77, k: 768, n: 3072, dtype, bias: true },
        ]
        : [{ m: 64, k: 256, n: 256, dtype, bias: false }, {
          m: 77,
          k: 64,
          n: 128,
          dtype,
          bias: true,
        }],
    bench: benchGemmW8A16,
    label: (s) => `M=${s.m} K=${s.k} N=${s.n} ${s.dtype}`,
    width: 32,
  });
}
