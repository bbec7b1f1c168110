/**
 * Whole-file validation of a DiT model file before any upload: the `model_config` against itself,
 * the stored tensors against the config (every tensor the graph reads, with its shape and dtype;
 * no blocks beyond `depth`), and each linear layer's `policy` entry against the tensors stored for
 * it (method, format, rank, activation mode). Each problem is one {@linkcode FormatError} naming
 * the key or tensor with the expected and the found values, so a contradictory file is refused
 * with a sentence instead of uploading and then failing (or, worse, running) half-way.
 *
 * Also the non-finite check of weights ({@linkcode assertFinite}): NaN or ±Inf in a float tensor
 * would make every image black; the runtime refuses it when it reads the tensor.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import type { LayerPolicyEntry } from "../formats/format.ts";
import type { TensorInfo } from "../formats/safetensors.ts";

/** Float dtypes a 16-bit (float) layer or an embedding may be stored in. */
const FLOAT_DTYPES = ["F32", "F16", "BF16", "F64"];
/** Methods whose layers run as W4A4 + optional low-rank (runtime/linear.ts). */
const W4A4_METHODS = ["svdquant", "smooth", "dilate", "rtn"];
/** Activation modes each W4A4 weight format runs with. */
const ACT_MODES: Record<string, string[]> = {
  int4: ["int4", "int4_unsigned"],
  nvfp4: ["nvfp4"],
};

/** What the checker needs of a model file. */
export interface CheckedFile {
  /** Path, for messages. */
  path: string;
  /** Model family. */
  family: string;
  /** `model_config`. */
  config: Record<string, unknown>;
  /** Per-layer policy (empty for a float checkpoint). */
  policy: Record<string, LayerPolicyEntry>;
  /** "float", or the quantized file's weight format. */
  precision: string;
  /** The stored tensors. */
  tensors: ReadonlyMap<string, TensorInfo>;
}

/**
 * Checks `model_config` of a DiT: positive integer sizes, divisibility, an even positive
 * `frequency_embedding_size`, a positive `mlp_ratio`, boolean `learn_sigma`, and as many
 * `class_names` as `num_classes`. Throws {@linkcode FormatError} naming the key.
 */
export function checkDitConfig(path: string, c: Record<string, unknown>): void {
  const bad = (key: string, expected: string) =>
    new FormatError(
      path,
      `model_config.${key} is ${JSON.stringify(c[key])?.slice(0, 60)}, expected ${expected}; ` +
        "the file's config contradicts itself (re-export or re-quantize it)",
    );
  const posInt = (key: string, optional = false) => {
    if (optional && c[key] === undefined) return;
    const v = c[key];
    if (!Number.isSafeInteger(v) || (v as number) < 1) throw bad(key, "a positive integer");
  };
  for (
    const k of [
      "hidden_size",
      "depth",
      "num_heads",
      "patch_size",
      "in_channels",
      "input_size",
      "num_classes",
    ]
  ) posInt(k);
  posInt("frequency_embedding_size", true);
  const D = c.hidden_size as number, H = c.num_heads as number;
  if (D % H !== 0) throw bad("num_heads", `a divisor of hidden_size ${D}`);
  if ((c.input_size as number) % (c.patch_size as number) !== 0) {
    throw bad("patch_size", `a divisor of input_size ${c.input_size}`);
  }
  const F = c.frequency_embedding_size;
  if (F !== undefined && (F as number) % 2 !== 0) {
    throw bad("frequency_embedding_size", "an even positive integer (cos and sin halves)");
  }
  const r = c.mlp_ratio;
  if (
    r !== undefined &&
    (typeof r !== "number" || !Number.isFinite(r) || r <= 0 || Math.round(D * r) < 1)
  ) {
    throw bad("mlp_ratio", "a positive number");
  }
  if (c.learn_sigma !== undefined && typeof c.learn_sigma !== "boolean") {
    throw bad("learn_sigma", "true or false");
  }
  const names = c.class_names;
  if (names !== undefined) {
    if (!Array.isArray(names) || !names.every((s) => typeof s === "string" && s !== "")) {
      throw bad("class_names", "an array of non-empty strings");
    }
    if (names.length !== c.num_classes) {
      throw new FormatError(
        path,
        `model_config.class_names has ${names.length} names but num_classes is ${c.num_classes}; ` +
          "the file's config contradicts itself (re-export or re-quantize it)",
      );
    }
  }
}

