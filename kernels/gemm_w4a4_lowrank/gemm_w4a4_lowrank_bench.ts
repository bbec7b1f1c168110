/**
 * Benchmark of `gemm_w4a4_lowrank`: milliseconds, TOPS (2·M·N·K + 2·M·N·R) and GB/s (every
 * input read once + Y written once). Inputs are random codes and scales (speed does not depend on
 * their values). Run as a program:
 *
 * ```sh
 * deno run --allow-read --allow-env kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank_bench.ts [--large]
 * ```
 *
 * `--large`: M=4096 with K=N=3072 and K=3072, N=12288, each for both formats and R ∈ {32, 0};
 * `--tile=WGXxWGY` overrides the workgroup shape (each invocation owns 8×8 outputs).
 *
 * @module
 */
import type { Gpu } from "../../gpu/device.ts";
import { getGpu } from "../../gpu/device.ts";
import { groupSize, packF16 } from "../../formats/packing.ts";
import { fmtTiming, timeDispatches } from "../_bench.ts";
import { type KernelTiming, timeKernel } from "../_gpu_time.ts";
import { Rng } from "../../gpu/_testing.ts";
import { bufferSizes, GemmW4A4Lowrank, type GemmW4A4LowrankShape } from "./gemm_w4a4_lowrank.ts";

/**
 * Time one W4A4 GEMM with low-rank epilogue on random inputs of `shape`.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { benchGemmW4A4Lowrank } from "./gemm_w4a4_lowrank_bench.ts";
 * const t = await benchGemmW4A4Lowrank(await getGpu(), {
 *   m: 64, k: 256, n: 256, r: 32, format: "int4", actMode: "int4", dtype: "f32",
 *   bias: true, gelu: false,
 * });
 * console.log(t.ms, t.tops, t.gbps);
 * ```
 */
export async function benchGemmW4A4Lowrank(
  gpu: Gpu,
  shape: GemmW4A4LowrankShape,
  opts: { budgetMs?: number; repeat?: number } = {},
): Promise<KernelTiming> {
  const rng = new Rng(1);
  const { m, k, n, r } = shape;
  const g = groupSize(shape.format);
  const words = (count: number) => {
    const a = new Uint32Array(count);
    for (let i = 0; i < count; i++) a[i] = (rng.next() * 2 ** 32) >>> 0;
    return a;
  };
  const floats = (count: number, lo: number, hi: number) =>
    Float32Array.from({ length: count }, () => rng.uniform(lo, hi));
  // NVFP4 scales: E4M3 codes 0x20..0x3F (finite, around 2⁻³..1) in every byte.
  const e4m3Words = (count: number) => words(count).map((w) => (w & 0x1f1f1f1f) | 0x20202020);
  const sizes = Object.fromEntries(bufferSizes(shape).map(([name, bytes]) => [name, bytes]));
  const bufs = {
    qact: await gpu.upload("buffer bench qact", words(m * k / 8)),
    ascales: await gpu.upload("buffer bench ascales", floats(m * k / g, 0.01, 0.1)),
    qweight: await gpu.upload("buffer bench qweight", words(n * k / 8)),
    wscales: await gpu.upload(
      "buffer bench wscales",
      shape.format === "int4" ? packF16(floats(n * k / g, 0.001, 0.01)) : e4m3Words(n * k / g / 4),
    ),
    lora_act: r > 0 ? await gpu.upload("buffer bench lora_act", floats(m * r, -1, 1)) : undefined,
    lora_up: r > 0
      ? await gpu.upload("buffer bench lora_up", packF16(floats(n * r, -1, 1)))
      : undefined,
    bias: shape.bias ? await gpu.upload("buffer bench bias", floats(n, -1, 1)) : undefined,
    y: await gpu.createBuffer("buffer bench y", sizes.y),
  };
  const op = await GemmW4A4Lowrank.create(gpu, shape);
  try {
    const dispatch = op.dispatch(bufs);
    await gpu.runChecked("run gemm_w4a4_lowrank (bench warm-up)", [dispatch]);
    const bytes = Object.values(sizes).reduce((a, b) => a + b, 0);
    // warm up by wall clock first (an idle GPU clocks down), then read the GPU's own clock
    await timeDispatches(gpu, [dispatch], { ops: 1, bytes: 1, budgetMs: opts.budgetMs, repeat: 8 });
    return await timeKernel(gpu, [dispatch], {
      ops: 2 * m * n * k + 2 * m * n * r,
      bytes,
      repeat: opts.repeat ?? 8,
    });
  } finally {
    op.destroy();
    gpu.destroy(...Object.values(bufs));
  }
}

if (import.meta.main) {
  const gpu = await getGpu();
  const large = Deno.args.includes("--large");
  const tileArg = Deno.args.find((a) => a.startsWith("--tile="));
  const tile = tileArg
    ? (([wgX, wgY]) => ({ wgX, wgY }))(tileArg.slice(7).split("x").map(Number))
    : undefined;
  const dtype = gpu.caps.shaderF16 ? "f16" : "f32";
  console.log(`gemm_w4a4_lowrank on ${gpu.caps.adapter}, Y in ${dtype}`);
  const dims = large
    ? [{ m: 4096, k: 3072, n: 3072 }, { m: 4096, k: 3072, n: 12288 }]
    : [{ m: 64, k: 256, n: 256 }];
  for (const d of dims) {
    for (const format of ["int4", "nvfp4"] as const) {
      for (const r of [32, 0]) {
        const shape: GemmW4A4LowrankShape = {
          ...d,
          r,
          format,
          actMode: format,
          dtype,
          bias: true,
          gelu: false,
          tensorScale: 0.01,
          tile,
        };
        const t = await benchGemmW4A4Lowrank(gpu, shape, { budgetMs: large ? 1000 : 300 });
        console.log(`M=${d.m} K=${d.k} N=${d.n} R=${r} ${format.padEnd(5)} ${fmtTiming(t)}`);
      }
    }
  }
}
