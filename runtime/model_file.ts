/**
 * Opening a model file for the runtime: a float checkpoint (safetensors in the DiT layout) or a
 * pre-quantized file (checksum verified; a float checkpoint's too when it carries one). The whole
 * file is validated against its `model_config` and `policy` when it is opened
 * (runtime/model_check.ts), and every tensor read is checked for NaN/±Inf. Gives the model
 * config, the per-layer policy, and the tensors a layer needs.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import { computeChecksum, type LayerPolicyEntry, QuantFile } from "../formats/format.ts";
import { assertFinite, checkDitFile } from "./model_check.ts";
import { SafetensorsReader } from "../formats/safetensors.ts";
import type { StoredTensor } from "./linear.ts";
import { inferDitConfig, isPublicDit } from "./dit_public.ts";
import type { ByteSource } from "../gpu/source.ts";

/**
 * What the DiT graph reads from a model: config, layer policy and tensors. {@linkcode ModelFile}
 * is the one backed by a file; a benchmark can supply random weights through the same interface.
 */
export interface ModelSource {
  /** Where the weights come from (a file path, or a description), for error messages. */
  readonly path: string;
  /** Model family (e.g. "dit"). */
  readonly family: string;
  /** Model hyper-parameters (`model_config`). */
  readonly config: Record<string, unknown>;
  /** The policy entry of linear layer `base` (method, format, rank, activation mode). */
  policyOf(base: string): LayerPolicyEntry;
  /** Whether tensor `name` exists. */
  has(name: string): boolean;
  /** Tensor `name`'s values as f32; FormatError naming it when missing. */
  float(name: string): Promise<Float32Array>;
  /**
   * The tensors of linear layer `base` as `createLinear` takes them: float layers give `weight`
   * (f32 values) and `bias`; quantized layers give every stored suffix.
   */
  linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>>;
}

/** An open model file. */
export class ModelFile implements ModelSource {
  /** The file's path. */
  readonly path: string;
  /** Model family from the metadata (e.g. "dit"). */
  readonly family: string;
  /** Model hyper-parameters (`model_config`). */
  readonly config: Record<string, unknown>;
  /** Per-layer policy of a pre-quantized file; empty for a float checkpoint. */
  readonly policy: Record<string, LayerPolicyEntry>;
  /** "float" for a float checkpoint, else the quantized file's weight format. */
  readonly precision: string;
  /** The tensors. */
  readonly reader: SafetensorsReader;
  #quant?: QuantFile;

  private constructor(
    path: string,
    reader: SafetensorsReader,
    family: string,
    config: Record<string, unknown>,
    policy: Record<string, LayerPolicyEntry>,
    precision: string,
    quant?: QuantFile,
  ) {
    this.path = path;
    this.reader = reader;
    this.family = family;
    this.config = config;
    this.policy = policy;
    this.precision = precision;
    this.#quant = quant;
  }

  /**
   * Open `path` and validate it as a whole (FormatError naming the key or tensor at fault); a
   * pre-quantized file has its checksum verified, a float checkpoint too when it has one.
   * `path` is a local file, or a {@linkcode ByteSource} (a file read over HTTP, a Blob in a
   * browser); the model file owns the source and closes it.
   */
  static async open(path: string | ByteSource): Promise<ModelFile> {
    const f = await ModelFile.#open(path);
    try {
      checkDitFile({ ...f, tensors: f.reader.tensors });
    } catch (e) {
      f.close();
      throw e;
    }
    return f;
  }

