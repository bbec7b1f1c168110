/**
 * Benchmark of `quantize_act_lowrank`. As a program it prints ms, TOPS (the low-rank product's
 * 2·M·K·R) and GB/s (X + qact + ascales + lora_down + lora_act) for the three modes:
 *
 *   deno run --allow-read --allow-env --allow-write kernels/quantize_act_lowrank/quantize_act_lowrank_bench.ts [--large] [--rows=4,8,16]
 *
 * Small shape M=64, K=256, R=32; `--large` M=4096, K=3072, R=32. `--rows` times each given
 * rows-per-workgroup instead of the launcher's default.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Dispatch, getGpu, type Gpu } from "../../gpu/device.ts";
import { groupSize, packF16 } from "../../formats/packing.ts";
import { fmtTiming, timeDispatches, type Timing } from "../_bench.ts";
import { Rng } from "../../gpu/_testing.ts";
import { actBytes, toActArray } from "../_wgsl.ts";
import {
  bufferSizes,
  QuantizeActLowrank,
  type QuantizeActLowrankBuffers,
  type QuantizeActLowrankShape,
} from "./quantize_act_lowrank.ts";

/** Bytes that must cross memory once per launch: X, qact, ascales, lora_down, lora_act. */
export function quantizeActLowrankBytes(s: QuantizeActLowrankShape): number {
  const { m, k, r } = s;
  return m * k * actBytes(s.dtype) + m * k / 2 + (m * k / groupSize(s.mode)) * 4 + r * k * 2 +
    m * r * 4;
}

/** A timing and how it was taken. */
export interface QuantizeActLowrankTiming extends Timing {
  /** `gpu timestamps`: GPU time of one pass (best of 5); `wall clock`: timeDispatches. */
  clock: "gpu timestamps" | "wall clock";
}

/**
 * Time one `quantize_act_lowrank` launch on random data of `shape` (smoothing factors included
 * when the shape asks for them), from a pass of several launches that cycle through enough
 * buffer copies to miss L2. With `timestamp-query` the pass is timed on the GPU: in Deno's
 * WebGPU each dispatch costs ~0.1 ms of CPU (and a submit ~0.3 ms), more than the kernel, so
 * the wall clock only bounds it.
 *
 * @example
 * ```ts ignore
 * import { getGpu } from "../../gpu/device.ts";
 * import { benchQuantizeActLowrank } from "./quantize_act_lowrank_bench.ts";
 * const t = await benchQuantizeActLowrank(await getGpu(), {
 *   m: 4096, k: 3072, r: 32, mode: "int4", dtype: "f16", smooth: true,
 * });
 * console.log(t.ms, t.gbps);
 * ```
 */
export async function benchQuantizeActLowrank(
  gpu: Gpu,
  shape: QuantizeActLowrankShape,
  opts: { copies?: number } = {},
): Promise<QuantizeActLowrankTiming> {
  const { m, k, r } = shape;
  const rng = new Rng(1);
  const op = await QuantizeActLowrank.create(gpu, shape);
  const sizes = Object.fromEntries(bufferSizes(shape).map(([n, b]) => [n, b]));
  const bytes = quantizeActLowrankBytes(shape);
  const copies = opts.copies ?? Math.min(4, Math.ceil(128e6 / bytes));
  const x = toActArray(rng.normals(m * k), shape.dtype);
  const smooth = Float32Array.from({ length: k }, () => rng.uniform(0.5, 2));
  const loraDown = packF16(rng.normals(r * k, 0.05));
  const sets: QuantizeActLowrankBuffers[] = [];
  try {
    for (let c = 0; c < copies; c++) {
      sets.push({
        x: await gpu.upload("bench x", x),
        smooth: shape.smooth ? await gpu.upload("bench smooth", smooth) : undefined,
        lora_down: r > 0 ? await gpu.upload("bench lora_down", loraDown) : undefined,
        qact: await gpu.createBuffer("bench qact", sizes.qact),
        ascales: await gpu.createBuffer("bench ascales", sizes.ascales),
        lora_act: r > 0 ? await gpu.createBuffer("bench lora_act", sizes.lora_act) : undefined,
      });
    }
    const dispatches = Array.from({ length: 4 * copies }, (_, i) => op.dispatch(sets[i % copies]));
    await gpu.runChecked("bench quantize_act_lowrank", dispatches);
    const ops = 2 * m * k * r;
    // the wall-clock run also warms the GPU up: an idle H100 clocks down to 345 MHz, and short
    // timed passes alone do not bring it back (seen: 6× slower passes)
    const t = await timeDispatches(gpu, dispatches, {
      ops: ops * dispatches.length,
      bytes: bytes * dispatches.length,
      budgetMs: 500,
    });
    if (gpu.caps.timestampQuery) {
      const ms = await gpuPassMs(gpu, dispatches) / dispatches.length;
      return { ms, tops: ops / (ms * 1e9), gbps: bytes / (ms * 1e6), clock: "gpu timestamps" };
    }
    const ms = t.ms / dispatches.length;
    return { ...t, ms, clock: "wall clock" };
  } finally {
    op.destroy();
    for (const b of sets) gpu.destroy(...Object.values(b));
  }
}

