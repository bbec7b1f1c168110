/**
 * Benchmark of `sparse_attention` side by side with dense `flash_attention` in one run: per shape,
 * flash_attention, then the sparse kernel with INT8 Q·Kᵀ and float or INT8 P·V, at a dense mask
 * and at 50% and 30% density (masks: the diagonal tile always on, the rest random to the
 * density). Printed: milliseconds (prep passes included), speed-up over flash_attention and
 * effective TOPS (the DENSE attention's 4·B·H·T²·D operations per second, so sparsity shows as
 * speed). Inputs are zeros (speed does not depend on the values); token orders are `block4` and
 * `col` orders of the √T × √T grid when T is a square. Run as a program:
 *
 * ```sh
 * deno run --allow-read --allow-env kernels/sparse_attention/sparse_attention_bench.ts [--large]
 * ```
 *
 * Default (quick on a software adapter): B=1, T=256, H=2, D=64, tile 32. `--large` (a real GPU):
 * T ∈ {1024, 4096, 16384}, H ∈ {16, 24}, D ∈ {64, 128}, tile 64. The dtype is f16 where the
 * adapter has shader-f16, else f32.
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { type KernelTiming, timeKernel } from "../_gpu_time.ts";
import { Rng } from "../../gpu/_testing.ts";
import type { ActDtype } from "../_wgsl.ts";
import { benchFlashAttention } from "../flash_attention/flash_attention_bench.ts";
import { maskBytes, maskSet, orderApplies, tokenOrder } from "./layout.ts";
import {
  bufferSizes,
  SparseAttention,
  type SparseAttentionShape,
  uploadSparsePlan,
} from "./sparse_attention.ts";

/** Shape of one sparse benchmark run. */
export interface SparseAttentionBenchShape extends SparseAttentionShape {
  /** Fraction of mask tiles on (1 = dense); the diagonal is always on. */
  density: number;
  /** Copies of the call per timed pass (default: 8 for small shapes, fewer for large ones). */
  repeat?: number;
}

/** A timing with the achieved mask density and the sub-tiling used. */
export type SparseAttentionTiming = KernelTiming & { density: number; sub: string };

/** Dense attention operations (Q·Kᵀ and P·V, a multiply-add counting 2). */
function denseOps(s: { b: number; t: number; h: number; d: number }): number {
  return 4 * s.b * s.h * s.t * s.t * s.d;
}

function defaultRepeat(ops: number): number {
  return Math.max(1, Math.min(8, Math.round(2e11 / ops)));
}

/** Token orders (block4 / col on even / odd heads of a square grid, else identity) and masks. */
export function benchPlan(
  s: Pick<SparseAttentionShape, "t" | "h" | "tile">,
  density: number,
  seed = 1,
): { perm: Uint32Array; masks: Uint8Array; nt: number } {
  const rng = new Rng(seed);
  const g = Math.round(Math.sqrt(s.t));
  const perm = new Uint32Array(s.h * s.t);
  for (let h = 0; h < s.h; h++) {
    const order = h % 2 === 0 ? "block4" : "col";
    if (g * g === s.t && orderApplies(order, g, g)) perm.set(tokenOrder(order, g, g), h * s.t);
    else for (let p = 0; p < s.t; p++) perm[h * s.t + p] = p;
  }
  const nt = Math.ceil(s.t / s.tile);
  const masks = new Uint8Array(s.h * maskBytes(nt));
  for (let h = 0; h < s.h; h++) {
    const off: number[] = [];
    for (let i = 0; i < nt; i++) {
      maskSet(masks, nt, i, i, h * maskBytes(nt));
      for (let j = 0; j < nt; j++) if (j !== i) off.push(i * nt + j);
    }
    const extra = Math.max(0, Math.round(density * nt * nt) - nt);
    for (let e = 0; e < extra; e++) { // a partial Fisher–Yates shuffle picks `extra` tiles
      const k = e + rng.int(0, off.length - 1 - e);
      [off[e], off[k]] = [off[k], off[e]];
      maskSet(masks, nt, Math.floor(off[e] / nt), off[e] % nt, h * maskBytes(nt));
    }
  }
  return { perm, masks, nt };
}

/**
 * Time one sparse attention call (prep passes + main pass) on `shape`, per call, on the GPU clock
 * when the device has `timestamp-query`. `tops` counts the dense operations (effective TOPS).
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { benchSparseAttention } from "./sparse_attention_bench.ts";
 * const gpu = await getGpu();
 * const shape = { b: 1, t: 256, h: 2, d: 64, dtype: "f32", tile: 32, qk: "int8", pv: "f16" } as const;
 * const r = await benchSparseAttention(gpu, { ...shape, density: 0.3 });
 * console.log(r.ms, r.tops, r.density);
 * ```
 */
