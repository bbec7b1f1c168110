/**
 * Benchmark of `flash_attention`: milliseconds, TOPS (4·B·H·T²·D: Q·Kᵀ and P·V, a multiply-add
 * counting 2) and GB/s (qkv read once + o written once). Inputs are zeros (speed does not depend
 * on the values). Run as a program:
 *
 * ```sh
 * deno run --allow-read --allow-env kernels/flash_attention/flash_attention_bench.ts [--large] [--tiles]
 * ```
 *
 * Default: B=1, T=64, H=4, D ∈ {64, 72} (quick on a software adapter). `--large`: B=1,
 * T ∈ {256, 1024, 4096}, H=16, D ∈ {64, 72, 128} (a real GPU). `--tiles`: also time every other
 * built-in tile that fits the device, to pick the defaults.
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { fmtTiming, timeDispatches } from "../_bench.ts";
import { type KernelTiming, timeKernel } from "../_gpu_time.ts";
import type { ActDtype } from "../_wgsl.ts";
import {
  bufferSizes,
  candidateTiles,
  FlashAttention,
  type FlashAttentionShape,
  type FlashAttentionTile,
} from "./flash_attention.ts";

/** Shape of one benchmark run. */
export interface FlashAttentionBenchShape extends FlashAttentionShape {
  /** Dispatches per timed pass (default 8); the timing is per dispatch. */
  repeat?: number;
}

/** A timing and the tile it was measured with. */
export type FlashAttentionTiming = KernelTiming & { tile: FlashAttentionTile };

/**
 * Time `flash_attention` on `shape`, per dispatch, on the GPU clock when the device has
 * `timestamp-query` (see _gpu_time.ts).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { fmtTiming } from "../_bench.ts";
 * import { benchFlashAttention } from "./flash_attention_bench.ts";
 * const gpu = await getGpu();
 * const t = await benchFlashAttention(gpu, { b: 1, t: 64, h: 4, d: 72, dtype: "f32" });
 * console.log(fmtTiming(t), t.tile);
 * ```
 */
export async function benchFlashAttention(
  gpu: Gpu,
  shape: FlashAttentionBenchShape,
): Promise<FlashAttentionTiming> {
  const { b, t, h, d } = shape;
  const op = await FlashAttention.create(gpu, shape);
  const sizes = Object.fromEntries(bufferSizes(shape));
  const qkv = await gpu.createBuffer("buffer bench qkv", sizes.qkv);
  const o = await gpu.createBuffer("buffer bench o", sizes.o);
  try {
    const dispatch = op.dispatch({ qkv, o });
    await gpu.runChecked("run flash_attention (bench warm-up)", [dispatch]);
    const ops = 4 * b * h * t * t * d;
    const bytes = sizes.qkv + sizes.o;
    // warm up by wall clock first (an idle GPU clocks down), then read the GPU's own clock
    await timeDispatches(gpu, [dispatch], { ops, bytes, budgetMs: 100 });
    const timing = await timeKernel(gpu, [dispatch], { ops, bytes, repeat: shape.repeat });
    return { ...timing, tile: { ...op.tile } };
  } finally {
    op.destroy();
    gpu.destroy(qkv, o);
  }
}

if (import.meta.main) {
  const { getGpu } = await import("../../gpu/device.ts");
  const gpu = await getGpu();
  const large = Deno.args.includes("--large");
  const allTiles = Deno.args.includes("--tiles");
  const dtype: ActDtype = gpu.caps.shaderF16 ? "f16" : "f32";
  const shapes: FlashAttentionBenchShape[] = large
    ? [256, 1024, 4096].flatMap((t) => [64, 72, 128].map((d) => ({ b: 1, t, h: 16, d, dtype })))
    : [64, 72].map((d) => ({ b: 1, t: 64, h: 4, d, dtype, repeat: 1 }));
  console.log(`flash_attention on ${gpu.caps.adapter}`);
  for (const s of shapes) {
    const tiles = allTiles ? candidateTiles(gpu, s.d) : [undefined];
    for (const tile of tiles) {
      const r = await benchFlashAttention(gpu, { ...s, tile });
      const label = `B=${s.b} T=${s.t} H=${s.h} D=${s.d} ${s.dtype} tile ${r.tile.bq}x${r.tile.bk}`;
      const gflops = `${(r.tops * 1000).toFixed(2)} GFLOP/s`;
      console.log(`${label.padEnd(40)} ${fmtTiming(r)} ${gflops.padStart(16)} (${r.clock} clock)`);
    }
  }
}
