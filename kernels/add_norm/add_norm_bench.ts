/**
 * Times `add_norm` at the text encoders' shapes (T5-XXL: 512 × 4096 RMSNorm with an f32 residual
 * add; CLIP-L: 77 × 768 LayerNorm). Prints time and GB/s (x, y, xOut, h moved once).
 *
 * Run: `deno run -A kernels/add_norm/add_norm_bench.ts [--large]`
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { benchMain, timeOp } from "../_launch.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import type { ActDtype } from "../_wgsl.ts";
import { AddNorm, type AddNormShape, bufferSizes } from "./add_norm.ts";

/** Time one shape. */
export async function benchAddNorm(gpu: Gpu, s: AddNormShape): Promise<KernelTiming> {
  return await timeOp(gpu, await AddNorm.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 8 * s.rows * s.d,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "add_norm",
    shapes: (dtype: ActDtype, large: boolean): AddNormShape[] => [
      { rows: 77, d: 768, dtype, norm: "layer", eps: 1e-5, addY: true },
      { rows: large ? 512 : 64, d: 4096, dtype, norm: "rms", eps: 1e-6, addY: true, yDtype: "f32" },
    ],
    bench: benchAddNorm,
    label: (s) => `${s.norm} rows=${s.rows} D=${s.d} ${s.dtype}`,
    width: 32,
  });
}
