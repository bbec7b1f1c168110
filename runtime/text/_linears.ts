/**
 * Linear layers of the text encoders: float weights (16-bit GEMM, or f32 where the encoder runs
 * in f32), weight-only INT4 (`gemm_w4a16`, group 64) or weight-only INT8 (`gemm_w8a16`, one
 * scale per output channel), built from float values (quantized here, round-to-nearest) or from
 * the tensors of a pre-quantized file. Also the CPU helpers that fuse (q|k|v, wi_0|wi_1) and
 * zero-pad weights so every shape meets a kernel's constraint without changing a result.
 *
 * @module
 */
import { GROUP_SIZE_INT4, packF16, quantizeWeight } from "../../formats/packing.ts";
import { quantizeWeightClipped } from "../../quant/clip.ts";
import { quantizeRowsInt8 } from "../../quant/baselines.ts";
import type { ActDtype } from "../../kernels/_wgsl.ts";
import { GemmW8A16 } from "../../kernels/gemm_w8a16/gemm_w8a16.ts";
import type { Gpu } from "../../gpu/device.ts";
import type { StoredTensor } from "../linear.ts";
import { createLinear, type LinearOp } from "../linears.ts";

/** How a text encoder's linear weights are held on the GPU. */
export type TextWeightFormat = "float" | "w4a16" | "w8a16";

/** Every {@linkcode TextWeightFormat}. */
export const TEXT_WEIGHT_FORMATS: readonly TextWeightFormat[] = ["float", "w4a16", "w8a16"];

/** Group size of W4A16 weights (the `gemm_w4a16` kernel's). */
export const W4A16_GROUP = GROUP_SIZE_INT4;

/** One linear layer's weights before upload. */
export interface TextLinearSource {
  /** Layer name for messages and GPU labels. */
  name: string;
  /** Out-features N. */
  n: number;
  /** In-features K. */
  k: number;
  /** Float values [N, K] (a float checkpoint). */
  values?: Float32Array;
  /** Pre-quantized tensors by suffix (`qweight`, `wscales`). */
  stored?: Map<string, StoredTensor>;
  /** f32 [N]. */
  bias?: Float32Array;
}

/**
 * The GPU resources an encoder build creates (buffers labelled `buffer <owner> <label>`, kernel
 * ops, linear layers), collected so that a failed build releases them all with
 * {@linkcode destroy}. The methods are bound (they may be destructured).
 */
export class EncoderResources {
  /** Every op built (kernels and linears), in build order. */
  readonly ops: { destroy(): void }[] = [];
  /** Every buffer created. */
  readonly bufs: GPUBuffer[] = [];
  /** The linear layers (also in {@linkcode ops}). */
  readonly linears: LinearOp[] = [];
  readonly #gpu: Gpu;
  readonly #owner: string;

  /** Resources of `owner` (e.g. "CLIP"), the word after "buffer" in every label. */
  constructor(gpu: Gpu, owner: string) {
    this.#gpu = gpu;
    this.#owner = owner;
  }

  /** Upload `data` into a new buffer `buffer <owner> <label>`. */
  upload = async (label: string, data: ArrayBufferView): Promise<GPUBuffer> => {
    const buf = await this.#gpu.upload(`buffer ${this.#owner} ${label}`, data);
    this.bufs.push(buf);
    return buf;
  };

  /** A new buffer `buffer <owner> <label>` of `bytes` bytes. */
  alloc = async (label: string, bytes: number): Promise<GPUBuffer> => {
    const buf = await this.#gpu.createBuffer(`buffer ${this.#owner} ${label}`, bytes);
    this.bufs.push(buf);
    return buf;
  };

  /** Keep the op `p` resolves to. */
  kernel = async <T extends { destroy(): void }>(p: Promise<T>): Promise<T> => {
    const op = await p;
    this.ops.push(op);
    return op;
  };

  /** {@linkcode buildTextLinear}, kept. */
  linear = async (
    src: TextLinearSource,
    opts: { m: number; dtype: ActDtype; format: TextWeightFormat },
  ): Promise<LinearOp> => {
    const op = await buildTextLinear(this.#gpu, src, opts);
    this.ops.push(op);
    this.linears.push(op);
    return op;
  };

  /** Destroy every op and buffer kept. */
  destroy(): void {
    for (const op of this.ops) op.destroy();
    this.#gpu.destroy(...this.bufs);
  }
}

/**
 * Upload one linear layer: `m` rows per call, activations in `dtype`, weights as `format`
 * (ignored for pre-quantized tensors, whose dtype says what they are).
 */
export async function buildTextLinear(
  gpu: Gpu,
  src: TextLinearSource,
  opts: { m: number; dtype: ActDtype; format: TextWeightFormat },
): Promise<LinearOp> {
  const { name, n, k } = src;
  const spec = { name, m: opts.m, n, k, dtype: opts.dtype };
  const tensors = new Map<string, StoredTensor | Float32Array>();
  if (src.bias) tensors.set("bias", src.bias);
  let format = opts.format;
  if (src.stored) {
    const qw = src.stored.get("qweight");
    format = qw?.dtype === "I8" ? "w8a16" : "w4a16";
    for (const [key, t] of src.stored) tensors.set(key, t);
  } else if (!src.values) {
    throw new TypeError(`Cannot build ${name}: neither float values nor quantized tensors`);
  } else if (format === "w4a16") {
    for (const [key, t] of quantizeInt4(src.values, n, k, name)) tensors.set(key, t);
  } else if (format === "w8a16") {
    for (const [key, t] of quantizeInt8(src.values, n, k)) tensors.set(key, t);
  } else {
    tensors.set("weight", src.values);
  }
  if (format === "float") return await createLinear(gpu, { ...spec, method: "float" }, tensors);
  if (format === "w4a16") return await createLinear(gpu, { ...spec, method: "w4a16" }, tensors);
  return await buildW8A16(gpu, spec, tensors);
}

/**
 * INT4, group 64, as stored tensors (`qweight` U32 [N, K/8], `wscales` F16 [N, K/64]): round to
 * nearest, or with `clip` the per-group clipping search of quant/clip.ts (lower weight error,
 * ~11× slower: ~15 min for T5-XXL on 2 CPU cores, so the offline tool uses it and loading does
 * not).
 */
export function quantizeInt4(
  w: Float32Array,
  n: number,
  k: number,
  name: string,
  clip = false,
): Map<string, StoredTensor> {
  const p = clip
    ? quantizeWeightClipped(w, n, k, "int4", { name })
    : quantizeWeight(w, n, k, "int4", { name });
  return new Map([
    ["qweight", stored("U32", [n, k / 8], p.qweight)],
    ["wscales", stored("F16", [n, k / W4A16_GROUP], packF16(p.wscales))],
  ]);
}

/** INT8 per output channel, absmax/127 (`qweight` I8 [N, K], `wscales` F32 [N]). */
export function quantizeInt8(w: Float32Array, n: number, k: number): Map<string, StoredTensor> {
  const q = quantizeRowsInt8(w, n, k);
  return new Map([
    ["qweight", stored("I8", [n, k], q.q)],
    ["wscales", stored("F32", [n], q.scale)],
  ]);
}

function stored(dtype: string, shape: number[], a: ArrayBufferView): StoredTensor {
  return { dtype, shape, data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) };
}

