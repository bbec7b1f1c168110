/**
 * What a model needs of a WebGPU adapter, read from its header alone (config, policy, tensor
 * sizes), so that a browser can check an adapter BEFORE downloading the weights: the WGSL
 * language features (`dot4I8Packed` for W4A4 layers), the required features (none: `shader-f16`
 * is optional, without it the f32 path runs) and the limits (largest binding and buffer, and the
 * workgroup limits the kernels are written for). runtime/requirements_test.ts generates with a
 * device created with exactly these limits. Web APIs only (runs in a page).
 *
 * @example
 * ```ts ignore
 * import { ModelFile } from "./model_file.ts";
 * import { requirementsOf, unmetRequirements } from "./requirements.ts";
 * const f = await ModelFile.open("models/dit_emoji.int4.safetensors");
 * const need = requirementsOf(f);
 * const adapter = (await navigator.gpu.requestAdapter())!;
 * console.log(unmetRequirements(adapter, navigator.gpu.wgslLanguageFeatures, need)); // []
 * ```
 *
 * @module
 */
import type { LayerPolicyEntry } from "../formats/format.ts";

/** What an adapter must offer to run a model. */
export interface DeviceRequirements {
  /** WebGPU features that must be present (optional ones are not listed). */
  features: string[];
  /** WGSL language features that must be present (`navigator.gpu.wgslLanguageFeatures`). */
  wgslLanguageFeatures: string[];
  /** Least values of adapter limits (all "maximum"-type limits). */
  limits: Record<string, number>;
}

/** The parts of a model file that {@linkcode requirementsOf} reads (a ModelFile has them). */
export interface RequirementsInput {
  /** `model_config`. */
  config: Record<string, unknown>;
  /** Per-layer policy (empty for a float checkpoint). */
  policy: Record<string, LayerPolicyEntry>;
  /** The tensors' byte ranges. */
  reader: { tensors: Map<string, { begin: number; end: number }> };
}

/**
 * Workgroup limits the kernels are written for: the WebGPU defaults every adapter offers
 * (tiles that fit 16 KiB of workgroup memory, 256 invocations, 8 storage buffers per shader).
 */
const KERNEL_LIMITS = {
  maxComputeWorkgroupStorageSize: 16384,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
  maxComputeWorkgroupSizeY: 256,
  maxComputeWorkgroupsPerDimension: 65535,
  maxStorageBuffersPerShaderStage: 8,
} as const;

/** Workgroup memory of the W4A4 GEMM's default tile (wgX = wgY = 16: BM = BN = 128). */
const W4A4_WORKGROUP_BYTES = (128 + 128) * 100 + 1024;

/** What the DiT in `file` needs (batch of 2: guided and unguided halves of one image). */
export function requirementsOf(file: RequirementsInput, images = 1): DeviceRequirements {
  const c = file.config;
  const num = (k: string, d: number) => typeof c[k] === "number" ? c[k] as number : d;
  const hidden = num("hidden_size", 0), p = num("patch_size", 1), s = num("input_size", 0);
  const ch = num("in_channels", 3), mlp = num("mlp_ratio", 4);
  const tokens = (s / p) ** 2, batch = 2 * images;
  // widest per-token activation: qkv (3h), MLP hidden, the final layer's patch output
  const width = Math.max(3 * hidden, Math.ceil(mlp * hidden), p * p * 2 * ch, hidden);
  const activation = batch * tokens * width * 4; // f32 (the f32 path is the largest)
  let tensor = 0;
  for (const t of file.reader.tensors.values()) tensor = Math.max(tensor, t.end - t.begin);
  const binding = Math.max(activation, tensor);
  const w4a4 = Object.values(file.policy).some((e) =>
    e.actMode === "int4" || e.actMode === "int4_unsigned" || e.actMode === "nvfp4"
  );
  const limits: Record<string, number> = {
    maxStorageBufferBindingSize: binding,
    maxBufferSize: binding,
    ...KERNEL_LIMITS,
  };
  // the 4-bit GEMM's default 128×128 tile: (128 + 128)·100 + 1024 bytes (gemm_w4a4_lowrank.ts)
  if (w4a4) limits.maxComputeWorkgroupStorageSize = W4A4_WORKGROUP_BYTES;
  return {
    features: [],
    wgslLanguageFeatures: w4a4 ? ["packed_4x8_integer_dot_product"] : [],
    limits,
  };
}

/** An adapter as far as {@linkcode unmetRequirements} reads it (a `GPUAdapter` is one). */
export interface AdapterLike {
  /** Its features. */
  features: { has(name: string): boolean };
  /** Its limits. */
  limits: object;
}

/**
 * What `adapter` lacks for `need`, one sentence each (empty when it has everything). `wgsl` is
 * `navigator.gpu.wgslLanguageFeatures` (missing: language features are not checked here; the
 * start-up self-test still checks `dot4I8Packed`).
 */
export function unmetRequirements(
  adapter: AdapterLike,
  wgsl: { has(name: string): boolean } | undefined,
  need: DeviceRequirements,
): string[] {
  const out: string[] = [];
  for (const f of need.features) {
    if (!adapter.features.has(f)) out.push(`the WebGPU feature "${f}" is missing`);
  }
  for (const f of need.wgslLanguageFeatures) {
    if (wgsl && !wgsl.has(f)) {
      out.push(
        `WGSL lacks "${f}"${
          f === "packed_4x8_integer_dot_product" ? " (dot4I8Packed, for the 4-bit layers)" : ""
        }`,
      );
    }
  }
  const limits = adapter.limits as Record<string, number>;
  for (const [k, v] of Object.entries(need.limits)) {
    const have = limits[k];
    if (typeof have === "number" && have < v) out.push(`${k} is ${have}, the model needs ${v}`);
  }
  return out;
}
