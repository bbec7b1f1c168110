/**
 * Web Worker body of {@link QuantizePool} (quant/pool.ts): quantizes one layer per message with
 * {@link quantizeLinear} and posts the result (tensors transferred, not copied).
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { type QuantizedLinear, quantizeLinear, type QuantizeLinearOptions } from "./layer.ts";

/** One job: the arguments of {@link quantizeLinear}. */
export interface LayerJob {
  id: number;
  name: string;
  w: Float32Array;
  bias: Float32Array | null;
  n: number;
  k: number;
  opts: QuantizeLinearOptions;
}

/** A job's answer: the layer, or the error's name and message. */
export type LayerAnswer =
  | { id: number; ok: true; q: QuantizedLinear }
  | { id: number; ok: false; error: { name: string; message: string } };

self.onmessage = async (e: MessageEvent<LayerJob>) => {
  const { id, name, w, bias, n, k, opts } = e.data;
  try {
    const q = await quantizeLinear(name, w, bias, n, k, opts);
    const buffers = new Set<ArrayBuffer>();
    for (const t of q.tensors.values()) {
      if (t.data.buffer instanceof ArrayBuffer) buffers.add(t.data.buffer);
    }
    self.postMessage({ id, ok: true, q } satisfies LayerAnswer, [...buffers]);
  } catch (err) {
    const error = err instanceof Error
      ? { name: err.name, message: err.message }
      : { name: "Error", message: String(err) };
    self.postMessage({ id, ok: false, error } satisfies LayerAnswer);
  }
};
