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
 * @example Decode latents with an autoencoder (FLUX.1 `ae.safetensors`, SD/SDXL VAEs, diffusers folders)
 * ```ts ignore
 * import { Autoencoder, getGpu } from "./mod.ts";
 * const ae = await Autoencoder.load(await getGpu(), "ae.safetensors"); // config from the file
 * const latent = new Float32Array(16 * 64 * 64); // [1, 16, 64, 64] from the transformer
 * const image = await ae.decode(latent, [1, 16, 64, 64]); // [1, 3, 512, 512], about [-1, 1]
 * const back = await ae.encode(image, [1, 3, 512, 512]); // [1, 16, 64, 64]
 * ae.destroy();
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
 * @example Encode a prompt for FLUX.1 (CLIP-L pooled + T5-XXL sequence, cached per prompt)
 * ```ts ignore
 * import { getGpu, TextEncoders } from "./mod.ts";
 * const gpu = await getGpu();
 * // a diffusers FLUX.1 folder: text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/
 * const text = await TextEncoders.fromFluxFolder(gpu, "FLUX.1-schnell", {
 *   variant: "schnell", // T5 padded to 256 tokens (dev: 512)
 *   t5Weights: "w8a16", // the default; or "float", "w4a16" (quantized on load; a file's wins)
 * });
 * const e = await text.encode("a red fox under a golden tree, oil painting");
 * console.log(e.t5.length / e.t5Dim, e.pooled.length, e.truncated); // 256 768 { clip: false, t5: false }
 * text.offload(); // --offload-text: free T5-XXL's GPU memory before the transformer runs
 * @example Run in a browser: read the model over HTTP Range requests, check the adapter first
 * ```ts ignore
 * import { Gpu, HttpRangeSource, Pipeline, requirementsOf, unmetRequirements } from "./mod.ts";
 * const src = await HttpRangeSource.open("/models/dit-emoji-int4"); // HEAD: size + ETag
 * const pipe = await Pipeline.load(await Gpu.create(), src); // checksum verified
 * console.log(unmetRequirements((await navigator.gpu.requestAdapter())!,
 *   navigator.gpu.wgslLanguageFeatures, requirementsOf(pipe.file))); // []
 * ```
 *
 * @module
 */

// device layer and errors
export { getGpu, Gpu } from "./gpu/device.ts";
export type { Dispatch, GpuCapabilities, GpuOptions, OptionalFeature } from "./gpu/device.ts";
export {
  FormatError,
  GpuDeviceLostError,
  GpuFeatureError,
  GpuSelfTestError,
  GpuUnavailableError,
  GpuValidationError,
  NumericError,
} from "./gpu/errors.ts";
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

