/**
 * How long the quantizer takes: one K=3072, N=12288 layer, and DiT-XL/2-shaped blocks (hidden
 * 1152, 16 heads, MLP ratio 4; 28 blocks in the full model) with random weights and synthetic
 * calibration statistics. Prints seconds per layer and per block (wall clock, and the process's
 * CPU time with the load average: the machine is shared), and the whole-model figure
 * extrapolated from the blocks measured (labelled as such).
 *
 * ```sh
 * deno run -A bench/quantize_bench.ts [--gpu] [--format int4|nvfp4] [--blocks 1] [--alpha-step S] [--no-gptq] [--no-rank0-floor] [--workers N] [--no-aside]
 * ```
 *
 * `--workers N` (N > 1) quantizes the layers of a block in parallel in a pool of N Web Workers
 * (quant/pool.ts): per-layer lines then give each layer's wall time from its submission, and
 * the block's CPU time is the process's (all threads). The FLUX-sized layer, alone, is split
 * across the pool instead (`QuantizePool.quantizeSplit`, quant/split.ts: its large kernels by
 * blocks of rows, one block in the main thread, and its rank-0 floor whole on the second worker
 * unless `--no-aside`; bit-identical to the serial run).
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { syntheticStats } from "../quant/calib.ts";
import { quantizeLinear } from "../quant/layer.ts";
import type { WeightFormat } from "../formats/packing.ts";
import { Rng } from "../gpu/_testing.ts";
import { benchMatMul } from "./_matmul.ts";
import { QuantizePool } from "../quant/pool.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    gpu: { type: "boolean", default: false },
    format: { type: "string", default: "int4" },
    blocks: { type: "string", default: "1" },
    "alpha-step": { type: "string" },
    "skip-large": { type: "boolean", default: false },
    "no-gptq": { type: "boolean", default: false },
    "no-rank0-floor": { type: "boolean", default: false },
    workers: { type: "string", default: "1" },
    "no-aside": { type: "boolean", default: false },
  },
});
const format = values.format as WeightFormat;
const step = values["alpha-step"] === undefined ? undefined : Number(values["alpha-step"]);
const alphas = step === undefined
  ? undefined
  : Array.from({ length: Math.round(1 / step) + 1 }, (_, i) => Math.min(1, i * step));
const { matmul, where } = await benchMatMul(values.gpu);
console.log(
  `quantizer benchmark: svdquant ${format}, R=32, α ${
    alphas ? `grid step ${step} (${alphas.length} values)` : "coarse-to-fine (0.25, then 0.05)"
  }, GPTQ residual ${values["no-gptq"] ? "off" : "on (K ≤ 2048)"}, ` +
    `products on ${where}; ${new Date().toISOString()}`,
);

const workers = Number(values.workers);
if (!(Number.isInteger(workers) && workers >= 1)) {
  throw new RangeError(
    `Cannot run the benchmark: --workers must be an integer ≥ 1, got ${values.workers}`,
  );
}
if (workers > 1 && matmul) {
  throw new TypeError("Cannot run the benchmark: --workers and --gpu do not combine; pick one");
}
const pool = workers > 1 ? new QuantizePool(workers) : null;

/** CPU seconds per thread of this process (Linux /proc; null elsewhere), by thread id. */
function threadCpu(): Map<string, number> | null {
  try {
    const out = new Map<string, number>();
    for (const e of Deno.readDirSync("/proc/self/task")) {
      const stat = Deno.readTextFileSync(`/proc/self/task/${e.name}/stat`);
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields from 3 (state) on
      out.set(e.name, (Number(f[11]) + Number(f[12])) / 100); // utime + stime, 100 ticks/s
    }
    return out;
  } catch {
    return null;
  }
}

/**
 * The busiest threads' CPU seconds since `before`, main thread first: with a split layer the main
 * thread's share bounds the wall time a quiet machine would give (it runs every serial stage).
 */