/** GPU milliseconds of one compute pass holding `dispatches` (best of 5), by timestamp queries. */
async function gpuPassMs(gpu: Gpu, dispatches: Dispatch[]): Promise<number> {
  const resolve = await gpu.createBuffer("bench timestamps", 16, 0x0200 | 0x0004); // QUERY_RESOLVE | COPY_SRC
  const querySet = await gpu.scoped(
    "bench timestamps",
    () => gpu.device.createQuerySet({ type: "timestamp", count: 2 }),
  );
  try {
    let best = Infinity;
    for (let rep = 0; rep < 5; rep++) {
      await gpu.scoped("bench timed pass", () => {
        const d = gpu.device;
        const enc = d.createCommandEncoder();
        const pass = enc.beginComputePass({
          timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
        });
        for (const { pipeline, bindings, workgroups } of dispatches) {
          pass.setPipeline(pipeline);
          pass.setBindGroup(
            0,
            d.createBindGroup({
              layout: pipeline.getBindGroupLayout(0),
              entries: bindings.map((buffer, binding) => ({ binding, resource: { buffer } })),
            }),
          );
          pass.dispatchWorkgroups(workgroups[0], workgroups[1] ?? 1, workgroups[2] ?? 1);
        }
        pass.end();
        enc.resolveQuerySet(querySet, 0, 2, resolve, 0);
        d.queue.submit([enc.finish()]);
      });
      const [t0, t1] = new BigUint64Array(await gpu.read(resolve));
      best = Math.min(best, Number(t1 - t0) / 1e6);
    }
    return best;
  } finally {
    querySet.destroy();
    gpu.destroy(resolve);
  }
}

if (import.meta.main) {
  const args = parseArgs({
    args: Deno.args,
    options: { large: { type: "boolean" }, rows: { type: "string" }, copies: { type: "string" } },
  });
  const gpu = await getGpu();
  const dims = args.values.large ? { m: 4096, k: 3072, r: 32 } : { m: 64, k: 256, r: 32 };
  const rowsList = args.values.rows
    ? args.values.rows.split(",").map(Number) as (4 | 8 | 16)[]
    : [undefined];
  console.log(`quantize_act_lowrank on ${gpu.caps.adapter}, M=${dims.m} K=${dims.k} R=${dims.r}`);
  for (const dtype of gpu.caps.shaderF16 ? ["f16", "f32"] as const : ["f32"] as const) {
    for (const mode of ["int4", "int4_unsigned", "nvfp4"] as const) {
      for (const rows of rowsList) {
        const shape: QuantizeActLowrankShape = {
          ...dims,
          mode,
          dtype,
          smooth: true,
          rowsPerWorkgroup: rows,
        };
        const copies = args.values.copies ? Number(args.values.copies) : undefined;
        const t = await benchQuantizeActLowrank(gpu, shape, { copies });
        const label = `${mode.padEnd(13)} ${dtype} smooth rows=${rows ?? "auto"}`;
        console.log(`${label.padEnd(36)} ${fmtTiming(t)} (${t.clock})`);
      }
    }
  }
}