export async function benchSparseAttention(
  gpu: Gpu,
  shape: SparseAttentionBenchShape,
): Promise<SparseAttentionTiming> {
  const { perm, masks, nt } = benchPlan(shape, shape.density);
  const plan = await uploadSparsePlan(gpu, "bench", perm, masks, shape.h, nt);
  const sizes = Object.fromEntries(bufferSizes(shape));
  const qkv = await gpu.createBuffer("buffer bench qkv", sizes.qkv);
  const o = await gpu.createBuffer("buffer bench o", sizes.o);
  const op = await SparseAttention.create(gpu, shape).catch((e) => {
    gpu.destroy(qkv, o, plan.perm, plan.offsets, plan.indices);
    throw e;
  });
  try {
    const dispatches = op.dispatch({ qkv, o, ...plan });
    await gpu.runChecked("run sparse_attention (bench warm-up)", dispatches);
    const ops = denseOps(shape);
    const repeat = shape.repeat ?? defaultRepeat(ops * plan.density);
    const t = await timeKernel(gpu, dispatches, { ops, bytes: sizes.qkv + sizes.o, repeat });
    const { bkk, bkv, dc } = op.sub;
    return {
      ...t,
      density: plan.density,
      sub: `${bkk}/${bkv}${shape.qk === "f16" ? `/${dc}` : ""}`,
    };
  } finally {
    op.destroy();
    gpu.destroy(qkv, o, plan.perm, plan.offsets, plan.indices);
  }
}

/** One line of the side-by-side table. */
export interface SparseBenchRow {
  label: string;
  timing: KernelTiming;
  /** flash_attention's milliseconds over this row's. */
  speedup: number;
}

/** The attention shape of one side-by-side comparison. */
export type SparseCompareShape = Omit<SparseAttentionShape, "qk" | "pv" | "scale" | "sub">;

/**
 * flash_attention, then sparse INT8-QK with float and INT8 P·V at densities 1, 0.5 and 0.3, on
 * one shape; a configuration that cannot run on this device is reported and skipped.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { benchSparseVsFlash, printSparseRows } from "./sparse_attention_bench.ts";
 * const gpu = await getGpu();
 * const s = { b: 1, t: 256, h: 2, d: 64, dtype: "f32", tile: 32 } as const;
 * printSparseRows(s, await benchSparseVsFlash(gpu, s));
 * ```
 */
export async function benchSparseVsFlash(
  gpu: Gpu,
  s: SparseCompareShape,
): Promise<SparseBenchRow[]> {
  const ops = denseOps(s);
  const dense = { b: s.b, t: s.t, h: s.h, d: s.d, dtype: s.dtype };
  const flash = await benchFlashAttention(gpu, { ...dense, repeat: defaultRepeat(ops) });
  const rows: SparseBenchRow[] = [{
    label: `flash_attention ${s.dtype} (tile ${flash.tile.bq}x${flash.tile.bk})`,
    timing: flash,
    speedup: 1,
  }];
  for (const pv of ["f16", "int8"] as const) {
    for (const density of [1, 0.5, 0.3]) {
      const label = `sparse qk=int8 pv=${pv === "f16" ? s.dtype : pv}`;
      try {
        const t = await benchSparseAttention(gpu, { ...s, qk: "int8", pv, density });
        rows.push({
          label: `${label} density ${t.density.toFixed(2)} (sub ${t.sub})`,
          timing: t,
          speedup: flash.ms / t.ms,
        });
      } catch (e) {
        console.log(`${label} density ${density}: skipped, ${(e as Error).message}`);
      }
    }
  }
  return rows;
}

/** Print the rows of one shape: ms, speed-up over flash_attention, effective TOPS. */
export function printSparseRows(s: SparseCompareShape, rows: SparseBenchRow[]): void {
  console.log(`\n== B=${s.b} T=${s.t} H=${s.h} D=${s.d} ${s.dtype} tile ${s.tile} ==`);
  for (const r of rows) {
    const t = r.timing;
    console.log(
      `${r.label.padEnd(52)} ${t.ms.toFixed(3).padStart(10)} ms ${
        r.speedup.toFixed(2).padStart(6)
      }× ` +
        `${t.tops.toPrecision(3).padStart(9)} eff TOPS (${t.clock} clock)`,
    );
  }
}

/** The shapes of the program: small by default, the transformer-sized ones with `large`. */
export function sparseBenchShapes(dtype: ActDtype, large: boolean): SparseCompareShape[] {
  if (!large) return [{ b: 1, t: 256, h: 2, d: 64, dtype, tile: 32 }];
  return [1024, 4096, 16384].flatMap((t) =>
    [16, 24].flatMap((h) => [64, 128].map((d) => ({ b: 1, t, h, d, dtype, tile: 64 })))
  );
}

if (import.meta.main) {
  const { getGpu } = await import("../../gpu/device.ts");
  const gpu = await getGpu();
  const large = Deno.args.includes("--large");
  const dtype: ActDtype = gpu.caps.shaderF16 ? "f16" : "f32";
  console.log(`sparse_attention vs flash_attention on ${gpu.caps.adapter}`);
  for (const s of sparseBenchShapes(dtype, large)) {
    printSparseRows(s, await benchSparseVsFlash(gpu, s));
  }
}
