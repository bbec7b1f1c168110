/**
 * Benchmark of `copy_rows`. As a program: small shapes, or with `--large` FLUX.1's (hidden 3072,
 * 512 text + 4096 image tokens: the joins and splits of one forward).
 *
 *   deno run --allow-read --allow-env kernels/copy_rows/copy_rows_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import { actBytes } from "../_wgsl.ts";
import { bufferSizes, CopyRows, type CopyRowsShape } from "./copy_rows.ts";

/**
 * Time one dispatch of `copy_rows` on zeroed buffers; bytes = the copied rows read and written.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchCopyRows } from "./copy_rows_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchCopyRows(gpu, {
 *   b: 1, n: 24, width: 64, srcRows: 24, srcOffset: 0, dstRows: 32, dstOffset: 8, dtype: "f32",
 * })));
 * ```
 */
export async function benchCopyRows(gpu: Gpu, s: CopyRowsShape): Promise<KernelTiming> {
  return await timeOp(gpu, await CopyRows.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 0,
    bytes: 2 * s.b * s.n * s.width * actBytes(s.dtype),
    repeat: 4,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "copy_rows",
    shapes: (dtype, large): CopyRowsShape[] => {
      const [txt, img, d] = large ? [512, 4096, 3072] : [8, 24, 64];
      return [
        {
          b: 1,
          n: img,
          width: d,
          srcRows: img,
          srcOffset: 0,
          dstRows: txt + img,
          dstOffset: txt,
          dtype,
        },
        {
          b: 1,
          n: txt,
          width: d,
          srcRows: txt + img,
          srcOffset: 0,
          dstRows: txt,
          dstOffset: 0,
          dtype,
        },
      ];
    },
    bench: benchCopyRows,
    label: (s) => `n=${s.n} width=${s.width} ${s.srcRows}→${s.dstRows} ${s.dtype}`,
    width: 36,
  });
}