// latent decoding: autoencoders
export { Autoencoder, toNchw, toNhwc } from "./runtime/autoencoder.ts";
export type { AutoencoderOptions, DecodeOptions, Nchw } from "./runtime/autoencoder.ts";
export { AE_PRESETS, AeCheckpoint } from "./runtime/autoencoder_keys.ts";
export type { AeConfig, AeLayout, AePreset, AePresetName } from "./runtime/autoencoder_keys.ts";
export type { AePart } from "./runtime/autoencoder_weights.ts";
export { readTinyDecoder, TinyDecoder } from "./runtime/tiny_autoencoder.ts";
export type { TinyDecoderOptions, TinyLayer } from "./runtime/tiny_autoencoder.ts";

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
export {
  Conv2d,
  conv2d,
  CONV2D_NARROW_MAX_N,
  conv2dGeometry,
  packConvWeight,
  quantizeConvWeightInt8,
} from "./kernels/conv2d/conv2d.ts";
export type {
  Conv2dBuffers,
  Conv2dGeometry,
  Conv2dKernel,
  Conv2dPad,
  Conv2dShape,
} from "./kernels/conv2d/conv2d.ts";
export { GROUP_NORM_GROUPS, GroupNorm, groupNorm } from "./kernels/group_norm/group_norm.ts";
export type { GroupNormBuffers, GroupNormShape } from "./kernels/group_norm/group_norm.ts";
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
} from "./formats/packing.ts";
export type {
  ActConvention,
  ActMode,
  Int4Weight,
  Nvfp4Weight,
  PackedWeight,
  QuantAct,
  WeightFormat,
} from "./formats/packing.ts";
export { quantizeLinear, quantizeLinearRanks } from "./quant/layer.ts";
export { parseBudget, planBudget } from "./quant/budget.ts";
export type { Budget, BudgetChoice, BudgetLayer, BudgetPlan } from "./quant/budget.ts";
export type { Method, QuantizedLinear, QuantizeLinearOptions, TensorEntry } from "./quant/layer.ts";
export type { TensorDtype } from "./quant/baselines.ts";
export type { MatMul } from "./quant/linalg.ts";
export type { LinearArgs, RowSplit } from "./quant/split.ts";
export type { ClipOptions } from "./quant/clip.ts";
export { quantizeCheckpoint } from "./convert/model.ts";
export { importNunchakuFlux } from "./quant/nunchaku_flux.ts";
export type { ImportOptions, ImportReport, PlanItem } from "./quant/nunchaku_flux.ts";
export type {
  LayerReport,
  ModelMethod,
  QuantizeCommonOptions,
  QuantizeModelOptions,
} from "./convert/model.ts";
export { FORMAT_VERSION, QuantFile, writeQuantFile } from "./formats/format.ts";
export type {
  LayerPolicyEntry,
  QuantConfig,
  QuantFileMeta,
  QuantFileMetaInput,
  QuantTensor,
} from "./formats/format.ts";
export { SafetensorsReader, SafetensorsWriter } from "./formats/safetensors.ts";
export type { Dtype, TensorInfo, TensorSpec } from "./formats/safetensors.ts";
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

// text encoders (FLUX.1: CLIP-L pooled output + T5-XXL sequence; tokenizers from tokenizer.json)
export {
  clearPromptCache,
  DEFAULT_T5_WEIGHTS,
  FLUX_T5_LENGTH,
  loadTokenizer,
  TextEncoders,
  truncationWarning,
} from "./runtime/text/encoders.ts";
export type { PromptEmbedding, TextEncodersOptions } from "./runtime/text/encoders.ts";
export {
  bucketTable,
  relativePositionBucket,
  t5ConfigFrom,
  T5Encoder,
  t5PositionBias,
} from "./runtime/text/t5.ts";
export type { T5Config, T5EncoderOptions, T5Output } from "./runtime/text/t5.ts";
export { clipConfigFrom, clipEosIndex, ClipTextEncoder } from "./runtime/text/clip.ts";
export type { ClipTextConfig, ClipTextOptions, ClipTextOutput } from "./runtime/text/clip.ts";
export { Checkpoint } from "./runtime/text/checkpoint.ts";
export type { TensorMeta } from "./runtime/text/checkpoint.ts";
export type {
  TextTokenizer,
  TextTokenizerOptions,
  TokenizedBatch,
} from "./runtime/text/tokenizer.ts";
export type { TextWeightFormat } from "./runtime/text/_linears.ts";
export { quantizeTextEncoder, TEXT_QUANT_METHODS } from "./convert/text_encoder.ts";
export type { TextQuantMethod, TextQuantReport } from "./convert/text_encoder.ts";
export { AddNorm, addNorm } from "./kernels/add_norm/add_norm.ts";
export type { AddNormBuffers, AddNormShape } from "./kernels/add_norm/add_norm.ts";
export { FfnAct, ffnAct } from "./kernels/ffn_act/ffn_act.ts";
export type { FfnActBuffers, FfnActShape } from "./kernels/ffn_act/ffn_act.ts";
export { GemmW8A16, gemmW8A16 } from "./kernels/gemm_w8a16/gemm_w8a16.ts";
export type { GemmW8A16Buffers, GemmW8A16Shape } from "./kernels/gemm_w8a16/gemm_w8a16.ts";
// FLUX.1 (runtime/flux/, quant/flux_*.ts)
/**
 * FLUX.1 text-to-image: open the transformer in any layout, run the float64-conditioned graph on
 * the GPU, denoise through the shared sampler loop.
 *
 * @example
 * ```ts ignore
 * import { FluxPipeline, FluxWeights, getGpu } from "./mod.ts";
 * const gpu = await getGpu();
 * const transformer = await FluxWeights.open("FLUX.1-schnell/transformer");
 * const pipe = await FluxPipeline.load(gpu, { transformer, text, decoder }, {
 *   width: 1024, height: 1024, txtTokens: 256,
 * });
 * const { images } = await pipe.generate({ prompts: ["a red fox"], seed: 1, steps: 4 });
 * ```
 */
