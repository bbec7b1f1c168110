/**
 * Weight-only quantization of a T5 encoder checkpoint (FLUX.1's `text_encoder_2`) into one
 * safetensors file the runtime loads like the float one (runtime/text/t5.ts): every attention and
 * FFN linear (`SelfAttention.{q,k,v,o}`, `DenseReluDense.{wi_0,wi_1,wo}`) becomes
 *
 * - `w4a16`: `<base>.qweight` U32 [N, K/8] INT4 codes + `<base>.wscales` F16 [N, K/64]
 *   (one scale per group of 64 along K, formats/packing.ts layout, each group's clipping ratio
 *   searched by quant/clip.ts), or
 * - `w8a16`: `<base>.qweight` I8 [N, K] + `<base>.wscales` F32 [N] (one scale per output
 *   channel, absmax/127);
 *
 * every other tensor (embeddings, norms, the relative-bias table) is copied as stored. The
 * metadata holds the model `config` (JSON) and `text_quant` (`{"method", "group"}`). Input: a
 * `.safetensors` file, a shard index, or a folder (sharded or not); tensors are streamed one at a
 * time, so T5-XXL (9.5 GB in 16-bit) needs memory for one layer only.
 *
 * @module
 */
import { FormatError } from "../gpu/errors.ts";
import { Checkpoint } from "../runtime/text/checkpoint.ts";
import { quantizeInt4, quantizeInt8, W4A16_GROUP } from "../runtime/text/_linears.ts";
import { type Dtype, DTYPE_BYTES, SafetensorsWriter } from "../formats/safetensors.ts";

/** Weight-only methods for text encoders. */
export type TextQuantMethod = "w4a16" | "w8a16";

/** Every {@linkcode TextQuantMethod}. */
export const TEXT_QUANT_METHODS: readonly TextQuantMethod[] = ["w4a16", "w8a16"];

const LINEAR = /\.(SelfAttention\.(q|k|v|o)|DenseReluDense\.(wi_0|wi_1|wo))\.weight$/;

/** What {@linkcode quantizeTextEncoder} did. */
export interface TextQuantReport {
  /** Linears quantized. */
  layers: number;
  /** Bytes of the source's tensors. */
  bytesBefore: number;
  /** Bytes of the written tensors. */
  bytesAfter: number;
}

/**
 * Quantize the T5 encoder at `src` into `out` with `method`.
 *
 * @example
 * ```ts ignore
 * import { quantizeTextEncoder } from "./text_encoder.ts";
 * const r = await quantizeTextEncoder("FLUX.1-schnell/text_encoder_2", "t5xxl.w8a16.safetensors", {
 *   method: "w8a16",
 * });
 * console.log(r.layers, (r.bytesAfter / 2 ** 30).toFixed(2), "GiB");
 * ```
 */
export async function quantizeTextEncoder(
  src: string,
  out: string,
  opts: { method: TextQuantMethod; onLayer?: (name: string) => void },
): Promise<TextQuantReport> {
  if (!TEXT_QUANT_METHODS.includes(opts.method)) {
    throw new RangeError(
      `Cannot quantize ${src}: unknown method "${opts.method}", use ${
        TEXT_QUANT_METHODS.join(" or ")
      }`,
    );
  }
  const ck = await Checkpoint.open(src);
  try {
    if (ck.config.feed_forward_proj !== "gated-gelu") {
      throw new FormatError(src, "not a T5 v1.1 encoder (feed_forward_proj is not gated-gelu)");
    }
    const names = ck.names().sort();
    const plan: { name: string; dtype: Dtype; shape: number[]; byteLength: number }[] = [];
    let layers = 0, bytesBefore = 0;
    for (const name of names) {
      const { dtype, shape } = ck.meta(name);
      const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      bytesBefore += bytes;
      if (!LINEAR.test(name)) {
        plan.push({ name, dtype, shape, byteLength: bytes });
        continue;
      }
      const [n, k] = shape;
      const base = name.slice(0, -".weight".length);
      layers++;
      if (opts.method === "w4a16") {
        if (k % W4A16_GROUP !== 0) {
          throw new RangeError(
            `Cannot quantize ${base} with w4a16: K=${k} is not a multiple of ${W4A16_GROUP}; ` +
              'use w8a16, or load the float checkpoint with weights: "w4a16" (pads at load)',
          );
        }
        plan.push({
          name: `${base}.qweight`,
          dtype: "U32",
          shape: [n, k / 8],
          byteLength: n * k / 2,
        });
        plan.push({
          name: `${base}.wscales`,
          dtype: "F16",
          shape: [n, k / W4A16_GROUP],
          byteLength: 2 * n * k / W4A16_GROUP,
        });
      } else {
        if (k % 4 !== 0) {
          throw new RangeError(`Cannot quantize ${base} with w8a16: K=${k} is not a multiple of 4`);
        }
        plan.push({ name: `${base}.qweight`, dtype: "I8", shape: [n, k], byteLength: n * k });
        plan.push({ name: `${base}.wscales`, dtype: "F32", shape: [n], byteLength: 4 * n });
      }
    }
    const metadata = {
      format: "pt",
      config: JSON.stringify(ck.config),
      text_quant: JSON.stringify({
        method: opts.method,
        group: opts.method === "w4a16" ? W4A16_GROUP : null,
      }),
    };
    const w = await SafetensorsWriter.create(out, { tensors: plan, metadata });
    try {
      for (const name of names) {
        if (!LINEAR.test(name)) {
          await w.write(name, await ck.raw(name));
          continue;
        }
        const [n, k] = ck.meta(name).shape;
        const base = name.slice(0, -".weight".length);
        opts.onLayer?.(base);
        const values = await ck.float(name);
        const q = opts.method === "w4a16"
          ? quantizeInt4(values, n, k, base, true)
          : quantizeInt8(values, n, k);
        await w.write(`${base}.qweight`, q.get("qweight")!.data);
        await w.write(`${base}.wscales`, q.get("wscales")!.data);
      }
      await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
    const bytesAfter = plan.reduce((s, t) => s + t.byteLength, 0);
    return { layers, bytesBefore, bytesAfter };
  } finally {
    ck.close();
  }
}
