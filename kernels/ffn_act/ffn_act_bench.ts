/**
 * Times `ffn_act` at the text encoders' shapes (T5-XXL gated GELU: 512 × 10240 from an f16
 * [512, 20480] GEMM output to f32; CLIP-L quick-GELU: 77 × 3072). Prints time and GB/s.
 *
 * Run: `deno run -A kernels/ffn_act/ffn_act_bench.ts [--large]`
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { benchMain, timeOp } from "../_launch.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import type { ActDtype } from "../_wgsl.ts";
import { bufferSizes, FfnAct, type FfnActShape } from "./ffn_act.ts";

/** Time one shape. */
export async function benchFfnAct(gpu: Gpu, s: FfnActShape): Promise<KernelTiming> {
  return await timeOp(gpu, await FfnAct.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 20 * s.m * s.f,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "ffn_act",
    shapes: (dtype: ActDtype, large: boolean): FfnActShape[] => [
      { m: 77, f: 3072, gated: false, dtype },
      { m: large ? 512 : 64, f: 10240, gated: true, dtype, outDtype: "f32" },
    ],
    bench: benchFfnAct,
    label: (s) => `${s.gated ? "gated" : "quick"} M=${s.m} F=${s.f} ${s.dtype}`,
    width: 32,
  });
}
