/**
 * Benchmark of `qk_norm_rope`. As a program: small shapes (the FLUX tiny model) that finish
 * quickly on a software adapter, or with `--large` FLUX.1's (24 heads of 128, 512 text + 4096
 * image tokens).
 *
 *   deno run --allow-read --allow-env kernels/qk_norm_rope/qk_norm_rope_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import { actBytes } from "../_wgsl.ts";
import { bufferSizes, QkNormRope, type QkNormRopeShape } from "./qk_norm_rope.ts";

/**
 * Time one dispatch of `qk_norm_rope` on zeroed buffers. bytes = the part's q, k, v read once and
 * written once (plus the small tables); ops ≈ 10 per q/k element.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchQkNormRope } from "./qk_norm_rope_bench.ts";
 * const gpu = await getGpu();
 * const s = { b: 1, n: 24, l: 32, rowOffset: 8, h: 2, d: 32, srcStride: 192, dtype: "f32" } as const;
 * console.log(fmtTiming(await benchQkNormRope(gpu, s)));
 * ```
 */
export async function benchQkNormRope(gpu: Gpu, s: QkNormRopeShape): Promise<KernelTiming> {
  const e = actBytes(s.dtype), part = s.b * s.n * 3 * s.h * s.d;
  return await timeOp(gpu, await QkNormRope.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 10 * (2 / 3) * part,
    bytes: 2 * part * e + s.n * s.d * 4 + 2 * s.d * 4,
    repeat: 4,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "qk_norm_rope",
    shapes: (dtype, large): QkNormRopeShape[] => {
      const flux = (n: number, l: number, off: number, extra = 0): QkNormRopeShape => ({
        b: 1,
        n,
        l,
        rowOffset: off,
        h: large ? 24 : 2,
        d: large ? 128 : 32,
        srcStride: 3 * (large ? 3072 : 64) + extra,
        dtype,
      });
      return large
        ? [flux(512, 4608, 0), flux(4096, 4608, 512), flux(4608, 4608, 0)]
        : [flux(8, 32, 0), flux(24, 32, 8), flux(32, 32, 0)];
    },
    bench: benchQkNormRope,
    label: (s) => `n=${s.n} L=${s.l} H=${s.h} D=${s.d} ${s.dtype}`,
    width: 32,
  });
}
