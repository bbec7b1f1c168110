/**
 * Benchmark of `group_norm` at the FLUX / SD autoencoder decoder's shapes for a 1024² image:
 * 512 channels at 128² and 256², 256 at 512², 128 at 1024² (with SiLU, as before each conv of a
 * ResnetBlock). With `--small`, shapes that finish quickly on a software adapter.
 *
 *   deno run --allow-read --allow-env kernels/group_norm/group_norm_bench.ts [--small]
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { fmtTiming } from "../_bench.ts";
import { type KernelTiming, timeKernel } from "../_gpu_time.ts";
import { actBytes, type ActDtype } from "../_wgsl.ts";
import { bufferSizes, GroupNorm, type GroupNormShape } from "./group_norm.ts";

/**
 * Time the three dispatches of one `group_norm` on zeroed buffers. bytes = x read twice (stats,
 * apply) + y written once; ops = 8 per element (Welford update and apply, roughly).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchGroupNorm } from "./group_norm_bench.ts";
 * const gpu = await getGpu();
 * console.log(fmtTiming(await benchGroupNorm(gpu, { b: 1, hw: 4096, c: 128, dtype: "f32" })));
 * ```
 */
export async function benchGroupNorm(
  gpu: Gpu,
  shape: GroupNormShape,
  repeat = 8,
): Promise<KernelTiming> {
  const op = await GroupNorm.create(gpu, shape);
  const bufs: Record<string, GPUBuffer> = {};
  try {
    for (const [name, bytes] of bufferSizes(shape)) {
      bufs[name] = await gpu.createBuffer(`buffer bench ${name}`, bytes);
    }
    const n = shape.b * shape.hw * shape.c;
    const d = op.dispatches(bufs as never);
    return await timeKernel(gpu, d, { ops: 8 * n, bytes: 3 * n * actBytes(shape.dtype), repeat });
  } finally {
    op.destroy();
    gpu.destroy(...Object.values(bufs));
  }
}

/** The decoder's GroupNorms at a 1024² image, or small ones for a software adapter. */
export function decoderShapes(dtype: ActDtype, small: boolean): GroupNormShape[] {
  if (small) {
    return [{ b: 1, hw: 32 * 32, c: 64, silu: true, dtype }, { b: 1, hw: 64 * 64, c: 32, dtype }];
  }
  return [
    { b: 1, hw: 128 * 128, c: 512, silu: true, dtype },
    { b: 1, hw: 256 * 256, c: 512, silu: true, dtype },
    { b: 1, hw: 512 * 512, c: 256, silu: true, dtype },
    { b: 1, hw: 1024 * 1024, c: 128, silu: true, dtype },
  ];
}

if (import.meta.main) {
  const { getGpu } = await import("../../gpu/device.ts");
  const gpu = await getGpu();
  const dtype: ActDtype = gpu.caps.shaderF16 ? "f16" : "f32";
  const small = Deno.args.includes("--small");
  console.log(`group_norm on ${gpu.caps.adapter}`);
  for (const s of decoderShapes(dtype, small)) {
    const t = await benchGroupNorm(gpu, s, small ? 1 : 8);
    const label = `HW=${s.hw} C=${s.c}${s.silu ? " silu" : ""} ${s.dtype}`;
    console.log(`${label.padEnd(32)} ${fmtTiming(t)} (${t.clock} clock)`);
  }
}
