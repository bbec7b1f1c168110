/**
 * The matrix products of the quantizer benchmarks (bench/quantize_bench.ts,
 * bench/flux_quantize_bench.ts): the CPU default, or with `--gpu` the WebGPU GEMM.
 *
 * @module
 */
import type { MatMul } from "../quant/linalg.ts";

/**
 * The quantizer's big products: `matmul` undefined (the CPU default of quant/linalg.ts) unless
 * `gpu`, then runtime/gpu_matmul.ts on the default adapter (loaded only then); `where` names it
 * for the printed header.
 */
export async function benchMatMul(gpu: boolean): Promise<{ matmul?: MatMul; where: string }> {
  if (!gpu) return { matmul: undefined, where: "CPU (quant/linalg.ts)" };
  const { gpuMatMul } = await import("../runtime/gpu_matmul.ts");
  const { getGpu } = await import("../gpu/device.ts");
  const device = await getGpu();
  const matmul = (await gpuMatMul(device)).matmul;
  return { matmul, where: `GPU (${device.caps.adapter})` };
}
