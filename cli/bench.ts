/**
 * `deno task bench [--large]`: every 4-bit kernel timed side by side with the f16 baseline in one
 * run, with the ratios the project's targets are stated in (ARCHITECTURE.md, bench/RESULTS.md):
 * W4A4+LR vs f16, fused vs unfused low-rank branch, W4A16 vs f16, and weight bytes; then attention:
 * dense f16 flash attention vs sparse + INT8 attention (PAROAttention) dense, at 50% and at 30%
 * density (`--large`: 1,024 / 4,096 / 16,384 tokens, 16 and 24 heads, head dim 64 and 128).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Dispatch, getGpu, type Gpu } from "../gpu/device.ts";
import { fmtTiming, type Timing } from "../kernels/_bench.ts";
import { timeKernel } from "../kernels/_gpu_time.ts";
import { actBytes, type ActDtype } from "../kernels/_wgsl.ts";
import { benchGemmF16 } from "../kernels/gemm_f16/gemm_f16_bench.ts";
import { benchGemmW4A16 } from "../kernels/gemm_w4a16/gemm_w4a16_bench.ts";
import { benchQuantizeActLowrank } from "../kernels/quantize_act_lowrank/quantize_act_lowrank_bench.ts";
import { benchGemmW4A4Lowrank } from "../kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank_bench.ts";
import {
  benchSparseVsFlash,
  printSparseRows,
  sparseBenchShapes,
} from "../kernels/sparse_attention/sparse_attention_bench.ts";
import { groupSize, type WeightFormat } from "../formats/packing.ts";
import { runCli } from "./_cli.ts";

const R = 32;

interface Dims {
  m: number;
  k: number;
  n: number;
}

/** Y += Z over M×N in ACT: the extra pass an unfused low-rank branch needs. */
const ADD_WGSL = `alias ACT = f32;
@group(0) @binding(0) var<storage, read_write> y: array<ACT>;
@group(0) @binding(1) var<storage, read> z: array<ACT>;
@compute @workgroup_size(256)
fn add_inplace(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = id.x + id.y * nw.x * 256u;
  if (i < arrayLength(&y)) { y[i] = y[i] + z[i]; }
}`;

async function benchAdd(gpu: Gpu, count: number, dtype: ActDtype): Promise<Timing> {
  const src = dtype === "f16" ? "enable f16;\n" + ADD_WGSL.replace("= f32;", "= f16;") : ADD_WGSL;
  const pipeline = await gpu.pipeline(`add_inplace_${dtype}`, src, {}, "add_inplace");
  const y = await gpu.createBuffer("buffer bench add y", count * actBytes(dtype));
  const z = await gpu.createBuffer("buffer bench add z", count * actBytes(dtype));
  try {
    const groups = Math.ceil(count / 256);
    const x = Math.min(groups, 65535);
    const d: Dispatch = { pipeline, bindings: [y, z], workgroups: [x, Math.ceil(groups / x)] };
    return await timeKernel(gpu, [d], { ops: count, bytes: 3 * count * actBytes(dtype) });
  } finally {
    gpu.destroy(y, z);
  }
}

/** Bytes of a W4A4 + low-rank layer's weights (codes, scales, low-rank, smooth, bias). */
export function w4a4WeightBytes({ k, n }: Dims, format: WeightFormat, r: number): number {
  const scales = format === "int4" ? (n * k / groupSize(format)) * 2 : n * k / 16 + 4;
  return n * k / 2 + scales + (n + k) * r * 2 + k * 4 + n * 4;
}

