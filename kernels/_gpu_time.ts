/**
 * GPU-side timing for the GEMM benchmarks: `timestamp-query` writes around one compute pass of
 * `repeat` copies of the dispatches. Wall-clock timing (kernels/_bench.ts) includes Deno's
 * per-dispatch CPU cost (measured ≈ 70 µs per dispatch on an H100 host), which hides kernels of
 * tens of microseconds such as the adaLN GEMVs; this reads the GPU's own clock instead.
 *
 * @module
 */
import type { Dispatch, Gpu } from "../gpu/device.ts";
import { timeDispatches, type Timing } from "./_bench.ts";

const QUERY_RESOLVE = 0x0200, COPY_SRC = 0x0004;

/** A timing and the clock it was read from. */
export type KernelTiming = Timing & { clock: "gpu" | "wall" };

/** Options of {@linkcode timeKernel}. */
export interface KernelTimeOptions {
  /** Operations per dispatch list (2·M·N·K for a GEMM). */
  ops: number;
  /** Bytes that must cross memory per dispatch list. */
  bytes: number;
  /** Copies of the dispatch list per timed pass (default 8); the result is per copy. */
  repeat?: number;
  /** Timed passes; the fastest counts (default 5). */
  passes?: number;
}

/**
 * Time `dispatches` on the GPU clock when the device has `timestamp-query`, else by wall clock
 * ({@linkcode timeDispatches}). Returns the time of one copy of `dispatches` and which clock.
 */
export async function timeKernel(
  gpu: Gpu,
  dispatches: Dispatch[],
  opts: KernelTimeOptions,
): Promise<KernelTiming> {
  const r = opts.repeat ?? 8;
  const list = Array.from({ length: r }, () => dispatches).flat();
  if (!gpu.caps.timestampQuery) {
    const t = await timeDispatches(gpu, list, { ops: opts.ops * r, bytes: opts.bytes * r });
    return { ...t, ms: t.ms / r, clock: "wall" };
  }
  const querySet = await gpu.scoped(
    "create timestamp query set",
    () => gpu.device.createQuerySet({ type: "timestamp", count: 2 }),
  );
  const resolved = await gpu.createBuffer("buffer timestamps", 16, QUERY_RESOLVE | COPY_SRC);
  try {
    let best = Infinity;
    const passes = opts.passes ?? 5;
    for (let i = 0; i <= passes; i++) { // pass 0 warms up
      await gpu.scoped("run timed pass", () => {
        const d = gpu.device;
        const enc = d.createCommandEncoder({ label: "timed pass" });
        const pass = enc.beginComputePass({
          timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
        });
        for (const x of list) {
          pass.setPipeline(x.pipeline);
          pass.setBindGroup(
            0,
            d.createBindGroup({
              layout: x.pipeline.getBindGroupLayout(0),
              entries: x.bindings.map((buffer, binding) => ({ binding, resource: { buffer } })),
            }),
          );
          pass.dispatchWorkgroups(...x.workgroups);
        }
        pass.end();
        enc.resolveQuerySet(querySet, 0, 2, resolved, 0);
        d.queue.submit([enc.finish()]);
      });
      const [t0, t1] = new BigUint64Array(await gpu.read(resolved));
      if (i > 0) best = Math.min(best, Number(t1 - t0) / 1e6 / r);
    }
    return {
      ms: best,
      tops: opts.ops / (best * 1e9),
      gbps: opts.bytes / (best * 1e6),
      clock: "gpu",
    };
  } finally {
    querySet.destroy();
    gpu.destroy(resolved);
  }
}