async function buildW8A16(
  gpu: Gpu,
  spec: { name: string; m: number; n: number; k: number; dtype: ActDtype },
  tensors: Map<string, StoredTensor | Float32Array>,
): Promise<LinearOp> {
  const { name, m, n, k, dtype } = spec;
  const qw = tensors.get("qweight") as StoredTensor | undefined;
  const ws = tensors.get("wscales") as StoredTensor | undefined;
  if (!qw || !ws || qw.shape.join() !== `${n},${k}` || ws.shape.join() !== `${n}`) {
    throw new TypeError(
      `Cannot build ${name}: W8A16 needs qweight I8 [${n}, ${k}] and wscales F32 [${n}]`,
    );
  }
  const bias = tensors.get("bias") as Float32Array | undefined;
  const op = await GemmW8A16.create(gpu, { m, k, n, dtype, bias: Boolean(bias) });
  const qb = await gpu.upload(`buffer ${name}.qweight`, qw.data);
  const sb = await gpu.upload(`buffer ${name}.wscales`, ws.data);
  const bb = bias ? await gpu.upload(`buffer ${name}.bias`, bias) : undefined;
  return {
    name,
    kind: "w8a16",
    weightBytes: qb.size + sb.size + (bb?.size ?? 0),
    dispatch: (x, y) => [op.dispatch({ x, qweight: qb, wscales: sb, bias: bb, y })],
    destroy: () => {
      op.destroy();
      gpu.destroy(qb, sb, bb);
    },
  };
}

/** Rows of `parts` (each [n_i, K]) one after another: [Σn_i, K]. */
export function concatRows(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** [N, K] → [N, kp] with zero columns appended (kp ≥ K). */
export function padCols(w: Float32Array, n: number, k: number, kp: number): Float32Array {
  if (kp === k) return w;
  const out = new Float32Array(n * kp);
  for (let r = 0; r < n; r++) out.set(w.subarray(r * k, (r + 1) * k), r * kp);
  return out;
}

/** [N, K] → [np, K] with zero rows appended (np ≥ N). */
export function padRows(w: Float32Array, n: number, k: number, np: number): Float32Array {
  if (np === n) return w;
  const out = new Float32Array(np * k);
  out.set(w);
  return out;
}

/** Head-major rows [H·d, K] → [H·dp, K]: each head's d rows followed by dp − d zero rows. */
export function padHeadRows(
  w: Float32Array,
  h: number,
  d: number,
  dp: number,
  k: number,
): Float32Array {
  if (dp === d) return w;
  const out = new Float32Array(h * dp * k);
  for (let i = 0; i < h; i++) out.set(w.subarray(i * d * k, (i + 1) * d * k), i * dp * k);
  return out;
}

/** Head-major columns [N, H·d] → [N, H·dp] (zero columns after each head's d). */
export function padHeadCols(
  w: Float32Array,
  n: number,
  h: number,
  d: number,
  dp: number,
): Float32Array {
  if (dp === d) return w;
  const out = new Float32Array(n * h * dp);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < h; i++) {
      out.set(w.subarray(r * h * d + i * d, r * h * d + (i + 1) * d), r * h * dp + i * dp);
    }
  }
  return out;
}

/** [H·d] → [H·dp] (a head-major bias). */
export function padHeadVec(b: Float32Array, h: number, d: number, dp: number): Float32Array {
  return padHeadRows(b, h, d, dp, 1);
}

/** The smallest multiple of `g` at or above `v`. */
export function roundUp(v: number, g: number): number {
  return Math.ceil(v / g) * g;
}

/**
 * A host-side embedding table in the smallest exact form: `Float16Array` when every value is an
 * f16 value (a 16-bit checkpoint's table, half the host memory: 263 MB instead of 526 MB for
 * T5-XXL's), else the `Float32Array` as is.
 */
export function compactTable(v: Float32Array): Float32Array | Float16Array {
  for (let i = 0; i < v.length; i++) if (Math.f16round(v[i]) !== v[i]) return v;
  return Float16Array.from(v);
}