export { FluxPipeline } from "./runtime/flux/pipeline.ts";
export type {
  FluxConditioning,
  FluxPipelineOptions,
  FluxRequest,
  FluxResult,
  FluxTextConditioner,
  LatentDecoder,
} from "./runtime/flux/pipeline.ts";
export { FluxTransformer } from "./runtime/flux/transformer.ts";
export type { FluxInputs, FluxLoadOptions, LinearProbe } from "./runtime/flux/transformer.ts";
export { fluxTransformerPath, FluxWeights, singleBlockLayers } from "./runtime/flux/weights.ts";
export type { FluxLayout, FluxSource } from "./runtime/flux/weights.ts";
export { FLUX1_CONFIG } from "./runtime/flux/config.ts";
export type { FluxConfig } from "./runtime/flux/config.ts";
export {
  jointIds,
  packLatents,
  ropeTable,
  timestepEmbedding,
  unpackLatents,
} from "./runtime/flux/embed.ts";
export type { FluxVec } from "./runtime/flux/embed.ts";
export { fluxDefaultSize, resolveFluxModel } from "./runtime/flux/model_folder.ts";
export type { FluxModelParts, FluxPart } from "./runtime/flux/model_folder.ts";
export { checkFluxPlan, fluxMemoryPlan, fluxPolicyAt } from "./runtime/flux/memory.ts";
export type { FluxMemoryPlan, FluxPlanOptions } from "./runtime/flux/memory.ts";
export { calibrateFlux, calibrateFluxPrompts } from "./runtime/flux/calibrate.ts";
export type { FluxPromptCalibOptions } from "./runtime/flux/calibrate.ts";
export { conditioningOf, textConditioner } from "./runtime/flux/text.ts";
export { fluxModelInfo, latentPreview, ResidentFlux } from "./runtime/flux/resident.ts";
export type {
  FluxModelInfo,
  ResidentFluxOptions,
  ResidentFluxResult,
} from "./runtime/flux/resident.ts";
export type { FluxCalibOptions, FluxCalibSample } from "./runtime/flux/calibrate.ts";
export { runDenoise } from "./runtime/family.ts";
export type { DenoiseJob, DenoiseOptions, DenoiseResult } from "./runtime/family.ts";
export { fluxShift } from "./runtime/schedulers.ts";
export { quantizeFlux } from "./convert/flux_model.ts";
export type { QuantizeFluxOptions } from "./convert/flux_model.ts";
export { FLUX_POLICY, fluxTensorList } from "./quant/flux_policy.ts";
export type { FluxLinearName, FluxShapeConfig } from "./quant/flux_policy.ts";
export { QkNormRope } from "./kernels/qk_norm_rope/qk_norm_rope.ts";
export type { QkNormRopeBuffers, QkNormRopeShape } from "./kernels/qk_norm_rope/qk_norm_rope.ts";
export { CopyRows } from "./kernels/copy_rows/copy_rows.ts";
export type { CopyRowsBuffers, CopyRowsShape } from "./kernels/copy_rows/copy_rows.ts";
// byte sources (local file, HTTP Range, Blob, memory) and adapter requirements (browser use)
export { BlobSource, BytesSource, HttpRangeSource, isByteSource } from "./gpu/source.ts";
export type { ByteSource, HttpRangeOptions } from "./gpu/source.ts";
export { requirementsOf, unmetRequirements } from "./runtime/requirements.ts";
export type { AdapterLike, DeviceRequirements, RequirementsInput } from "./runtime/requirements.ts";
