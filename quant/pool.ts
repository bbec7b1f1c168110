/**
 * Layers quantized in parallel: a pool of Web Workers (one per core by default), each running
 * {@link quantizeLinear} on one layer at a time. Results are bit-identical to the serial call (the
 * same code on the same inputs; nothing in the quantizer depends on timing or on shared state).
 * Memory: each busy worker holds one layer (its weight, its statistics and its scratch), so the peak
 * is about `workers ×` the largest layer's; callers bound it further by how many jobs they submit
 * before awaiting (convert/model.ts keeps at most `workers` layers in flight).
 *
 * @example
 * ```ts
 * import { QuantizePool } from "./pool.ts";
 * const pool = new QuantizePool(2);
 * try {
 *   const w = new Float32Array(8 * 64).map((_, i) => Math.sin(i));
 *   const q = await pool.quantize("fc", w, null, 8, 64, { method: "rtn", format: "int4", r: 0 });
 *   console.log(q.relError);
 * } finally {
 *   pool.close();
 * }
 * ```
 *
 * @module
 */
import { type QuantizedLinear, quantizeLinear, type QuantizeLinearOptions } from "./layer.ts";
import type { LayerAnswer, LayerJob, PartMessage } from "./layer_worker.ts";
import {
  type LinearArgs,
  type PartJob,
  type PartResult,
  type PartRunner,
  rowSplit,
  type RowSplitOptions,
} from "./split.ts";

/** Worker count that uses every core the runtime reports (at least 1). */
export function defaultWorkers(): number {
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

interface Pending {
  job: LayerJob | PartMessage;
  transfer?: ArrayBuffer[];
  resolve: (v: QuantizedLinear & PartResult) => void;
  reject: (e: Error) => void;
}

/**
 * A fixed set of quantizer workers; jobs queue when all are busy. Call `close()` when done.
 * Whole layers go to one worker each ({@linkcode QuantizePool.quantize}); one large layer can
 * also use several cores ({@linkcode QuantizePool.quantizeSplit}).
 */
export class QuantizePool implements PartRunner {
  /** Number of workers. */
  readonly size: number;
  #idle: Worker[] = [];
  #all: Worker[] = [];
  #queue: Pending[] = [];
  #running = new Map<Worker, Pending>();
  #nextId = 0;
  #closed = false;

  /** Starts `size` workers (default {@link defaultWorkers}). */
  constructor(size = defaultWorkers()) {
    if (!Number.isInteger(size) || size < 1) {
      throw new RangeError(
        `Cannot start a quantizer pool: size must be an integer ≥ 1, got ${size}`,
      );
    }
    this.size = size;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL("./layer_worker.ts", import.meta.url), { type: "module" });
      worker.onmessage = (e: MessageEvent<LayerAnswer>) => this.#done(worker, e.data);
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(worker, new Error(`Cannot quantize in a worker: ${e.message}`));
      };
      this.#all.push(worker);
      this.#idle.push(worker);
    }
  }

  /**
   * {@link quantizeLinear} on a worker. `w` and `bias` are copied (the caller keeps them); `opts`
   * must be structured-cloneable, so a custom `matmul` (e.g. a GPU product) is refused.
   */
  quantize(
    name: string,
    w: Float32Array,
    bias: Float32Array | null,
    n: number,
    k: number,
    opts: QuantizeLinearOptions,
  ): Promise<QuantizedLinear> {
    if (this.#closed) {
      return Promise.reject(new Error(`Cannot quantize ${name}: the worker pool is closed`));
    }
    if (opts.matmul || opts.split) {
      return Promise.reject(
        new TypeError(
          `Cannot quantize ${name} in a worker: a custom matmul or split cannot be sent to one; ` +
            `quantize serially or with quantizeSplit`,
        ),
      );
    }
    const job: LayerJob = { kind: "layer", id: this.#nextId++, name, w, bias, n, k, opts };
    return new Promise((resolve, reject) => {
      this.#queue.push({ job, resolve, reject });
      this.#pump();
    });
  }

  /**
   * {@link quantizeLinear} in this thread with its large kernels cut into {@linkcode size} blocks
   * of rows: one computed here, the others on whichever workers are idle (quant/split.ts). For a
   * layer that would otherwise leave cores idle (one large layer, or the last one of a model).
   * The result is bit-identical to the serial call; `opts.matmul` (e.g. a GPU product), if given,
   * keeps the products. `split` sets the block sizes (quant/split.ts `rowSplit`; tests use it
   * to split small layers).
   */
  quantizeSplit(
    name: string,
    w: Float32Array,
    bias: Float32Array | null,
    n: number,
    k: number,
    opts: QuantizeLinearOptions,
    split: RowSplitOptions = {},
  ): Promise<QuantizedLinear> {
    if (this.#closed) {
      return Promise.reject(new Error(`Cannot quantize ${name}: the worker pool is closed`));
    }
    return quantizeLinear(name, w, bias, n, k, { ...opts, split: rowSplit(this, split) });
  }

  /**
   * Starts a whole layer on an idle worker (quant/split.ts `aside`: a split layer's rank-0 floor)
   * when another worker stays idle for the split's blocks; else null.
   */
  tryLayer(...args: LinearArgs): Promise<QuantizedLinear> | null {
    // One worker stays for the blocks of the layer this one runs beside.
    if (this.#closed || this.#idle.length < 2 || this.#queue.length > 0) return null;
    return this.quantize(...args);
  }

  /**
   * Runs one block of a split layer on an idle worker, or returns null when none is idle (the
   * caller then computes it itself; quant/split.ts). Buffers in `transfer` move to the worker.
   */
  tryRun(job: PartJob, transfer: ArrayBuffer[]): Promise<PartResult> | null {
    if (this.#closed || this.#idle.length === 0 || this.#queue.length > 0) return null;
    const msg: PartMessage = { kind: "part", id: this.#nextId++, job };
    return new Promise((resolve, reject) => {
      this.#queue.push({ job: msg, transfer, resolve, reject });
      this.#pump();
    });
  }

  /** Terminates the workers; jobs not finished are rejected. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = new Error("Cannot quantize: the worker pool was closed before the layer finished");
    for (const p of [...this.#queue, ...this.#running.values()]) p.reject(err);
    this.#queue = [];
    this.#running.clear();
    for (const w of this.#all) w.terminate();
  }

  #pump(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop()!, p = this.#queue.shift()!;
      this.#running.set(worker, p);
      worker.postMessage(p.job, p.transfer ?? []);
    }
  }

  #done(worker: Worker, a: LayerAnswer): void {
    const p = this.#running.get(worker);
    if (!p || p.job.id !== a.id) return;
    this.#running.delete(worker);
    this.#idle.push(worker);
    if (a.ok) p.resolve(("q" in a ? a.q : a.part) as QuantizedLinear & PartResult);
    else {
      const e = a.error.name === "RangeError"
        ? new RangeError(a.error.message)
        : a.error.name === "TypeError"
        ? new TypeError(a.error.message)
        : new Error(a.error.message);
      p.reject(e);
    }
    this.#pump();
  }

  #fail(worker: Worker, e: Error): void {
    const p = this.#running.get(worker);
    this.#running.delete(worker);
    p?.reject(e);
    // A worker whose script failed is not reused.
    this.#all = this.#all.filter((w) => w !== worker);
    worker.terminate();
    if (this.#all.length === 0) {
      for (const q of this.#queue) q.reject(e);
      this.#queue = [];
    } else this.#pump();
  }
}