/**
 * Validates a DiT file as a whole: config ({@linkcode checkDitConfig}), every tensor the graph
 * reads (name, shape, dtype), no block beyond `depth`, and each linear layer's policy against its
 * stored tensors. Throws the first problem as a {@linkcode FormatError}; a file of another
 * family is left to that family's graph.
 */
export function checkDitFile(f: CheckedFile): void {
  if (f.family !== "dit") return;
  checkDitConfig(f.path, f.config);
  const c = f.config as Record<string, number>;
  const D = c.hidden_size, C = c.in_channels, p = c.patch_size, depth = c.depth;
  const T = (c.input_size / p) ** 2, F = c.frequency_embedding_size ?? 256;
  const mlp = Math.round(D * ((f.config.mlp_ratio as number | undefined) ?? 4));
  const outC = (f.config.learn_sigma ?? true) ? 2 * C : C;
  const quantized = f.precision !== "float";

  const used = new Set<string>();
  const tensor = (name: string, shape: number[], dtypes: string[]): void => {
    used.add(name);
    const t = f.tensors.get(name);
    if (!t) {
      throw new FormatError(
        f.path,
        `the tensor is missing: model_config (hidden_size ${D}, depth ${depth}) needs ` +
          `[${shape.join(", ")}]`,
        name,
      );
    }
    if (t.shape.join(",") !== shape.join(",")) {
      throw new FormatError(
        f.path,
        `shape [${t.shape.join(", ")}] contradicts model_config, which needs [${shape.join(", ")}]`,
        name,
      );
    }
    if (!dtypes.includes(t.dtype)) {
      throw new FormatError(f.path, `dtype ${t.dtype}, expected ${dtypes.join(" or ")}`, name);
    }
  };
  tensor("x_embedder.proj.weight", [D, C, p, p], FLOAT_DTYPES);
  tensor("x_embedder.proj.bias", [D], FLOAT_DTYPES);
  tensor("pos_embed", [1, T, D], FLOAT_DTYPES);
  tensor("t_embedder.mlp.0.weight", [D, F], FLOAT_DTYPES);
  tensor("t_embedder.mlp.0.bias", [D], FLOAT_DTYPES);
  tensor("t_embedder.mlp.2.weight", [D, D], FLOAT_DTYPES);
  tensor("t_embedder.mlp.2.bias", [D], FLOAT_DTYPES);
  const table = f.tensors.has("y_embedder.embedding_table.weight")
    ? "y_embedder.embedding_table.weight"
    : "y_embedder.embedding_table";
  tensor(table, [c.num_classes + 1, D], FLOAT_DTYPES);

  const linear = (base: string, n: number, k: number) => {
    linearTensors(base, n, k);
    for (const name of f.tensors.keys()) {
      if (name.startsWith(`${base}.`) && !used.has(name)) {
        throw new FormatError(
          f.path,
          `the tensor is not used by layer ${base}'s policy ` +
            `(${f.policy[base]?.method ?? "float"}); the policy contradicts the stored tensors`,
          name,
        );
      }
    }
  };
  const linearTensors = (base: string, n: number, k: number) => {
    const pol = f.policy[base];
    const method = pol?.method ?? "float";
    if (quantized && pol === undefined && !f.tensors.has(`${base}.weight`)) {
      throw new FormatError(f.path, "the policy has no entry for this layer", base);
    }
    if (method === "float") {
      tensor(`${base}.weight`, [n, k], FLOAT_DTYPES);
      tensor(`${base}.bias`, [n], FLOAT_DTYPES);
      return;
    }
    const where = (what: string) =>
      new FormatError(f.path, `policy ${JSON.stringify(pol)} contradicts the file: ${what}`, base);
    if (method === "w4a16") {
      if (pol.format !== "int4") throw where(`format must be int4, found "${pol.format}"`);
      if (k % 64 !== 0) throw where(`K=${k} is not a multiple of 64`);
      tensor(`${base}.qweight`, [n, k / 8], ["U32"]);
      tensor(`${base}.wscales`, [n, k / 64], ["F16"]);
      tensor(`${base}.bias`, [n], ["F32"]);
      // optional activation-aware scaling (quant/awq.ts): X / smooth before the product
      if (f.tensors.has(`${base}.smooth`)) tensor(`${base}.smooth`, [k], ["F32"]);
      if (pol.r !== 0) throw where(`r must be 0 for w4a16, found ${pol.r}`);
      return;
    }
    if (!W4A4_METHODS.includes(method)) {
      throw where(
        `method "${method}" is not run by this runtime (float, w4a16, ${W4A4_METHODS.join(", ")})`,
      );
    }
    const modes = ACT_MODES[pol.format];
    if (!modes) throw where(`format must be int4 or nvfp4, found "${pol.format}"`);
    if (!modes.includes(pol.actMode ?? "")) {
      throw where(`actMode must be ${modes.join(" or ")} for ${pol.format}, found ${pol.actMode}`);
    }
    const g = pol.format === "int4" ? 64 : 16;
    if (k % g !== 0) throw where(`K=${k} is not a multiple of the group size ${g}`);
    tensor(`${base}.qweight`, [n, k / 8], ["U32"]);
    tensor(`${base}.wscales`, [n, k / g], [pol.format === "int4" ? "F16" : "F8_E4M3"]);
    if (pol.format === "nvfp4") tensor(`${base}.tensor_scale`, [1], ["F32"]);
    tensor(`${base}.bias`, [n], ["F32"]);
    if (f.tensors.has(`${base}.smooth`) || method !== "rtn") tensor(`${base}.smooth`, [k], ["F32"]);
    const down = f.tensors.get(`${base}.lora_down`);
    const r = down?.shape[0] ?? 0;
    if (!Number.isSafeInteger(pol.r) || pol.r !== r) {
      throw where(`r is ${pol.r} but the stored low-rank branch has rank ${r}`);
    }
    if (r > 0) {
      tensor(`${base}.lora_down`, [r, k], ["F16"]);
      tensor(`${base}.lora_up`, [n, r], ["F16"]);
    } else if (f.tensors.has(`${base}.lora_up`)) {
      throw where("lora_up is stored without lora_down");
    }
  };
  for (let i = 0; i < depth; i++) {
    const b = `blocks.${i}`;
    linear(`${b}.adaLN_modulation.1`, 6 * D, D);
    linear(`${b}.attn.qkv`, 3 * D, D);
    linear(`${b}.attn.proj`, D, D);
    linear(`${b}.mlp.fc1`, mlp, D);
    linear(`${b}.mlp.fc2`, D, mlp);
  }
  linear("final_layer.adaLN_modulation.1", 2 * D, D);
  linear("final_layer.linear", outC * p * p, D);

  let stored = 0;
  for (const name of f.tensors.keys()) {
    const m = /^blocks\.(\d+)\./.exec(name);
    if (m) stored = Math.max(stored, Number(m[1]) + 1);
  }
  if (stored > depth) {
    throw new FormatError(
      f.path,
      `model_config.depth is ${depth} but the file stores ${stored} blocks ` +
        `(blocks.0 … blocks.${stored - 1}); the config contradicts the tensors`,
    );
  }
  for (const layer of Object.keys(f.policy)) {
    const m = /^blocks\.(\d+)\./.exec(layer);
    if (m && Number(m[1]) >= depth) {
      throw new FormatError(
        f.path,
        `the policy names a layer of block ${m[1]} but model_config.depth is ${depth}`,
        layer,
      );
    }
  }
}

