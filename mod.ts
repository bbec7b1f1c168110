/**
 * 4-bit diffusion on WebGPU: SVDQuant W4A4 (4-bit weights and activations plus a 16-bit
 * low-rank branch) as WGSL compute shaders through Deno's built-in WebGPU, with the offline
 * quantizer that produces the pre-quantized weights.
 *
 * @example Acquire the GPU (adapter limits, optional features, start-up self-test)
 * ```ts ignore
 * import { Gpu } from "./mod.ts";
 * const gpu = await Gpu.create();
 * console.log(gpu.caps.adapter, gpu.caps.shaderF16, gpu.caps.maxStorageBufferBindingSize);
 * ```
 *
 * @example Quantize a layer and run it on the GPU
 * ```ts ignore
 * import { Gpu, quantizeLinear, W4A4Linear } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const n = 256, k = 256, m = 64;
 * const w = new Float32Array(n * k).map(() => Math.random() - 0.5);
 * const q = await quantizeLinear("fc", w, null, n, k, { method: "svdquant", format: "int4", r: 32 });
 * const layer = await W4A4Linear.create(gpu, {
 *   name: "fc", m, n, k, format: "int4", actMode: q.actMode!, dtype: "f32",
 * }, q.tensors);
 * const x = await gpu.upload("x", new Float32Array(m * k).fill(1));
 * const y = await gpu.createBuffer("y", m * n * 4);
 * await gpu.runChecked("fc", layer.dispatch({ x, y }));
 * console.log(new Float32Array(await gpu.read(y)).slice(0, 4));
 * layer.destroy();
 * gpu.destroy(x, y);
 * ```
 *
 * @example Generate an image with the bundled 4-bit model (dense or sparse + INT8 attention)
 * ```ts ignore
 * import { encodePng, getGpu, Pipeline, toRgbGrid } from "./mod.ts";
 * const pipe = await Pipeline.load(await getGpu(), "models/dit_emoji.int4.safetensors", {
 *   attention: "sparse", // PAROAttention with the plan stored in the file; default "dense"
 * });
 * const { images } = await pipe.generate({ classes: [0], seed: 7, steps: 20, cfg: 4 });
 * const { rgb, width, height } = toRgbGrid(images, 1, 32, 1, 4);
 * await Deno.writeFile("smiley.png", await encodePng(rgb, width, height));
 * pipe.destroy();
 * ```
 *
 * @example Calibrate a sparse-attention plan from attention maps and store it with the weights
 * ```ts ignore
 * import { AttentionRecorder, calibrateParo, paroTensors, quantizeCheckpoint } from "./mod.ts";
 * const rec = new AttentionRecorder({ layers: 28, heads: 16, tokens: 256, buckets: 4 });
 * // ... Pipeline.generate({ ..., calibration: { attention: rec, buckets: 4 } }) on the float model
 * const plan = calibrateParo(rec, { gridH: 16, gridW: 16, tile: 32, density: 0.3 });
 * await quantizeCheckpoint("dit.safetensors", "dit.w4.safetensors", { paro: paroTensors(plan) });
 * ```
 *
 * @example Quantize a whole float checkpoint into the pre-quantized file
 * ```ts ignore
 * import { QuantFile, quantizeCheckpoint } from "./mod.ts";
 * await quantizeCheckpoint("model.safetensors", "model.w4.safetensors", { format: "nvfp4" });
 * const file = await QuantFile.open("model.w4.safetensors"); // verifies the checksum
 * console.log(file.meta.quantConfig, Object.keys(file.meta.policy).length);
 * file.close();
 * ```
 *
 * @module
 */

// device layer and errors
export { getGpu, Gpu } from "./runtime/device.ts";
export type { Dispatch, GpuCapabilities, GpuOptions, OptionalFeature } from "./runtime/device.ts";
export {
  FormatError,
  GpuDeviceLostError,
  GpuFeatureError,
  GpuSelfTestError,
  GpuUnavailableError,
  GpuValidationError,
} from "./runtime/errors.ts";
export { W4A4Linear } from "./runtime/linear.ts";
export type { StoredTensor, W4A4LinearSpec } from "./runtime/linear.ts";
export { gpuMatMul } from "./runtime/gpu_matmul.ts";

// the generation pipeline and the model graph
export { Pipeline } from "./runtime/pipeline.ts";
export type {
  GenerateRequest,
  GenerateResult,
  PipelineOptions,
  SamplerName,
} from "./runtime/pipeline.ts";
export { DiT, ditConfig } from "./runtime/dit.ts";
export type { DiTConfig, DiTLoadOptions } from "./runtime/dit.ts";
export type { SparseAttentionChoice } from "./runtime/attention.ts";
export { ModelFile } from "./runtime/model_file.ts";
export type { ModelSource } from "./runtime/model_file.ts";
export { ddim, ddpm, ddpmSchedule, dpmSolver2M, flowEuler, sample } from "./runtime/schedulers.ts";
export type {
  DdpmOptions,
  EpsSamplerOptions,
  FlowEulerOptions,
  FlowSampler,
  ModelFn,
  NoiseSchedule,
  SampleOptions,
  Sampler,
  TimestepSpacing,
} from "./runtime/schedulers.ts";
export { gaussianNoise } from "./runtime/random.ts";
export { encodePng, toRgbGrid } from "./runtime/png.ts";
export { psnr, ssim } from "./runtime/metrics.ts";