async function benchShape(gpu: Gpu, d: Dims, dtype: ActDtype, budgetMs: number): Promise<void> {
  const { m, k, n } = d;
  const label = `M=${m} K=${k} N=${n}`;
  console.log(`\n== ${label}, activations ${dtype}, R=${R} ==`);
  const line = (name: string, t: Timing & { clock?: string }) =>
    console.log(
      `${name.padEnd(34)} ${fmtTiming(t)}  ${t.clock?.startsWith("gpu") ? "gpu" : "wall"} clock`,
    );

  const f16 = await benchGemmF16(gpu, { m, k, n, dtype, bias: true });
  line(`gemm_f16 (${dtype})`, f16);
  const w4a16 = await benchGemmW4A16(gpu, { m, k, n, dtype, bias: true });
  line("gemm_w4a16", w4a16);
  // the unfused low-rank branch: two thin GEMMs and an extra pass over Y
  const down = await benchGemmF16(gpu, { m, k, n: R, dtype, bias: false });
  line(`gemm_f16 X·L2ᵀ [M,${R}] (unfused)`, down);
  const up = await benchGemmF16(gpu, { m, k: R, n, dtype, bias: false });
  line(`gemm_f16 A·L1ᵀ [M,N] (unfused)`, up);
  const add = await benchAdd(gpu, m * n, dtype);
  line("Y += lowrank (unfused)", add);

  for (const format of ["int4", "nvfp4"] as const) {
    const q32 = await benchQuantizeActLowrank(gpu, {
      m,
      k,
      r: R,
      mode: format,
      dtype,
      smooth: true,
    });
    line(`quantize_act_lowrank ${format} R=${R}`, q32);
    const q0 = await benchQuantizeActLowrank(gpu, {
      m,
      k,
      r: 0,
      mode: format,
      dtype,
      smooth: true,
    });
    line(`quantize_act_lowrank ${format} R=0`, q0);
    const shape = {
      m,
      k,
      n,
      format,
      actMode: format,
      dtype,
      bias: true,
      gelu: false,
      tensorScale: 0.01,
    };
    const g32 = await benchGemmW4A4Lowrank(gpu, { ...shape, r: R }, { budgetMs });
    line(`gemm_w4a4_lowrank ${format} R=${R}`, g32);
    const g0 = await benchGemmW4A4Lowrank(gpu, { ...shape, r: 0 }, { budgetMs });
    line(`gemm_w4a4_lowrank ${format} R=0`, g0);

    const fused = q32.ms + g32.ms, bare = q0.ms + g0.ms;
    const unfused = q0.ms + down.ms + g0.ms + up.ms + add.ms;
    const bytes = w4a4WeightBytes(d, format, R) / (n * k * 2 + n * 4);
    console.log(
      `  ${format}: GEMM vs f16 ${(f16.ms / g32.ms).toFixed(2)}× | linear (quantize + GEMM) ` +
        `vs f16 ${(f16.ms / fused).toFixed(2)}× | low-rank cost fused ` +
        `${pct(fused / bare - 1)}, unfused ${pct(unfused / bare - 1)} | weight bytes ` +
        `${bytes.toFixed(3)}× f16`,
    );
  }
  console.log(`  W4A16 vs f16 ${(f16.ms / w4a16.ms).toFixed(2)}×`);
}

function pct(x: number): string {
  return `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}%`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      large: { type: "boolean", default: false },
      f32: { type: "boolean", default: false },
    },
  });
  const gpu = await getGpu();
  const dtype: ActDtype = gpu.caps.shaderF16 && !values.f32 ? "f16" : "f32";
  console.log(
    `w4 kernels on ${gpu.caps.adapter}${gpu.caps.isFallback ? " (software adapter)" : ""}; ` +
      `shader-f16 ${gpu.caps.shaderF16}, subgroups ${gpu.caps.subgroups}; ${
        new Date().toISOString()
      }`,
  );
  const shapes: Dims[] = values.large
    ? [{ m: 4096, k: 3072, n: 3072 }, { m: 4096, k: 3072, n: 12288 }]
    : [{ m: 64, k: 256, n: 256 }];
  if (!values.large) {
    console.log("(small shape; use --large on a real GPU for the transformer shapes)");
  }
  for (const d of shapes) await benchShape(gpu, d, dtype, values.large ? 1000 : 200);
  for (const s of sparseBenchShapes(dtype, values.large)) {
    printSparseRows(s, await benchSparseVsFlash(gpu, s));
  }
}

if (import.meta.main) await runCli(main);