  static async #open(source: string | ByteSource): Promise<ModelFile> {
    const probe = await SafetensorsReader.open(source);
    const path = probe.path;
    // `format: "pt"` (and "np", "tf", "flax") is what Hugging Face's savers write: not ours.
    const isQuant = probe.metadata.format !== undefined &&
      !["pt", "np", "tf", "flax"].includes(probe.metadata.format);
    if (isQuant) {
      // a path is opened again; a source is kept open (the probe does not close it)
      if (typeof source === "string") probe.close();
      const q = await QuantFile.open(typeof source === "string" ? path : source);
      const precision = q.meta.quantConfig.method === "w4a16"
        ? "w4a16"
        : String(q.meta.quantConfig.weightFormat);
      return new ModelFile(
        path,
        q.reader,
        q.meta.family,
        q.meta.modelConfig,
        q.meta.policy,
        precision,
        q,
      );
    }
    if (probe.metadata.checksum !== undefined) {
      let sum: string;
      try {
        sum = await computeChecksum(probe);
      } catch (e) {
        probe.close();
        throw e;
      }
      if (sum !== probe.metadata.checksum) {
        probe.close();
        throw new FormatError(
          path,
          "checksum mismatch: the file is corrupt or was modified; re-download or re-export it",
        );
      }
    }
    if (probe.metadata.model_config === undefined && isPublicDit(probe.tensors)) {
      // A public DiT checkpoint converted to safetensors: the config comes from the shapes.
      try {
        const config = inferDitConfig(path, probe.tensors);
        return new ModelFile(path, probe, "dit", config, {}, "float");
      } catch (e) {
        probe.close();
        throw e;
      }
    }
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(probe.metadata.model_config ?? "null");
    } catch {
      probe.close();
      throw new FormatError(path, "metadata model_config is not JSON");
    }
    if (!config || typeof config !== "object") {
      probe.close();
      throw new FormatError(
        path,
        "no model_config in the metadata: this is not a model file of this project " +
          "(export it with train/train_dit.py or give a pre-quantized file)",
      );
    }
    return new ModelFile(path, probe, probe.metadata.family ?? "dit", config, {}, "float");
  }

  /** The policy entry of a linear layer (float checkpoints: every layer is float). */
  policyOf(base: string): LayerPolicyEntry {
    return this.policy[base] ?? { method: "float", format: "f16", r: 0 };
  }

  /** Whether a tensor exists. */
  has(name: string): boolean {
    return this.reader.tensors.has(name);
  }

  /** A float tensor's values as f32 (F32/F16/BF16); FormatError naming it when missing. */
  async float(name: string): Promise<Float32Array> {
    if (!this.has(name)) throw new FormatError(this.path, "the tensor is missing", name);
    const v = await this.reader.readFloat32(name);
    for (let i = 0; i < v.length; i++) {
      if (!Number.isFinite(v[i])) {
        throw new FormatError(
          this.path,
          `element ${i} is not finite (NaN or ±Inf); the weights are corrupt: re-export or ` +
            "re-quantize the model from a good checkpoint",
          name,
        );
      }
    }
    return v;
  }

  /** A tensor's stored bytes, dtype and shape. */
  async stored(name: string): Promise<StoredTensor> {
    const info = this.reader.tensors.get(name);
    if (!info) throw new FormatError(this.path, "the tensor is missing", name);
    const data = await this.reader.readRaw(name);
    assertFinite(this.path, name, info.dtype, data);
    return { dtype: info.dtype, shape: info.shape, data };
  }

  /**
   * The tensors of linear layer `base` as `createLinear` takes them: float layers give
   * `weight` (f32 values) and `bias`; quantized layers give every stored suffix.
   */
  async linearTensors(base: string): Promise<Map<string, StoredTensor | Float32Array>> {
    const out = new Map<string, StoredTensor | Float32Array>();
    const method = this.policyOf(base).method;
    if (method === "float") {
      out.set("weight", await this.float(`${base}.weight`));
      if (this.has(`${base}.bias`)) out.set("bias", await this.float(`${base}.bias`));
      return out;
    }
    for (
      const s of [
        "qweight",
        "wscales",
        "tensor_scale",
        "smooth",
        "lora_down",
        "lora_up",
        "bias",
        // layers imported from Nunchaku: AWQ zero points (W4A16 "uint4"), NVFP4 wcscales
        "wzeros",
        "channel_scale",
      ]
    ) {
      if (this.has(`${base}.${s}`)) out.set(s, await this.stored(`${base}.${s}`));
    }
    return out;
  }

  /** Close the file. */
  close(): void {
    if (this.#quant) this.#quant.close();
    else this.reader.close();
  }
}