/**
 * Throws a {@linkcode FormatError} naming tensor `name` of `path` when its float values hold NaN
 * or ±Inf (F32, F16, BF16, F64 little-endian bytes; F8_E4M3 NaN codes; integer dtypes have none).
 */
export function assertFinite(path: string, name: string, dtype: string, bytes: Uint8Array): void {
  let at = -1;
  if (dtype === "F32") {
    const n = bytes.byteLength >> 2;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) {
      if ((dv.getUint32(4 * i, true) & 0x7f800000) === 0x7f800000) {
        at = i;
        break;
      }
    }
  } else if (dtype === "F16" || dtype === "BF16") {
    const mask = dtype === "F16" ? 0x7c00 : 0x7f80;
    const n = bytes.byteLength >> 1;
    for (let i = 0; i < n; i++) {
      if (((bytes[2 * i] | (bytes[2 * i + 1] << 8)) & mask) === mask) {
        at = i;
        break;
      }
    }
  } else if (dtype === "F8_E4M3") {
    for (let i = 0; i < bytes.byteLength; i++) {
      if ((bytes[i] & 0x7f) === 0x7f) {
        at = i;
        break;
      }
    }
  } else if (dtype === "F64") {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < bytes.byteLength >> 3; i++) {
      if (!Number.isFinite(dv.getFloat64(8 * i, true))) {
        at = i;
        break;
      }
    }
  }
  if (at >= 0) {
    throw new FormatError(
      path,
      `element ${at} is not finite (NaN or ±Inf); the weights are corrupt: re-export or ` +
        "re-quantize the model from a good checkpoint",
      name,
    );
  }
}