function threadLine(before: Map<string, number> | null): string {
  const now = threadCpu();
  if (!before || !now) return "";
  const main = String(Deno.pid);
  const d = [...now].map(([t, c]) => [t, c - (before.get(t) ?? 0)] as const)
    .filter(([, c]) => c >= 0.5).sort((a, b) => b[1] - a[1]);
  const list = d.map(([t, c]) => `${t === main ? "main" : "thread"} ${c.toFixed(1)}`);
  return `  CPU-s by thread: ${list.join(", ")}`;
}
const rng = new Rng(7);
let cpuTotal = 0;
async function layer(
  name: string,
  n: number,
  k: number,
  postGelu = false,
  split = false,
): Promise<number> {
  const w = rng.normals(n * k, 1 / Math.sqrt(k));
  const bias = rng.normals(n, 0.02);
  const stats = syntheticStats(new Map([[name, k]]), {
    samples: 256,
    postGelu: postGelu ? [name] : [],
  }).layers.get(name)!;
  const method = name.includes("adaLN") ? "w4a16" : "svdquant";
  const t0 = performance.now(), c0 = process.cpuUsage(), threads0 = threadCpu();
  const run = !pool
    ? quantizeLinear
    : split
    ? (...a: Parameters<typeof quantizeLinear>) =>
      pool.quantizeSplit(...a, { aside: !values["no-aside"] })
    : pool.quantize.bind(pool);
  const q = await run(name, w, bias, n, k, {
    method,
    format,
    r: 32,
    stats,
    postGelu,
    alphas,
    matmul,
    gptq: !values["no-gptq"],
    rankZeroFloor: !values["no-rank0-floor"],
  });
  const s = (performance.now() - t0) / 1000, c = process.cpuUsage(c0);
  const cpu = (c.user + c.system) / 1e6;
  if (!pool) cpuTotal += cpu;
  console.log(
    `  ${name.padEnd(28)} [N=${n}, K=${k}] ${method.padEnd(8)} ${s.toFixed(1).padStart(7)} s` +
      (pool && !split ? " (in parallel)" : ` (CPU ${cpu.toFixed(1)} s, all threads)`) +
      `  rel.err ${q.relError.toFixed(4)}  load ${Deno.loadavg()[0].toFixed(1)}`,
  );
  if (split) console.log(threadLine(threads0));
  return s;
}

if (!values["skip-large"]) {
  console.log(
    `one FLUX-sized MLP layer${pool ? `, split across ${workers} cores (quantizeSplit)` : ""}:`,
  );
  await layer("mlp.fc1", 12288, 3072, false, true);
  cpuTotal = 0;
}
const blocks = Number(values.blocks);
const H = 1152;
let total = 0;
console.log(`DiT-XL/2 blocks (hidden ${H}), ${blocks} of 28:`);
for (let b = 0; b < blocks; b++) {
  const t0 = performance.now(), c0 = process.cpuUsage();
  const shapes: [string, number, number, boolean][] = [
    [`blocks.${b}.attn.qkv`, 3 * H, H, false],
    [`blocks.${b}.attn.proj`, H, H, false],
    [`blocks.${b}.mlp.fc1`, 4 * H, H, false],
    [`blocks.${b}.mlp.fc2`, H, 4 * H, true],
    [`blocks.${b}.adaLN_modulation.1`, 6 * H, H, false],
  ];
  // With a pool all five layers are in flight at once; serially one after the other.
  if (pool) await Promise.all(shapes.map((a) => layer(...a)));
  else for (const a of shapes) await layer(...a);
  total += (performance.now() - t0) / 1000;
  if (pool) {
    const c = process.cpuUsage(c0);
    cpuTotal += (c.user + c.system) / 1e6;
  }
}
pool?.close();
const perBlock = total / blocks;
const blockLayers = cpuTotal;
if (blocks > 0) {
  console.log(
    `per block ${perBlock.toFixed(1)} s (CPU ${
      (blockLayers / blocks).toFixed(1)
    } s, all threads; ` +
      `the load average says how busy the machine was); whole DiT-XL/2 (28 blocks) ≈ ${
        (28 * perBlock / 60).toFixed(1)
      } min (extrapolated from ${blocks} block${blocks > 1 ? "s" : ""})`,
  );
}