// kernels
export { FlashAttention, flashAttention } from "./kernels/flash_attention/flash_attention.ts";
export type {
  FlashAttentionBuffers,
  FlashAttentionShape,
  FlashAttentionTile,
} from "./kernels/flash_attention/flash_attention.ts";
export {
  SPARSE_ATTENTION_TILES,
  SparseAttention,
  sparseAttention,
  uploadSparsePlan,
} from "./kernels/sparse_attention/sparse_attention.ts";
export type {
  SparseAttentionBuffers,
  SparseAttentionShape,
  SparseAttentionSubTiles,
  SparsePv,
  SparseQk,
} from "./kernels/sparse_attention/sparse_attention.ts";
export {
  maskCsr,
  maskDensity,
  maskGet,
  maskSet,
  TOKEN_ORDERS,
  tokenOrder,
} from "./kernels/sparse_attention/layout.ts";
export type { MaskCsr, TokenOrder } from "./kernels/sparse_attention/layout.ts";
export { GemmF16, gemmF16 } from "./kernels/gemm_f16/gemm_f16.ts";
export type { GemmF16Buffers, GemmF16Shape, GemmKernel } from "./kernels/gemm_f16/gemm_f16.ts";
export { GemmW4A16, gemmW4A16 } from "./kernels/gemm_w4a16/gemm_w4a16.ts";
export type { GemmW4A16Buffers, GemmW4A16Shape } from "./kernels/gemm_w4a16/gemm_w4a16.ts";
export {
  QuantizeActLowrank,
  quantizeActLowrank,
} from "./kernels/quantize_act_lowrank/quantize_act_lowrank.ts";
export type {
  QuantizeActLowrankBuffers,
  QuantizeActLowrankShape,
} from "./kernels/quantize_act_lowrank/quantize_act_lowrank.ts";
export { GemmW4A4Lowrank, gemmW4A4Lowrank } from "./kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank.ts";
export type {
  GemmW4A4LowrankBuffers,
  GemmW4A4LowrankShape,
  W4A4Tile,
} from "./kernels/gemm_w4a4_lowrank/gemm_w4a4_lowrank.ts";
export type { ActDtype } from "./kernels/_wgsl.ts";

// formats and the quantizer
export {
  decodeE2M1,
  decodeE4M3,
  dequantizeAct,
  dequantizeWeight,
  E2M1_VALUES,
  encodeE2M1,
  encodeE4M3,
  GELU_SHIFT,
  GROUP_SIZE_INT4,
  GROUP_SIZE_NVFP4,
  packF16,
  quantizeAct,
  quantizeWeight,
  unpackF16,
} from "./quant/packing.ts";
export type {
  ActMode,
  Int4Weight,
  Nvfp4Weight,
  PackedWeight,
  QuantAct,
  WeightFormat,
} from "./quant/packing.ts";
export { quantizeLinear, quantizeLinearRanks } from "./quant/layer.ts";
export { parseBudget, planBudget } from "./quant/budget.ts";
export type { Budget, BudgetChoice, BudgetLayer, BudgetPlan } from "./quant/budget.ts";
export type { Method, QuantizedLinear, QuantizeLinearOptions, TensorEntry } from "./quant/layer.ts";
export type { TensorDtype } from "./quant/baselines.ts";
export type { MatMul } from "./quant/linalg.ts";
export { quantizeCheckpoint } from "./quant/model.ts";
export type { LayerReport, ModelMethod, QuantizeModelOptions } from "./quant/model.ts";
export { FORMAT_VERSION, QuantFile, writeQuantFile } from "./quant/format.ts";
export type {
  LayerPolicyEntry,
  QuantConfig,
  QuantFileMeta,
  QuantFileMetaInput,
  QuantTensor,
} from "./quant/format.ts";
export { SafetensorsReader, SafetensorsWriter } from "./quant/safetensors.ts";
export type { Dtype, TensorInfo, TensorSpec } from "./quant/safetensors.ts";
export { CalibRecorder, readCalibStats, writeCalibStats } from "./quant/calib.ts";
export type { CalibStats, LayerStats } from "./quant/calib.ts";
export { DEFAULT_DIT_POLICY, parsePolicy } from "./quant/policy.ts";
export {
  AttentionRecorder,
  calibrateParo,
  describeParo,
  masksFor,
  PARO_BUDGETS,
  permFor,
} from "./quant/paro.ts";
export type { ParoBudget, ParoOptions, ParoPlan } from "./quant/paro.ts";
export { paroTensors, readParo, readParoFrom } from "./quant/paro_store.ts";
export type { ParoTensor } from "./quant/paro_store.ts";
export type { LayerPolicyRule } from "./quant/policy.ts";
