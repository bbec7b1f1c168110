/**
 * Web Worker body of {@link QuantizePool} (quant/pool.ts): quantizes one layer per message with
 * {@link quantizeLinear} and posts the result (tensors transferred, not copied), or runs one
 * block of a layer split across workers (quant/split.ts `runPart`).
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { type QuantizedLinear, quantizeLinear, type QuantizeLinearOptions } from "./layer.ts";
import { type PartJob, type PartResult, resultBuffers, runPart } from "./split.ts";

/** One job: the arguments of {@link quantizeLinear}. */
export interface LayerJob {
  kind: "layer";
  id: number;
  name: string;
  w: Float32Array;
  bias: Float32Array | null;
  n: number;
  k: number;
  opts: QuantizeLinearOptions;
}

/** One block of a layer split across workers (quant/split.ts). */
export interface PartMessage {
  kind: "part";
  id: number;
  job: PartJob;
}

/** A job's answer: the layer (or the block's result), or the error's name and message. */
export type LayerAnswer =
  | { id: number; ok: true; q: QuantizedLinear }
  | { id: number; ok: true; part: PartResult }
  | { id: number; ok: false; error: { name: string; message: string } };

function failure(id: number, err: unknown): LayerAnswer {
  const error = err instanceof Error
    ? { name: err.name, message: err.message }
    : { name: "Error", message: String(err) };
  return { id, ok: false, error };
}

self.onmessage = async (e: MessageEvent<LayerJob | PartMessage>) => {
  if (e.data.kind === "part") {
    const { id, job } = e.data;
    try {
      const part = runPart(job);
      self.postMessage({ id, ok: true, part } satisfies LayerAnswer, resultBuffers(part));
    } catch (err) {
      self.postMessage(failure(id, err));
    }
    return;
  }
  const { id, name, w, bias, n, k, opts } = e.data;
  try {
    const q = await quantizeLinear(name, w, bias, n, k, opts);
    const buffers = new Set<ArrayBuffer>();
    for (const t of q.tensors.values()) {
      if (t.data.buffer instanceof ArrayBuffer) buffers.add(t.data.buffer);
    }
    self.postMessage({ id, ok: true, q } satisfies LayerAnswer, [...buffers]);
  } catch (err) {
    self.postMessage(failure(id, err));
  }
};
