/**
 * Benchmark of `gate_residual`. As a program: small shapes (B=2, T=64, D=256 and 1152) that
 * finish quickly on a software adapter, or with `--large` DiT-XL/2 shapes (D=1152, T=256 and
 * 1024 tokens, B=2) and D=3072 (a real GPU).
 *
 *   deno run --allow-read --allow-env kernels/gate_residual/gate_residual_bench.ts [--large]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import type { KernelTiming } from "../_gpu_time.ts";
import { benchMain, timeOp } from "../_launch.ts";
import { actBytes, type ActDtype } from "../_wgsl.ts";
import { bufferSizes, GateResidual } from "./gate_residual.ts";

/** Shape of one benchmark run. */
export interface GateResidualBenchShape {
  b: number;
  t: number;
  d: number;
  dtype: ActDtype;
  /** Storage dtype of the residual x (default `dtype`; FLUX: f32 under f16 activations). */
  residualDtype?: ActDtype;
  /** Invocations per workgroup (default 256). */
  workgroupSize?: 64 | 128 | 256;
  /** Dispatches per timed pass (default 8); the timing is per dispatch. */
  repeat?: number;
}

/**
 * Time `gate_residual` on `shape` (gate_msa of mod [B, 6·D]; inputs are zeros: speed does not
 * depend on values), per dispatch, on the GPU clock when the device has `timestamp-query` (see
 * _gpu_time.ts). bytes = x read and written + y read + the gate read, once; ops = 2 per element.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchGateResidual } from "./gate_residual_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchGateResidual(gpu, { b: 2, t: 64, d: 256, dtype: "f32" })));
 * ```
 */
export async function benchGateResidual(
  gpu: Gpu,
  shape: GateResidualBenchShape,
): Promise<KernelTiming> {
  const { b, t, d, dtype, residualDtype, workgroupSize } = shape;
  const res = actBytes(residualDtype ?? dtype);
  const s = { b, t, d, dtype, residualDtype, modWidth: 6, gateChunk: 2, workgroupSize };
  return await timeOp(gpu, await GateResidual.create(gpu, s), {
    rows: bufferSizes(s),
    ops: 2 * b * t * d,
    bytes: 2 * b * t * d * res + (b * t * d + b * d) * actBytes(dtype),
    repeat: shape.repeat,
  });
}

if (import.meta.main) {
  await benchMain({
    kernel: "gate_residual",
    shapes: (dtype, large): GateResidualBenchShape[] =>
      large
        ? [
          { b: 2, t: 256, d: 1152, dtype },
          { b: 2, t: 1024, d: 1152, dtype },
          { b: 2, t: 1024, d: 1152, dtype, workgroupSize: 128 },
          { b: 8, t: 1024, d: 1152, dtype },
          { b: 2, t: 4096, d: 3072, dtype },
          { b: 1, t: 4608, d: 3072, dtype, residualDtype: "f32" }, // FLUX.1 at 1024²
        ]
        : [
          { b: 2, t: 64, d: 256, dtype, repeat: 2 },
          { b: 2, t: 64, d: 1152, dtype, repeat: 2 },
          { b: 2, t: 64, d: 1152, dtype, residualDtype: "f32", repeat: 2 },
        ],
    bench: benchGateResidual,
    label: (s) =>
      `B=${s.b} T=${s.t} D=${s.d} ${s.dtype}${s.residualDtype ? ` res=${s.residualDtype}` : ""}` +
      `${s.workgroupSize ? ` wg=${s.workgroupSize}` : ""}`,
    width: 32,
  });
}
