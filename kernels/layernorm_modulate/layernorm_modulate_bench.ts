/**
 * Benchmark of `layernorm_modulate`. As a program: small shapes (B=2, T=64, D=256 and 1152) that
 * finish quickly on a software adapter, or with `--large` DiT-XL/2 shapes (D=1152, T=256 and
 * 1024 tokens, B=2) and D=3072 (a real GPU).
 *
 *   deno run --allow-read --allow-env kernels/layernorm_modulate/layernorm_modulate_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import { actBytes, type ActDtype } from "../_wgsl.ts";
import { bufferSizes, LayernormModulate } from "./layernorm_modulate.ts";

/** Shape of one benchmark run. */
export interface LayernormModulateBenchShape {
  b: number;
  t: number;
  d: number;
  dtype: ActDtype;
  /** Storage dtype of the residual x (default `dtype`; FLUX: f32 under f16 activations). */
  residualDtype?: ActDtype;
  /** Invocations per workgroup (default: the launcher's choice). */
  workgroupSize?: 64 | 128 | 256;
  /** Dispatches per timed pass (default 8); the timing is per dispatch. */
  repeat?: number;
}

/**
 * Time `layernorm_modulate` on `shape` (a DiT block's norm1: mod [B, 6·D], chunks 0 and 1;
 * inputs are zeros: speed does not depend on values), per dispatch, on the GPU clock when the
 * device has `timestamp-query` (see _gpu_time.ts).
 * bytes = x read + h written + shift and scale read, once; ops ≈ 8 per element.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchLayernormModulate } from "./layernorm_modulate_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchLayernormModulate(gpu, { b: 2, t: 64, d: 256, dtype: "f32" })));
 * ```
 */
export async function benchLayernormModulate(
  gpu: Gpu,
  shape: LayernormModulateBenchShape,
): Promise<KernelTiming> {
  const { b, t, d, dtype, residualDtype, workgroupSize } = shape;
  const res = actBytes(residualDtype ?? dtype);
  const s = {
    b,
    t,
    d,
    dtype,
    residualDtype,
    modWidth: 6,
    shiftChunk: 0,
    scaleChunk: 1,
    workgroupSize,
  };
  return await timeOp(gpu, await LayernormModulate.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 8 * b * t * d,
    bytes: b * t * d * res + (b * t * d + 2 * b * d) * actBytes(dtype),
    repeat: shape.repeat,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "layernorm_modulate",
    shapes: (dtype, large): LayernormModulateBenchShape[] =>
      large
        ? [
          { b: 2, t: 256, d: 1152, dtype },
          { b: 2, t: 1024, d: 1152, dtype },
          { b: 2, t: 1024, d: 1152, dtype, workgroupSize: 256 },
          { b: 8, t: 1024, d: 1152, dtype },
          { b: 2, t: 4096, d: 3072, dtype },
          { b: 1, t: 4608, d: 3072, dtype, residualDtype: "f32" }, // FLUX.1 at 1024²
        ]
        : [
          { b: 2, t: 64, d: 256, dtype, repeat: 2 },
          { b: 2, t: 64, d: 1152, dtype, repeat: 2 },
          { b: 2, t: 64, d: 1152, dtype, residualDtype: "f32", repeat: 2 },
        ],
    bench: benchLayernormModulate,
    label: (s) =>
      `B=${s.b} T=${s.t} D=${s.d} ${s.dtype}${s.residualDtype ? ` res=${s.residualDtype}` : ""}` +
      `${s.workgroupSize ? ` wg=${s.workgroupSize}` : ""}`,
    width: 32,
  });
}
